"""The built-in corpus that needs no download: the Python standard library's own source.

It is PSF-licensed code plus docstrings, present wherever Pasture runs, so the tokenizer can be
trained and the data path exercised offline::

    from pasture.data.corpus import default_corpus_files, iter_documents
    files = default_corpus_files(max_bytes=4_000_000)
    text = next(iter_documents(files))
"""

from __future__ import annotations

import os
import sysconfig
from collections.abc import Iterable, Iterator
from pathlib import Path

from ..errors import PastureError

# Third-party packages are not the standard library; test suites and the codec tables in
# `encodings` are mostly generated data (byte tables, fixtures) rather than text.
_SKIP_DIRS = frozenset(
    {"site-packages", "dist-packages", "__pycache__", "test", "tests", "idle_test", "encodings"}
)


def stdlib_dir() -> Path:
    """The directory of the running interpreter's standard library."""
    path = Path(sysconfig.get_paths()["stdlib"])
    if not path.is_dir():
        raise PastureError(f"{path}: the Python standard library directory does not exist")
    return path


def default_corpus_files(max_bytes: int | None = None) -> list[Path]:
    """The stdlib's ``.py`` files in sorted (deterministic) order.

    With ``max_bytes``, files are taken in order until their total size reaches ``max_bytes``
    (the last file taken may cross it).
    """
    root = stdlib_dir()
    found: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [
            d for d in dirnames if d not in _SKIP_DIRS and not d.startswith(("config-", "."))
        ]
        found.extend(Path(dirpath) / f for f in filenames if f.endswith(".py"))
    found.sort(key=lambda p: p.relative_to(root).as_posix())
    if max_bytes is None:
        return found
    files: list[Path] = []
    total = 0
    for path in found:
        if total >= max_bytes:
            break
        files.append(path)
        total += path.stat().st_size
    return files


def iter_documents(files: Iterable[Path]) -> Iterator[str]:
    """Each file's text as one document (UTF-8; undecodable bytes become U+FFFD)."""
    for path in files:
        try:
            yield Path(path).read_text(encoding="utf-8", errors="replace")
        except OSError as e:
            raise PastureError(f"{path}: cannot read ({e.strerror or e})") from e
