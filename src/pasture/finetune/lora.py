"""LoRA (Hu et al. 2021): a frozen linear layer plus a trained low-rank update,
``y = W x + (alpha / rank) · B A dropout(x)``, with A (rank, in) Kaiming-uniform and B
(out, rank) zero, so training starts from the base model exactly (peft's and torchtune's init).

The model code is not touched: ``apply_lora`` replaces each targeted ``nn.Linear`` (by its
attribute name: ``wq wk wv wo w1 w2 w3 output``) with a ``LoRALinear`` that holds the original
layer as its ``base`` child, and freezes every parameter that is not an adapter's. So FSDP2 can
shard the new modules like any others, and the base weights stay bit-for-bit as loaded.

    names = apply_lora(model, LoRAConfig(rank=8, alpha=16, targets=["wq", "wv"]))
    ...train (only lora_a / lora_b have requires_grad)...
    adapters = lora_state(model)            # just the adapters, for a small checkpoint
    merge_lora(model)                       # W += (alpha / rank) B A, in place; unmerge undoes
    plain = remove_lora(model)              # LoRALinear -> its base Linear: Meta's keys again
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import nn

from ..errors import PastureError

TARGETS = ("wq", "wk", "wv", "wo", "w1", "w2", "w3", "output")


@dataclass
class LoRAConfig:
    rank: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    targets: list[str] = field(default_factory=lambda: ["wq", "wk", "wv", "wo"])

    def __post_init__(self) -> None:
        if isinstance(self.rank, bool) or not isinstance(self.rank, int) or self.rank < 1:
            raise PastureError(f"lora.rank = {self.rank!r}: must be an integer of 1 or more")
        if not (isinstance(self.alpha, int | float) and math.isfinite(self.alpha)):
            raise PastureError(f"lora.alpha = {self.alpha!r}: must be a finite number")
        if not (isinstance(self.dropout, int | float) and 0 <= self.dropout < 1):
            raise PastureError(f"lora.dropout = {self.dropout!r}: must be in [0, 1)")
        unknown = [t for t in self.targets if t not in TARGETS]
        if unknown or not self.targets:
            raise PastureError(
                f"lora.targets: {unknown[0] if unknown else 'empty'}: "
                f"choose among {', '.join(TARGETS)}"
            )


class LoRALinear(nn.Module):
    """``base`` (frozen) plus ``scale · lora_b(lora_a(dropout(x)))``."""

    def __init__(self, base: nn.Linear, rank: int, alpha: float, dropout: float = 0.0) -> None:
        super().__init__()
        self.base = base
        self.rank, self.scale = rank, alpha / rank
        kwargs = {"device": base.weight.device, "dtype": base.weight.dtype}
        self.lora_a = nn.Linear(base.in_features, rank, bias=False, **kwargs)
        self.lora_b = nn.Linear(rank, base.out_features, bias=False, **kwargs)
        self.dropout = nn.Dropout(dropout) if dropout else nn.Identity()
        self.merged = False
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        nn.init.kaiming_uniform_(self.lora_a.weight, a=math.sqrt(5))  # nn.Linear's own init
        nn.init.zeros_(self.lora_b.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.base(x)
        if self.merged:
            return out
        return out + self.lora_b(self.lora_a(self.dropout(x))) * self.scale

    def delta(self) -> torch.Tensor:
        """The update ``scale · B A`` (out, in), computed in float32."""
        return (self.lora_b.weight.float() @ self.lora_a.weight.float()) * self.scale

    @torch.no_grad()
    def merge(self) -> None:
        if not self.merged:
            weight = self.base.weight
            weight.copy_((weight.float() + self.delta()).to(weight.dtype))
            self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        if self.merged:
            weight = self.base.weight
            weight.copy_((weight.float() - self.delta()).to(weight.dtype))
            self.merged = False


def lora_modules(model: nn.Module) -> dict[str, LoRALinear]:
    return {name: m for name, m in model.named_modules() if isinstance(m, LoRALinear)}


def apply_lora(model: nn.Module, cfg: LoRAConfig) -> list[str]:
    """Wrap every ``nn.Linear`` whose attribute name is in ``cfg.targets``; freeze everything
    but the adapters. Returns the wrapped modules' names. Twice on one model is an error."""
    if lora_modules(model):
        raise PastureError("the model already has LoRA adapters")
    if "output" in cfg.targets and getattr(getattr(model, "args", None), "tie_embeddings", False):
        raise PastureError("lora.targets: output is tied to the embeddings here; leave it out")
    wrapped = []
    for parent_name, parent in list(model.named_modules()):
        for name, child in list(parent.named_children()):
            if name in cfg.targets and isinstance(child, nn.Linear):
                setattr(parent, name, LoRALinear(child, cfg.rank, cfg.alpha, cfg.dropout))
                wrapped.append(f"{parent_name}.{name}" if parent_name else name)
    if not wrapped:
        raise PastureError(f"lora.targets {cfg.targets}: no such linear layer in the model")
    for pname, param in model.named_parameters():
        param.requires_grad = ".lora_a." in f".{pname}" or ".lora_b." in f".{pname}"
    return wrapped


