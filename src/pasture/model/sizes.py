"""Model sizes: the paper's Table 2 plus small shapes that run on a laptop.

The paper's four models use vocab 32000, context 2048 and SwiGLU hidden sizes rounded up to a
multiple of 256; RMSNorm eps is 1e-6, except 1e-5 for 65B (Meta's released LLaMA-1 params.json).
"""

from __future__ import annotations

from dataclasses import replace

from .llama import ModelArgs

PRESETS: dict[str, ModelArgs] = {
    # Table 2 of the paper. Parameter counts: 6,738,415,616 / 13,015,864,320 /
    # 32,528,943,616 / 65,285,660,672 (the last as Meta's released 65B and HF's LlamaForCausalLM).
    "7B": ModelArgs(dim=4096, n_heads=32, n_layers=32),
    "13B": ModelArgs(dim=5120, n_heads=40, n_layers=40),
    "33B": ModelArgs(dim=6656, n_heads=52, n_layers=60),
    "65B": ModelArgs(dim=8192, n_heads=64, n_layers=80, norm_eps=1e-5),
    # llama2.c's TinyStories shapes with the LLaMA vocab (benchmarks, laptops).
    "stories15M": ModelArgs(dim=288, n_heads=6, n_layers=6, multiple_of=32, max_seq_len=256),
    "stories110M": ModelArgs(dim=768, n_heads=12, n_layers=12, multiple_of=32, max_seq_len=1024),
    # Debug sizes: seconds on a CPU. debug-gqa exercises grouped-query attention.
    "debug": ModelArgs(dim=128, n_heads=4, n_layers=2, multiple_of=32, max_seq_len=256),
    "debug-gqa": ModelArgs(
        dim=128, n_heads=4, n_kv_heads=2, n_layers=2, multiple_of=32, max_seq_len=256
    ),
}


def preset(name: str, **overrides: object) -> ModelArgs:
    """A copy of a preset with fields overridden: ``preset("debug", vocab_size=512)``."""
    if name not in PRESETS:
        raise KeyError(f"unknown preset {name!r}; known: {', '.join(PRESETS)}")
    return replace(PRESETS[name], **overrides)
