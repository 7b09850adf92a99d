"""CommonCrawl through the CCNet pipeline (LLaMA §2.1; Wenzek et al. 2020).

Reads WET files (``conversion`` records, as CCNet does) and WARC files (``response`` records,
HTML → text with resiliparse's main-content extraction), then: cc_net's ``min_len`` (pages
under 300 characters go) → line dedup across the shard group (``line_dedup = "ccnet"``: cc_net's
paper mode, every line found in two pages removed from all of them; ``"keep_first"``: Pasture's
earlier rule) → language id → n-gram LM perplexity buckets (head/middle/tail) → optionally LLaMA's
reference-page classifier. Output metadata follows CCNet's fields (url, date_download, digest,
source_domain, title, length, nlines, original_length, original_nlines, line_ids, language,
language_score, perplexity, bucket, cc_segment, provenance).

The perplexity LM. CCNet trains a SentencePiece + 5-gram KenLM per language on Wikipedia and
cuts at the 30th/60th percentile of the perplexities of CommonCrawl documents. ``prepare``
trains the same shape (SentencePiece unigram + interpolated Kneser-Ney 5-gram, in Python) on the
Wikipedia source of the run, holds out every 10th Wikipedia article, and sets the cutoffs to
``bucket_cutoffs`` × the median held-out Wikipedia perplexity. The default ratios (1.6, 2.2)
put 30%/30%/40% of the English pages of ``reference_processed/dolma_*.jsonl.gz`` (real,
unfiltered CC) into head/middle/tail, CCNet's split, with the LM trained on the sample enwiki
dump (held-out median 234); 17 of the 20 documents of CCNet's own ``cc_en_head`` sample fall
under the head cutoff. Retune them for another LM size. A user KenLM model
(``kenlm_model``) or absolute ``perplexity_cutoffs`` replace either part. We keep head and middle
(RedPajama's reading of LLaMA; the paper does not say which buckets it kept).

The reference classifier runs only when ``reference_classifier`` is set: no data of pages cited
by Wikipedia ships with the samples, so there is nothing to train a default on.

    prepare(Options(), Path("data/pretrain"), Path("work"))   # trains work/ccnet_lm_en.*
    steps(Options(), Path("work"))
"""

from __future__ import annotations

import base64
import functools
import gzip
import hashlib
import json
import re
import statistics
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any
from urllib.parse import urlparse

from ...errors import PastureError
from .. import streams
from ..ccnet import dedup, language, quality
from ..document import Context, Document, Step, run_steps

NAME = "commoncrawl"


_LINE_DEDUP = {"ccnet": dedup.line_dedup_step, "keep_first": dedup.keep_first_dedup_step}


@dataclass
class Options:
    files_per_shard: int = 8  # CCNet dedups lines across a group of WET files
    languages: list[str] = field(default_factory=lambda: ["en"])
    min_language_score: float = 0.5  # CCNet's fastText threshold
    fasttext_model: str | None = None  # lid.176.bin; default py3langid
    kenlm_model: str | dict[str, str] | None = None  # a path, or language → path
    sentencepiece_model: str | dict[str, str] | None = None  # the KenLM model's tokenizer
    lm_order: int = 5  # CCNet: 5-gram
    lm_vocab_size: int = 8000  # SentencePiece pieces; small, as the training text is small
    lm_max_chars: int = 20_000_000  # Wikipedia text per language used to train the LM
    lm_training_text: str | None = None  # a text file (blank-line separated) instead of Wikipedia
    bucket_cutoffs: tuple[float, float] = (1.6, 2.2)  # × median held-out Wikipedia perplexity
    perplexity_cutoffs: dict[str, list[float]] | None = None  # absolute, per language
    keep_buckets: list[str] = field(default_factory=lambda: ["head", "middle"])
    reference_classifier: str | dict[str, str] | None = None  # model path or positives/negatives
    min_reference_score: float = 0.5
    max_line_bytes: int = 1_000_000  # a longer line in a WET file drops its record
    max_record_bytes: int = 8_000_000  # CommonCrawl truncates records at 1 MiB
    # "ccnet": cc_net's paper mode (every copy of a line in two pages goes); "keep_first":
    # Pasture's earlier rule (first copy kept, accents and punctuation folded)
    line_dedup: str = "ccnet"
    min_length: int = 300  # cc_net's min_len: shorter pages (characters) are dropped first

    def __post_init__(self) -> None:
        if self.line_dedup not in _LINE_DEDUP:
            raise PastureError(
                f"sources.commoncrawl.line_dedup = {self.line_dedup!r}: use one of "
                + ", ".join(repr(m) for m in _LINE_DEDUP)
            )


