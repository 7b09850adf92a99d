"""Books: Project Gutenberg plain-text books (§2.1, "Gutenberg and Books3").

LLaMA uses "the Gutenberg Project, which contains books that are in the public domain", and
"perform[s] deduplication at the book level, removing books with more than 90% content overlap".
Books3 cannot be redistributed; a Books3 file is plain text without PG markers and reads the same
way.

* ``read`` decodes one ``.txt`` book (UTF-8, else ISO-8859-1 as PG's ``*-8.txt`` files are),
  turns CRLF into LF, and keeps the text between PG's ``*** START OF … ***`` and
  ``*** END OF … ***`` markers (both spellings: THIS/THE, with or without spaces, EBOOK or
  E-BOOK), without the "Produced by …" credit right after the start marker or the "End of
  Project Gutenberg's …" line before the end marker. Title, author and language come from the
  header. A file without the markers is kept whole (``metadata["gutenberg_markers"] = False``),
  and one with only one of them is cut on that side only: Books3 and other mirrors have no PG
  boilerplate, and a marker that PG spelled in yet another way should cost some boilerplate,
  not a book.
* ``steps`` drop empty books, then near-duplicate books (``near_duplicate``): two books whose
  5-word shingle sets overlap by more than ``max_overlap``. Overlap is containment,
  |A ∩ B| / min(|A|, |B|), not Jaccard: a book that appears whole inside a longer one (an
  anthology, a "complete works", an edition with a long added introduction) is a duplicate of
  it, which Jaccard would miss. Shingles are taken over lowercased words with accents removed,
  so an ASCII and a Latin-1 edition of one book (``16215.txt``, ``16215-8.txt``) compare as
  equal. The first book in sorted order is kept; the dropped one names it in its metadata
  (``duplicate_of``) and in the log.

The comparison is exact and pairwise within a shard, which is why all books are one shard: fine
for thousands of books. The whole of PG (~70 k books) wants MinHash + LSH in front of it to find
candidate pairs.
"""

from __future__ import annotations

import hashlib
import logging
import re
import unicodedata
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..document import Context, Document, FunctionStep, Step, filter_step

NAME = "books"

log = logging.getLogger("pasture.data")


@dataclass
class Options:
    max_overlap: float = 0.9  # the paper: drop books with more than 90% content overlap
    shingle_words: int = 5
    # Larger files are skipped (too_large): the dedup holds a book's shingles in memory. The
    # largest Gutenberg books (dictionaries, complete works) are under 30 MB.
    max_book_bytes: int = 32_000_000


def find_inputs(root: Path, opts: Options) -> list[Path]:
    return sorted(
        path
        for path in (root / NAME).rglob("*.txt")
        if path.is_file() and not path.name.startswith(("LICENSE", "."))
    )


def shards(inputs: list[Path], opts: Options) -> list[list[Path]]:
    return [list(inputs)] if inputs else []  # one shard: dedup compares every pair of books


def prepare(opts: Options, input_root: Path, work_dir: Path) -> None:
    pass


def steps(opts: Options, work_dir: Path) -> list[Step]:
    return [
        filter_step("empty", lambda d: None if d.text.strip() else "empty"),
        FunctionStep("near_duplicate", lambda docs, ctx: _dedup(docs, ctx, opts)),
    ]


# ---- reading -------------------------------------------------------------------------------

_MARKER = r"^\*{3}\s*{kind}\s+OF\s+(?:THE\s+|THIS\s+)?PROJECT\s+GUTENBERG\s+E-?BOOK\b.*$"
_START = re.compile(_MARKER.replace("{kind}", "START"), re.I | re.M)
_END = re.compile(_MARKER.replace("{kind}", "END"), re.I | re.M)
# The credit line(s) right after the start marker, and the closing line before the end marker.
_CREDIT = re.compile(
    r"\A\s*(?:produced|transcribed|prepared|e-?text\s+prepared|this\s+e-?(?:text|book)\s+was)\b"
    r".*?(?:\n[ \t]*\n|\Z)",
    re.I | re.S,
)
_END_LINE = re.compile(
    r"^[ \t]*end\s+of\s+(?:the\s+|this\s+)?project\s+gutenberg(?:'s)?\b.*\Z", re.I | re.M | re.S
)
_HEADER_FIELD = re.compile(r"^(Title|Author|Language):[ \t]*(.*(?:\n[ \t]+\S.*)*)", re.M)


