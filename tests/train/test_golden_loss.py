"""configs/train/debug.toml reproduces its golden per-step losses exactly on CPU.

The golden file, tests/assets/golden/debug_loss.json, is written by make_golden.py next to it;
regenerate it only for a deliberate change of the numbers, and say why in the commit.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from pasture.config import build, load_toml
from pasture.train.optim import OptimConfig, lr_factor

GOLDEN_DIR = Path(__file__).resolve().parents[1] / "assets" / "golden"
_spec = importlib.util.spec_from_file_location("make_golden", GOLDEN_DIR / "make_golden.py")
make_golden = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(make_golden)


def test_the_short_run_has_debug_tomls_learning_rates_over_the_golden_window(
    tmp_path: Path,
) -> None:
    full_steps, overrides = make_golden.short_run(tmp_path / "run")
    data = load_toml(make_golden.CONFIG, overrides)
    assert data["steps"] < full_steps  # the point of the override: a cheaper run
    optim = build(OptimConfig, data["optim"], "optim")
    window = range(make_golden.STEPS)
    short = [lr_factor(step, data["steps"], optim) for step in window]
    assert short == [lr_factor(step, full_steps, optim) for step in window]


@pytest.mark.slow
def test_debug_toml_losses_equal_the_golden_file(tmp_path: Path) -> None:
    golden = json.loads((GOLDEN_DIR / "debug_loss.json").read_text())
    here = make_golden.environment()
    if golden["python"] != here["python"]:
        pytest.skip(
            f"the golden losses were made on Python {golden['python']}, whose standard library "
            f"is debug.toml's corpus; this is {here['python']}: run {golden['made_by']}"
        )
    losses, tokenizer_sha256 = make_golden.run_debug(tmp_path / "run")
    assert tokenizer_sha256 == golden["tokenizer_sha256"]
    assert len(losses) == len(golden["loss"]) == make_golden.STEPS
    if {key: golden[key] for key in here} == here:
        assert losses == golden["loss"]  # exact: same code, same torch, same CPU kernels
    else:  # another torch release or CPU instruction set may sum in another order
        assert losses == pytest.approx(golden["loss"], rel=1e-4, abs=0)
