"""Stack Exchange: ``Posts.xml`` from the data dump (§2.1, "Stack Exchange").

LLaMA "kept the data from the 28 largest websites, removed the HTML tags from text and sorted
the answers by score (from highest to lowest)". Here one document is one question: its title,
its body, then its answers from the highest score down (ties: the older answer, by Id, first),
separated by blank lines, with the HTML turned into text (code blocks keep their text and
layout; entities are decoded).

``read`` streams one site's ``Posts.xml`` (``<site>/Posts.xml``; the site is the folder's name)
and groups answers under their question in memory, so an answer may come before or after its
question in the file. That is fine for all but the largest sites; a full stackoverflow.com dump
(~100 GB of XML) wants a sort-by-ParentId pass first. If the XML breaks mid-file, every question
read so far comes out, with the answers read so far, and the file is reported as ``bad_xml``.

Which sites: the paper keeps "the 28 largest websites" and names none. By default (``sites``
empty) ``prepare`` counts the posts (``<row>`` elements) of every site's ``Posts.xml`` given
and keeps the ``largest_sites`` largest (ties: by name), as RedPajama's ``count.py`` does, and
writes the choice with their counts to ``sites.json`` in its work folder. ``sites = ["*"]``
keeps every site; a list of names keeps those. ``steps`` drop the other sites' questions
(reason ``site``) and empty questions.
"""

from __future__ import annotations

import codecs
import contextlib
import json
import xml.etree.ElementTree as ET
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from resiliparse.extract.html2text import extract_plain_text

from ...errors import PastureError
from ...files import write_text
from ..document import Context, Document, Step, filter_step
from ..inputs import why_not_readable
from ..streams import TagTooLarge, capped_xml

NAME = "stackexchange"


@dataclass
class Options:
    sites: Sequence[str] = ()  # empty: the largest_sites largest given; ["*"]: every site
    largest_sites: int = 28  # the paper's "28 largest websites", by number of posts

    def __post_init__(self) -> None:
        if self.largest_sites < 1:
            raise PastureError(
                f"sources.stackexchange.largest_sites = {self.largest_sites}: keep at least one "
                'site (sites = ["*"] keeps them all)'
            )

    max_row_chars: int = 16_000_000  # a longer <row …/> (one post) stops reading its file


def find_inputs(root: Path, opts: Options) -> list[Path]:
    return sorted(path for path in (root / NAME).glob("*/Posts.xml") if path.is_file())


def shards(inputs: list[Path], opts: Options) -> list[list[Path]]:
    return [[path] for path in inputs]


SITES_FILE = "sites.json"


def count_posts(path: Path) -> int:
    """The ``<row`` elements of a ``Posts.xml`` (posts of every type, as RedPajama counts)."""
    count, tail = 0, b""
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            data = tail + chunk
            count += data.count(b"<row")
            tail = data[-3:]  # a "<row" split between two reads is whole in the next
    return count


def prepare(opts: Options, input_root: Path, work_dir: Path) -> None:
    """The sites to keep, by default the ``largest_sites`` largest given, in ``SITES_FILE``."""
    if opts.sites:
        record = {"rule": "listed", "sites": sorted(opts.sites)}
    else:
        inputs = find_inputs(input_root, opts)
        readable = [p for p in inputs if why_not_readable(p, input_root) is None]
        posts = {path.parent.name: count_posts(path) for path in readable}
        chosen = sorted(sorted(posts, key=lambda site: (-posts[site], site))[: opts.largest_sites])
        # Only the chosen sites: a smaller dump added later changes nothing (nor the shard keys)
        record = {
            "rule": f"the {opts.largest_sites} largest sites given, by number of posts",
            "sites": chosen,
            "posts": {site: posts[site] for site in chosen},
        }
    write_text(work_dir / SITES_FILE, json.dumps(record, indent=1) + "\n")


def steps(opts: Options, work_dir: Path) -> list[Step]:
    if opts.sites:
        sites = set(opts.sites)
    else:
        try:
            sites = set(json.loads((work_dir / SITES_FILE).read_text())["sites"])
        except (OSError, ValueError, KeyError) as e:
            raise PastureError(
                f"{work_dir / SITES_FILE}: cannot read the chosen sites ({e}); run "
                "stackexchange.prepare first, or set sources.stackexchange.sites"
            ) from None
    any_site = "*" in sites
    return [
        filter_step("site", lambda d: None if any_site or d.metadata["site"] in sites else "site"),
        filter_step("empty", lambda d: None if d.text.strip() else "empty"),
    ]


# ---- reading -------------------------------------------------------------------------------

_QUESTION, _ANSWER = "1", "2"
_CHUNK = 1 << 20


def html_to_text(html: str) -> str:
    """Text of a post body: paragraphs and code blocks keep their line breaks; no image alts."""
    if not html:
        return ""
    text = extract_plain_text(html, main_content=False, alt_texts=False, links=False)
    return text.strip()


