"""The LLaMA model: architecture (``llama``) and sizes (``sizes``). Imports nothing internal."""

from .llama import (
    KVCache,
    ModelArgs,
    Transformer,
    count_parameters,
    flops_per_token,
)
from .sizes import PRESETS, preset

__all__ = [
    "KVCache",
    "ModelArgs",
    "PRESETS",
    "Transformer",
    "count_parameters",
    "flops_per_token",
    "preset",
]
