"""Train a debug model a few steps, parallelized by ``parallelize_model``; write per-step losses.

Run by tests/parallel/test_parallelize.py; by hand::

    python tests/parallel/dist_worker.py --preset debug --out /tmp/ref.json          # 1 process
    torchrun --nproc-per-node 2 tests/parallel/dist_worker.py --tp 2 --out /tmp/tp.json

Every rank builds the same initial weights from one seed before parallelizing, and the same
global batches; a data-parallel rank trains on its slice of each global batch, the ranks of a
tensor-parallel group on the same slice. The logged loss is the global-batch mean.
"""

from __future__ import annotations

import argparse
import json

import torch
import torch.distributed as dist

from pasture.model import Transformer, preset
from pasture.parallel.mesh import build_mesh, init_distributed
from pasture.parallel.parallelize import ParallelConfig, parallelize_model
from pasture.train.loop import train_step

BATCH, SEQ_LEN, VOCAB = 4, 32, 256


def train(
    preset_name: str, tp: int, steps: int, activation_checkpointing: str, compile: bool
) -> list[float]:
    rank, world_size, device = init_distributed()
    mesh = build_mesh(world_size, tp, device.type)
    torch.manual_seed(0)
    model = Transformer(preset(preset_name, vocab_size=VOCAB)).to(device)
    model.init_weights(seed=0)
    cfg = ParallelConfig(
        tp=tp,
        mixed_precision="fp32",
        activation_checkpointing=activation_checkpointing,
        compile=compile,
    )
    model = parallelize_model(model, mesh, cfg)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.1)

    dp_size, dp_rank = 1, 0
    if mesh is not None:
        dp_size, dp_rank = mesh["dp_shard"].size(), mesh["dp_shard"].get_local_rank()
    generator = torch.Generator().manual_seed(1234)
    losses = []
    for _ in range(steps):
        batch = torch.randint(0, VOCAB, (BATCH, SEQ_LEN + 1), generator=generator)
        local = batch.chunk(dp_size)[dp_rank].to(device)
        # pasture train's own step; the ranks of a tp group hold the same loss, so the mean
        # over every rank it reports is the data-parallel mean.
        loss, _, _ = train_step(
            model, optimizer, [(local[:, :-1], local[:, 1:])], grad_clip=1.0, autocast=False
        )
        losses.append(loss)
    return losses


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--preset", default="debug")
    parser.add_argument("--tp", type=int, default=1)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--ac", default="none")
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    losses = train(args.preset, args.tp, args.steps, args.ac, args.compile)
    if not dist.is_initialized() or dist.get_rank() == 0:
        with open(args.out, "w") as f:
            json.dump(losses, f)
    if dist.is_initialized():
        dist.barrier()  # no rank tears down gloo while another still talks to it
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
