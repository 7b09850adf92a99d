"""The paper's optimizer (§2.3): AdamW, β1 0.9, β2 0.95, weight decay 0.1, gradient clipping 1.0,
2,000 warmup steps, then cosine decay to 10% of the peak learning rate.

    optimizer = build_optimizer(model, cfg)             # every group starts at cfg.lr
    for step in range(total_steps):
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, total_steps, cfg)  # or build_scheduler(...).step() after
        ...backward...
        clip_grad_norm(model, cfg.grad_clip)
        optimizer.step()

The schedule, for 0-based optimizer steps: warmup ``lr · (step + 1) / warmup_steps`` reaches
the peak on the last warmup step (``warmup_steps - 1``; the step-0 update is not wasted at
lr 0), and the cosine runs from that peak to exactly ``min_lr_ratio · lr`` on the last step
(``total_steps - 1``). Later steps stay at the minimum.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn
from torch.distributed.tensor import DTensor

from ..errors import PastureError


@dataclass
class OptimConfig:
    lr: float = 3e-4  # peak; the paper: 3e-4 (7B, 13B), 1.5e-4 (33B, 65B)
    betas: tuple[float, float] = (0.9, 0.95)
    eps: float = 1e-8
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    warmup_steps: int = 2000
    min_lr_ratio: float = 0.1  # the final learning rate is 10% of the peak

    def __post_init__(self) -> None:
        def number(key: str, value: float, ok: bool, rule: str) -> None:
            if not (isinstance(value, int | float) and math.isfinite(value) and ok):
                raise PastureError(f"optim.{key} = {value!r}: {rule}")

        number("lr", self.lr, self.lr > 0, "must be a finite number above 0")
        number("eps", self.eps, self.eps > 0, "must be a finite number above 0")
        number("weight_decay", self.weight_decay, self.weight_decay >= 0, "must be finite, >= 0")
        number("grad_clip", self.grad_clip, self.grad_clip > 0, "must be a finite number above 0")
        number("min_lr_ratio", self.min_lr_ratio, 0 <= self.min_lr_ratio <= 1, "must be in [0, 1]")
        for i, beta in enumerate(self.betas):
            number(f"betas[{i}]", beta, 0 <= beta < 1, "must be in [0, 1)")
        if self.warmup_steps < 0:
            raise PastureError(f"optim.warmup_steps = {self.warmup_steps}: must be 0 or more")


def lr_factor(step: int, total_steps: int, cfg: OptimConfig) -> float:
    """The learning rate at ``step`` as a fraction of the peak ``cfg.lr``."""
    if step < 0:
        raise ValueError(f"step must be >= 0, got {step}")
    if total_steps <= max(cfg.warmup_steps, 1):
        raise PastureError(
            f"total steps {total_steps} must exceed optim.warmup_steps {cfg.warmup_steps} "
            "(and 1): lower optim.warmup_steps for a short run or train for more steps"
        )
    if step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    peak_step = max(cfg.warmup_steps - 1, 0)
    progress = min((step - peak_step) / (total_steps - 1 - peak_step), 1.0)
    cosine = 0.5 * (1.0 + math.cos(math.pi * progress))  # 1 at the peak, 0 on the last step
    return cfg.min_lr_ratio + (1.0 - cfg.min_lr_ratio) * cosine


def lr_at(step: int, total_steps: int, cfg: OptimConfig) -> float:
    """Learning rate of 0-based optimizer step ``step`` in a run of ``total_steps`` steps.

    ``lr / warmup_steps`` at step 0, exactly ``lr`` at step ``warmup_steps - 1``, exactly
    ``min_lr_ratio · lr`` at step ``total_steps - 1`` and after.
    """
    return cfg.lr * lr_factor(step, total_steps, cfg)


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Two AdamW groups: decayed matrices and undecayed vectors.

    Decayed: every parameter with two or more dimensions, i.e. the linear layers *and* the
    token embedding. The embedding is a weight matrix like the others (with tied embeddings it
    *is* the output projection, so it cannot sit in a different group), and decaying it is the
    GPT-2/nanoGPT convention. Not decayed: the one-dimensional RMSNorm gains, which scale
    activations; decay would pull them towards 0 rather than their initial 1. The split goes by
    ``param.ndim``, never module type, so it also works on FSDP2 / tensor-parallel ``DTensor``
    parameters (whose ``ndim`` is the global one). Tied parameters appear once; frozen
    parameters (``requires_grad=False``) are left out. Empty groups are omitted.
    """
    decay, no_decay = [], []
    for param in model.parameters():  # deduplicates shared (tied) parameters
        if param.requires_grad:
            (decay if param.ndim >= 2 else no_decay).append(param)
    groups = [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    return [group for group in groups if group["params"]]


def build_optimizer(model: nn.Module, cfg: OptimConfig) -> torch.optim.AdamW:
    """AdamW over ``param_groups(model, cfg.weight_decay)``, every group at the peak ``cfg.lr``.

    torch's fused kernel when every parameter is on a GPU or every one on the CPU (one
    vectorized, multi-threaded pass; on CPU torch's default is a per-parameter loop of a dozen
    element-wise ops, about 5x slower for a 110M model and half of a CPU finetuning step);
    otherwise torch's default.
    """
    groups = param_groups(model, cfg.weight_decay)
    devices = {p.device.type for group in groups for p in group["params"]}
    return torch.optim.AdamW(
        groups,
        lr=cfg.lr,
        betas=cfg.betas,
        eps=cfg.eps,
        weight_decay=cfg.weight_decay,
        fused=devices in ({"cuda"}, {"cpu"}) or None,
    )


def build_scheduler(
    optimizer: torch.optim.Optimizer, total_steps: int, cfg: OptimConfig
) -> torch.optim.lr_scheduler.LambdaLR:
    """``lr_at`` as a scheduler: call ``scheduler.step()`` after each ``optimizer.step()``.

    The optimizer's groups must start at ``cfg.lr`` (``build_optimizer`` does this); the
    scheduler multiplies that by ``lr_factor``, so its rates equal ``lr_at`` exactly.
    """
    lr_factor(0, total_steps, cfg)  # a bad total_steps fails here, not at the first step
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(step, total_steps, cfg)
    )


def clip_grad_norm(model: nn.Module, max_norm: float) -> torch.Tensor:
    """Scale all gradients so their global L2 norm is at most ``max_norm``; return the norm
    before clipping, a plain tensor also under FSDP2 / tensor parallelism (where torch computes
    it over ``DTensor`` gradients across ranks). Non-finite norms are returned, not raised: the
    training loop decides what to do with the step."""
    total = torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)
    if isinstance(total, DTensor):
        total = total.full_tensor()
    return total


__all__ = [
    "OptimConfig",
    "build_optimizer",
    "build_scheduler",
    "clip_grad_norm",
    "lr_at",
    "lr_factor",
    "param_groups",
]
