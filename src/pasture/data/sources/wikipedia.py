"""Wikipedia: MediaWiki XML export dumps, the paper's 20 languages (§2.1, "Wikipedia").

LLaMA adds "Wikipedia dumps from the June-August 2022 period, covering 20 languages, which use
either the Latin or Cyrillic scripts", and removes "hyperlinks, comments and other formatting
boilerplate". Here:

* ``read`` streams one dump (``.xml``, ``.bz2``, ``.xz``, ``.gz``; UTF-8 or UTF-16 with a BOM)
  through an XML pull parser, one page at a time, and yields the raw wikitext of the latest
  revision. A dump cut short (a truncated XML file or compressed stream) yields every complete
  page before the cut and then reports ``truncated``.
* ``steps`` keep the main namespace, skip redirects, keep the paper's languages, then turn the
  wikitext into plain text with ``mwparserfromhell``: links keep their label, and templates,
  tables, comments, references, file/category links and bold/italic markup go; headings stay
  as lines of text.

Document ids are ``<dbname>/<page id>`` (``dewiki/1234``): stable, and unique within the
source. Two dumps of one wiki may hold the same page (two dates, or a partial dump beside a
full one): the dumps of a wiki whose page ranges overlap (``…-p10p30302…`` in the file name;
a file without a range overlaps all its wiki's files) form one shard, ``prepare`` reads them
once for each repeated page's newest revision, and the ``dedup`` step keeps that revision only
(older ones are dropped as ``older_revision``, further copies of the same revision as
``duplicate``). A revision id only grows, so the newest revision is the page as the latest
dump has it, even when that made it a redirect or moved it out of the articles.
"""

from __future__ import annotations

import bz2
import codecs
import gzip
import json
import lzma
import re
import xml.etree.ElementTree as ET
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO
from urllib.parse import quote

import mwparserfromhell
from mwparserfromhell.nodes import (
    ExternalLink,
    Heading,
    HTMLEntity,
    Tag,
    Text,
    Wikilink,
)
from mwparserfromhell.parser import ParserError
from mwparserfromhell.wikicode import Wikicode

from ...files import write_text
from ..document import Context, Document, FunctionStep, Step, filter_step, map_step
from ..inputs import printable, why_not_readable
from ..streams import TagTooLarge, capped_xml

NAME = "wikipedia"

# The paper's list: the Wikipedias that use the Latin or Cyrillic script.
PAPER_LANGUAGES = (
    "bg", "ca", "cs", "da", "de", "en", "es", "fr", "hr", "hu",
    "it", "nl", "pl", "pt", "ro", "ru", "sl", "sr", "sv", "uk",
)  # fmt: skip


@dataclass
class Options:
    languages: tuple[str, ...] = PAPER_LANGUAGES
    namespaces: tuple[int, ...] = (0,)  # articles only
    # Longest XML text run (a page's wikitext, escaped) read; MediaWiki caps pages at 2 MB.
    max_text_chars: int = 16_000_000


_COMPRESSED = {".bz2", ".xz", ".gz"}
_CHUNK = 1 << 20


def find_inputs(root: Path, opts: Options) -> list[Path]:
    return sorted(
        path
        for path in (root / NAME).rglob("*")
        if path.is_file()
        and not path.name.startswith(("LICENSE", "."))
        and (path.suffix in _COMPRESSED or path.suffix == ".xml" or ".xml" in path.name)
    )


def shards(inputs: list[Path], opts: Options) -> list[list[Path]]:
    """One shard per dump, but the dumps of one wiki whose page ranges overlap go together:
    a page repeated across dumps is then deduplicated inside its shard."""
    groups: list[list[tuple[Path, tuple[int, int] | None]]] = []
    by_wiki: dict[str, list[list[tuple[Path, tuple[int, int] | None]]]] = {}
    for path in sorted(inputs):
        item = (path, _page_range(path))
        wiki_groups = by_wiki.setdefault(_wiki_of(path), [])
        overlapping = [g for g in wiki_groups if any(_overlap(item[1], r) for _, r in g)]
        merged = [item] + [x for g in overlapping for x in g]
        for g in overlapping:
            wiki_groups.remove(g)
            groups.remove(g)
        wiki_groups.append(merged)
        groups.append(merged)
    return sorted(sorted(p for p, _ in g) for g in groups)


