"""Two nodes on loopback: two ``torchrun --nnodes 2 --nproc-per-node 1`` launchers meet through
a c10d rendezvous, as on a cluster (docs/training.md), and train with FSDP2 over gloo.

The FSDP run matches the single-process run step by step (the tolerance of
test_parallelize.py); ``pasture train`` itself runs across the two nodes with asynchronous
checkpoints, and a second two-node session resumes from one of them bit-identically.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import launch
import pytest
from test_parallelize import RTOL, STEPS, WORKER, _reference_losses

REPO = Path(__file__).resolve().parents[2]
SMALL = [
    "data.corpus_bytes=1000000",
    "data.vocab_size=1000",
    "metrics.log_every=1",
    "optim.warmup_steps=2",
]


def _two_nodes(tmp_path: Path, name: str, *command: str, timeout: float = 240) -> None:
    """Run ``torchrun --nnodes 2 ... COMMAND`` as two launchers ("nodes") until both exit."""
    assert _launch_two_nodes(tmp_path, name, [command, command], timeout) == [0, 0]


def _launch_two_nodes(
    tmp_path: Path, name: str, commands: list[tuple[str, ...]], timeout: float = 240
) -> list[int]:
    """Two launchers meeting through one c10d rendezvous, node i running ``commands[i]``; their
    exit codes (the logs are ``tmp_path/NAME-node{i}.log``). Fails the test, with the logs and
    the ranks' stacks, if they outlive ``timeout``."""
    port = launch.free_port()
    launcher = [
        *launch.TORCHRUN,
        "--nnodes", "2", "--nproc-per-node", "1",
        "--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{port}",
        "--rdzv-id", f"{name}-{port}",
    ]  # fmt: skip
    logs = [tmp_path / f"{name}-node{i}.log" for i in range(2)]
    nodes = [
        launch.start([*launcher, *command], log)
        for command, log in zip(commands, logs, strict=True)
    ]
    codes = launch.wait(nodes, logs, timeout)
    if codes != [0, 0]:
        print(launch.tail(logs))
    return codes


@pytest.mark.slow
def test_fsdp_across_two_nodes_matches_single_process(tmp_path: Path) -> None:
    out = tmp_path / "losses.json"
    _two_nodes(tmp_path, "fsdp", str(WORKER), "--steps", str(STEPS), "--out", str(out))
    losses, reference = json.loads(out.read_text()), _reference_losses("debug")
    assert len(losses) == len(reference) == STEPS
    for step, (got, want) in enumerate(zip(losses, reference, strict=True)):
        assert abs(got - want) <= RTOL * abs(want), f"step {step}: {got} vs single process {want}"


def _metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


TRAIN = ["-m", "pasture.cli", "train", "--config", str(REPO / "configs/train/debug.toml")]


def _train_command(run: Path) -> list[str]:
    settings = [*SMALL, f"run_dir={run}", "steps=6", "checkpoint.every=3", "checkpoint.keep=2"]
    settings += ["batch_tokens=4096", "checkpoint.async_save=true"]  # one micro-batch per rank
    return [*TRAIN, *(f"--set={s}" for s in settings)]


@pytest.fixture(scope="module")
def two_node_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[dict]]:
    """A run trained across two nodes: asynchronous checkpoints at steps 3 and 6."""
    tmp_path = tmp_path_factory.mktemp("two-nodes")
    run = tmp_path / "run"
    _two_nodes(tmp_path, "train", *_train_command(run))
    return run, _metrics(run)


@pytest.mark.slow
def test_pasture_train_across_two_nodes_resumes_from_an_async_checkpoint(
    tmp_path: Path, two_node_run: tuple[Path, list[dict]]
) -> None:
    trained, first = two_node_run
    assert [m["step"] for m in first] == list(range(1, 7))
    run = tmp_path / "run"
    shutil.copytree(trained, run)
    ckpt = run / "checkpoints" / "step-00000003"
    assert sorted(p.name for p in ckpt.iterdir()) == [
        ".metadata", "__0_0.distcp", "__1_0.distcp", "rng-0.pt", "rng-1.pt", "train_state.json",
    ]  # fmt: skip
    _two_nodes(tmp_path, "resume", *_train_command(run), "--resume", str(ckpt))
    again = _metrics(run)[6:]
    assert [m["step"] for m in again] == [4, 5, 6]
    assert [m["loss"] for m in again] == [m["loss"] for m in first[3:]]  # every bit
    # Only rank 0 writes TensorBoard events: one file per session.
    assert len(list((run / "tensorboard").glob("events.out.tfevents.*"))) == 2


