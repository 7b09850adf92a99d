"""benchmarks/decode_speed.py cannot rot: its ``--smoke`` run (debug-size model, vocab 512)
goes through the full run's code: float32, int8 and int4 Pasture, HF through the converter,
llama.cpp on the GGUF export when llama-cpp-python is installed (a benchmark extra), greedy
agreement, rotated rounds, the JSONL record."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "decode_speed.py"


@pytest.mark.slow
@pytest.mark.slow
def test_smoke_run_measures_every_variant(tmp_path: Path) -> None:
    pytest.importorskip("transformers")
    out = tmp_path / "decode.jsonl"
    command = [sys.executable, str(SCRIPT), "--smoke", "--threads", "1", "--out", str(out)]
    proc = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    (record,) = [json.loads(line) for line in out.read_text().splitlines()]
    assert record["smoke"] and record["size"] == "debug" and record["vocab_size"] == 512
    variants = {"pasture", "pasture_int8", "pasture_int4", "hf"}
    has_llama_cpp = importlib.util.find_spec("llama_cpp") is not None
    if has_llama_cpp:
        variants.add("llama_cpp")
    assert set(record["tok_s"]) == variants
    assert all(len(record["samples"][v]) == record["rounds"] == 1 for v in variants)
    assert all(record["tok_s"][v] > 0 for v in variants)
    # 128 = 4 × 32 and 352 = 11 × 32, but 128 does not divide 352: the largest fitting group.
    assert record["int4_group_size"] == 32
    agree = record["agree_with_pasture_fp32"]
    assert agree["hf"] == record["agree_tokens"]  # asserted by the script before timing
    if has_llama_cpp:  # the same weights through Pasture's GGUF writer: the same greedy tokens
        assert agree["llama_cpp"] == record["agree_tokens"]
        assert "pasture_vs_llama_cpp" in record["ratios"]
    tok_s = record["tok_s"]
    assert record["ratios"]["int8_vs_fp32"] == pytest.approx(
        tok_s["pasture_int8"] / tok_s["pasture"], rel=0.05
    )