_RANGE = re.compile(r"-p(\d+)p(\d+)")  # enwiki-…-pages-articles1.xml-p10p30302.bz2


def _page_range(path: Path) -> tuple[int, int] | None:
    m = _RANGE.search(path.name)
    return (int(m.group(1)), int(m.group(2))) if m else None


def _overlap(a: tuple[int, int] | None, b: tuple[int, int] | None) -> bool:
    return a is None or b is None or (a[0] <= b[1] and b[0] <= a[1])


_HEAD_CHARS = 1 << 16


def _wiki_of(path: Path) -> str:
    """The wiki a dump's document ids name (its ``<dbname>``), from the head of the dump as
    ``read`` finds it; "" when the head cannot be read (the reader reports why)."""
    dump, head = _Dump(path), ""
    try:
        with _open(path) as stream:
            for chunk in _decoded_chunks(stream):
                head += chunk
                if len(head) >= _HEAD_CHARS:
                    break
    except (OSError, EOFError, UnicodeDecodeError, lzma.LZMAError, zlib.error):
        pass
    head = head[:_HEAD_CHARS]
    if lang := re.search(r"<mediawiki\b[^>]*\sxml:lang=\"([^\"]+)\"", head):
        dump.dbname = f"{lang.group(1).replace('-', '_')}wiki"
    if dbname := re.search(r"<dbname>([^<]*)</dbname>", head):
        dump.dbname = dbname.group(1) or dump.dbname
    return dump.dbname


NEWEST = "newest_revisions.json"


def prepare(opts: Options, input_root: Path, work_dir: Path) -> None:
    """For the shards of several dumps, each repeated page's newest revision, in ``NEWEST``."""
    inputs = [p for p in find_inputs(input_root, opts) if why_not_readable(p, input_root) is None]
    newest: dict[str, int] = {}
    for shard in shards(inputs, opts):
        if len(shard) < 2:
            continue  # a dump holds each page once
        seen: dict[str, tuple[int, int]] = {}  # id -> (newest revision, copies)
        for path in shard:
            for doc in read(path, Context(shard="prepare"), opts):
                revision, copies = seen.get(printable(doc.id), (-1, 0))
                seen[printable(doc.id)] = (max(revision, _revision(doc)), copies + 1)
        newest.update({i: rev for i, (rev, copies) in seen.items() if copies > 1})
    write_text(work_dir / NEWEST, json.dumps(dict(sorted(newest.items())), indent=0) + "\n")


def _revision(doc: Document) -> int:
    revision = doc.metadata["revision_id"]
    return -1 if revision is None else revision


def dedup_step(newest: dict[str, int]) -> Step:
    """Keep, of a page repeated across a shard's dumps, its newest revision once."""

    def run(docs, ctx: Context):
        kept: set[str] = set()
        for doc in docs:
            revision = newest.get(doc.id)
            if revision is None:
                yield doc
            elif _revision(doc) != revision:
                ctx.drop(doc, "older_revision")
            elif doc.id in kept:
                ctx.drop(doc, "duplicate")
            else:
                kept.add(doc.id)
                yield doc

    return FunctionStep("dedup", run)


def steps(opts: Options, work_dir: Path) -> list[Step]:
    """The filters; with ``prepare``'s table in ``work_dir``, dedup across dumps first."""
    languages = set(opts.languages)
    namespaces = set(opts.namespaces)
    table = work_dir / NEWEST
    newest = json.loads(table.read_text()) if table.is_file() else {}
    return [
        dedup_step(newest),
        filter_step("namespace", lambda d: None if d.metadata["ns"] in namespaces else "namespace"),
        filter_step("redirect", lambda d: "redirect" if d.metadata["redirect"] else None),
        filter_step(
            "language", lambda d: None if d.metadata["language"] in languages else "language"
        ),
        map_step("wikitext", _clean),
    ]


# ---- reading -------------------------------------------------------------------------------


