"""Raw input files as the build may read them: inside ``--input-root``, names printable.

A file found under the input root is read only if it really lies there: a symbolic link that
leads out of the root (``secret.tex -> /etc/passwd``), loops (``loop.jsonl -> loop.jsonl``) or
points nowhere is skipped and counted with that reason. File and archive member names that are
not UTF-8 (POSIX allows any bytes) travel through Python as surrogate escapes; ``printable``
turns them into valid UTF-8 (``\\xff`` for the byte 0xff) wherever a name is written out.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path
from typing import Any


def printable(text: str) -> str:
    """``text`` as valid UTF-8: the bytes of a non-UTF-8 name (or lone surrogates) as ``\\xNN``."""
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        pass
    try:
        raw = text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        raw = text.encode("utf-8", "surrogatepass")
    return raw.decode("utf-8", "backslashreplace")


def printable_values(value: Any) -> Any:
    """``printable`` applied to every string in a JSON-like value (dicts, lists, strings)."""
    if isinstance(value, str):
        return printable(value)
    if isinstance(value, dict):
        return {printable_values(k): printable_values(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [printable_values(v) for v in value]
    return value


def valid_text(text: str) -> str:
    """``text`` with lone surrogates (JSON allows ``"\\ud800"``) replaced by U+FFFD."""
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return "".join("\ufffd" if "\ud800" <= c <= "\udfff" else c for c in text)


def within(path: Path, folder: Path) -> bool:
    """Whether ``path``, all links followed, is ``folder`` or lies inside it."""
    real, base = os.path.realpath(path), os.path.realpath(folder)
    return real == base or real.startswith(base.rstrip(os.sep) + os.sep)


def why_not_readable(path: Path, root: Path) -> str | None:
    """The reason ``path`` (found under ``root``) must not be read, or None if it may be."""
    try:
        os.stat(path)
    except OSError as e:
        if e.errno == errno.ELOOP:
            return "symlink_loop"
        return "broken_symlink" if os.path.islink(path) else "unreadable"
    if not within(path, root):
        return "symlink_outside_root"
    return None


__all__ = ["printable", "printable_values", "valid_text", "why_not_readable", "within"]
