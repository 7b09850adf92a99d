"""Pasture: the LLaMA recipe (Touvron et al. 2023) as one tool.

>>> import pasture
>>> model, tokenizer = pasture.load_model("stories260K.bin", tokenizer="tok512.model")
>>> print(pasture.generate(model, tokenizer, "Once upon a time", max_new_tokens=40))

``import pasture`` (or ``pasture.model``) loads the model and generation only: the checkpoint
formats and the tokenizer load when first used (tests/test_imports.py pins this). Generation
loads eagerly because its function shares its name with the ``pasture.generate`` package:
the first import of that package would otherwise replace ``pasture.generate`` with it.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import torch

from .errors import PastureError
from .generate import generate, generate_tokens
from .model import ModelArgs, Transformer, preset

if TYPE_CHECKING:
    from .data.tokenizer import Tokenizer
    from .interop import Checkpoint
    from .model.quant import QuantConfig

__version__ = "0.1.0"


def load_model(
    path: str | Path,
    tokenizer: str | Path | Tokenizer | None = None,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | None = None,
    quantize: QuantConfig | None = None,
) -> tuple[Transformer, Tokenizer | None]:
    """A ready-to-run model (eval mode) and its tokenizer from a checkpoint in any format,
    read onto ``device`` tensor by tensor where the format allows (``interop.loading``)."""
    from .interop.loading import load_model as load

    return load(path, device, dtype, tokenizer=tokenizer, quantize=quantize)


def __getattr__(name: str) -> object:
    """The checkpoint formats' names and the tokenizer, imported on first use."""
    if name == "Tokenizer":
        from .data.tokenizer import Tokenizer

        return Tokenizer
    if name in ("Checkpoint", "load_checkpoint", "save_checkpoint"):
        from . import interop

        return {
            "Checkpoint": interop.Checkpoint,
            "load_checkpoint": interop.load,
            "save_checkpoint": interop.save,
        }[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


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
