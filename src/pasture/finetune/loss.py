"""The finetuning loss: cross-entropy summed over trained (response) tokens, divided by the
number of trained tokens in the whole optimizer step (every micro-batch, every rank). So each
response token weighs the same however examples are packed, padded or split into
micro-batches, not a mean of per-example or per-batch means (torchtune's and torchtitan's
reduction).

    loss, grad_norm, stepped = finetune_step(model, optimizer, micro_batches, grad_clip=1.0)
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.distributed as dist
import torch.nn.functional as F

from ..train.loop import train_step
from .packing import IGNORE, Batch


def logits_of(model: torch.nn.Module, batch: Batch, autocast: bool = False) -> torch.Tensor:
    """(B, T, vocab) float32 logits of a batch (positions and mask passed when packed)."""
    device = batch.inputs.device
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
        if batch.mask is None:
            logits = model(batch.inputs)
        else:
            logits = model(batch.inputs, positions=batch.positions, mask=batch.mask)
    return logits.float()


def summed_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Sum of the cross-entropy of every target that is not IGNORE."""
    return F.cross_entropy(
        logits.flatten(0, 1), targets.flatten(), ignore_index=IGNORE, reduction="sum"
    )


def trained_tokens(micro_batches: Sequence[Batch]) -> int:
    """Trained tokens of a step over all micro-batches and all ranks."""
    count = torch.tensor(sum(b.trained_tokens for b in micro_batches), dtype=torch.long)
    if dist.is_initialized():
        if dist.get_backend() == "nccl":
            count = count.cuda()
        dist.all_reduce(count)
    return int(count)


def finetune_step(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    micro_batches: Sequence[Batch],
    grad_clip: float,
    autocast: bool = False,
) -> tuple[float, float, bool]:
    """Pretraining's ``train_step`` with finetuning's share of the loss: each micro-batch's
    summed loss divided by the step's trained tokens (every micro-batch, every rank).

    Returns (loss per trained token over the step, gradient norm, stepped); nothing is updated
    when either is not finite. Data parallel wrappers average gradients over ranks, so each
    rank scales its share by the world size to make the result the global per-token mean (and
    ``train_step``'s mean of the ranks' summed shares is then that mean too).
    """
    world = dist.get_world_size() if dist.is_initialized() else 1
    scale = world / max(trained_tokens(micro_batches), 1)

    def share(batch: Batch) -> torch.Tensor:
        return summed_loss(logits_of(model, batch, autocast), batch.targets) * scale

    return train_step(model, optimizer, micro_batches, grad_clip, autocast, share=share)


@torch.no_grad()
def response_loss(model: torch.nn.Module, batches: Sequence[Batch]) -> float:
    """Mean cross-entropy per trained token over ``batches`` (held-out evaluation)."""
    total, count = 0.0, 0
    for batch in batches:
        total += float(summed_loss(logits_of(model, batch), batch.targets))
        count += batch.trained_tokens
    return total / max(count, 1)


__all__ = ["finetune_step", "logits_of", "response_loss", "summed_loss", "trained_tokens"]
