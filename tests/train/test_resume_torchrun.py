"""Kill + resume under torchrun (2 ranks, FSDP2 over gloo), again and again.

A resumed run once hung: rank 0 was inside another training step while rank 1 had left the loop
(they disagreed on the steps left). The cause: torchrun starts each rank in a session of its
own, so a SIGKILL to the launcher's process group left both ranks training on, writing and
pruning checkpoints of the same run folder while the next run's ranks each picked "the latest".
Now a rank dies with its launcher, rank 0 alone decides where every rank resumes, the ranks
compare (step, steps left) after loading, and a live run holds the folder's lock.

Here the kill (of the launcher's process group, as a user does) lands before, during and just
after checkpoint saves, synchronous and asynchronous, 12 times (each moment twice per mode);
each time every rank must be gone within seconds, and the finished run must reproduce the
uninterrupted losses bit for bit.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import time
from pathlib import Path

import launch
import pytest

REPO = Path(__file__).resolve().parents[2]
SETTINGS = [
    "data.corpus_bytes=1000000", "data.vocab_size=1000", "optim.warmup_steps=4",
    "metrics.log_every=1", "steps=30", "checkpoint.every=3", "checkpoint.keep=2",
    "batch_tokens=4096", "metrics.tensorboard=false", "eval_every=0",
]  # fmt: skip
KILLS_PER_MODE = 6  # each of MOMENTS twice
MOMENTS = ("before", "during", "after")  # relative to a checkpoint save
BOUND_S = 120  # any one launch: reaching its kill moment, or finishing


def _command(run_dir: Path, *extra: str) -> list[str]:
    return [
        *launch.TORCHRUN, "--nproc-per-node", "2", "--master-port", str(launch.free_port()),
        "-m", "pasture.cli", "train", "--config", str(REPO / "configs/train/debug.toml"),
        *(f"--set={s}" for s in [*SETTINGS, f"run_dir={run_dir}"]), *extra,
    ]  # fmt: skip


def _losses(run_dir: Path) -> dict[int, float]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return {m["step"]: m["loss"] for m in map(json.loads, lines)}  # later lines win


def _state(run_dir: Path) -> tuple[int, set[str], bool]:
    """(metrics lines, finished checkpoints, a save in progress)."""
    metrics = run_dir / "metrics.jsonl"
    lines = metrics.read_text().count("\n") if metrics.exists() else 0
    try:
        names = set(os.listdir(run_dir / "checkpoints"))
    except FileNotFoundError:
        names = set()
    finished = {n for n in names if not n.endswith(".tmp")}
    return lines, finished, len(finished) < len(names)


def _kill_at(moment: str, run_dir: Path, command: list[str], log: Path) -> None:
    """Launch ``command``, SIGKILL the launcher's process group at ``moment``, and check that
    every rank is gone within seconds."""
    lines, finished, _ = _state(run_dir)
    launcher = launch.start(command, log)
    deadline = time.monotonic() + BOUND_S
    while launcher.poll() is None:
        now_lines, now_finished, saving = _state(run_dir)
        if (
            (moment == "before" and now_lines > lines + 1)
            or (moment == "during" and saving)
            or (moment == "after" and now_finished - finished)
        ):
            break
        if time.monotonic() > deadline:
            launch.wait([launcher], [log], timeout=0)  # fails with every rank's stack
        time.sleep(0.005)
    if launcher.poll() is not None:  # it finished first: fine, if it succeeded
        assert launcher.returncode == 0, launch.tail([log])
        return
    ranks = launch.descendants(launcher.pid)
    os.killpg(launcher.pid, signal.SIGKILL)  # the launcher's group, as `kill -9 -PGID` does
    launcher.wait()
    gone = time.monotonic() + 10
    while any(launch.alive(pid) for pid in ranks) and time.monotonic() < gone:
        time.sleep(0.05)
    survivors = [pid for pid in ranks if launch.alive(pid)]
    for pid in survivors:
        os.kill(pid, signal.SIGKILL)
    assert not survivors, f"ranks {survivors} outlived their killed launcher"


@pytest.mark.slow
def test_kill_and_resume_a_dozen_times_reproduces_the_uninterrupted_run(tmp_path: Path) -> None:
    clean = tmp_path / "clean"
    assert launch.run(_command(clean), tmp_path / "clean.log", BOUND_S) == 0, launch.tail(
        [tmp_path / "clean.log"]
    )
    reference = _losses(clean)
    assert sorted(reference) == list(range(1, 31))
    for mode in ("sync", "async"):
        run, log = tmp_path / mode, tmp_path / f"{mode}.log"
        shutil.copytree(clean / "data", run / "data")  # same tokenizer and shard
        command = _command(run, f"--set=checkpoint.async_save={str(mode == 'async').lower()}")
        for attempt in range(KILLS_PER_MODE):
            _kill_at(MOMENTS[attempt % len(MOMENTS)], run, [*command, "--resume"], log)
        assert launch.run([*command, "--resume"], log, BOUND_S) == 0, launch.tail([log])
        assert _losses(run) == reference, mode  # every bit
