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

Resuming is decided once, for every rank (``resume_point``): rank 0 lists the checkpoints (or
takes ``--resume PATH``) and the others take its answer, then every rank reads the chosen
checkpoint and all compare what they read before loading, and their (step, steps left) after
it (``agree_on_progress``). A disagreement (ranks handed different ``--resume`` values, a run
folder that differs between nodes) fails on every rank with one line instead of a hang. While
a run trains, rank 0 holds ``RUN/.lock`` (``run_lock``): a second run on the same folder fails.
"""

from __future__ import annotations

import fcntl
import hashlib
import io
import json
import os
import pickle
import shutil
import socket
import time
import warnings
from collections.abc import Iterator
from concurrent.futures import Future
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint import metadata as dcp_metadata
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.default_planner import DefaultLoadPlanner
from torch.distributed.checkpoint.planner import ReadItem
from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

from ..errors import PastureError

PREFIX = "step-"


@dataclass
class CheckpointConfig:
    """``[checkpoint]`` of a training config."""

    every: int = 100  # steps between checkpoints (and after the last step)
    keep: int = 2  # the last K are kept; 0: all
    # Write in a background thread (DCP async_save) while training goes on; the state is first
    # copied to CPU memory (model + optimizer: ~12 bytes per parameter shard).
    async_save: bool = False

    def __post_init__(self) -> None:
        for name, value, low in (("every", self.every, 1), ("keep", self.keep, 0)):
            if value < low:
                raise PastureError(f"checkpoint.{name} = {value}: must be {low} or more")

    def due(self, done: int, steps: int) -> bool:
        return done % self.every == 0 or done == steps


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


# --- reading without unpickling code --------------------------------------------------------
# DCP pickles ``.metadata`` and loads it with plain ``pickle.load``, and loads non-tensor items
# (optimizer hyperparameters) with ``torch.load(weights_only=False)``: either runs whatever code
# a crafted file names. Pasture reads both with unpicklers that admit only data.

_METADATA_MODULE = "torch.distributed.checkpoint.metadata"
_ALLOWED_GLOBALS = {
    ("torch", "Size"),
    ("torch.serialization", "_get_layout"),  # a layout by name
    ("torch.distributed.checkpoint.filesystem", "_StorageInfo"),
    ("pathlib", "PosixPath"),
    ("pathlib", "PurePosixPath"),
    ("collections", "OrderedDict"),
}


class _MetadataUnpickler(pickle.Unpickler):
    """Admits DCP's metadata records, torch.Size and dtypes; nothing callable beyond them."""

    def find_class(self, module: str, name: str) -> Any:
        if module == _METADATA_MODULE and not name.startswith("__"):
            found = getattr(dcp_metadata, name, None)
            if isinstance(found, type) and found.__module__ == _METADATA_MODULE:
                return found  # dataclasses and enums of DCP's metadata
        if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
            return getattr(torch, name)
        if (module, name) in _ALLOWED_GLOBALS:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refused to load {module}.{name}")


def read_metadata(path: Path) -> dcp_metadata.Metadata:
    """A checkpoint's ``.metadata``, read without running code; one-line errors."""
    file = path / ".metadata"
    try:
        with open(file, "rb") as f:
            metadata = _MetadataUnpickler(f).load()
    except FileNotFoundError:
        raise PastureError(f"{file}: missing (not a complete checkpoint)") from None
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError) as e:
        raise PastureError(f"{file}: not DCP metadata ({str(e)[:200]})") from None
    if not isinstance(metadata, dcp_metadata.Metadata):
        raise PastureError(f"{file}: not DCP metadata (a {type(metadata).__name__})")
    return metadata


class SafeReader(dcp.FileSystemReader):
    """DCP's file-system reader with ``read_metadata`` through the restricted unpickler."""

    def read_metadata(self, *args: Any, **kwargs: Any) -> dcp_metadata.Metadata:
        metadata = read_metadata(Path(self.path))
        if getattr(metadata, "storage_meta", None) is None:
            metadata.storage_meta = dcp_metadata.StorageMeta()
        metadata.storage_meta.load_id = getattr(self, "load_id", None)
        return metadata


