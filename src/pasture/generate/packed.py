"""Linear weights in oneDNN's packed CPU layout, for the serving engine's batched decode step.

A decode step multiplies a few rows (the engine's ``max_batch``) by every weight matrix. On CPU,
MKL's general matrix product repacks each weight on every call, and at 8 rows that costs more
than the arithmetic: the 110M model's linear layers took 48–67 ms a step against 19–35 ms with
the weights reordered once into oneDNN's blocked layout for that row count
(benchmarks/RESULTS.md, serving section). ``pack_linears`` swaps every bias-free float
``nn.Linear`` of a CPU model for a ``PackedLinear`` holding only the reordered weight, so memory
does not grow (except where an output layer shared its weight with the embedding: the embedding
keeps its own).

The packed products give a row the same bits whatever the other rows hold (checked in
tests/generate/test_packed.py), which the engine's batch invariance needs. They differ from
MKL's in the last bits, as any two kernels do.
"""

from __future__ import annotations

import torch
from torch import nn

PACKABLE = (torch.float32,)  # the dtype measured (benchmarks/RESULTS.md); bfloat16 is left to MKL


def _reorder(weight: torch.Tensor, rows: int) -> torch.Tensor:
    return torch.ops.mkldnn._reorder_linear_weight(weight, rows)


def _product(x: torch.Tensor, packed: torch.Tensor) -> torch.Tensor:
    return torch.ops.mkldnn._linear_pointwise(x, packed, None, "none", [], "")


def available() -> bool:
    """Whether this torch build can pack and multiply (oneDNN on CPU; checked on x86 only)."""
    if not torch.backends.mkldnn.is_available():
        return False
    try:
        product = _product(torch.ones(2, 16), _reorder(torch.ones(16, 16), 2))
        return torch.equal(product, torch.full((2, 16), 16.0))
    except (RuntimeError, AttributeError):
        return False


class PackedLinear(nn.Module):
    """A bias-free ``nn.Linear`` (inference only) whose weight lives in oneDNN's blocked layout,
    reordered for products with ``rows`` rows (others work too, as fast as oneDNN's plain path).
    ``weight`` gives the plain (out, in) matrix back, as a copy, and the state dict holds it
    under the ``nn.Linear``'s key, so a packed model still saves and copies as before."""

    def __init__(self, linear: nn.Linear, rows: int) -> None:
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.rows = rows
        self.packed = _reorder(linear.weight.detach(), rows)

    @property
    def weight(self) -> torch.Tensor:
        return self.packed.to_dense()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _product(x, self.packed)

    def _save_to_state_dict(self, destination, prefix, keep_vars):  # noqa: ANN001
        destination[prefix + "weight"] = self.weight

    def _load_from_state_dict(  # noqa: ANN001
        self, state_dict, prefix, metadata, strict, missing, unexpected, errors
    ):
        key = prefix + "weight"
        if key not in state_dict:
            missing.append(key)
        elif state_dict[key].shape != (self.out_features, self.in_features):
            errors.append(
                f"{key}: shape {tuple(state_dict[key].shape)}, expected "
                f"{(self.out_features, self.in_features)}"
            )
        else:
            weight = state_dict[key].to(self.packed.dtype)
            self.packed = _reorder(weight.contiguous(), self.rows)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, rows={self.rows}"


def packable(module: nn.Module) -> bool:
    return (
        type(module) is nn.Linear
        and module.bias is None
        and module.weight.device.type == "cpu"
        and module.weight.dtype in PACKABLE
    )


@torch.no_grad()
def pack_linears(model: nn.Module, rows: int) -> int:
    """Replace, in place, every packable linear layer of ``model`` by a ``PackedLinear`` for
    ``rows``-row products; returns how many. The model then serves inference only (its state
    dict still gives the weights). Call ``available()`` first."""
    names = [name for name, module in model.named_modules() if packable(module)]
    for name in names:
        parent, _, child = name.rpartition(".")
        owner = model.get_submodule(parent) if parent else model
        setattr(owner, child, PackedLinear(getattr(owner, child), rows))
    return len(names)


__all__ = ["PackedLinear", "available", "pack_linears"]
