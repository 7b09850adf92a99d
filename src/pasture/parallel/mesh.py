"""From the torchrun environment to a process group and a 2-D ``DeviceMesh`` ("dp_shard", "tp").

One CPU process (no torchrun variables): ``init_distributed()`` returns ``(0, 1, device)``
without creating a process group and ``build_mesh`` returns ``None``. Under torchrun::

    torchrun --nproc-per-node 8 -m pasture.cli train ...   # RANK, WORLD_SIZE, LOCAL_RANK set

NCCL on CUDA, gloo on CPU.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh

from pasture.errors import PastureError

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
