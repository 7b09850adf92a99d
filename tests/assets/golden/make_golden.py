"""Write debug_loss.json: the per-step training loss of configs/train/debug.toml's first steps.

    .venv/bin/python tests/assets/golden/make_golden.py

Regenerate it only for a deliberate change of the numbers (the model's initialization or
arithmetic, the optimizer, the data order, the tokenizer, debug.toml itself) or of the pinned
torch / Python release, and say why in the commit. tests/train/test_golden_loss.py then holds
the training loop to these losses exactly (float equality) on CPU.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

from pasture import files
from pasture.config import load_toml

REPO = Path(__file__).resolve().parents[3]
CONFIG = REPO / "configs" / "train" / "debug.toml"
GOLDEN = Path(__file__).resolve().parent / "debug_loss.json"
STEPS = 20  # optimizer steps held to the golden losses
THREADS = 1  # CPU kernels may sum in another order with another thread count


def short_run(run_dir: Path) -> tuple[int, list[str]]:
    """(debug.toml's steps, the overrides of the short run that reproduces its first ``STEPS``).

    The run is cut to ``warmup_steps + 1`` steps (``steps`` must exceed the warmup): during
    warmup the learning rate does not depend on ``steps``. A metrics line every step and no
    tensorboard; debug.toml's validation and checkpoints read the model without changing it.
    """
    data = load_toml(CONFIG, [])
    steps = max(data["optim"]["warmup_steps"], STEPS) + 1
    metrics = "metrics." if "metrics" in data else ""  # its table, or top-level keys before it
    overrides = [f"{metrics}log_every=1", f"{metrics}tensorboard=false", f"steps={steps}"]
    return data["steps"], [*overrides, f"run_dir={run_dir}"]


def environment() -> dict[str, str | int]:
    """What the exact losses depend on besides the code."""
    return {
        "torch": torch.__version__,
        "python": platform.python_version(),  # the corpus is this Python's standard library
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "threads": THREADS,
    }


def run_debug(run_dir: Path) -> tuple[list[float], str]:
    """The first ``STEPS`` losses of ``pasture train`` on the short run in ``run_dir``, and the
    SHA-256 of the tokenizer it trained."""
    _, overrides = short_run(run_dir)
    command = [sys.executable, "-m", "pasture.cli", "train", "--config", str(CONFIG)]
    env = {**os.environ, "OMP_NUM_THREADS": str(THREADS), "MKL_NUM_THREADS": str(THREADS)}
    done = subprocess.run(
        [*command, *(f"--set={o}" for o in overrides)], env=env, capture_output=True, text=True
    )
    if done.returncode != 0:
        raise RuntimeError(f"pasture train failed:\n{done.stderr[-3000:]}")
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    losses = {m["step"]: m["loss"] for m in map(json.loads, lines)}
    tokenizer = (run_dir / "data" / "tokenizer.model").read_bytes()
    return [losses[step] for step in range(1, STEPS + 1)], hashlib.sha256(tokenizer).hexdigest()


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        losses, tokenizer_sha256 = run_debug(Path(tmp) / "run")
    golden = {
        "about": f"training loss of the first {STEPS} optimizer steps of "
        "configs/train/debug.toml on CPU, compared exactly by tests/train/test_golden_loss.py",
        "made_by": "python tests/assets/golden/make_golden.py",
        "regenerate_when": "a deliberate change of the numbers (model init or arithmetic, "
        "optimizer, data order, tokenizer, debug.toml) or of the pinned torch/Python release",
        **environment(),
        "tokenizer_sha256": tokenizer_sha256,
        "loss": losses,
    }
    files.write_text(GOLDEN, json.dumps(golden, indent=2) + "\n")
    print(f"wrote {GOLDEN.relative_to(REPO)}: losses {losses[0]:.4f} … {losses[-1]:.4f}")


if __name__ == "__main__":
    main()
