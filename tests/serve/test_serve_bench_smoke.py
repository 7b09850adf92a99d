"""benchmarks/serve_speed.py cannot rot: its ``--smoke`` run (debug-size model, vocab 512)
starts the real ``pasture serve`` (and llama-cpp-python's server when its extra is installed)
on loopback ports, streams completions from 1 and 2 concurrent clients, runs the in-process
baseline, and writes the JSONL record whose numbers must add up."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "serve_speed.py"
LLAMA_CPP_SERVER = ("llama_cpp", "sse_starlette", "starlette_context", "pydantic_settings")


@pytest.mark.slow
def test_smoke_run_serves_every_level(tmp_path: Path) -> None:
    out = tmp_path / "serve.jsonl"
    command = [sys.executable, str(SCRIPT), "--smoke", "--threads", "1", "--out", str(out)]
    proc = subprocess.run(command, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    (record,) = [json.loads(line) for line in out.read_text().splitlines()]
    assert record["smoke"] and record["model"]["size"] == "debug"
    assert record["model"]["vocab_size"] == 512 and record["max_tokens"] == 8
    with_llama = all(importlib.util.find_spec(m) is not None for m in LLAMA_CPP_SERVER)
    servers = {"pasture", "llama_cpp"} if with_llama else {"pasture"}
    expected = {(s, c) for s in servers for c in (1, 2)} | {("in_process", 1)}
    rows = {(r["server"], r["clients"]): r for r in record["levels"]}
    assert set(rows) == expected and len(record["levels"]) == len(expected)
    for (_, clients), row in rows.items():
        per_client = record["one_client_requests" if clients == 1 else "requests_per_client"]
        # Every request ran to max_tokens (the script checks finish_reason "length").
        assert row["requests"] == clients * per_client
        assert row["completion_tokens"] == row["requests"] * record["max_tokens"]
        assert row["tok_s"] == pytest.approx(row["completion_tokens"] / row["wall_s"], rel=0.01)
        assert row["requests_per_s"] == pytest.approx(row["requests"] / row["wall_s"], rel=0.01)
        assert 0 < row["ttft_ms_p50"] <= row["ttft_ms_p99"] <= row["e2e_ms_p99"]
        assert row["ttft_ms_p50"] <= row["e2e_ms_p50"] <= row["e2e_ms_p99"]
        assert row["e2e_ms_p99"] <= 1000 * row["wall_s"] + 1
    overhead = rows["pasture", 1]["e2e_ms_p50"] / rows["in_process", 1]["e2e_ms_p50"] - 1
    ratios = record["ratios"]
    assert ratios["server_overhead_pct_1_client"] == pytest.approx(100 * overhead, abs=0.1)
    assert record["goals"]["overhead_le_10pct"] == (overhead <= 0.10)
    scale = rows["pasture", 2]["tok_s"] / rows["pasture", 1]["tok_s"]
    assert ratios["pasture_tok_s_2_vs_1_client"] == pytest.approx(scale, abs=0.01)
    if with_llama:
        assert record["llama_cpp_python"]
        vs = rows["pasture", 2]["tok_s"] / rows["llama_cpp", 2]["tok_s"]
        assert ratios["pasture_vs_llama_cpp_tok_s_2_clients"] == pytest.approx(vs, abs=0.01)
