"""Training checkpoints with ``torch.distributed.checkpoint`` (sharded, one file set per rank).

A checkpoint is a folder ``RUN/checkpoints/step-NNNNNNNN`` holding the DCP shards of the model
and optimizer, ``train_state.json`` (step, data-loader state, config digest) and each rank's RNG
state. It is written as ``step-NNNNNNNN.tmp`` and renamed only when every rank has finished, so a
kill during a save leaves the previous checkpoint as the latest loadable one; stale ``.tmp``
folders are ignored and removed. The last ``keep`` checkpoints are kept.

``Checkpointer(..., asynchronous=True)`` writes with DCP's ``async_save`` instead: the state is
copied to CPU memory at the step (training waits only for that copy), a background thread writes
it into the same ``.tmp`` folder, and the folder is renamed only once the write has finished on
every rank. At most one save is in flight: the next save, and the end of training, wait for it.
"""

from __future__ import annotations

import json
import shutil
import warnings
from concurrent.futures import Future
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


def _rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def _begin(run_dir: Path, step: int) -> tuple[Path, Path]:
    """The final and the temporary folder of the checkpoint of ``step``; the latter created."""
    final = run_dir / "checkpoints" / f"{PREFIX}{step:08d}"
    tmp = final.with_name(final.name + ".tmp")
    if _rank() == 0:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    _barrier()
    return final, tmp


def _finish(run_dir: Path, tmp: Path, final: Path, train_state: str, keep: int) -> None:
    """Rank 0, once every rank's shards are in ``tmp``: make it the checkpoint, prune old ones."""
    (tmp / "train_state.json").write_text(train_state)
    shutil.rmtree(final, ignore_errors=True)
    tmp.rename(final)  # the checkpoint exists from this instant, complete
    for old in checkpoint_dirs(run_dir)[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    for stale in final.parent.glob(f"{PREFIX}*.tmp"):  # left by a killed run; none in flight
        shutil.rmtree(stale, ignore_errors=True)


def _state(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    model_state, optim_state = get_state_dict(model, optimizer)
    return {"model": model_state, "optim": optim_state}


def save(
    run_dir: Path,
    step: int,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    train_state: dict[str, Any],
    keep: int,
) -> Path:
    final, tmp = _begin(run_dir, step)
    with warnings.catch_warnings():  # single process: DCP warns that it assumes so
        warnings.simplefilter("ignore", UserWarning)
        dcp.save(
            _state(model, optimizer), checkpoint_id=str(tmp), no_dist=not dist.is_initialized()
        )
    torch.save(torch.get_rng_state(), tmp / f"rng-{_rank()}.pt")
    _barrier()
    if _rank() == 0:
        _finish(run_dir, tmp, final, json.dumps({"step": step, **train_state}, indent=1), keep)
    _barrier()
    return final


class Checkpointer:
    """The checkpoints of one run: ``save`` each time, ``poll`` every step, ``wait`` at the end.

    Synchronous by default (``save`` returns with the checkpoint complete). Asynchronous, a
    save returns once the state is staged in CPU memory; ``poll`` (no collective: ranks may call
    it at different moments) renames the checkpoint on rank 0 as soon as its write is done.
    Rank 0's write finishes only after every rank's shards are written (DCP gathers their
    results before writing ``.metadata``), so rank 0 alone may rename.
    """

    def __init__(self, run_dir: Path, keep: int, asynchronous: bool = False) -> None:
        self.run_dir, self.keep, self.asynchronous = run_dir, keep, asynchronous
        self._in_flight: tuple[Future, Path, Path, str] | None = None
        self._group = None
        if asynchronous and dist.is_initialized():
            # DCP's background thread runs collectives (plan, gather) while the training thread
            # runs its own; on a separate gloo group they never interleave. Called on every rank.
            self._group = dist.new_group(backend="gloo")
        elif asynchronous:
            # DCP warns from its background thread, where catch_warnings cannot reach, that it
            # assumes a single process: so it is.
            warnings.filterwarnings("ignore", "torch.distributed is disabled", UserWarning)

    def save(
        self,
        step: int,
        model: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        train_state: dict[str, Any],
    ) -> Path:
        if not self.asynchronous:
            return save(self.run_dir, step, model, optimizer, train_state, self.keep)
        self.wait()  # never two saves in flight
        final, tmp = _begin(self.run_dir, step)
        frozen = json.dumps({"step": step, **train_state}, indent=1)  # as of this step
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # single process, as in save()
            future = dcp.async_save(
                _state(model, optimizer),
                checkpoint_id=str(tmp),
                process_group=self._group,
                no_dist=not dist.is_initialized(),
            )
        torch.save(torch.get_rng_state(), tmp / f"rng-{_rank()}.pt")
        self._in_flight = (future, tmp, final, frozen)
        return final

    def poll(self) -> None:
        """Complete the save in flight if its background write has finished."""
        if self._in_flight is not None and self._in_flight[0].done():
            self._complete()

    def wait(self) -> None:
        """Block until the save in flight (if any) is written and, on rank 0, renamed."""
        if self._in_flight is not None:
            self._complete()

    def _complete(self) -> None:
        future, tmp, final, frozen = self._in_flight
        self._in_flight = None
        try:
            future.result()
        except (Exception, CheckpointException) as e:  # the latter is a BaseException
            lines = [line for line in str(e).splitlines() if line.strip()]
            message = lines[-1].strip() if lines else type(e).__name__
            raise PastureError(f"{tmp}: asynchronous checkpoint failed ({message[:300]})") from e
        if _rank() == 0:
            _finish(self.run_dir, tmp, final, frozen, self.keep)


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
