"""Training checkpoints with ``torch.distributed.checkpoint`` (sharded, one file set per rank).

A checkpoint is a folder ``RUN/checkpoints/step-NNNNNNNN`` holding the DCP shards of the model
and optimizer, ``train_state.json`` (step, data-loader state, config digest) and each rank's RNG
state. It is written as ``step-NNNNNNNN.tmp`` and renamed only when every rank has finished, so a
kill during a save leaves the previous checkpoint as the latest loadable one; stale ``.tmp``
folders are ignored and removed. The last ``keep`` checkpoints are kept.
"""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

from ..errors import PastureError

PREFIX = "step-"


def _barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def checkpoint_dirs(run_dir: Path) -> list[Path]:
    """Complete checkpoints, oldest first."""
    root = run_dir / "checkpoints"
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.name.startswith(PREFIX) and p.is_dir()]
    done = [p for p in found if not p.name.endswith(".tmp") and (p / "train_state.json").exists()]
    return sorted(done, key=lambda p: int(p.name.removeprefix(PREFIX)))


def save(
    run_dir: Path,
    step: int,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    train_state: dict[str, Any],
    keep: int,
) -> Path:
    rank = dist.get_rank() if dist.is_initialized() else 0
    final = run_dir / "checkpoints" / f"{PREFIX}{step:08d}"
    tmp = final.with_name(final.name + ".tmp")
    if rank == 0:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    _barrier()
    model_state, optim_state = get_state_dict(model, optimizer)
    with warnings.catch_warnings():  # single process: DCP warns that it assumes so
        warnings.simplefilter("ignore", UserWarning)
        dcp.save(
            {"model": model_state, "optim": optim_state},
            checkpoint_id=str(tmp),
            no_dist=not dist.is_initialized(),
        )
    torch.save(torch.get_rng_state(), tmp / f"rng-{rank}.pt")
    _barrier()
    if rank == 0:
        (tmp / "train_state.json").write_text(json.dumps({"step": step, **train_state}, indent=1))
        shutil.rmtree(final, ignore_errors=True)
        tmp.rename(final)  # the checkpoint exists from this instant, complete
        for old in checkpoint_dirs(run_dir)[:-keep] if keep > 0 else []:
            shutil.rmtree(old, ignore_errors=True)
    _barrier()
    return final


def latest(run_dir: Path) -> Path | None:
    found = checkpoint_dirs(run_dir)
    return found[-1] if found else None


def load(path: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """Restore model, optimizer and this rank's RNG from ``path``; return its train state."""
    state_file = path / "train_state.json"
    if not state_file.is_file():
        raise PastureError(f"{path}: not a complete checkpoint (no train_state.json)")
    train_state = json.loads(state_file.read_text())
    model_state, optim_state = get_state_dict(model, optimizer)
    state = {"model": model_state, "optim": optim_state}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            dcp.load(state, checkpoint_id=str(path), no_dist=not dist.is_initialized())
    except (Exception, CheckpointException) as e:  # the latter is a BaseException
        lines = [line for line in str(e).splitlines() if line.strip()]
        message = lines[-1].strip() if lines else type(e).__name__  # the per-rank cause
        raise PastureError(f"{path}: cannot load into this model ({message[:300]})") from None
    set_state_dict(
        model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"]
    )
    rank = dist.get_rank() if dist.is_initialized() else 0
    rng = path / f"rng-{rank}.pt"
    if rng.is_file():
        torch.set_rng_state(torch.load(rng, weights_only=True))
    return train_state
