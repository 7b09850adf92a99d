"""Weight-only int8 and int4 quantization of the linear layers, on torch's own packed kernels.

int8: one scale per output channel (symmetric, -127..127), ``torch._weight_int8pack_mm``.
int4: groups of ``group_size`` input channels, each with a scale and a zero (asymmetric min-max,
the "tinygemm" convention of gpt-fast and torchao: ``w ≈ (q - 8) · scale + zero``, q in 0..15),
``torch._weight_int4pack_mm_for_cpu`` on CPU and ``torch._weight_int4pack_mm`` on CUDA.

Activations keep the model's dtype between layers; the CPU kernels take them in bfloat16 (the
only dtype they vectorize), the CUDA int4 kernel too. What is stored (``state_dict``) is
device-neutral: int8
weights and float32 scales; int4 weights two to a byte (even column in the high nibble) with
float32 ``scales_and_zeros`` (K / group, N, 2). The kernels' own packed layout differs between
CPU and CUDA, so it is built from the stored form on the device the module runs on, once.

A linear layer whose shape the kernel cannot take (int4: out_features not a multiple of 16, or
in_features not a multiple of ``group_size``) keeps its float weights; ``quantize`` says how many.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import PastureError

DTYPES = ("int8", "int4")
INT4_GROUP_SIZES = (32, 64, 128, 256)


@dataclass(frozen=True)
class QuantConfig:
    dtype: str = "int8"  # int8 | int4
    group_size: int = 128  # int4 only: input channels sharing one scale and zero

    def __post_init__(self) -> None:
        if self.dtype not in DTYPES:
            raise PastureError(f"quantization dtype {self.dtype!r}: use int8 or int4")
        if self.dtype == "int4" and self.group_size not in INT4_GROUP_SIZES:
            sizes = ", ".join(map(str, INT4_GROUP_SIZES))
            raise PastureError(f"int4 group size {self.group_size}: use one of {sizes}")


def quantize_int8(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, K) float → int8 (N, K) and float32 scales (N,): w ≈ q · scale."""
    w = weight.detach().float()
    scales = (w.abs().amax(dim=1) / 127).clamp(min=torch.finfo(torch.float32).tiny)
    q = torch.round(w / scales[:, None]).clamp(-127, 127).to(torch.int8)
    return q, scales


def quantize_int4(weight: torch.Tensor, group_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, K) float → uint8 (N, K / 2) two nibbles a byte, and float32 (K / group, N, 2)."""
    w = weight.detach().float()
    N, K = w.shape
    groups = w.reshape(N, K // group_size, group_size)
    low, high = groups.amin(dim=-1, keepdim=True), groups.amax(dim=-1, keepdim=True)
    scale = ((high - low) / 15).clamp(min=1e-6)
    q = torch.round((groups - low) / scale).clamp(0, 15).to(torch.uint8).reshape(N, K)
    zero = low + 8 * scale  # w = (q - 8) · scale + zero
    scales_and_zeros = torch.cat([scale, zero], dim=-1).transpose(0, 1).contiguous()
    return (q[:, 0::2] << 4) | q[:, 1::2], scales_and_zeros


def unpack_int4(packed: torch.Tensor) -> torch.Tensor:
    """uint8 (N, K / 2) → int32 (N, K) values 0..15."""
    return torch.stack([packed >> 4, packed & 15], dim=-1).reshape(packed.shape[0], -1).int()


def dequantize(module: Int8Linear | Int4Linear) -> torch.Tensor:
    """The float32 (N, K) weight the quantized kernel multiplies by (for checks and export)."""
    if isinstance(module, Int8Linear):
        return module.weight.float() * module.scales[:, None]
    q = unpack_int4(module.weight).float()  # (N, K)
    scale, zero = module.scales_and_zeros.unbind(-1)  # (K / group, N) each
    scale = scale.t().repeat_interleave(module.group_size, dim=1)
    zero = zero.t().repeat_interleave(module.group_size, dim=1)
    return (q - 8) * scale + zero


def _kernel_input(x: torch.Tensor) -> torch.Tensor:
    """Activations as the CPU kernels want them: bfloat16. torch's CPU int8/int4 weight-only
    kernels are vectorized for bfloat16 activations only; with float32 they run a scalar loop
    16-22x slower (benchmarks/RESULTS.md, decode section). GPU activations pass unchanged.

    Except where the inner size is not a multiple of 16: torch 2.13's bfloat16 CPU int8 kernel
    reads past the row there (a segfault at 100 or 172 columns), so those keep float32."""
    if x.device.type != "cpu" or x.shape[-1] % 16:
        return x
    return x.to(torch.bfloat16)


class Int8Linear(nn.Module):
    def __init__(self, in_features: int, out_features: int, device=None) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        shape = (out_features, in_features)
        self.register_buffer("weight", torch.empty(shape, dtype=torch.int8, device=device))
        self.register_buffer("scales", torch.empty(out_features, device=device))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = _kernel_input(x.reshape(-1, self.in_features))
        out = torch._weight_int8pack_mm(flat, self.weight, self.scales.to(flat.dtype))
        return out.to(x.dtype).reshape(*x.shape[:-1], self.out_features)


class Int4Linear(nn.Module):
    def __init__(self, in_features: int, out_features: int, group_size: int, device=None) -> None:
        super().__init__()
        self.in_features, self.out_features, self.group_size = in_features, out_features, group_size
        packed = (out_features, in_features // 2)
        self.register_buffer("weight", torch.empty(packed, dtype=torch.uint8, device=device))
        sz = (in_features // group_size, out_features, 2)
        self.register_buffer("scales_and_zeros", torch.empty(sz, device=device))
        self._kernel: tuple[torch.Tensor, torch.Tensor] | None = None  # (packed, sz) on device

    def _apply(self, fn, recurse=True):  # .to() / .cuda(): the kernel layout is rebuilt
        self._kernel = None
        return super()._apply(fn, recurse)

    def kernel_layout(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self._kernel is None:
            if self.weight.device.type == "cuda":
                inner_k_tiles = 8 if self.in_features % 128 == 0 else 2
                packed = torch._convert_weight_to_int4pack(self.weight, inner_k_tiles)
                self._kernel = (packed, self.scales_and_zeros.to(torch.bfloat16))
            else:
                packed = torch._convert_weight_to_int4pack_for_cpu(unpack_int4(self.weight), 2)
                self._kernel = (packed, self.scales_and_zeros.to(torch.bfloat16))
        return self._kernel

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        packed, sz = self.kernel_layout()
        flat = x.reshape(-1, self.in_features)
        if flat.device.type == "cuda":  # the CUDA kernel takes bfloat16 activations only
            out = torch._weight_int4pack_mm(flat.to(torch.bfloat16), packed, self.group_size, sz)
        else:
            flat = _kernel_input(flat)
            out = torch._weight_int4pack_mm_for_cpu(flat, packed, self.group_size, sz)
        return out.to(x.dtype).reshape(*x.shape[:-1], self.out_features)


def prepare_kernels(model: nn.Module) -> None:
    """Build every int4 layer's device-specific packed layout now (before ``torch.compile``
    traces a step, and so the first request does not pay for it)."""
    for module in model.modules():
        if isinstance(module, Int4Linear):
            module.kernel_layout()


def fits(linear: nn.Linear, cfg: QuantConfig) -> bool:
    """Whether the kernel for ``cfg.dtype`` takes this layer's shape."""
    if linear.bias is not None:
        return False
    if cfg.dtype == "int4":
        return linear.out_features % 16 == 0 and linear.in_features % cfg.group_size == 0
    return True


