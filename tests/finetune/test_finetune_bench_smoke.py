"""benchmarks/finetune_speed.py --smoke runs end to end: Pasture and HF + peft both measured, on
the same model and data (equal initial losses), for LoRA and full finetuning."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).parents[2] / "benchmarks" / "finetune_speed.py"


@pytest.mark.slow
def test_finetune_bench_smoke(tmp_path: Path, shared_data: Path) -> None:
    pytest.importorskip("peft")  # here, not at import: collecting it costs the fast tier 1.6 s
    out = tmp_path / "finetune_speed.jsonl"
    env = {**os.environ, "PASTURE_DATA": str(shared_data), "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, str(SCRIPT), "--smoke", "--no-memory", "--rounds", "2"]
    cmd += ["--steps", "1", "--seq-len", "128", "--out", str(out)]
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["method"] for r in records] == ["lora", "full"]
    for r in records:
        assert r["kind"] == "speed" and r["size"] == "smoke"
        losses = r["initial_loss"]
        assert set(losses) == {"pasture", "pasture_packed", "hf", "hf_longest"}
        assert max(losses.values()) - min(losses.values()) <= 1e-4
        assert losses["pasture"] > 1.0  # a random model: about ln(512) per token, not zero
        assert r["pasture_tok_s"] > 0 and r["hf_tok_s"] > 0
        assert all(v > 0 for v in r["example_tok_s"].values())
        assert r["ratio"] == pytest.approx(r["pasture_tok_s"] / r["hf_tok_s"], rel=0.01)
        assert all(len(s) == 2 for s in r["seconds_per_round"].values())
        assert r["packed_rows_per_step"] < r["rows"]  # 128 wide rows hold two examples
        longest = r["example_tok_s"]["pasture"] / r["example_tok_s"]["hf_longest"]
        assert r["vs_hf_longest_ratio"] == pytest.approx(longest, rel=0.01)
    lora, full = records
    assert lora["trainable_params"]["pasture"] == lora["trainable_params"]["hf"]
    assert full["trainable_params"]["pasture"] == full["trainable_params"]["hf"]
    assert lora["trainable_params"]["pasture"] < full["trainable_params"]["pasture"]