def find_inputs(root: Path, opts: Options) -> list[Path]:
    base = Path(root) / NAME
    found = [*base.glob("wet/*.wet"), *base.glob("wet/*.wet.gz")]
    found += [*base.glob("warc/*.warc"), *base.glob("warc/*.warc.gz")]
    return sorted(found)


def shards(inputs: list[Path], opts: Options) -> list[list[Path]]:
    n = max(1, opts.files_per_shard)
    return [inputs[i : i + n] for i in range(0, len(inputs), n)]


def read(path: Path, ctx: Context, opts: Options) -> Iterator[Document]:
    if path.name.endswith((".wet", ".wet.gz")):
        yield from read_wet(path, ctx, opts)
    else:
        yield from read_warc(path, ctx, opts)


# ---------------------------------------------------------------- WET

_RECORD_START = {"WARC/1.0", "WARC/1.1"}
_TOO_LARGE = "\x00too_large"  # a header key no WARC line can produce


def _open(path: Path) -> IO[bytes]:
    return gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")  # noqa: SIM115


def _wet_records(
    path: Path, ctx: Context, opts: Options
) -> Iterator[tuple[dict[str, str], list[str]]]:
    """(headers, body lines) per record, split on ``WARC/1.0`` lines as CCNet's ``parse_doc``
    does: Content-Length is ignored (CCNet's own fixture gets it wrong). A record cut off by a
    truncated file is not yielded; a line over ``max_line_bytes`` or a record over
    ``max_record_bytes`` is cut out and counted (``record_too_large``)."""
    headers: dict[str, str] | None = None
    body: list[str] = []
    in_headers = False
    size = 0
    try:
        f = _open(path)
    except OSError as e:
        ctx.bad_input(str(path), "unreadable", str(e))
        return
    with f:
        try:
            for raw in streams.lines(f, opts.max_line_bytes):
                if isinstance(raw, int):
                    if headers is None or _TOO_LARGE not in headers:
                        ctx.bad_input(str(path), "record_too_large", f"a line of {raw:,} bytes")
                    if headers is not None:
                        headers[_TOO_LARGE], body = "", []  # the record is dropped
                    continue
                line = raw.decode("utf-8", errors="replace").rstrip("\r\n")
                if line.strip() in _RECORD_START:
                    if headers is not None:
                        yield headers, body
                    headers, body, in_headers, size = {}, [], True, 0
                    continue
                size += len(raw)
                if headers is not None and (_TOO_LARGE in headers or size > opts.max_record_bytes):
                    if _TOO_LARGE not in headers:
                        ctx.bad_input(str(path), "record_too_large", f"over {size:,} bytes")
                        headers[_TOO_LARGE] = ""
                    body = []
                    continue
                if headers is None:
                    if line.strip():
                        headers = {"": line}  # text before any record: reported once, below
                        in_headers = False
                elif in_headers:
                    if not line.strip():
                        in_headers = False
                    else:
                        key, sep, value = line.partition(":")
                        headers[key.strip() if sep else ""] = value.strip() if sep else line
                else:
                    body.append(line)
        except (EOFError, OSError, zlib.error) as e:
            ctx.bad_input(str(path), "truncated", str(e))
            return
    if headers is not None:
        yield headers, body


