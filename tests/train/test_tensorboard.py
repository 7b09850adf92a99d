"""``RUN/tensorboard/``: every logged scalar of metrics.jsonl, at its step, read back with
TensorBoard's own reader; a missing tensorboard package stops the run before it starts."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from pasture.errors import PastureError
from pasture.train.config import TrainConfig, load_train_config
from pasture.train.loop import train

REPO = Path(__file__).resolve().parents[2]
SMALL = [
    "data.corpus_bytes=1000000",
    "data.vocab_size=1000",
    "metrics.log_every=1",
    "optim.warmup_steps=4",
]
SMALL += ["batch_tokens=2048", "eval_batches=1"]  # one micro-batch a step: fast


def _config(run_dir: Path, *settings: str) -> TrainConfig:
    settings = (*SMALL, *settings, f"run_dir={run_dir}")
    return load_train_config(REPO / "configs" / "train" / "debug.toml", list(settings))


@pytest.mark.slow
def test_scalars_equal_metrics_jsonl_per_step(tmp_path: Path) -> None:
    run = tmp_path / "run"
    # peak_tflops: an MFU on CPU too; eval_every: validation loss at steps 2 and 4.
    settings = ["checkpoint.every=2", "checkpoint.keep=3", "eval_every=2", "metrics.peak_tflops=1"]
    train(_config(run, "steps=5", *settings))
    # A second session from step 2: steps 3-5 logged again; TensorBoard, like metrics.jsonl
    # ("later lines win"), must show the second session's values.
    train(_config(run, "steps=6", *settings), resume=str(run / "checkpoints" / "step-00000002"))
    expected: dict[str, dict[int, float]] = {}
    for line in (run / "metrics.jsonl").read_text().splitlines():
        metrics = json.loads(line)
        for key, value in metrics.items():
            if key != "step" and value is not None:
                expected.setdefault(key, {})[metrics["step"]] = value
    assert {"loss", "lr", "grad_norm", "tokens_per_s", "mfu", "val_loss"} <= set(expected)

    events = EventAccumulator(str(run / "tensorboard"))
    events.Reload()
    assert len(list((run / "tensorboard").glob("events.out.tfevents.*"))) == 2  # one a session
    assert set(events.Tags()["scalars"]) == set(expected)
    for tag, by_step in expected.items():
        got = {e.step: e.value for e in events.Scalars(tag)}
        assert list(got) == sorted(by_step), tag  # each step once, in order
        # Event files hold float32: equal to the JSON value rounded to float32, bit for bit.
        assert got == {step: float(np.float32(v)) for step, v in by_step.items()}, tag
    assert sorted(expected["val_loss"]) == [2, 4, 6]


@pytest.mark.slow
def test_missing_package_stops_before_training(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "tensorboard", None)  # `import tensorboard` fails
    with pytest.raises(PastureError) as error:
        train(_config(tmp_path / "run", "steps=6"))
    assert str(error.value) == (
        "metrics.tensorboard = true needs the tensorboard package: "
        "pip install 'pasture[train]', or set metrics.tensorboard = false"
    )
    assert not (tmp_path / "run").exists()  # nothing started
    train(_config(tmp_path / "run", "steps=6", "metrics.tensorboard=false"))  # the way out it names
    assert (tmp_path / "run" / "metrics.jsonl").exists()
    assert not (tmp_path / "run" / "tensorboard").exists()