class SafeLoadPlanner(DefaultLoadPlanner):
    """DCP's default load planner, loading non-tensor items with ``weights_only=True``."""

    def load_bytes(self, read_item: ReadItem, value: io.BytesIO) -> None:
        try:
            loaded = torch.load(value, weights_only=True)
        except pickle.UnpicklingError as e:
            first = str(e).strip().splitlines()[0][:200] if str(e).strip() else "refused"
            fqn = read_item.dest_index.fqn
            raise PastureError(f"{fqn}: refused to unpickle ({first})") from None
        super().load_bytes(read_item, _saved(loaded))


def _saved(value: object) -> io.BytesIO:
    """``value`` as bytes the parent class's ``torch.load`` reads back (checked data only)."""
    buffer = io.BytesIO()
    torch.save(value, buffer)
    buffer.seek(0)
    return buffer


def dcp_load(state: dict[str, Any], path: Path, no_dist: bool) -> None:
    """``dcp.load`` of ``path`` into ``state`` with Pasture's safe reader and planner; any
    failure (refused pickle, truncated shard, another model's shapes) is one line."""
    try:
        with warnings.catch_warnings():  # single process: DCP warns that it assumes so
            warnings.simplefilter("ignore", UserWarning)
            dcp.load(
                state,
                checkpoint_id=str(path),
                storage_reader=SafeReader(str(path)),
                planner=SafeLoadPlanner(),
                no_dist=no_dist,
            )
    except PastureError:
        raise
    except (Exception, CheckpointException) as e:  # the latter is a BaseException
        lines = [line for line in str(e).splitlines() if line.strip()]
        message = lines[-1].strip() if lines else type(e).__name__  # the per-rank cause
        raise PastureError(f"{path}: cannot load into this model ({message[:300]})") from None


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


# --- one decision for every rank -------------------------------------------------------------


def _gather(values: list[int]) -> list[list[int]]:
    """Every rank's ``values`` (the same length on each), on every rank, in rank order."""
    if not dist.is_initialized():
        return [values]
    device = torch.device("cpu")
    if dist.get_backend() == "nccl":
        device = torch.device("cuda", torch.cuda.current_device())
    mine = torch.tensor(values, dtype=torch.int64, device=device)
    everyone = [torch.empty_like(mine) for _ in range(dist.get_world_size())]
    dist.all_gather(everyone, mine)
    return [t.tolist() for t in everyone]


def _digest(value: object) -> int:
    return int.from_bytes(hashlib.sha256(repr(value).encode()).digest()[:7], "big")


def _ranks(rows: list[list[int]], column: int) -> str:
    return ", ".join(f"rank {r}: {row[column]}" for r, row in enumerate(rows))


LOCK_WAIT_S = 10.0  # a killed predecessor's lock is released within milliseconds


@contextmanager
def run_lock(run_dir: Path) -> Iterator[None]:
    """Rank 0 holds an exclusive lock on ``RUN/.lock`` for the block; if another live process
    holds it (a run still training in this folder, such as ranks a killed launcher left behind
    on a system that does not end them), every rank fails with one line naming its holder.
    A lock (``flock``) dies with its process, so a killed run never leaves a stale one."""
    handle = None
    held = True
    if _rank() == 0:
        run_dir.mkdir(parents=True, exist_ok=True)
        handle = open(run_dir / ".lock", "a+")  # noqa: SIM115  (held for the whole block)
        deadline = time.monotonic() + LOCK_WAIT_S
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    held = False
                    break
                time.sleep(0.1)
        if held:
            handle.seek(0)
            handle.truncate()
            handle.write(f"pid {os.getpid()} on {socket.gethostname()}\n")
            handle.flush()
    try:
        if not all(row[0] for row in _gather([int(held)])):
            holder = ""
            with suppress(OSError):
                holder = (run_dir / ".lock").read_text().strip()
            raise PastureError(
                f"{run_dir}: in use by another training process ({holder or 'see RUN/.lock'}); "
                "stop it (all its ranks) or choose another run_dir"
            )
        yield
    finally:
        if handle is not None:
            handle.close()  # releases the lock


