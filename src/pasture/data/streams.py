"""Reading hostile input in bounded memory: lines and XML text runs with a size cap.

A raw dump may hold a 6 GB line or a 6 GB XML element (a gzip of a few MB inflates to it).
Readers never hold more than a cap of one record: a line over ``max_bytes`` is read through in
pieces and reported by its length instead of its content, and XML character data or a tag over
the cap is cut out of the stream before the parser sees it. Callers count what was cut.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import BinaryIO

_PIECE = 1 << 20


def lines(stream: BinaryIO, max_bytes: int) -> Iterator[bytes | int]:
    """Each line of ``stream`` with its newline; a line longer than ``max_bytes`` comes out as
    its length (an ``int``), its bytes read through and dropped piece by piece."""
    while line := stream.readline(max_bytes + 1):
        if len(line) <= max_bytes or line.endswith(b"\n"):
            yield line
            continue
        size = len(line)
        while not line.endswith(b"\n"):
            line = stream.readline(_PIECE)
            if not line:
                break
            size += len(line)
        yield size


def read_capped(stream: BinaryIO, max_bytes: int) -> tuple[bytes, bool]:
    """Up to ``max_bytes`` of ``stream``; True when there was more (nothing past the cap is
    kept, and the rest is not read)."""
    data = stream.read(max_bytes + 1)
    return data[:max_bytes], len(data) > max_bytes


class TagTooLarge(ValueError):
    """An XML tag (a start tag with its attributes) longer than the cap."""


def capped_xml(
    chunks: Iterable[str], max_chars: int, on_cut: Callable[[int], None]
) -> Iterator[str]:
    """The XML text of ``chunks`` with every run of character data longer than ``max_chars``
    removed (``on_cut(length)`` is called for each); a tag longer than ``max_chars`` raises
    ``TagTooLarge``. Outside of tags, character data holds no ``<``, so the cut keeps the
    document well-formed: an element whose text was cut is left empty.

    Memory stays within about ``max_chars`` plus one chunk, whatever the input.
    """
    in_tag = False
    run: list[str] = []  # the current run of character data, while it is under the cap
    run_len = 0
    tag_len = 0
    cutting = False  # the current run went over the cap: drop it to its end
    for chunk in chunks:
        out: list[str] = []
        pos = 0
        while pos < len(chunk):
            if in_tag:
                end = chunk.find(">", pos)
                stop = len(chunk) if end < 0 else end + 1
                tag_len += stop - pos
                if tag_len > max_chars:
                    raise TagTooLarge(f"an XML tag longer than {max_chars:,} characters")
                out.append(chunk[pos:stop])
                pos = stop
                if end >= 0:
                    in_tag, tag_len = False, 0
                continue
            start = chunk.find("<", pos)
            stop = len(chunk) if start < 0 else start
            piece = chunk[pos:stop]
            run_len += len(piece)
            if not cutting:
                if run_len > max_chars:
                    cutting, run = True, []
                else:
                    run.append(piece)
            pos = stop
            if start >= 0:  # the run ends here
                if cutting:
                    on_cut(run_len)
                else:
                    out.extend(run)
                run, run_len, cutting = [], 0, False
                in_tag = True
        if out:
            yield "".join(out)
    if not cutting:
        yield "".join(run)
    elif run_len:
        on_cut(run_len)


__all__ = ["TagTooLarge", "capped_xml", "lines", "read_capped"]
