"""``checkpoint_async = true``: the same checkpoints as synchronous saves, written while training
goes on, and a kill in the middle of one leaves the previous checkpoint as the one to resume."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from pasture.export import load_trained
from pasture.train import checkpoint
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
    settings = (*SMALL, "metrics.tensorboard=false", *settings, f"run_dir={run_dir}")
    return load_train_config(REPO / "configs" / "train" / "debug.toml", list(settings))


def _metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_async_checkpoints_equal_sync_ones_and_resume_bit_identically(tmp_path: Path) -> None:
    steps = ["steps=12", "checkpoint.every=4", "checkpoint.keep=3"]
    train(_config(tmp_path / "sync", *steps))
    train(_config(tmp_path / "async", "checkpoint.async_save=true", *steps))
    sync, asynchronous = _metrics(tmp_path / "sync"), _metrics(tmp_path / "async")
    assert [m["loss"] for m in asynchronous] == [m["loss"] for m in sync]
    names = [p.name for p in checkpoint.checkpoint_dirs(tmp_path / "async")]
    assert names == ["step-00000004", "step-00000008", "step-00000012"]
    assert not list((tmp_path / "async" / "checkpoints").glob("*.tmp"))
    for name in names:  # the state as of its step, although training went on during the write
        ours = load_trained(tmp_path / "async", tmp_path / "async" / "checkpoints" / name)
        theirs = load_trained(tmp_path / "sync", tmp_path / "sync" / "checkpoints" / name)
        for key, value in theirs.state_dict.items():
            assert torch.equal(ours.state_dict[key], value), (name, key)
        state = json.loads(
            (tmp_path / "async" / "checkpoints" / name / "train_state.json").read_text()
        )
        assert state["step"] == int(name.removeprefix("step-"))

    first = tmp_path / "async" / "checkpoints" / "step-00000004"
    train(_config(tmp_path / "async", "checkpoint.async_save=true", *steps), resume=str(first))
    resumed = _metrics(tmp_path / "async")[12:]
    assert [m["step"] for m in resumed] == list(range(5, 13))
    assert [m["loss"] for m in resumed] == [m["loss"] for m in sync[4:]]  # every bit


# The run below, with DCP's last write step (``.metadata``, after every shard is written) held
# open for step 4: the background save never finishes while the training thread goes on.
SLOW_SAVE = """
import sys, time
from pathlib import Path
from torch.distributed.checkpoint import filesystem
marker = Path(sys.argv[1])
finish = filesystem._FileSystemWriter.finish
def slow_finish(self, metadata, results):
    if "step-00000004" in str(self.path):
        marker.touch()
        time.sleep(600)
    return finish(self, metadata, results)
filesystem._FileSystemWriter.finish = slow_finish
from pasture.cli import main
sys.argv = ["pasture", *sys.argv[2:]]
main()
"""


def _cli(run_dir: Path, prefix: list[str], *extra: str) -> subprocess.Popen:
    settings = [*SMALL, f"run_dir={run_dir}", "steps=8", "checkpoint.every=2"]
    settings += ["checkpoint.async_save=true", "metrics.tensorboard=false"]
    config = str(REPO / "configs" / "train" / "debug.toml")
    cmd = [*prefix, "train", "--config", config, *(f"--set={s}" for s in settings), *extra]
    return subprocess.Popen(
        [sys.executable, *cmd], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


@pytest.mark.slow
def test_kill_during_async_save_keeps_previous_checkpoint(tmp_path: Path) -> None:
    run = tmp_path / "run"
    writing = tmp_path / "writing-step-4"
    killed = _cli(run, ["-c", SLOW_SAVE, str(writing)])
    deadline = time.time() + 120
    logged: list[int] = []
    while time.time() < deadline and not (writing.exists() and 6 in logged):
        time.sleep(0.05)
        if (run / "metrics.jsonl").exists():  # complete lines only: the run is writing it
            lines = (run / "metrics.jsonl").read_text().split("\n")[:-1]
            logged = [json.loads(line)["step"] for line in lines]
    killed.send_signal(signal.SIGKILL)  # step 4's save in flight, step 6's waiting
    _, stderr = killed.communicate()
    assert writing.exists() and 6 in logged, stderr[-3000:]
    assert killed.returncode == -signal.SIGKILL
    # Training went on past step 4 while its checkpoint was being written.
    assert logged == list(range(1, 7))
    ckpts = run / "checkpoints"
    assert checkpoint.latest(run) == ckpts / "step-00000002"
    partial = ckpts / "step-00000004.tmp"
    assert partial.is_dir() and not (partial / "train_state.json").exists()
    assert not (partial / ".metadata").exists() and list(partial.glob("*.distcp"))

    before = _metrics(run)
    resumed = _cli(run, ["-m", "pasture.cli"], "--resume")
    _, stderr = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, stderr[-3000:]
    again = _metrics(run)[len(before) :]
    assert [m["step"] for m in again] == list(range(3, 9))
    assert [m["loss"] for m in again[:4]] == [m["loss"] for m in before[2:6]]  # every bit
    assert [p.name for p in checkpoint.checkpoint_dirs(run)] == ["step-00000006", "step-00000008"]
    assert not list(ckpts.glob("*.tmp"))
