"""Activation checkpointing (§2.4), applied from outside the model, one transformer block at a time.

The paper "reduce[s] the amount of activations that are recomputed during the backward pass
with checkpointing. More precisely, we save the activations that are expensive to compute, such
as the outputs of linear layers." Three modes:

- ``none``: autograd keeps every activation.
- ``full``: each block keeps only its input and recomputes its whole forward in the backward.
- ``selective`` (the paper's): each block keeps the outputs of its matmuls and of attention and
  recomputes the cheap rest (RMSNorm, rotary, SiLU, the SwiGLU product, residual adds).

    apply_activation_checkpointing(model, "selective")  # after tensor parallel, before FSDP

Blocks are replaced in place by torch's ``checkpoint_wrapper``; its state-dict hooks strip the
``_checkpoint_wrapped_module.`` prefix, so ``state_dict()`` keys stay Meta's and plain state dicts
load. ``named_parameters()`` on the whole model does show the prefix. Only training needs this:
the KV-cache decode path is never checkpointed (gradients are off there).
"""

from __future__ import annotations

from functools import partial

import torch
from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import (
    CheckpointImpl,
    CheckpointWrapper,
    checkpoint_wrapper,
)
from torch.utils.checkpoint import CheckpointPolicy, create_selective_checkpoint_contexts

from ..errors import PastureError
from ..model import Transformer

AC_MODES = ("none", "full", "selective")

aten = torch.ops.aten
# "The outputs of linear layers": the matmuls (nn.Linear on (B, T, dim) runs aten.mm), and
# attention, whose flash / memory-efficient / cuDNN / CPU kernels are the costliest op in a block.
# A tensor-parallel reduce-scatter is saved too, so the backward does not repeat communication.
SAVED_OPS = frozenset(
    {
        aten.mm.default,
        aten.addmm.default,
        aten.bmm.default,
        aten._scaled_dot_product_flash_attention.default,
        aten._scaled_dot_product_efficient_attention.default,
        aten._scaled_dot_product_cudnn_attention.default,
        aten._scaled_dot_product_flash_attention_for_cpu.default,
        torch.ops._c10d_functional.reduce_scatter_tensor.default,
    }
)


def selective_policy(ctx, func, *args, **kwargs) -> CheckpointPolicy:
    """Save the outputs of ``SAVED_OPS``; recompute everything else in the backward."""
    return CheckpointPolicy.MUST_SAVE if func in SAVED_OPS else CheckpointPolicy.PREFER_RECOMPUTE


def apply_activation_checkpointing(model: Transformer, mode: str) -> None:
    """Wrap every ``model.layers[i]`` for ``mode`` (one of ``AC_MODES``), in place."""
    if mode not in AC_MODES:
        raise PastureError(
            f"unknown activation checkpointing mode {mode!r}; known: {', '.join(AC_MODES)}"
        )
    if mode == "none":
        return
    if any(isinstance(layer, CheckpointWrapper) for layer in model.layers):
        raise PastureError("activation checkpointing is already applied to this model")
    context_fn = {}
    if mode == "selective":
        context_fn = {"context_fn": partial(create_selective_checkpoint_contexts, selective_policy)}
    for i, block in enumerate(model.layers):
        # Non-reentrant: works with keyword arguments, FSDP2 and torch.compile. No dropout in
        # LLaMA, so the recomputation needs no saved RNG state.
        model.layers[i] = checkpoint_wrapper(
            block,
            checkpoint_impl=CheckpointImpl.NO_REENTRANT,
            preserve_rng_state=False,
            **context_fn,
        )


__all__ = ["AC_MODES", "SAVED_OPS", "apply_activation_checkpointing", "selective_policy"]
