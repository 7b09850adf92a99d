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
from torch.distributed.tensor import DTensor

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


def is_local(model: torch.nn.Module) -> bool:
    """True for a model whose parameters are plain tensors: no FSDP or tensor-parallel wrapping
    (their hooks run on ``forward`` and their sequence shards need the whole row)."""
    return not any(isinstance(p, DTensor) for p in model.parameters())


def trimmed(batch: Batch) -> Batch:
    """``batch`` without its trailing columns that hold no trained target in any row. Exact:
    attention is causal (block-causal when packed), so no kept position sees a dropped one."""
    trained = (batch.targets != IGNORE).any(0).nonzero()
    width = int(trained[-1]) + 1 if len(trained) else 1
    if width == batch.inputs.shape[1]:
        return batch
    return Batch(
        batch.inputs[:, :width],
        batch.targets[:, :width],
        None if batch.positions is None else batch.positions[:, :width],
        None if batch.mask is None else batch.mask[:, :width, :width],
    )


def response_loss_sum(model: torch.nn.Module, batch: Batch, autocast: bool = False) -> torch.Tensor:
    """``summed_loss(logits_of(model, batch), batch.targets)``, computed with less work on a
    local model: trailing untrained columns are dropped (``trimmed``) and the final norm and
    vocabulary projection run on the trained positions only, not on prompt and padding (in
    instruction data most positions; the projection is a fifth of a 110M model's matmuls).
    Wrapped models (FSDP, tensor parallel) take the whole forward."""
    if not is_local(model):
        return summed_loss(logits_of(model, batch, autocast), batch.targets)
    batch = trimmed(batch)
    keep = batch.targets != IGNORE
    with torch.autocast(batch.inputs.device.type, dtype=torch.bfloat16, enabled=autocast):
        h = model.hidden(batch.inputs, positions=batch.positions, mask=batch.mask)
        logits = model.logits(h[keep])  # (trained tokens, vocab)
    return F.cross_entropy(logits.float(), batch.targets[keep], reduction="sum")


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
        return response_loss_sum(model, batch, autocast) * scale

    return train_step(model, optimizer, micro_batches, grad_clip, autocast, share=share)


@torch.no_grad()
def response_loss(model: torch.nn.Module, batches: Sequence[Batch]) -> float:
    """Mean cross-entropy per trained token over ``batches`` (held-out evaluation)."""
    total, count = 0.0, 0
    for batch in batches:
        total += float(response_loss_sum(model, batch))
        count += batch.trained_tokens
    return total / max(count, 1)


__all__ = [
    "finetune_step",
    "logits_of",
    "response_loss",
    "response_loss_sum",
    "summed_loss",
    "trained_tokens",
    "trimmed",
]