def read_wet(path: Path, ctx: Context, opts: Options | None = None) -> Iterator[Document]:
    """CCNet's WET reading: title is the first line of a conversion record, the rest the text."""
    opts = opts or Options()
    segment, crawl = path.name, None
    for index, (headers, body) in enumerate(_wet_records(path, ctx, opts)):
        where = f"{path}#record{index}"
        if _TOO_LARGE in headers:
            continue  # counted when it was cut
        warc_type = headers.get("WARC-Type")
        if "" in headers or warc_type is None:
            ctx.bad_input(where, "malformed_record", f"bad header line {headers.get('', '')!r}")
            continue
        if warc_type == "warcinfo":
            segment = headers.get("WARC-Filename", segment)
            info = dict(line.partition(":")[::2] for line in body if ":" in line)
            crawl = info.get("isPartOf", "").strip() or crawl
            continue
        if warc_type != "conversion":
            continue
        url = headers.get("WARC-Target-URI")
        if not url:
            ctx.bad_input(where, "malformed_record", "conversion record without WARC-Target-URI")
            continue
        # cc_net's group_by_docs: stripped lines, empty ones left out; the first is the title.
        lines = [line.strip() for line in body if line.strip()]
        title, lines = (lines[0], lines[1:]) if lines else ("", [])
        meta = _metadata(url, headers.get("WARC-Date", ""), headers.get("WARC-Block-Digest", ""))
        meta.update(title=title, cc_segment=segment, provenance=f"{path.name}:{index}")
        if crawl:
            meta["crawl"] = crawl
        if "WARC-Identified-Content-Language" in headers:
            meta["cc_languages"] = headers["WARC-Identified-Content-Language"]
        yield from _document(path, index, "\n".join(lines), meta, ctx)


def _metadata(url: str, date: str, digest: str) -> dict[str, Any]:
    return {
        "url": url,
        "date_download": date,
        "digest": digest,
        "source_domain": urlparse(url).netloc,
    }


def _document(
    path: Path, index: int, text: str, meta: dict[str, Any], ctx: Context
) -> Iterator[Document]:
    meta.update(length=len(text), nlines=len(text.split("\n")) if text else 0)
    doc = Document(text=text, id=f"{path.name}/{index}", source=NAME, metadata=meta)
    if text.strip():
        yield doc
    else:
        ctx.drop(doc, "empty")


# ---------------------------------------------------------------- WARC

_CHARSET = re.compile(r"charset\s*=\s*[\"']?([\w.:-]+)", re.I)


def read_warc(path: Path, ctx: Context, opts: Options | None = None) -> Iterator[Document]:
    """``response`` records with HTML; text by resiliparse main-content extraction, decoded with
    the HTTP charset, else a detected one. Truncated gzip → ``truncated``, records before stay."""
    from fastwarc.warc import ArchiveIterator, WarcRecordType

    opts = opts or Options()
    segment = path.name
    try:
        f = _open(path)
    except OSError as e:
        ctx.bad_input(str(path), "unreadable", str(e))
        return
    # Python's gzip (not fastwarc's own) so a cut-off member raises instead of ending quietly.
    types = WarcRecordType.warcinfo | WarcRecordType.response
    with f:
        try:
            for index, record in enumerate(ArchiveIterator(f, record_types=types, parse_http=True)):
                if record.record_type == WarcRecordType.warcinfo:
                    segment = record.headers.get("WARC-Filename", segment)
                    continue
                body = record.reader.read(opts.max_record_bytes + 1)
                if len(body) > opts.max_record_bytes:
                    where = f"{path}#record{index}"
                    ctx.bad_input(where, "record_too_large", "over max_record_bytes")
                    continue
                doc = _warc_document(path, index, record, body, segment, ctx)
                if doc is not None:
                    yield doc
        except (EOFError, OSError, zlib.error) as e:
            ctx.bad_input(str(path), "truncated", str(e))


def _warc_document(
    path: Path, index: int, record: Any, body: bytes, segment: str, ctx: Context
) -> Document | None:
    from resiliparse.extract.html2text import extract_plain_text
    from resiliparse.parse.encoding import bytes_to_str, detect_encoding
    from resiliparse.parse.html import HTMLTree

    url = record.headers.get("WARC-Target-URI")
    if not url or record.http_headers is None:
        ctx.bad_input(f"{path}#record{index}", "malformed_record", "no target URI or HTTP head")
        return None
    content_type = record.http_headers.get("Content-Type", "")
    meta = _metadata(url, record.headers.get("WARC-Date", ""), "")
    meta.update(cc_segment=segment, provenance=f"{path.name}:{index}")
    if content_type and not re.match(r"\s*(text/html|application/xhtml)", content_type, re.I):
        ctx.drop(Document("", f"{path.name}/{index}", NAME, meta), "not_html")
        return None
    match = _CHARSET.search(content_type)
    html = bytes_to_str(body, match.group(1) if match else detect_encoding(body))
    tree = HTMLTree.parse(html)
    text = extract_plain_text(tree, main_content=True)
    text = "\n".join(line.strip() for line in text.split("\n") if line.strip())
    sha1 = hashlib.sha1(text.encode("utf-8")).digest()
    meta.update(digest="sha1:" + base64.b32encode(sha1).decode(), title=(tree.title or "").strip())
    docs = list(_document(path, index, text, meta, ctx))
    return docs[0] if docs else None


