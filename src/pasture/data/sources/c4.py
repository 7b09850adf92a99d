"""C4 (LLaMA §2.1; Raffel et al. 2020, §2.2): gzipped JSON lines ``{"text", "url", "timestamp"}``.

Also reads OLMo/Dolma's variant, which names the timestamp ``date``. Both spellings of the time
("2019-04-25T12:57:54Z" and HF datasets' "2019-04-25 12:57:54") become ``timestamp`` in the
ISO form with ``T`` and ``Z``.

The steps are C4's heuristics, in the order of the TFDS implementation (``c4.py``,
``c4_utils``):

0. ``length``: a page over 190,000 characters is dropped (``too_long``; ``is_valid_length``),
   then ``url_dedup`` keeps one page per normalized URL (scheme, ``www.``, a ``?utm_``/``?ref``/
   ``?feed`` query and trailing slashes removed: ``normalize_url``), the one with the newest
   timestamp (``select_newest_page``; ties: the first read), within the shard. The others are
   ``duplicate_url``. A page without a URL is never a duplicate. Published C4 passed both
   already; they matter when overlapping inputs are given.
1. ``c4_clean`` (per line, then per page): drop lines with a word over 1000 characters, remove
   Wikipedia citation markers, keep only lines that end in terminal punctuation (. ! ? ") and not
   in "...", that have at least 5 words, that do not mention "javascript" or a policy phrase
   ("terms of use", "cookie policy", ...). A kept line with "lorem ipsum" drops the page
   (``lorem_ipsum``), one with "{" too (``curly_brace``); fewer than 3 sentences left drops it
   (``too_few_sentences``).
2. ``c4_dedup``: every three-sentence span seen earlier in the shard is removed (exact match),
   the first occurrence stays; a page left with under 3 sentences is dropped
   (``too_few_sentences``).
3. ``bad_words``: pages with a word or phrase of the LDNOOBW English list
   (``resources/ldnoobw_en.txt``).
4. ``language``: English. C4 kept langdetect's ``en`` at probability ≥ 0.99; that threshold
   means nothing for another identifier, so each has its own, calibrated on real C4 pages
   (``CALIBRATED_MIN_SCORE``). py3langid (the default, shared with ``pasture.data.ccnet.language``)
   spreads the scores of real C4 English pages down to 0.10: of the 1,027 sample pages that
   reach the stage, ≥ 0.99 keeps 971 (94.5%), ≥ 0.5 1,015, and its label alone 1,022
   (99.5%), so its rule is the label ``en`` at any score (langdetect ≥ 0.99 keeps all 1,027;
   the five py3langid calls other: pcm ×3, de, no). The label still rejects real German,
   Bulgarian and Dutch text. fastText's lid.176 could not be calibrated here (no model ships);
   it gets cc_net's 0.5. ``min_language_score`` overrides either.

Sentences are split with a punctuation regex (C4 used NLTK's Punkt).
"""

from __future__ import annotations

import gzip
import hashlib
import json
import re
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from ...errors import PastureError
from .. import streams
from ..ccnet.language import language_step
from ..document import (
    Context,
    Document,
    FunctionStep,
    Step,
    filter_step,
    map_step,
    spooled,
)

NAME = "c4"

_END_MARKS = (".", "?", "!", '"')
_ELLIPSIS = "..."
_POLICY = (
    "terms of use",
    "privacy policy",
    "cookie policy",
    "uses cookies",
    "use of cookies",
    "use cookies",
)
_CITATION = re.compile(r"\[\d*\]|\[edit\]|\[citation needed\]")
_SENTENCE_END = re.compile(r'(?<=[.!?])\s+|(?<=[.!?]")\s+')
_TIMESTAMP = re.compile(r"^(\d{4}-\d\d-\d\d)[ T](\d\d:\d\d:\d\d)(?:\.\d+)?(?:Z|[+-]00:?00)?$")


@dataclass
class Options:
    files_per_shard: int = 8  # the scope of the three-sentence-span dedup
    min_words_per_line: int = 5
    min_sentences: int = 3
    max_word_length: int = 1000
    dedup_span: int = 3  # sentences
    languages: list[str] = field(default_factory=lambda: ["en"])
    min_language_score: float | None = None  # None: the identifier's CALIBRATED_MIN_SCORE
    fasttext_model: str | None = None
    bad_words_file: str | None = None  # default: the shipped LDNOOBW English list
    max_record_bytes: int = 8_000_000  # a longer JSON line is skipped (record_too_large)
    max_page_chars: int = 190_000  # C4's is_valid_length: a longer page is dropped (too_long)
    url_dedup: bool = True  # one page per normalized URL, the newest (C4's select_newest_page)


