"""Pasture: the LLaMA recipe (Touvron et al. 2023) as one tool.

>>> import pasture
>>> model, tokenizer = pasture.load_model("stories260K.bin", tokenizer="tok512.model")
>>> print(pasture.generate(model, tokenizer, "Once upon a time", max_new_tokens=40))
"""

from __future__ import annotations

from pathlib import Path

import torch

from .data.tokenizer import Tokenizer
from .errors import PastureError
from .generate import generate, generate_tokens
from .interop import Checkpoint
from .interop import load as load_checkpoint
from .interop import save as save_checkpoint
from .model import ModelArgs, Transformer, preset

__version__ = "0.1.0"


def load_model(
    path: str | Path,
    tokenizer: str | Path | Tokenizer | None = None,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | None = None,
) -> tuple[Transformer, Tokenizer | None]:
    """A ready-to-run model (eval mode) and its tokenizer from a checkpoint in any format."""
    ckpt = load_checkpoint(path, tokenizer=tokenizer)
    return ckpt.to_model(device=device, dtype=dtype), ckpt.tokenizer


__all__ = [
    "Checkpoint",
    "ModelArgs",
    "PastureError",
    "Tokenizer",
    "Transformer",
    "generate",
    "generate_tokens",
    "load_checkpoint",
    "load_model",
    "preset",
    "save_checkpoint",
]