def _open(path: Path) -> BinaryIO:
    if path.suffix == ".bz2":
        return bz2.open(path, "rb")
    if path.suffix == ".xz":
        return lzma.open(path, "rb")
    if path.suffix == ".gz":
        return gzip.open(path, "rb")
    return open(path, "rb")


def _decoded_chunks(stream: BinaryIO) -> Iterator[str]:
    """The stream as text: UTF-8 (dumps are), or UTF-16 where a BOM says so. Before a bad byte,
    the text up to it, so that the pages before it still come out."""
    head = stream.read(4)
    utf16 = head.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE))
    decoder = codecs.getincrementaldecoder("utf-16" if utf16 else "utf-8-sig")()
    chunk = head
    while chunk:
        try:
            yield decoder.decode(chunk)
        except UnicodeDecodeError as err:
            yield codecs.decode(err.object[: err.start], err.encoding)
            raise
        chunk = stream.read(_CHUNK)
    try:
        yield decoder.decode(b"", final=True)
    except UnicodeDecodeError as err:
        raise EOFError(f"stream ends inside a character: {err}") from err


def _local(tag: str) -> str:
    return tag.rpartition("}")[2]  # drop the export schema's namespace, whatever its version


def _child(elem: ET.Element, name: str) -> ET.Element | None:
    for child in elem:
        if _local(child.tag) == name:
            return child
    return None


def _child_text(elem: ET.Element, name: str) -> str:
    child = _child(elem, name)
    return (child.text or "") if child is not None else ""


_XML_LANG = "{http://www.w3.org/XML/1998/namespace}lang"
_REDIRECT = re.compile(r"\s*#REDIRECT\b", re.I)  # the English keyword works in every wiki


def _int(value: str) -> int | None:
    return int(value) if value.lstrip("-").isdigit() else None


def _language_from_name(path: Path) -> str:
    match = re.match(r"([a-z][a-z_]*?)wiki", path.name)
    return match.group(1).replace("_", "-") if match else ""


