"""Line deduplication across a shard group, as cc_net's ``mine.py`` and ``dedup.py`` do it."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Iterator

from ..document import Context, Document, FunctionStep, Step, filter_step, spooled
from .normalize import fold_for_dedup, normalize_for_dedup


def line_hash(normalized: str) -> int:
    """The first 8 bytes of sha1, as CCNet stores line hashes (stable across runs)."""
    return int.from_bytes(hashlib.sha1(normalized.encode("utf-8")).digest()[:8], "little")


def _dedup_lines(
    doc: Document, lines: list[str], hashes: list[int], keep: Callable[[int], bool]
) -> bool:
    """cc_net's ``finalize_doc``: keep the lines ``keep`` accepts, each hash once per page,
    record ``line_ids`` and the lengths. False when no line is left."""
    meta = doc.metadata
    meta.setdefault("original_nlines", meta.get("nlines", len(lines)))
    meta.setdefault("original_length", meta.get("length", len(doc.text)))
    old_ids = meta.get("line_ids") or range(len(lines))
    seen: set[int] = set()
    kept, kept_ids = [], []
    for line_id, line, h in zip(old_ids, lines, hashes, strict=False):
        if h not in seen and h != 0 and keep(h):
            kept.append(line)
            kept_ids.append(line_id)
        seen.add(h)
    if not kept:
        return False
    doc.text = "\n".join(kept)
    meta.update(nlines=len(kept), length=len(doc.text), line_ids=kept_ids)
    return True


def wet_lines(text: str) -> list[str]:
    """A page's lines as cc_net's WET reader gives them: stripped, the empty ones left out."""
    return [line.strip() for line in text.split("\n") if line.strip()]


def length_step(min_length: int) -> Step:
    """cc_net's ``min_len`` (300 in ``mine.py``): a page whose text, as cc_net reads it, has
    fewer characters is dropped (``too_short``) before the line dedup sees it."""

    def why_drop(doc: Document) -> str | None:
        short = len("\n".join(wet_lines(doc.text))) < min_length
        return "too_short" if short else None

    return filter_step("length", why_drop)


def line_dedup_step(name: str = "line_dedup") -> Step:
    """cc_net's paper mode (``mine.py``: ``HashesCollector`` over the shard group, then
    ``DuplicatesRemover``): a line (by ``normalize_for_dedup``, sha1's first 8 bytes) found in
    two or more pages is removed from every page; a line repeated only inside one page stays
    once. A page left with no line is dropped (``duplicate_lines``). Two passes over the shard
    (``spooled``): the first counts the pages of each line, the second removes."""

    def run(docs: Iterable[Document], ctx: Context) -> Iterator[Document]:
        seen: set[int] = set()
        duplicated: set[int] = set()

        def see(doc: Document) -> None:
            # FlatHashSet.add: a page's hashes are looked up before any of them is added.
            page = {line_hash(normalize_for_dedup(line)) for line in wet_lines(doc.text)}
            duplicated.update(page & seen)
            seen.update(page)

        for doc in spooled(docs, see):
            lines = wet_lines(doc.text)
            hashes = [line_hash(normalize_for_dedup(line)) for line in lines]
            if lines and _dedup_lines(doc, lines, hashes, lambda h: h not in duplicated):
                yield doc
            else:
                ctx.drop(doc, "duplicate_lines")

    return FunctionStep(name, run)


def keep_first_dedup_step(name: str = "line_dedup") -> Step:
    """Pasture's earlier rule: a line (by ``fold_for_dedup``) already seen in the shard group
    is removed, the first occurrence stays; one pass. Empty lines are not kept."""

    def run(docs: Iterable[Document], ctx: Context) -> Iterator[Document]:
        seen: set[int] = {line_hash("")}  # lines with nothing left after folding go too

        def keep(h: int) -> bool:
            if h in seen:
                return False
            seen.add(h)
            return True

        for doc in docs:
            lines = doc.text.split("\n")
            hashes = [line_hash(fold_for_dedup(line)) for line in lines]
            if not _dedup_lines(doc, lines, hashes, keep):
                ctx.drop(doc, "duplicate_lines")
                continue
            yield doc

    return FunctionStep(name, run)
