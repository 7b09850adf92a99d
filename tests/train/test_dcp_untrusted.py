"""A training checkpoint is data, never code: `pasture export` and `pasture train --resume` read
DCP's pickled `.metadata` and its non-tensor items without running what a crafted file names,
and a damaged checkpoint is one line naming the file."""

from __future__ import annotations

import io
import json
import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from pasture.errors import PastureError
from pasture.train.config import TrainConfig, load_train_config
from pasture.train.loop import train

REPO = Path(__file__).resolve().parents[2]
SMALL = ["data.corpus_bytes=300000", "data.vocab_size=600", "optim.warmup_steps=2"]


class Payload:
    """What an attacker pickles: unpickling it runs a shell command."""

    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self) -> tuple:
        return (os.system, (self.command,))


def _config(run_dir: Path, steps: int) -> TrainConfig:
    settings = [f"run_dir={run_dir}", f"steps={steps}", "checkpoint.every=3"]
    settings.append("metrics.tensorboard=false")
    return load_train_config(REPO / "configs" / "train" / "debug.toml", [*SMALL, *settings])


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = tmp_path_factory.mktemp("untrusted") / "run"
    train(_config(run, 3))
    return run


@pytest.fixture
def run(trained: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "run"
    shutil.copytree(trained, copy)
    return copy


def _step(run: Path) -> Path:
    return run / "checkpoints" / "step-00000003"


def _resume(run: Path) -> None:
    train(_config(run, 6), resume=True)


def _export(run: Path, tmp_path: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "pasture.cli",
            "export",
            str(run),
            str(tmp_path / "hf"),
            "--to",
            "hf",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.slow
def test_crafted_metadata_runs_nothing(run: Path, tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    (_step(run) / ".metadata").write_bytes(pickle.dumps(Payload(f"touch {marker}")))
    result = _export(run, tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"pasture: error: {_step(run) / '.metadata'}: not DCP metadata "
        "(refused to load posix.system)"
    ]
    with pytest.raises(PastureError, match=r"\.metadata: not DCP metadata"):
        _resume(run)
    assert not marker.exists()


def test_crafted_optimizer_item_runs_nothing(run: Path, tmp_path: Path) -> None:
    # Point one pickled (non-tensor) item of the optimizer state at an attacker's payload.
    marker = tmp_path / "pwned"
    step = _step(run)
    with (step / ".metadata").open("rb") as f:
        metadata = pickle.load(f)  # our own file, written by the run above
    index, info = next(
        (index, info)
        for index, info in metadata.storage_data.items()
        if index.fqn.startswith("optim.param_groups")
    )
    payload = io.BytesIO()
    torch.save(Payload(f"touch {marker}"), payload)
    shard = step / info.relative_path
    info.offset, info.length = shard.stat().st_size, len(payload.getvalue())
    with shard.open("ab") as f:
        f.write(payload.getvalue())
    with (step / ".metadata").open("wb") as f:
        pickle.dump(metadata, f)
    with pytest.raises(PastureError, match=rf"{index.fqn}: refused to unpickle"):
        _resume(run)
    assert not marker.exists()


@pytest.mark.slow
def test_damaged_checkpoints_are_one_line_errors(run: Path, tmp_path: Path) -> None:
    step = _step(run)
    good = {name: (step / name).read_bytes() for name in ("train_state.json", "rng-0.pt")}
    (step / "train_state.json").write_text('{"step": 3, "loader": ')  # cut short
    with pytest.raises(PastureError, match=r"train_state.json: unreadable"):
        _resume(run)
    (step / "train_state.json").write_bytes(good["train_state.json"])
    (step / "rng-0.pt").write_bytes(good["rng-0.pt"][:100])
    with pytest.raises(PastureError, match=r"rng-0.pt: not this rank's RNG state"):
        _resume(run)
    (step / "rng-0.pt").write_bytes(good["rng-0.pt"])
    shard = next(step.glob("*.distcp"))
    shard.write_bytes(shard.read_bytes()[:1000])  # truncated
    with pytest.raises(PastureError, match=r"step-00000003: cannot load into this model"):
        _resume(run)
    result = _export(run, tmp_path)
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1
    assert "cannot load into this model" in result.stderr


def test_a_step_past_the_run_or_out_of_range_is_one_line(run: Path) -> None:
    state_file = _step(run) / "train_state.json"
    state = json.loads(state_file.read_text())
    for step, message in [(10**30, r"step 10{30} is not a step number"), (9, r"step 9 is past")]:
        state_file.write_text(json.dumps({**state, "step": step}))
        with pytest.raises(PastureError, match=message):
            _resume(run)  # steps = 6


@pytest.mark.slow
def test_metadata_that_claims_a_huge_vocabulary_builds_nothing(run: Path, tmp_path: Path) -> None:
    step = _step(run)
    with (step / ".metadata").open("rb") as f:
        metadata = pickle.load(f)  # our own file, written by the run above
    embeddings = metadata.state_dict_metadata["model.tok_embeddings.weight"]
    embeddings_vocab = embeddings.size[0]
    embeddings.size = torch.Size([10**12, embeddings.size[1]])
    with (step / ".metadata").open("wb") as f:
        pickle.dump(metadata, f)
    vocab = json.loads((run / "config.json").read_text())["model"]["vocab_size"]
    assert vocab == embeddings_vocab
    result = _export(run, tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"pasture: error: {step}: embeddings of shape (1000000000000, 128), but "
        f"{run / 'config.json'} records a model of {vocab} × 128; not this run's checkpoint"
    ]
    assert not (tmp_path / "hf").exists()
