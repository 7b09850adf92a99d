"""Two nodes on loopback: two ``torchrun --nnodes 2 --nproc-per-node 1`` launchers meet through
a c10d rendezvous, as on a cluster (docs/training.md), and train with FSDP2 over gloo.

The FSDP run matches the single-process run step by step (the tolerance of
test_parallelize.py); ``pasture train`` itself runs across the two nodes with asynchronous
checkpoints, and a second two-node session resumes from one of them bit-identically.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

from test_parallelize import RTOL, STEPS, WORKER, _reference_losses

REPO = Path(__file__).resolve().parents[2]
SMALL = ["data.corpus_bytes=1000000", "data.vocab_size=1000", "log_every=1", "optim.warmup_steps=2"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _two_nodes(tmp_path: Path, name: str, *command: str) -> None:
    """Run ``torchrun --nnodes 2 ... COMMAND`` as two launchers ("nodes") until both exit."""
    port = _free_port()
    launcher = [
        sys.executable, "-m", "torch.distributed.run",
        "--nnodes", "2", "--nproc-per-node", "1",
        "--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{port}",
        "--rdzv-id", f"{name}-{port}",
    ]  # fmt: skip
    logs = [tmp_path / f"{name}-node{i}.log" for i in range(2)]
    nodes = []
    for log in logs:
        with log.open("w") as out:
            nodes.append(
                subprocess.Popen(
                    [*launcher, *command],
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            )
    try:
        codes = [node.wait(timeout=240) for node in nodes]
    finally:
        for node in nodes:
            if node.poll() is None:
                os.killpg(node.pid, signal.SIGKILL)  # the launcher and its rank
                node.wait()
    tails = "\n".join(f"--- {log.name}\n{log.read_text()[-3000:]}" for log in logs)
    assert codes == [0, 0], tails


def test_fsdp_across_two_nodes_matches_single_process(tmp_path: Path) -> None:
    out = tmp_path / "losses.json"
    _two_nodes(tmp_path, "fsdp", str(WORKER), "--steps", str(STEPS), "--out", str(out))
    losses, reference = json.loads(out.read_text()), _reference_losses("debug")
    assert len(losses) == len(reference) == STEPS
    for step, (got, want) in enumerate(zip(losses, reference, strict=True)):
        assert abs(got - want) <= RTOL * abs(want), f"step {step}: {got} vs single process {want}"


def _metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_pasture_train_across_two_nodes_resumes_from_an_async_checkpoint(tmp_path: Path) -> None:
    run = tmp_path / "run"
    settings = [*SMALL, f"run_dir={run}", "steps=6", "checkpoint_every=3", "keep_checkpoints=2"]
    settings += ["batch_tokens=4096", "checkpoint_async=true"]  # one micro-batch per rank
    train = ["-m", "pasture.cli", "train", "--config", str(REPO / "configs/train/debug.toml")]
    train += [f"--set={s}" for s in settings]
    _two_nodes(tmp_path, "train", *train)
    first = _metrics(run)
    assert [m["step"] for m in first] == list(range(1, 7))
    ckpt = run / "checkpoints" / "step-00000003"
    assert sorted(p.name for p in ckpt.iterdir()) == [
        ".metadata", "__0_0.distcp", "__1_0.distcp", "rng-0.pt", "rng-1.pt", "train_state.json",
    ]  # fmt: skip
    _two_nodes(tmp_path, "resume", *train, "--resume", str(ckpt))
    again = _metrics(run)[6:]
    assert [m["step"] for m in again] == [4, 5, 6]
    assert [m["loss"] for m in again] == [m["loss"] for m in first[3:]]  # every bit
    # Only rank 0 writes TensorBoard events: one file per session.
    assert len(list((run / "tensorboard").glob("events.out.tfevents.*"))) == 2