# ---------------------------------------------------------------- prepare and steps


def _paths(work_dir: Path, lang: str) -> dict[str, Path]:
    stem = Path(work_dir) / f"ccnet_lm_{lang}"
    return {
        "sp": stem.with_suffix(".sp.model"),
        "lm": stem.with_suffix(".npz"),
        "info": stem.with_suffix(".json"),
    }


def _per_language(value: str | dict[str, str] | None, lang: str) -> str | None:
    return value.get(lang) if isinstance(value, dict) else value


def wikipedia_texts(input_root: Path, lang: str, work_dir: Path) -> Iterator[str]:
    """Article texts in ``lang`` from the run's Wikipedia source: its reader and steps (main
    namespace, no redirects, wikitext → text). Dumps named for another language
    (``<lang>wiki…``, Wikimedia's naming) are not read."""
    try:
        from . import wikipedia
    except ImportError:
        yield from _wikipedia_fallback(Path(input_root) / "wikipedia", lang)
        return
    wiki_opts = wikipedia.Options(languages=(lang,))
    wiki_steps = wikipedia.steps(wiki_opts, work_dir)
    paths = wikipedia.find_inputs(Path(input_root), wiki_opts)
    named = [p for p in paths if p.name.startswith(f"{lang}wiki")]
    for path in named or paths:
        ctx = Context(shard=f"ccnet_lm/{path.name}")
        for doc in run_steps(wikipedia.read(path, ctx, wiki_opts), wiki_steps, ctx):
            yield doc.text


def _wikipedia_fallback(folder: Path, lang: str) -> Iterator[str]:
    """Minimal MediaWiki reader (ns 0, no redirects, mwparserfromhell's ``strip_code``) for
    ``<lang>wiki*`` dumps, used until the Wikipedia source module exists."""
    import bz2
    import lzma
    import xml.etree.ElementTree as ET

    import mwparserfromhell

    openers = {".bz2": bz2.open, ".xz": lzma.open, ".gz": gzip.open}
    refs = re.compile(r"<ref[^>]*/>|<ref.*?</ref>", re.S)
    for path in sorted(folder.glob(f"{lang}wiki*")):
        try:
            with openers.get(path.suffix, open)(path, "rb") as f:
                for _, el in ET.iterparse(f):
                    if not el.tag.endswith("}page"):
                        continue
                    text = el.findtext("{*}revision/{*}text") or ""
                    if el.findtext("{*}ns") == "0" and not text.lower().startswith("#redirect"):
                        yield mwparserfromhell.parse(refs.sub("", text)).strip_code().strip()
                    el.clear()
        except (EOFError, OSError, ET.ParseError):
            continue  # truncated dumps: the pages before the cut are used