def empty_module(linear: nn.Linear, cfg: QuantConfig, device=None) -> nn.Module:
    if cfg.dtype == "int8":
        return Int8Linear(linear.in_features, linear.out_features, device)
    return Int4Linear(linear.in_features, linear.out_features, cfg.group_size, device)


def quantize_linear(linear: nn.Linear, cfg: QuantConfig) -> nn.Module:
    module = empty_module(linear, cfg, linear.weight.device)
    if cfg.dtype == "int8":
        module.weight, module.scales = quantize_int8(linear.weight)
    else:
        module.weight, module.scales_and_zeros = quantize_int4(linear.weight, cfg.group_size)
    return module


def quantizable(model: nn.Module, cfg: QuantConfig) -> list[str]:
    """Names of the linear layers ``cfg`` quantizes (every ``nn.Linear`` whose shape fits)."""
    return [
        name
        for name, module in model.named_modules()
        if isinstance(module, nn.Linear) and fits(module, cfg)
    ]


def _replace(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, module)


@torch.no_grad()
def quantize(model: nn.Module, cfg: QuantConfig) -> dict:
    """Replace the model's linear layers by quantized ones, in place. Returns ``layers`` (the
    names quantized) and ``kept_float`` (linear layers whose shape the kernel cannot take).

    The output layer is quantized too; a tied embedding keeps its float weights (only the
    projection's copy is quantized).
    """
    names = quantizable(model, cfg)
    for name in names:
        _replace(model, name, quantize_linear(model.get_submodule(name), cfg))
    prepare_kernels(model)
    kept = sum(isinstance(m, nn.Linear) for m in model.modules())
    return {"layers": names, "kept_float": kept}


def empty_quantized(model: nn.Module, names: list[str], cfg: QuantConfig, device=None) -> None:
    """Give ``model`` (e.g. built on the meta device) empty quantized layers at ``names``, ready
    for ``load_state_dict(..., assign=True)``."""
    for name in names:
        linear = model.get_submodule(name)
        if not isinstance(linear, nn.Linear) or not fits(linear, cfg):
            raise PastureError(f"layer {name!r}: not a linear layer {cfg.dtype} can take")
        _replace(model, name, empty_module(linear, cfg, device))


def reference_linear(module: Int8Linear | Int4Linear, x: torch.Tensor) -> torch.Tensor:
    """What the kernel computes, in plain float32 arithmetic (for tests and debugging)."""
    return F.linear(x.float(), dequantize(module)).to(x.dtype)