MAX_STEP = 2**53  # a step number, well inside the int64 the ranks compare


def read_train_state(path: Path) -> dict[str, Any]:
    """The checkpoint's ``train_state.json``: a dict with a step number and a loader state."""
    state_file = path / "train_state.json"
    try:
        state = json.loads(state_file.read_text())
    except FileNotFoundError:
        raise PastureError(f"{path}: not a complete checkpoint (no train_state.json)") from None
    except (OSError, ValueError, RecursionError) as e:
        problem = f"{type(e).__name__}: {str(e)[:100]}"
        raise PastureError(f"{state_file}: unreadable ({problem})") from None
    step = state.get("step") if isinstance(state, dict) else None
    if not isinstance(step, int) or isinstance(step, bool) or not 0 <= step <= MAX_STEP:
        raise PastureError(f"{state_file}: step {step!r} is not a step number")
    if not isinstance(state.get("loader"), dict):
        raise PastureError(f"{state_file}: no data-loader state")
    return state


def _read_step(path: Path) -> tuple[int, str]:
    """(step, "") from the checkpoint's train state, or (-1, the problem)."""
    try:
        return read_train_state(path)["step"], ""
    except PastureError as e:
        return -1, str(e)


def resume_point(run_dir: Path, resume: str | bool) -> Path | None:
    """The checkpoint every rank resumes from (``None``: start at step 0), decided once.

    ``resume`` is True (the latest checkpoint of ``run_dir``), a path, or False. Rank 0 alone
    lists the checkpoints; the others build the same path from its step. Then each rank reads
    the chosen checkpoint's step, and all must agree before any rank loads.
    """
    chosen = -1
    if _rank() == 0 and resume is True:
        found = latest(run_dir)
        chosen = int(found.name.removeprefix(PREFIX)) if found else -1
    rows = _gather([_digest(resume), chosen])
    if len({row[0] for row in rows}) > 1:
        raise PastureError(
            f"the ranks were given different --resume values (this rank: {resume!r}); "
            "give every rank the same command"
        )
    chosen = rows[0][1]
    if resume is True:
        path = run_dir / "checkpoints" / f"{PREFIX}{chosen:08d}" if chosen >= 0 else None
    else:
        path = Path(resume) if resume else None
    step, problem = _read_step(path) if path is not None else (-1, "")
    rows = _gather([int(not problem), step])
    bad = [r for r, row in enumerate(rows) if not row[0]]
    if bad:
        raise PastureError(
            problem
            or f"{path}: rank(s) {', '.join(map(str, bad))} cannot read this checkpoint; "
            "every rank must see the same run folder"
        )
    if len({row[1] for row in rows}) > 1:
        raise PastureError(
            f"{path}: the ranks read different steps ({_ranks(rows, 1)}); "
            "every rank must see the same run folder"
        )
    return path


def agree_on_progress(step: int, steps: int, train_state: object) -> None:
    """After loading: every rank at the same step, with the same steps left and the same data
    position, or every rank fails here (a rank that ran on alone would hang the others)."""
    rows = _gather([step, steps - step, _digest(json.dumps(train_state, sort_keys=True))])
    for column, what in ((0, "step"), (1, "steps left"), (2, "data-loader state digest")):
        if len({row[column] for row in rows}) > 1:
            raise PastureError(
                f"the ranks disagree after loading the checkpoint: {what} ({_ranks(rows, column)})"
                "; give every rank the same command and run folder"
            )


def load(path: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """Restore model, optimizer and this rank's RNG from ``path``; return its train state."""
    train_state = read_train_state(path)
    model_state, optim_state = get_state_dict(model, optimizer)
    state = {"model": model_state, "optim": optim_state}
    dcp_load(state, path, no_dist=not dist.is_initialized())
    set_state_dict(
        model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"]
    )
    rng = path / f"rng-{_rank()}.pt"
    if rng.is_file():
        try:
            torch.set_rng_state(torch.load(rng, weights_only=True))
        except Exception as e:  # truncated, not a tensor, wrong size: all one line
            first = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
            raise PastureError(f"{rng}: not this rank's RNG state ({first})") from None
    return train_state