def lora_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The adapters' weights only (``...wq.lora_a.weight`` …), detached."""
    return {
        name: tensor.detach()
        for name, tensor in model.state_dict().items()
        if ".lora_a." in name or ".lora_b." in name
    }


def merge_lora(model: nn.Module) -> None:
    """Add each adapter's update into its base weight (in place); the adapters then idle."""
    for module in lora_modules(model).values():
        module.merge()


def unmerge_lora(model: nn.Module) -> None:
    """Undo ``merge_lora`` (subtracting the same float32 update: exact up to rounding)."""
    for module in lora_modules(model).values():
        module.unmerge()


def remove_lora(model: nn.Module, merge: bool = True) -> nn.Module:
    """Replace each ``LoRALinear`` by its base layer (merged first unless ``merge`` is False), so
    the model's state dict has the plain checkpoint keys again; unfreezes nothing."""
    for name, module in lora_modules(model).items():
        if merge:
            module.merge()
        parent_name, _, attr = name.rpartition(".")
        setattr(model.get_submodule(parent_name) if parent_name else model, attr, module.base)
    return model


def merge_weights(state: dict[str, torch.Tensor], scale: float) -> dict[str, torch.Tensor]:
    """A state dict with adapters (``X.base.weight``, ``X.lora_a.weight``, ``X.lora_b.weight``)
    as plain weights ``X.weight = base + scale · B A`` (float32 arithmetic), other keys as
    they are. For a gathered (FSDP) state dict, where the modules cannot be merged in place."""
    out = {}
    for name, tensor in state.items():
        if ".lora_a." in name or ".lora_b." in name:
            continue
        owner, _, leaf = name.rpartition(".base.")
        if leaf and f"{owner}.lora_a.{leaf}" in state:
            a, b = state[f"{owner}.lora_a.{leaf}"], state[f"{owner}.lora_b.{leaf}"]
            tensor = (tensor.float() + (b.float() @ a.float()) * scale).to(tensor.dtype)
            name = f"{owner}.{leaf}"
        out[name] = tensor
    return out


def merged_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The model's weights with every adapter merged, under the plain checkpoint keys
    (``layers.0.attention.wq.weight``), without changing the model."""
    modules = lora_modules(model)
    out = {}
    for name, tensor in model.state_dict().items():
        if ".lora_a." in name or ".lora_b." in name:
            continue
        owner, _, leaf = name.rpartition(".base.")
        if leaf and owner in modules:
            module = modules[owner]
            if not module.merged:
                tensor = (tensor.float() + module.delta()).to(tensor.dtype)
            name = f"{owner}.{leaf}"
        out[name] = tensor.detach()
    return out


__all__ = [
    "TARGETS",
    "LoRAConfig",
    "LoRALinear",
    "apply_lora",
    "lora_modules",
    "lora_state",
    "merge_lora",
    "merge_weights",
    "merged_state_dict",
    "remove_lora",
    "unmerge_lora",
]