def prepare(opts: Options, input_root: Path, work_dir: Path) -> None:
    """Train the per-language LMs (unless ``kenlm_model``), set the bucket cutoffs, and train
    the reference classifier when given positives/negatives."""
    work_dir = Path(work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    for lang in opts.languages:
        if opts.lm_training_text:
            texts = quality.read_text_documents(Path(opts.lm_training_text))
        elif _per_language(opts.kenlm_model, lang) and opts.perplexity_cutoffs:
            texts = []
        else:
            texts = _capped(wikipedia_texts(Path(input_root), lang, work_dir), opts.lm_max_chars)
        train, held_out = [t for i, t in enumerate(texts) if i % 10 != 9], texts[9::10]
        paths = _paths(work_dir, lang)
        info: dict[str, Any] = {"language": lang}
        if not _per_language(opts.kenlm_model, lang):
            if len(train) < 2 or not held_out:
                raise PastureError(
                    f"commoncrawl: too little {lang} text to train the perplexity LM "
                    f"({len(texts)} documents under {Path(input_root) / 'wikipedia'}); add a "
                    f"{lang}wiki dump, set lm_training_text, or set kenlm_model"
                )
            lines = [line for text in train for line in text.split("\n") if line.strip()]
            tokens = quality.SentencePieceTokens.train(lines, opts.lm_vocab_size)
            lm = quality.NgramLM.train(map(tokens, lines), tokens.vocab_size, opts.lm_order)
            paths["sp"].write_bytes(tokens.proto)
            lm.save(paths["lm"])
            info.update(order=opts.lm_order, train_documents=len(train), train_lines=len(lines))
        if opts.perplexity_cutoffs and lang in opts.perplexity_cutoffs:
            info["cutoffs"] = list(opts.perplexity_cutoffs[lang])
        else:
            model = _load_model(opts, work_dir, lang)
            median = statistics.median(model.perplexity(t) for t in held_out)
            info["held_out_documents"] = len(held_out)
            info["held_out_median_perplexity"] = median
            info["cutoffs"] = [round(r * median, 1) for r in opts.bucket_cutoffs]
        paths["info"].write_text(json.dumps(info, indent=1) + "\n")
    if isinstance(opts.reference_classifier, dict):
        try:
            pos = quality.read_text_documents(Path(opts.reference_classifier["positives"]))
            neg = quality.read_text_documents(Path(opts.reference_classifier["negatives"]))
        except KeyError as e:
            raise PastureError(
                f"reference_classifier needs keys 'positives' and 'negatives' (missing {e})"
            ) from e
        clf = quality.train_reference_classifier(pos, neg)
        clf.save(work_dir / "ccnet_reference_classifier.npz")


def _capped(texts: Iterable[str], max_chars: int) -> list[str]:
    out, total = [], 0
    for text in texts:
        if not text:
            continue
        out.append(text)
        total += len(text)
        if total >= max_chars:
            break
    return out


def _load_model(opts: Options, work_dir: Path, lang: str) -> quality.PerplexityModel:
    kenlm_path = _per_language(opts.kenlm_model, lang)
    if kenlm_path:
        sp_path = _per_language(opts.sentencepiece_model, lang)
        tokens = quality.SentencePieceTokens(sp_path) if sp_path else None
        return quality.PerplexityModel(tokens, quality.KenlmScorer(kenlm_path))
    paths = _paths(work_dir, lang)
    if not paths["lm"].is_file():
        raise PastureError(f"{paths['lm']}: no {lang} perplexity LM; run the prepare step first")
    lm = _load_ngram(str(paths["lm"]), paths["lm"].stat().st_mtime_ns)
    return quality.PerplexityModel(quality.SentencePieceTokens(paths["sp"]), lm)


@functools.lru_cache(maxsize=4)
def _load_ngram(path: str, mtime_ns: int) -> quality.NgramLM:
    """Loading takes seconds: once per worker process, not once per shard (mtime: a retrained
    model is reloaded)."""
    del mtime_ns
    return quality.NgramLM.load(Path(path))


def steps(opts: Options, work_dir: Path) -> list[Step]:
    work_dir = Path(work_dir)
    models, cutoffs = {}, {}
    for lang in opts.languages:
        info_path = _paths(work_dir, lang)["info"]
        if not info_path.is_file():
            raise PastureError(f"{info_path}: missing; run the commoncrawl prepare step first")
        cutoffs[lang] = json.loads(info_path.read_text())["cutoffs"]
        models[lang] = _load_model(opts, work_dir, lang)
    out = [
        dedup.length_step(opts.min_length),
        _LINE_DEDUP[opts.line_dedup](),
        language.language_step(opts.languages, opts.min_language_score, opts.fasttext_model),
        quality.perplexity_step(models, cutoffs, opts.keep_buckets),
    ]
    if opts.reference_classifier:
        path = (
            work_dir / "ccnet_reference_classifier.npz"
            if isinstance(opts.reference_classifier, dict)
            else Path(opts.reference_classifier)
        )
        clf = quality.ReferenceClassifier.load(path)
        out.append(quality.reference_step(clf, opts.min_reference_score))
    return out