class _Dump:
    """What the reader knows about the dump so far: its language and its database name."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.language = _language_from_name(path)
        self.dbname = f"{self.language.replace('-', '_')}wiki" if self.language else path.stem

    def root(self, elem: ET.Element) -> None:
        if elem.get(_XML_LANG):
            self.language = elem.get(_XML_LANG, "")
            self.dbname = f"{self.language.replace('-', '_')}wiki"

    def siteinfo(self, elem: ET.Element) -> None:
        self.dbname = _child_text(elem, "dbname") or self.dbname

    def page(self, elem: ET.Element) -> Document:
        title = _child_text(elem, "title")
        page_id = _child_text(elem, "id")
        revisions = [child for child in elem if _local(child.tag) == "revision"]
        revision = revisions[-1] if revisions else None  # the latest, in a history dump
        wikitext = _child_text(revision, "text") if revision is not None else ""
        ns = _child_text(elem, "ns")
        return Document(
            text=wikitext,
            id=f"{self.dbname}/{page_id or title}",
            source=NAME,
            metadata={
                "title": title,
                "url": f"https://{self.language}.wikipedia.org/wiki/"
                + quote(title.replace(" ", "_"), safe="/:(),'!*"),
                "language": self.language,
                "page_id": _int(page_id),
                "revision_id": _int(_child_text(revision, "id")) if revision is not None else None,
                "timestamp": _child_text(revision, "timestamp") if revision is not None else "",
                "ns": _int(ns) or 0,
                # <redirect/> since schema 0.4; before it, only the text says so
                "redirect": _child(elem, "redirect") is not None or bool(_REDIRECT.match(wikitext)),
                "file": self.path.name,
            },
        )


def read(path: Path, ctx: Context, opts: Options) -> Iterator[Document]:
    """Every complete ``<page>`` of one dump, in file order, with its raw wikitext."""
    dump = _Dump(path)
    parser = ET.XMLPullParser(("start", "end"))
    root: ET.Element | None = None
    seen_text = False

    def pages() -> Iterator[Document]:
        nonlocal root
        for event, elem in parser.read_events():
            if event == "start":
                if root is None:
                    root = elem
                    dump.root(elem)
                continue
            name = _local(elem.tag)
            if name == "siteinfo":
                dump.siteinfo(elem)
            elif name == "page":
                yield dump.page(elem)
            else:
                continue
            if root is not None and elem in root:
                root.remove(elem)  # keep memory flat: each page is dropped once read

    def cut(length: int) -> None:
        ctx.bad_input(str(path), "text_too_large", f"{length:,} characters of text left out")

    try:
        with _open(path) as stream:
            for text in capped_xml(_decoded_chunks(stream), opts.max_text_chars, cut):
                seen_text = seen_text or bool(text.strip())
                parser.feed(text)
                yield from pages()
    except TagTooLarge as err:
        yield from _drain(pages)
        ctx.bad_input(str(path), "record_too_large", str(err))
        return
    except EOFError as err:  # a compressed stream that ends before its end-of-stream marker
        yield from _drain(pages)
        ctx.bad_input(str(path), "truncated", str(err))
        return
    except UnicodeDecodeError as err:
        yield from _drain(pages)
        ctx.bad_input(str(path), "bad_encoding", str(err))
        return
    except ET.ParseError as err:
        ctx.bad_input(str(path), "bad_xml", str(err))
        return
    except (OSError, lzma.LZMAError, zlib.error) as err:
        yield from _drain(pages)
        ctx.bad_input(str(path), "corrupt", str(err))
        return
    if not seen_text:
        ctx.bad_input(str(path), "empty_file")
        return
    try:
        parser.close()
    except ET.ParseError as err:
        # The stream ended inside an element: a dump cut short, the pages before the cut are good.
        yield from _drain(pages)
        ctx.bad_input(str(path), "truncated", str(err))
        return
    yield from pages()


def _drain(pages) -> Iterator[Document]:
    """The complete pages the parser had seen before a failure, if it can still give them."""
    try:
        yield from pages()
    except ET.ParseError:
        return


# ---- wikitext to text ----------------------------------------------------------------------

# Link prefixes that are not text on the page: files, media and categories, in English (valid
# in every wiki) and in the paper's languages (MediaWiki's localized names and aliases).
_HIDDEN_NAMESPACES = frozenset(
    name.casefold()
    for name in (
        "File", "Image", "Media", "Category",
        "Файл", "Картинка", "Медия", "Категория",  # bg
        "Fitxer", "Imatge", "Multimèdia", "Categoria",  # ca
        "Soubor", "Obrázek", "Média", "Kategorie",  # cs
        "Fil", "Billede", "Medie", "Kategori",  # da
        "Datei", "Bild", "Medium",  # de
        "Archivo", "Imagen", "Medio", "Categoría",  # es
        "Fichier", "Catégorie",  # fr
        "Datoteka", "Slika", "Mediji", "Kategorija",  # hr, sl
        "Fájl", "Kép", "Kategória",  # hu
        "Immagine",  # it
        "Bestand", "Afbeelding", "Categorie",  # nl
        "Plik", "Grafika", "Kategoria",  # pl
        "Ficheiro", "Arquivo", "Imagem", "Multimédia",  # pt
        "Fișier", "Fişier", "Imagine",  # ro
        "Изображение", "Медиа",  # ru
        "Датотека", "Слика", "Медиј", "Категорија",  # sr
        "Зображення", "Медіа", "Категорія",  # uk
    )
)  # fmt: skip
_INTERLANGUAGE = re.compile(r"[a-z]{2,3}(-[a-z]{2,8})*|simple")
# Tags whose content is not running text: tables (also in ``{| … |}`` form), references,
# math and code-like extensions, galleries and the like.
_HIDDEN_TAGS = frozenset(
    {
        "table", "ref", "references", "math", "chem", "ce", "gallery", "imagemap", "timeline",
        "graph", "score", "templatedata", "inputbox", "categorytree", "section", "syntaxhighlight",
        "source", "hiero", "mapframe", "maplink", "indicator", "nowiki", "noinclude",
    }
)  # fmt: skip
_BREAK_TAGS = frozenset({"br", "p", "div", "tr", "li", "dt", "dd", "hr"})
_MAGIC_WORD = re.compile(r"__[A-Z]+__")


def _hidden_link(title: str) -> bool:
    title = title.strip()
    if title.startswith(":"):  # [[:Category:X]] is a visible link
        return False
    prefix, colon, _ = title.partition(":")
    if not colon:
        return False
    prefix = prefix.strip().replace("_", " ")
    return prefix.casefold() in _HIDDEN_NAMESPACES or bool(_INTERLANGUAGE.fullmatch(prefix))


def _plain(code: Wikicode) -> str:
    parts: list[str] = []
    for node in code.nodes:
        if isinstance(node, Text):
            parts.append(node.value)
        elif isinstance(node, HTMLEntity):
            parts.append(node.normalize())
        elif isinstance(node, Wikilink):
            if not _hidden_link(str(node.title)):
                label = node.text if node.text is not None else node.title
                parts.append(_plain(label).lstrip(":"))
        elif isinstance(node, ExternalLink):
            if not node.brackets:
                parts.append(str(node.url))
            elif node.title is not None:
                parts.append(_plain(node.title))
        elif isinstance(node, Heading):
            parts.append(_plain(node.title).strip())
        elif isinstance(node, Tag):
            tag = str(node.tag).strip().lower()
            if tag in _HIDDEN_TAGS:
                continue
            if tag in _BREAK_TAGS and node.wiki_markup is None:
                parts.append("\n")
            if node.contents is not None and not node.self_closing:
                parts.append(_plain(node.contents))
        # Templates, comments and template arguments are not text.
    return "".join(parts)


# mwparserfromhell leaves markup it cannot balance (an unclosed ``''`` or ``{{`` earlier on the
# page, a page cut short) as plain text; these take out what is left of it.
_RESIDUE_BLOCK = re.compile(
    r"<(ref|math|gallery|timeline|score|syntaxhighlight|source)\b[^<>]*?(?:/>|>.*?</\1\s*>)",
    re.S | re.I,
)
_RESIDUE_TAG = re.compile(
    r"</?(?:ref|references|blockquote|div|span|small|big|sup|sub|center|br|p|u|s|code|poem|"
    r"nowiki|font|abbr|cite|table|tr|td|th|onlyinclude|includeonly|noinclude)\b[^<>]*>",
    re.I,
)
_RESIDUE_TEMPLATE = re.compile(r"\{\{[^{}]*\}\}")
_RESIDUE_TABLE = re.compile(r"\{\|(?:(?!\{\|).)*?\|\}", re.S)
_RESIDUE_LINK = re.compile(r"\[\[([^\[\]]*)\]\]")
_RESIDUE_TOKEN = re.compile(r"'{2,}|\[\[|\]\]|\{\{|\}\}|\{\||\|\}")


def _link_label(match: re.Match) -> str:
    title, bar, label = match.group(1).partition("|")
    if _hidden_link(title):
        return ""
    return (label.rpartition("|")[2] if bar else title).lstrip(":")


def _until_stable(pattern: re.Pattern, repl, text: str) -> str:
    while True:  # innermost first, so nested templates and tables go too
        text, n = pattern.subn(repl, text)
        if not n:
            return text


def _scrub(text: str) -> str:
    text = _RESIDUE_BLOCK.sub("", text)
    text = _RESIDUE_TAG.sub("", text)
    text = _until_stable(_RESIDUE_TEMPLATE, "", text)
    text = _until_stable(_RESIDUE_TABLE, "", text)
    text = _until_stable(_RESIDUE_LINK, _link_label, text)
    return _RESIDUE_TOKEN.sub("", text)


def wikitext_to_text(wikitext: str) -> str:
    """Plain text of a page: what a reader sees of its prose, headings as lines of their own."""
    text = _scrub(_plain(mwparserfromhell.parse(wikitext)))
    text = _MAGIC_WORD.sub("", text)
    lines = [" ".join(line.split()) for line in text.split("\n")]
    text = "\n".join(lines)
    return re.sub(r"\n{3,}", "\n\n", text).strip()


def _clean(doc: Document) -> Document | str:
    try:
        text = wikitext_to_text(doc.text)
    except ParserError:
        return "bad_wikitext"
    if not text:
        return "empty"
    doc.text = text
    return doc
