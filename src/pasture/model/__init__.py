"""The LLaMA model: architecture (``llama``) and sizes (``sizes``). Imports nothing internal."""

from .llama import (
    LIMITS,
    ConfigError,
    KVCache,
    ModelArgs,
    Transformer,
    count_parameters,
    flops_per_token,
    state_dict_shapes,
)
from .sizes import PRESETS, preset

__all__ = [
    "LIMITS",
    "ConfigError",
    "KVCache",
    "ModelArgs",
    "PRESETS",
    "Transformer",
    "count_parameters",
    "flops_per_token",
    "preset",
    "state_dict_shapes",
]