class _Site:
    """The questions and answers of one file, in file order, until they are written out."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.site = path.parent.name
        self.root: ET.Element | None = None
        self.questions: dict[str, dict[str, str]] = {}  # by Id, in file order
        self.answers: dict[str, list[dict[str, str]]] = {}  # by ParentId

    def add(self, row: dict[str, str]) -> str | None:
        """Keep a question or an answer; the reason when the row is unusable, else None."""
        kind = row.get("PostTypeId")
        if kind not in (_QUESTION, _ANSWER):
            return None  # wiki excerpts, tag descriptions, ...: not part of a question
        key = "Id" if kind == _QUESTION else "ParentId"
        if _int(row.get(key)) is None or _int(row.get("Id")) is None:
            return "malformed_record"
        if kind == _QUESTION:
            self.questions[row["Id"]] = row
        else:
            self.answers.setdefault(row["ParentId"], []).append(row)
        return None

    def documents(self) -> Iterator[Document]:
        for qid, question in self.questions.items():
            answers = sorted(self.answers.get(qid, []), key=_answer_order)
            title = question.get("Title", "").strip()
            parts = [title, html_to_text(question.get("Body", ""))]
            parts += [html_to_text(answer.get("Body", "")) for answer in answers]
            yield Document(
                text="\n\n".join(part for part in parts if part),
                id=f"{self.site}/{qid}",
                source=NAME,
                metadata={
                    "site": self.site,
                    "title": title,
                    "url": f"https://{self.site}/questions/{qid}",
                    "question_id": _int(qid),
                    "score": _int(question.get("Score")),
                    "tags": _tags(question.get("Tags", "")),
                    "created": question.get("CreationDate", ""),
                    "accepted_answer_id": _int(question.get("AcceptedAnswerId")),
                    "answer_ids": [_int(a.get("Id")) for a in answers],
                    "answer_scores": [_int(a.get("Score")) for a in answers],
                    "file": f"{self.site}/{self.path.name}",
                },
            )


def _int(value: str | None) -> int | None:
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


def _answer_order(answer: dict[str, str]) -> tuple[int, int]:
    return -(_int(answer.get("Score")) or 0), _int(answer.get("Id")) or 0


def _tags(tags: str) -> list[str]:
    # "<beer><hops>" in older dumps, "|beer|hops|" in newer ones
    return [tag for tag in tags.replace("<", " ").replace(">", " ").replace("|", " ").split()]


def read(path: Path, ctx: Context, opts: Options) -> Iterator[Document]:
    """One document per question of one site's ``Posts.xml``, in the file's question order."""
    site = _Site(path)
    parser = ET.XMLPullParser(("start", "end"))
    failure: tuple[str, str] | None = None
    seen_text = closing = False

    def cut(length: int) -> None:
        ctx.bad_input(str(path), "text_too_large", f"{length:,} characters of text left out")

    try:
        with open(path, "rb") as stream:
            for text in capped_xml(_decoded_chunks(stream), opts.max_row_chars, cut):
                seen_text = seen_text or bool(text.strip())
                parser.feed(text)
                _collect(parser, site, ctx)
        if seen_text:
            closing = True
            parser.close()
            _collect(parser, site, ctx)
        else:
            failure = ("empty_file", "")
    except TagTooLarge as err:
        failure = ("record_too_large", str(err))
    except UnicodeDecodeError as err:
        failure = ("bad_encoding", str(err))
    except EOFError as err:
        failure = ("truncated", str(err))
    except ET.ParseError as err:
        # Broken markup inside the file, or a file that stops inside an element.
        failure = ("truncated" if closing else "bad_xml", str(err))
    except OSError as err:
        failure = ("unreadable", str(err))
    if failure is not None:
        with contextlib.suppress(ET.ParseError):
            _collect(parser, site, ctx)  # rows the parser finished before the damage
    yield from site.documents()
    if failure is not None:
        ctx.bad_input(str(path), *failure)


def _decoded_chunks(stream: BinaryIO) -> Iterator[str]:
    """The file as text (dumps are UTF-8 with a BOM); before a bad byte, the text up to it."""
    decoder = codecs.getincrementaldecoder("utf-8-sig")()
    while chunk := stream.read(_CHUNK):
        try:
            yield decoder.decode(chunk)
        except UnicodeDecodeError as err:
            yield codecs.decode(err.object[: err.start], err.encoding)
            raise
    try:
        yield decoder.decode(b"", final=True)
    except UnicodeDecodeError as err:
        raise EOFError(f"file ends inside a character: {err}") from err


def _collect(parser: ET.XMLPullParser, site: _Site, ctx: Context) -> None:
    for event, elem in parser.read_events():
        if event == "start":
            site.root = site.root if site.root is not None else elem
        elif elem.tag == "row":
            reason = site.add(dict(elem.attrib))
            if reason is not None:
                where = f"{site.path}:Id={elem.get('Id', '')[:40]!r}"
                ctx.bad_input(where, reason, "Id and ParentId must be integers")
            if site.root is not None and len(site.root) and site.root[-1] is elem:
                site.root.remove(elem)  # keep memory flat; the row is in ``site`` now
