"""benchmarks/gpu_decode_speed.py cannot rot: its ``--smoke`` run (a tiny model on CPU) goes
through the GPU run's code: bandwidth, model build, bf16/int8/int4 weights, the StaticCache
decode step traced whole by torch.compile (``fullgraph=True``: a graph break or host sync in
the step fails here), the JSONL and the table."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "gpu_decode_speed.py"


@pytest.mark.slow
@pytest.mark.slow
def test_smoke_run_measures_every_configuration(tmp_path: Path) -> None:
    out = tmp_path / "results.jsonl"
    command = [sys.executable, str(SCRIPT), "--smoke", "--steps", "2", "--out", str(out)]
    proc = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert all(line["smoke"] for line in lines)
    (bandwidth,) = [line for line in lines if line["kind"] == "copy_bandwidth"]
    assert bandwidth["bytes_per_s"] > 0
    decodes = [line for line in lines if line["kind"] == "decode"]
    assert [(d["weights"], d["batch"]) for d in decodes] == [
        ("bf16", 1), ("int8", 1), ("int4", 1), ("bf16", 4)
    ]  # fmt: skip
    bf16, int8, int4, _ = decodes
    assert int4["weight_bytes"] < int8["weight_bytes"] < bf16["weight_bytes"]
    for d in decodes:
        assert d["tokens_per_s"] > 0 and d["bandwidth_util"] > 0, d
    assert "| smoke | int4 | 1 |" in proc.stdout