# The score under which a page is not English, per identifier, for real C4 pages to pass as
# langdetect ≥ 0.99 passed them (see the module docstring and docs/data.md).
CALIBRATED_MIN_SCORE = {"py3langid": 0.0, "fasttext": 0.5}


def find_inputs(root: Path, opts: Options) -> list[Path]:
    base = Path(root) / NAME
    return sorted(
        p
        for pattern in ("*.json", "*.jsonl", "*.json.gz", "*.jsonl.gz")
        for p in base.glob(pattern)
    )


def shards(inputs: list[Path], opts: Options) -> list[list[Path]]:
    n = max(1, opts.files_per_shard)
    return [inputs[i : i + n] for i in range(0, len(inputs), n)]


def normalize_timestamp(value: str) -> str:
    """ "2019-04-25 12:57:54" and "2019-04-25T12:57:54Z" → "2019-04-25T12:57:54Z"."""
    match = _TIMESTAMP.match(value.strip())
    return f"{match.group(1)}T{match.group(2)}Z" if match else value


def read(path: Path, ctx: Context, opts: Options) -> Iterator[Document]:
    """One document per JSON line. A bad line (invalid UTF-8 or JSON, no text, too long) is
    skipped and counted; the lines around it are still read."""
    try:
        f = gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")  # noqa: SIM115
    except OSError as e:
        ctx.bad_input(str(path), "unreadable", str(e))
        return
    with f:
        lineno, seen = 0, False
        try:
            for lineno, line in enumerate(streams.lines(f, opts.max_record_bytes), start=1):
                where = f"{path}:{lineno}"
                if isinstance(line, int):
                    ctx.bad_input(where, "record_too_large", f"a line of {line:,} bytes")
                    continue
                if not line.strip():
                    continue
                seen = True
                try:
                    row = json.loads(line.decode("utf-8"))
                    text = row["text"]
                    if not isinstance(text, str):
                        raise TypeError("text is not a string")
                except UnicodeDecodeError as e:
                    ctx.bad_input(where, "bad_encoding", str(e))
                    continue
                except (ValueError, KeyError, TypeError, RecursionError) as e:
                    ctx.bad_input(where, "malformed_record", f"{type(e).__name__}: {e}"[:200])
                    continue
                meta = {"url": str(row.get("url", ""))}
                stamp = row.get("timestamp", row.get("date"))
                if stamp is not None:
                    meta["timestamp"] = normalize_timestamp(str(stamp))
                yield Document(
                    text=text, id=f"{path.name}/{lineno - 1}", source=NAME, metadata=meta
                )
        except (EOFError, OSError, zlib.error) as e:
            ctx.bad_input(str(path), "truncated", f"after line {lineno}: {e}")
            return
    if not seen:
        ctx.bad_input(str(path), "empty_file")


def prepare(opts: Options, input_root: Path, work_dir: Path) -> None:
    """Nothing to train: the language identifier ships with py3langid."""


def sentences(text: str) -> list[str]:
    return [s for s in _SENTENCE_END.split(text.strip()) if s]


def clean_page(text: str, opts: Options) -> str | tuple[str, None]:
    """C4's line filters; returns the cleaned text, or ``(reason, None)`` to drop the page."""
    kept, n_sentences = [], 0
    for line in text.split("\n"):
        line = line.strip()
        if any(len(word) > opts.max_word_length for word in line.split()):
            continue
        line = _CITATION.sub("", line)
        if not line.endswith(_END_MARKS) or line.endswith(_ELLIPSIS):
            continue
        if len(line.split()) < opts.min_words_per_line:
            continue
        lower = line.lower()
        if "lorem ipsum" in lower:
            return ("lorem_ipsum", None)
        if "javascript" in lower:
            continue
        if "{" in line:
            return ("curly_brace", None)
        if any(phrase in lower for phrase in _POLICY):
            continue
        n_sentences += len(sentences(line))
        kept.append(line)
    if n_sentences < opts.min_sentences:
        return ("too_few_sentences", None)
    return "\n".join(kept)


def _clean_step(opts: Options) -> Step:
    def fn(doc: Document) -> Document | str:
        out = clean_page(doc.text, opts)
        if isinstance(out, tuple):
            return out[0]
        doc.text = out
        return doc

    return map_step("c4_clean", fn)


def _span_key(span: list[str]) -> bytes:
    return hashlib.sha1("\n".join(span).encode("utf-8")).digest()[:8]


