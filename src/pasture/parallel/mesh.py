"""From the torchrun environment to a process group and a 2-D ``DeviceMesh`` ("dp_shard", "tp").

One CPU process (no torchrun variables): ``init_distributed()`` returns ``(0, 1, device)``
without creating a process group and ``build_mesh`` returns ``None``. Under torchrun::

    torchrun --nproc-per-node 8 -m pasture.cli train ...   # RANK, WORLD_SIZE, LOCAL_RANK set

NCCL on CUDA, gloo on CPU. A rank started by torchrun dies with its launcher (torchrun puts each
worker in a session of its own, so killing torchrun's process group would otherwise leave the
ranks training on, writing the same run folder as the next run), and prints the stacks of all
its threads on ``kill -USR1 PID`` (a hung collective shows where it waits).
"""

from __future__ import annotations

import ctypes
import faulthandler
import os
import signal
import sys

import torch
import torch.distributed as dist
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh

from ..errors import PastureError

MESH_DIMS = ("dp_shard", "tp")


def init_distributed() -> tuple[int, int, torch.device]:
    """(rank, world_size, device) from torchrun's RANK / WORLD_SIZE / LOCAL_RANK.

    Sets the current CUDA device and initializes the default process group (once) when run
    under torchrun; a single process without those variables gets no process group.
    """
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        if torch.cuda.is_available():
            device = torch.device("cuda", torch.cuda.current_device())
            torch.cuda.set_device(device)
        else:
            device = torch.device("cpu")
        return 0, 1, device

    rank, world_size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    die_with_launcher()
    if hasattr(signal, "SIGUSR1"):
        faulthandler.register(signal.SIGUSR1, all_threads=True)
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if torch.cuda.is_available():
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
        backend = "nccl"
    else:
        device = torch.device("cpu")
        backend = "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend=backend, rank=rank, world_size=world_size)
    return rank, world_size, device


def shutdown_distributed() -> None:
    """Leave the process group, if any: a rank exiting on an error without it can abort in
    gloo's threads at interpreter exit (SIGABRT instead of its exit status)."""
    if dist.is_initialized():
        dist.destroy_process_group()


PR_SET_PDEATHSIG = 1  # from <sys/prctl.h>


def die_with_launcher() -> None:
    """Ask Linux to SIGKILL this process when its parent (torchrun's agent) exits, and exit at
    once if the parent is already gone. Elsewhere nothing is done: ``pasture train``'s run lock
    (``pasture.train.checkpoint.run_lock``) still refuses a second run on a live run folder."""
    if not sys.platform.startswith("linux") or "TORCHELASTIC_RUN_ID" not in os.environ:
        return
    parent = os.getppid()
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
            return
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:  # the launcher died before the request took effect
        os._exit(1)


def build_mesh(world_size: int, tp: int, device_type: str) -> DeviceMesh | None:
    """The ("dp_shard", "tp") mesh: ``world_size // tp`` data-parallel shards of ``tp`` ranks.

    ``tp`` is the inner (fastest-varying) dimension so tensor-parallel groups are neighbouring
    ranks, i.e. GPUs of one node on NVLink. ``None`` for a single process.
    """
    if tp < 1 or world_size % tp:
        divisors = [d for d in range(1, world_size + 1) if world_size % d == 0]
        raise PastureError(
            f"parallel.tp = {tp} must divide the world size {world_size}: "
            f"set parallel.tp to one of {divisors}"
        )
    if world_size == 1:
        return None
    return init_device_mesh(device_type, (world_size // tp, tp), mesh_dim_names=MESH_DIMS)
