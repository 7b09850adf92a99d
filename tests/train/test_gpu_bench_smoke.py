"""benchmarks/gpu_train_speed.py cannot rot: its ``--smoke`` run (a tiny model on CPU) goes
through the same code as the GPU run: matmul peak, both models built and compared, eager and
compiled steps alternating, JSONL and the markdown table."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "gpu_train_speed.py"


@pytest.mark.slow
def test_smoke_run_measures_every_variant(tmp_path: Path) -> None:
    out = tmp_path / "results.jsonl"
    command = [sys.executable, str(SCRIPT), "--smoke", "--rounds", "2", "--steps", "2"]
    proc = subprocess.run(
        [*command, "--out", str(out)], capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert all(line["smoke"] for line in lines)
    (peak,) = [line for line in lines if line["kind"] == "matmul_peak"]
    assert peak["tflops"] > 0
    (initial,) = [line for line in lines if line["kind"] == "initial_loss"]
    assert abs(initial["pasture"] - initial["hf"]) <= 1e-4 * initial["hf"]  # the same model
    samples = [line for line in lines if line["kind"] == "sample"]
    assert len(samples) == 2 * 2 * 2  # rounds × implementations × modes
    assert [s["impl"] for s in samples[:4]] == ["pasture", "pasture", "hf", "hf"]
    assert [s["impl"] for s in samples[4:]] == ["hf", "hf", "pasture", "pasture"]  # alternating
    summaries = {(s["impl"], s["mode"]): s for s in lines if s["kind"] == "summary"}
    assert set(summaries) == {(i, m) for i in ("pasture", "hf") for m in ("eager", "compiled")}
    for key, summary in summaries.items():
        assert summary.get("error") is None, (key, summary["error"])
        assert summary["tokens_per_s"] > 0 and summary["pct_of_peak"] > 0, key
    assert "| pasture | compiled |" in proc.stdout and "pasture / hf (eager):" in proc.stdout
