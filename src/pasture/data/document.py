"""Documents and the one shape every pipeline step has.

A step takes the documents of one shard and yields the ones it keeps (possibly changed)::

    def step(docs: Iterable[Document], ctx: Context) -> Iterator[Document]

Steps drop a document by calling ``ctx.drop(doc, reason)`` and not yielding it, so every drop
is counted with its reason (and written out for audit when asked). Readers report bad input
(a corrupt archive, a malformed record) with ``ctx.bad_input(file, reason, detail)``: counted,
logged as one line naming the file, and the run goes on.
"""

from __future__ import annotations

import gzip
import json
import logging
import tempfile
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

log = logging.getLogger("pasture.data")


@dataclass
class Document:
    text: str
    id: str  # unique within its source, stable across runs
    source: str  # commoncrawl, c4, github, wikipedia, books, arxiv, stackexchange
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass
class StageStats:
    docs_in: int = 0
    docs_out: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    dropped: Counter = field(default_factory=Counter)

    def to_dict(self) -> dict[str, Any]:
        return {
            "docs_in": self.docs_in,
            "docs_out": self.docs_out,
            "bytes_in": self.bytes_in,
            "bytes_out": self.bytes_out,
            "dropped": dict(sorted(self.dropped.items())),
        }

    def merge(self, other: dict[str, Any]) -> None:
        for key in ("docs_in", "docs_out", "bytes_in", "bytes_out"):
            setattr(self, key, getattr(self, key) + other[key])
        self.dropped.update(other["dropped"])


DropSink = Callable[[str, str, Document | None, str], None]  # (stage, reason, doc, file)


@dataclass
class Context:
    """What a step sees of the run: the shard's name, its statistics and the drop sink."""

    shard: str
    stats: dict[str, StageStats] = field(default_factory=dict)
    sink: DropSink | None = None
    stage: str = "read"

    def stage_stats(self, stage: str | None = None) -> StageStats:
        return self.stats.setdefault(stage or self.stage, StageStats())

    def drop(self, doc: Document, reason: str) -> None:
        """Count ``doc`` as dropped by the current stage for ``reason``."""
        self.stage_stats().dropped[reason] += 1
        if self.sink is not None:
            self.sink(self.stage, reason, doc, "")

    def bad_input(self, file: str, reason: str, detail: str = "") -> None:
        """A file or record that cannot be read: counted under ``read``, logged, skipped."""
        self.stage_stats("read").dropped[reason] += 1
        log.warning("%s: skipped (%s)%s", file, reason, f": {detail}" if detail else "")
        if self.sink is not None:
            self.sink("read", reason, None, file)


class Step(Protocol):
    name: str

    def __call__(self, docs: Iterable[Document], ctx: Context) -> Iterator[Document]: ...


@dataclass(frozen=True)
class FunctionStep:
    """A step from a function; see ``filter_step`` and ``map_step`` for the common cases."""

    name: str
    fn: Callable[[Iterable[Document], Context], Iterator[Document]]

    def __call__(self, docs: Iterable[Document], ctx: Context) -> Iterator[Document]:
        return self.fn(docs, ctx)


def filter_step(name: str, why_drop: Callable[[Document], str | None]) -> Step:
    """Keep documents for which ``why_drop`` returns None; drop the rest with its reason."""

    def run(docs: Iterable[Document], ctx: Context) -> Iterator[Document]:
        for doc in docs:
            reason = why_drop(doc)
            if reason is None:
                yield doc
            else:
                ctx.drop(doc, reason)

    return FunctionStep(name, run)


def map_step(name: str, fn: Callable[[Document], Document | str]) -> Step:
    """Transform each document; ``fn`` returns the new document or a drop reason (a str)."""

    def run(docs: Iterable[Document], ctx: Context) -> Iterator[Document]:
        for doc in docs:
            out = fn(doc)
            if isinstance(out, str):
                ctx.drop(doc, out)
            else:
                yield out

    return FunctionStep(name, run)


def spooled(docs: Iterable[Document], see: Callable[[Document], None]) -> Iterator[Document]:
    """Two passes over a stream in bounded memory: every document goes through ``see`` and to
    a temporary file (gzip) first, then they come back, in order, as they were seen."""
    with tempfile.TemporaryFile() as raw:
        with gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=1) as spool:
            for doc in docs:
                see(doc)
                record = [doc.text, doc.id, doc.source, doc.metadata]
                spool.write(json.dumps(record, ensure_ascii=False).encode("utf-8") + b"\n")
        raw.seek(0)
        with gzip.GzipFile(fileobj=raw, mode="rb") as spool:
            for line in spool:
                yield Document(*json.loads(line))


def counted(step: Step, docs: Iterable[Document], ctx: Context) -> Iterator[Document]:
    """Run ``step`` on ``docs``, counting documents and UTF-8 bytes in and out of it."""
    step_ctx = replace(ctx, stage=step.name)  # shares stats and sink; drops land on this step
    stats = step_ctx.stage_stats()

    def inputs() -> Iterator[Document]:
        for doc in docs:
            stats.docs_in += 1
            stats.bytes_in += len(doc.text.encode("utf-8"))
            yield doc

    for doc in step(inputs(), step_ctx):
        stats.docs_out += 1
        stats.bytes_out += len(doc.text.encode("utf-8"))
        yield doc


def run_steps(docs: Iterable[Document], steps: list[Step], ctx: Context) -> Iterator[Document]:
    for step in steps:
        docs = counted(step, docs, ctx)
    return iter(docs)