def _decode(data: bytes) -> tuple[str, str]:
    try:
        return data.decode("utf-8-sig"), "utf-8"
    except UnicodeDecodeError:
        return data.decode("latin-1"), "latin-1"  # PG's *-8.txt files; never fails


def read(path: Path, ctx: Context, opts: Options) -> Iterator[Document]:
    """One document: the book's text without PG's header and license."""
    try:
        size = path.stat().st_size
        if size > opts.max_book_bytes:  # not read at all: a book is one record
            ctx.bad_input(str(path), "too_large", f"{size:,} bytes > max_book_bytes")
            return
        data = path.read_bytes()
    except OSError as err:
        ctx.bad_input(str(path), "unreadable", str(err))
        return
    if not data.strip():
        ctx.bad_input(str(path), "empty_file")
        return
    raw, encoding = _decode(data)
    raw = raw.replace("\r\n", "\n").replace("\r", "\n")
    start = _START.search(raw)
    end = _END.search(raw, start.end() if start else 0)
    # Each marker cuts on its own: a book with only one of them loses only that side's text.
    header = raw[: start.start()] if start else raw[:4000]
    body = raw[start.end() if start else 0 : end.start() if end else len(raw)]
    if start:
        body = _CREDIT.sub("", body.lstrip("\n"), count=1)
    if end:
        body = _END_LINE.sub("", body)
    fields = {
        name.lower(): " ".join(value.split()) for name, value in _HEADER_FIELD.findall(header)
    }
    yield Document(
        text=body.strip("\n"),
        id=f"gutenberg/{path.stem}",
        source=NAME,
        metadata={
            "title": fields.get("title", ""),
            "author": fields.get("author", ""),
            "language": fields.get("language", ""),
            "encoding": encoding,
            "gutenberg_markers": bool(start and end),  # False: nothing or only one side cut
            "file": path.name,
        },
    )


# ---- book-level dedup ----------------------------------------------------------------------


def shingles(text: str, n: int = 5) -> np.ndarray:
    """The sorted, distinct 64-bit hashes of the book's n-word shingles."""
    folded = unicodedata.normalize("NFKD", text.casefold())
    words = re.findall(r"\w+", "".join(c for c in folded if not unicodedata.combining(c)))
    if not words:
        return np.zeros(0, dtype=np.uint64)
    n = min(n, len(words))  # a text shorter than one shingle is one shingle
    vocab = {word: i for i, word in enumerate(dict.fromkeys(words))}
    word_hash = np.array(
        [int.from_bytes(hashlib.blake2b(w.encode(), digest_size=8).digest()) for w in vocab],
        dtype=np.uint64,
    )
    ids = word_hash[np.fromiter((vocab[w] for w in words), dtype=np.int64, count=len(words))]
    # Polynomial hash of each window of n words; uint64 arithmetic wraps, which is what we want.
    shingle = np.zeros(len(words) - n + 1, dtype=np.uint64)
    base = np.uint64(1_000_003)
    for k in range(n):
        shingle = shingle * base + ids[k : len(words) - n + 1 + k]
    return np.unique(shingle)


def overlap(a: np.ndarray, b: np.ndarray) -> float:
    """|A ∩ B| / min(|A|, |B|) of two sorted shingle sets."""
    if not len(a) or not len(b):
        return 0.0
    return len(np.intersect1d(a, b, assume_unique=True)) / min(len(a), len(b))


def _dedup(docs: Iterable[Document], ctx: Context, opts: Options) -> Iterator[Document]:
    kept: list[tuple[str, np.ndarray]] = []
    for doc in docs:
        mine = shingles(doc.text, opts.shingle_words)
        scores = ((other, overlap(mine, theirs)) for other, theirs in kept)
        other, score = next(((o, s) for o, s in scores if s > opts.max_overlap), ("", 0.0))
        if not other:
            kept.append((doc.id, mine))
            yield doc
            continue
        doc.metadata["duplicate_of"] = other
        doc.metadata["overlap"] = round(score, 4)
        log.info("%s: near-duplicate of %s (overlap %.3f)", doc.id, other, score)
        ctx.drop(doc, "near_duplicate")
