"""Checkpoint formats: Meta, Hugging Face, llama2.c, GGUF. Each reads into and writes from
:class:`Checkpoint` (Meta keys, Meta rotary layout); ``load`` detects the format.

    >>> ckpt = load("stories260K.bin", tokenizer="tok512.model")
    >>> save(ckpt, "out-hf", "hf")
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..data.tokenizer import Tokenizer
from ..errors import PastureError
from . import gguf, hf, llama2c, meta
from .weights import Checkpoint

FORMATS = {"meta": meta, "hf": hf, "llama2c": llama2c, "gguf": gguf}
DTYPES = {"f32": torch.float32, "f16": torch.float16, "bf16": torch.bfloat16}


def detect_format(path: str | Path) -> str:
    """The format of the checkpoint at ``path``, or a PastureError saying why none fits."""
    path = Path(path)
    if not path.exists():
        raise PastureError(f"{path}: no such file or directory")
    if path.is_file() and path.name in ("params.json", "config.json"):
        path = path.parent
    for name, module in FORMATS.items():
        if module.detect(path):
            return name
    if path.is_dir():
        raise PastureError(f"{path}: neither params.json (Meta) nor config.json (Hugging Face)")
    raise PastureError(f"{path}: not a llama2.c .bin or GGUF file (unrecognized header)")


def load(path: str | Path, tokenizer: str | Path | Tokenizer | None = None) -> Checkpoint:
    """Read a checkpoint in any supported format; ``tokenizer`` replaces an embedded one."""
    path = Path(path)
    fmt = detect_format(path)
    if path.is_file() and path.name in ("params.json", "config.json"):
        path = path.parent
    ckpt = FORMATS[fmt].load(path)
    if tokenizer is not None:
        ckpt.tokenizer = (
            tokenizer if isinstance(tokenizer, Tokenizer) else Tokenizer.from_file(tokenizer)
        )
        ckpt.validate()
    return ckpt


def check_destination(dst: str | Path, fmt: str, force: bool = False) -> None:
    """Refuse, before any work, a ``dst`` where writing ``fmt`` could lose data Pasture did not
    write: a non-empty folder (or a file) that is not a checkpoint of that format, unless
    ``force``. Even with ``force`` only the format's own files are replaced."""
    if fmt not in FORMATS:
        raise PastureError(f"unknown format {fmt!r}; known: {', '.join(FORMATS)}")
    try:
        FORMATS[fmt].check_destination(Path(dst), force)
    except OSError as e:
        raise PastureError(f"{dst}: cannot inspect ({e.strerror or e})") from None


def save(
    ckpt: Checkpoint,
    dst: str | Path,
    fmt: str,
    dtype: str | None = None,
    force: bool = False,
    **options: object,
) -> None:
    """Write ``ckpt`` at ``dst`` in ``fmt``; ``dtype`` is f32, f16 or bf16 (default: as loaded).

    Writes go to a temporary name first, so a failure leaves ``dst`` untouched. An existing
    ``dst`` is replaced only if it is a checkpoint of the same format, or with ``force``; then
    only the format's own files (see ``check_destination``).
    """
    check_destination(dst, fmt, force)
    if dtype is not None and dtype not in DTYPES:
        raise PastureError(f"unknown dtype {dtype!r}; known: {', '.join(DTYPES)}")
    ckpt.validate()
    if fmt == "gguf":
        options.setdefault("dtype", "f16" if dtype == "f16" else "f32")
    elif dtype is not None:
        ckpt = cast(ckpt, DTYPES[dtype])
    if fmt == "llama2c" and any(t.dtype != torch.float32 for t in ckpt.state_dict.values()):
        ckpt = cast(ckpt, torch.float32)  # llama2.c's formats hold float32 only
    try:
        FORMATS[fmt].save(ckpt, Path(dst), force=force, **options)
    except OSError as e:
        raise PastureError(f"{dst}: cannot write ({e.strerror or e})") from None


def cast(ckpt: Checkpoint, dtype: torch.dtype) -> Checkpoint:
    state = {k: v.to(dtype) for k, v in ckpt.state_dict.items()}
    return Checkpoint(ckpt.args, state, ckpt.tokenizer, ckpt.source, ckpt.format, ckpt.metadata)


__all__ = ["Checkpoint", "FORMATS", "check_destination", "detect_format", "load", "save", "cast"]