def span_dedup_step(opts: Options) -> Step:
    """Remove every ``dedup_span``-sentence span already seen in the shard (first one stays)."""
    n = opts.dedup_span

    def run(docs: Iterable[Document], ctx: Context) -> Iterator[Document]:
        seen: set[bytes] = set()
        for doc in docs:
            lines = [sentences(line) for line in doc.text.split("\n")]
            flat = [(i, s) for i, line in enumerate(lines) for s in line]
            keys = [_span_key([s for _, s in flat[j : j + n]]) for j in range(len(flat) - n + 1)]
            removed: set[int] = set()
            for j, key in enumerate(keys):
                if key in seen:
                    removed.update(range(j, j + n))
            seen.update(keys)
            if removed:
                out: list[list[str]] = [[] for _ in lines]
                for j, (i, s) in enumerate(flat):
                    if j not in removed:
                        out[i].append(s)
                doc.text = "\n".join(" ".join(line) for line in out if line)
                if len(flat) - len(removed) < opts.min_sentences:
                    ctx.drop(doc, "too_few_sentences")
                    continue
            yield doc

    return FunctionStep("c4_dedup", run)


def normalize_url(url: str) -> str:
    """C4's ``normalize_url``: no scheme or ``www.``, no tracking query, no trailing slash."""
    url = re.sub(r"https?:\/\/(www\.)?", "", url)
    url = re.sub(r"\?(utm_|ref|feed).*", "", url)
    return url.rstrip("/")


_ISO = re.compile(r"(\d{4})-(\d\d)-(\d\d)T(\d\d):(\d\d):(\d\d)Z")


def _url_key(doc: Document) -> int | None:
    url = doc.metadata.get("url", "")
    if not url:
        return None
    return int.from_bytes(hashlib.md5(normalize_url(url).encode("utf-8")).digest()[:8], "big")


def _time_key(doc: Document) -> int:
    """The timestamp as a number that sorts as C4 compares them (unknown: the oldest)."""
    m = _ISO.fullmatch(doc.metadata.get("timestamp", ""))
    return int("".join(m.groups())) if m else 0


def url_dedup_step() -> Step:
    """One page per normalized URL in the shard: the newest, the first read among equals.

    Two passes: the pages are spooled while the newest page of each URL is found, then read
    back in order with the others dropped (``duplicate_url``)."""

    def run(docs: Iterable[Document], ctx: Context) -> Iterator[Document]:
        best: dict[int, int] = {}  # URL hash -> timestamp * 2**32 + (2**32 - 1 - index)
        count = 0

        def see(doc: Document) -> None:
            nonlocal count
            if (key := _url_key(doc)) is not None:
                rank = (_time_key(doc) << 32) | (0xFFFFFFFF - count)
                best[key] = max(best.get(key, rank), rank)
            count += 1

        for i, doc in enumerate(spooled(docs, see)):
            key = _url_key(doc)
            if key is not None and best[key] & 0xFFFFFFFF != 0xFFFFFFFF - i:
                ctx.drop(doc, "duplicate_url")
            else:
                yield doc

    return FunctionStep("url_dedup", run)


def load_bad_words(path: str | Path | None = None) -> list[str]:
    if path is None:
        text = resources.files("pasture.data").joinpath("resources/ldnoobw_en.txt").read_text()
    else:
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as e:
            raise PastureError(f"bad_words_file={path}: cannot read ({e})") from e
    return [w.strip().lower() for w in text.splitlines() if w.strip() and not w.startswith("#")]


def bad_words_step(words: list[str]) -> Step:
    """C4's filter: a listed word or phrase, between non-word characters, drops the page."""
    pattern = re.compile(r"(?:\W|^)({})(?:\W|$)".format("|".join(map(re.escape, words))))
    return filter_step(
        "bad_words", lambda d: "bad_words" if pattern.search(d.text.lower()) else None
    )


def steps(opts: Options, work_dir: Path) -> list[Step]:
    limit = opts.max_page_chars
    first = [filter_step("length", lambda d: "too_long" if len(d.text) > limit else None)]
    if opts.url_dedup:
        first.append(url_dedup_step())
    return first + [
        _clean_step(opts),
        span_dedup_step(opts),
        bad_words_step(load_bad_words(opts.bad_words_file)),
        language_step(opts.languages, min_language_score(opts), opts.fasttext_model),
    ]


def min_language_score(opts: Options) -> float:
    if opts.min_language_score is not None:
        return opts.min_language_score
    return CALIBRATED_MIN_SCORE["fasttext" if opts.fasttext_model else "py3langid"]