def _failed_on_every_rank(tmp_path: Path, name: str, message: str) -> None:
    for i in range(2):
        log = (tmp_path / f"{name}-node{i}.log").read_text()
        assert f"pasture: error: {message}" in log, log[-3000:]
        assert "exitcode  : 2" in log, log[-3000:]  # torchrun's summary of the rank's exit


@pytest.mark.slow
def test_ranks_handed_different_checkpoints_fail_fast_on_every_rank(
    tmp_path: Path, two_node_run: tuple[Path, list[dict]]
) -> None:
    trained, _ = two_node_run
    run = tmp_path / "run"
    shutil.copytree(trained, run)
    ckpts = run / "checkpoints"
    command = _train_command(run)
    different = [
        (*command, "--resume", str(ckpts / "step-00000003")),
        (*command, "--resume", str(ckpts / "step-00000006")),
    ]
    begin = time.monotonic()
    assert _launch_two_nodes(tmp_path, "differ", different, timeout=120) == [1, 1]
    _failed_on_every_rank(tmp_path, "differ", "the ranks were given different --resume values")
    # Node 1's copy of the run folder lacks the latest checkpoint (no shared file system):
    # rank 0 decides on step 6; rank 1 cannot read it; both stop before loading anything.
    other = tmp_path / "other"
    shutil.copytree(run, other)
    shutil.rmtree(other / "checkpoints" / "step-00000006")
    lagging = [(*command, "--resume"), (*_train_command(other), "--resume")]
    assert _launch_two_nodes(tmp_path, "lagging", lagging, timeout=120) == [1, 1]
    for i, message in enumerate(
        [
            f"{ckpts / 'step-00000006'}: rank(s) 1 cannot read this checkpoint",
            f"{other / 'checkpoints' / 'step-00000006'}: not a complete checkpoint",
        ]
    ):
        log = (tmp_path / f"lagging-node{i}.log").read_text()
        assert f"pasture: error: {message}" in log, log[-3000:]
    assert time.monotonic() - begin < 100  # four launches that fail fast, none that hang


HANG = """
import sys, time
import torch.distributed as dist
from pasture.parallel.mesh import init_distributed
rank, _, _ = init_distributed()
open(f"{sys.argv[1]}/ready-{rank}", "w").close()
if rank == 0:
    time.sleep(600)  # never reaches the barrier
dist.barrier()  # rank 1 waits here
"""


@pytest.mark.slow
def test_watchdog_fails_a_hung_launch_with_every_rank_stack(tmp_path: Path) -> None:
    script = tmp_path / "hang.py"
    script.write_text(HANG)
    log = tmp_path / "hang.log"
    command = [*launch.TORCHRUN, "--nproc-per-node", "2", "--master-port", str(launch.free_port())]
    # Each rank's output through its own file, copied to the log line by line ("[default0]:…"):
    # the two ranks' stacks then never interleave within a line.
    command += ["--log-dir", str(tmp_path / "ranks"), "--redirects", "3", "--tee", "3"]
    launcher = launch.start([*command, str(script), str(tmp_path)], log)
    deadline = time.monotonic() + 120
    while not all((tmp_path / f"ready-{r}").exists() for r in range(2)):
        assert time.monotonic() < deadline and launcher.poll() is None, launch.tail([log])
        time.sleep(0.05)
    ranks = launch.descendants(launcher.pid)
    with pytest.raises(pytest.fail.Exception) as failed:
        launch.wait([launcher], [log], timeout=1)
    report = str(failed.value)
    assert "torchrun did not finish within 1 s" in report
    assert f'File "{script}", line 8 in <module>' in report  # rank 0: time.sleep
    assert f'File "{script}", line 9 in <module>' in report  # rank 1: dist.barrier
    deadline = time.monotonic() + 10  # SIGKILLed: gone once the kernel has reaped them
    while any(launch.alive(pid) for pid in ranks) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not [pid for pid in ranks if launch.alive(pid)]
