"""arXiv: the LaTeX source of scientific papers (paper §2.1, 2.5% of the mix).

The paper "removed everything before the first section, as well as the bibliography", "removed
the comments from the .tex files, and inline-expanded definitions and macros written by users".

Input, as arXiv serves e-prints: a gzipped tar (``NNNN.NNNNN.gz`` or ``.tar.gz``), a plain
``.tar``, a gzipped single ``.tex`` (a ``.gz`` that is not a tar), or a folder of plain files
(``tex/<id>/main.tex``). One document per paper::

    from pasture.data.sources import arxiv
    opts = arxiv.Options()
    for shard in arxiv.shards(arxiv.find_inputs(root, opts), opts):
        ...  # read the paper, then run arxiv.steps(opts, work_dir)

``read`` assembles the source: it finds the main file (the ``.tex`` with ``\\documentclass`` and
``\\begin{document}``; among several, the one that inputs most of the others, then the largest),
removes comments from every file and expands ``\\input``/``\\include`` recursively. The
``clean`` step then does the rest, in this order: collect and delete the user's macro
definitions (``\\newcommand``, ``\\renewcommand``, ``\\providecommand``, ``\\def`` with
undelimited ``#n`` parameters, ``\\DeclareMathOperator``), cut everything after
``\\end{document}`` and before the first ``\\part``/``\\chapter``/``\\section``/``\\subsection``
(looked for after ``\\begin{document}``), delete the bibliography, expand the macros.

Decisions the paper leaves open:

* A heading the author commented out (``%\\section{Introduction}``) still marks where the
  sections begin, when text lies between it and the first live heading: RedPajama finds
  headings before it removes comments, and 1602.00123, which comments out its headings and
  keeps only its supplement's, would otherwise lose its whole body (1,975 of 28,743 characters
  kept; now 25,478 from its introduction on).
* A paper with no section heading at all, live or commented out, is dropped (``no_section``),
  as RedPajama does (``drop_without_section=False`` keeps its body after
  ``\\begin{document}`` instead).
* Comments are ``%`` to the end of the line and ``comment`` environments; ``\\iffalse`` blocks
  stay (their nesting needs a TeX parser).
* Appendices are kept: only the bibliography (``thebibliography``, ``\\bibliography{..}``,
  ``\\printbibliography``) is removed. RedPajama also cut at ``\\appendix``.
* A damaged archive is reported (``bad_input``) and the paper is built from the files read
  before the damage when its main file is among them.
"""

from __future__ import annotations

import io
import re
import tarfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, BinaryIO

from .. import streams
from ..document import Context, Document, Step, map_step
from ..inputs import within

NAME = "arxiv"

_ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar", ".gz")
_TEX_SUFFIXES = (".tex", ".ltx", ".latex")


@dataclass
class Options:
    drop_without_section: bool = True  # False: keep the whole body of a paper with no heading
    keep_appendix: bool = True
    expand_macros: bool = True
    max_macro_passes: int = 10  # macros that use macros: expand until nothing changes
    max_member_bytes: int = 20_000_000
    max_paper_bytes: int = 64_000_000  # all of a paper's files read, and its expanded text


def find_inputs(root: Path, opts: Options) -> list[Path]:
    """E-print archives, and each folder of plain ``.tex`` files (one paper per folder)."""
    folder = Path(root) / NAME
    archives = [
        p for p in folder.rglob("*") if p.is_file() and p.name.lower().endswith(_ARCHIVE_SUFFIXES)
    ]
    tex_dirs = sorted(
        {p.parent for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in _TEX_SUFFIXES}
    )
    papers: list[Path] = []
    for d in tex_dirs:  # sorted: a paper's own subfolders come after it and are part of it
        if not any(d.is_relative_to(p) for p in papers):
            papers.append(d)
    return sorted(archives + papers)


def shards(inputs: list[Path], opts: Options) -> list[list[Path]]:
    return [[p] for p in sorted(inputs)]


# --- reading one paper's files ------------------------------------------------------------


class _Damaged(Exception):
    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason


class _Gunzip(io.RawIOBase):
    """A gzip file (one or more members) decompressed as it is read, in bounded memory. It ends
    at the first damage instead of raising, and keeps the damage in ``damage``: everything that
    decompressed before it is still read."""

    def __init__(self, raw: BinaryIO) -> None:
        self.raw = raw
        self.inflater = zlib.decompressobj(wbits=31)
        self.damage: _Damaged | None = None
        self.buf, self.pos, self.done = b"", 0, False

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        while self.pos >= len(self.buf) and not self.done:
            self._fill()
        n = min(len(b), len(self.buf) - self.pos)
        b[:n] = self.buf[self.pos : self.pos + n]
        self.pos += n
        return n

    def _fill(self) -> None:
        self.buf, self.pos = b"", 0
        if self.inflater.eof:  # a member ended: another may follow
            pending = self.inflater.unused_data or self.raw.read(_CHUNK)
            if not pending:
                self.done = True
                return
            self.inflater = zlib.decompressobj(wbits=31)
        else:
            pending = self.inflater.unconsumed_tail or self.raw.read(_CHUNK)
            if not pending:
                self.damage, self.done = _Damaged("truncated", "gzip stream ends early"), True
                return
        try:
            self.buf = self.inflater.decompress(pending, _CHUNK)
        except zlib.error as exc:
            self.damage, self.done = _Damaged("corrupt", f"gzip: {exc}"), True


_CHUNK = 1 << 20


def _clean_name(name: str) -> str:
    while name.startswith("./"):
        name = name[2:]
    return name.lstrip("/")


def _untar(
    stream: BinaryIO, opts: Options, files: dict[str, bytes], skipped: list[tuple[str, str]]
) -> _Damaged | None:
    """Read the regular files of a tar stream into ``files`` until the end or the damage, at
    most ``max_member_bytes`` each and ``max_paper_bytes`` in all; links and devices are not
    read and go to ``skipped``."""
    total = 0
    try:
        with tarfile.open(fileobj=stream, mode="r|") as tf:
            for member in tf:
                name = _clean_name(member.name)
                if member.isdir():
                    continue
                if not member.isfile():
                    kind = "link_member" if member.issym() or member.islnk() else "special_member"
                    skipped.append((name, kind))
                elif member.size > opts.max_member_bytes or _SKIP_EXT.search(name.lower()):
                    continue  # figures, data: never text the paper's TeX inputs
                elif total + member.size > opts.max_paper_bytes:
                    skipped.append((name, "too_large"))
                else:
                    files[name] = tf.extractfile(member).read()
                    total += member.size
    except (tarfile.TarError, EOFError, OSError, zlib.error) as exc:
        text = str(exc)
        reason = "truncated" if "unexpected end" in text or "EOF" in text else "corrupt"
        return _Damaged(reason, f"tar: {text}")
    return None


# Members never read: they cannot be TeX input, and some are large.
_SKIP_EXT = re.compile(
    r"\.(pdf|png|jpe?g|gif|eps|ps|svg|tiff?|bmp|mp4|avi|mov|zip|gz|tgz|bz2|xz|tar|h5|npy|npz"
    r"|pkl|fits|dat|csv|mat)$"
)


def _is_tar(data: bytes) -> bool:
    if len(data) >= 262 and data[257:262] == b"ustar":
        return True
    try:
        with tarfile.open(fileobj=io.BytesIO(data[:10240]), mode="r:"):
            return True
    except (tarfile.TarError, EOFError, OSError):
        return False


def _paper_id(path: Path) -> str:
    name = path.name
    for suffix in _ARCHIVE_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def _arxiv_id(stem: str) -> str:
    new = re.match(r"\d{4}\.\d{4,5}(v\d+)?", stem)  # 1911.02782, 1801.03879v2
    old = re.match(r"[a-z-]+(\.[A-Z]{2})?/?\d{7}(v\d+)?", stem)  # hep-th/9901001, math.AG0101001
    return (new or old).group(0) if (new or old) else stem


def _read_files(
    path: Path, opts: Options, skipped: list[tuple[str, str]]
) -> tuple[dict[str, bytes], _Damaged | None]:
    """The paper's files by relative path, and the damage that stopped reading, if any. Files
    not read (links that leave a paper folder) go to ``skipped`` with the reason."""
    files: dict[str, bytes] = {}
    if path.is_dir():
        for p in sorted(path.rglob("*")):
            if p.name == "README.md" or p.name.startswith("LICENSE-"):
                continue  # the sample folder's own notes, not part of the paper
            if not within(p, path):  # a link out of the paper's folder: never followed
                skipped.append((str(p), "symlink_outside_root"))
                continue
            if p.is_file() and p.stat().st_size <= opts.max_member_bytes:
                files[p.relative_to(path).as_posix()] = p.read_bytes()
        return files, None
    with open(path, "rb") as f:
        gzipped = f.read(2) == b"\x1f\x8b"

    def stream() -> tuple[BinaryIO, _Gunzip | None]:
        raw = open(path, "rb")  # noqa: SIM115 - closed by the caller
        if not gzipped:
            return raw, None
        gunzip = _Gunzip(raw)
        return io.BufferedReader(gunzip, _CHUNK), gunzip

    f, gunzip = stream()
    with f:
        head = f.read(10240)
        if not head:
            damage = gunzip.damage if gunzip else None
            return files, damage or _Damaged("empty_file", "")
        if _is_tar(head):
            f2, gunzip = stream()
            with f2:
                tar_damage = _untar(f2, opts, files, skipped)
            return files, tar_damage or (gunzip.damage if gunzip else None)
        rest, over = streams.read_capped(f, opts.max_member_bytes - len(head))
        damage = gunzip.damage if gunzip else None
    if damage is not None:
        return files, damage
    name = path.name.lower()
    if name.endswith((".tar", ".tar.gz", ".tgz")) or not gzipped or b"\x00" in head[:8192]:
        return files, _Damaged("corrupt", "neither a tar nor a gzipped .tex file")
    if over:
        return files, _Damaged("too_large", f"over max_member_bytes ({opts.max_member_bytes:,})")
    data = head + rest
    if not data.strip():
        return files, _Damaged("empty_file", "a gzipped empty file")
    files[_paper_id(path) + ".tex"] = (
        data  # a single gzipped file: arXiv's form for one-file papers
    )
    return files, None


def _decode(data: bytes) -> str:
    try:
        return data.decode("utf-8").removeprefix("\ufeff")
    except UnicodeDecodeError:
        return data.decode("latin-1")  # the common 8-bit TeX encoding; never fails


# --- comments, main file, \input ----------------------------------------------------------

_FULL_LINE_COMMENT = re.compile(r"(?m)^[ \t]*%.*(?:\n|\Z)")
_INLINE_COMMENT = re.compile(r"(?m)(?<!\\)((?:\\\\)*)%.*$")


_COMMENT_ENV = re.compile(r"\\begin\s*\{comment\}.*?(?:\\end\s*\{comment\}|\Z)", re.DOTALL)


# A heading its author commented out (``%\\section{Introduction}``) still marks where the
# paper's sections begin (RedPajama finds headings before it removes comments): ``clean`` cuts
# there, then deletes the line.
_COMMENTED_HEADING = re.compile(
    r"(?m)^[ \t]*%+[ \t]*(?=\\(?:part|chapter|(?:sub)*section)\*?\s*[\[{]).*(?:\n|\Z)"
)
_HIDDEN = "\ufdd0"  # a Unicode noncharacter: a kept heading's "%" while comments are removed


def strip_comments(tex: str, keep_headings: bool = False) -> str:
    """Remove ``%`` comments (a ``\\%`` is a percent sign and stays; comment-only lines go
    whole) and ``comment`` environments. ``keep_headings`` keeps the lines that are a
    commented-out heading (outside ``comment`` environments), for ``clean``."""
    if keep_headings:  # not a line that inputs a file: its text would be inlined uncommented
        tex = _COMMENTED_HEADING.sub(
            lambda m: m.group(0) if _INPUT.search(m.group(0)) else m.group(0).replace("%", _HIDDEN),
            tex,
        )
    tex = _FULL_LINE_COMMENT.sub("", tex)
    tex = _COMMENT_ENV.sub("", _INLINE_COMMENT.sub(r"\1", tex))
    return tex.replace(_HIDDEN, "%") if keep_headings else tex


_DOCUMENTCLASS = re.compile(r"\\document(?:class|style)\b")
_BEGIN_DOCUMENT = re.compile(r"\\begin\s*\{document\}")
_INPUT = re.compile(
    r"\\(?:input|include|subfile)\s*\{([^}]*)\}|\\input[ \t]+([\w./-]+)"  # \input{x} or \input x
)


def _is_source(name: str) -> bool:
    p = PurePosixPath(name)
    return not any(part.startswith("._") or part == "__MACOSX" for part in p.parts)


def _resolve(target: str, base: str, texts: dict[str, str]) -> str | None:
    target = target.strip().strip('"')
    for folder in dict.fromkeys((base, "")):  # LaTeX resolves from the main file's folder
        name = str(PurePosixPath(folder) / target) if folder else target
        name = _normalize(name)
        for candidate in (name, name + ".tex"):
            if candidate in texts:
                return candidate
    return None


def _folder(name: str) -> str:
    parent = str(PurePosixPath(name).parent)
    return "" if parent == "." else parent


def _normalize(name: str) -> str:
    parts: list[str] = []
    for part in PurePosixPath(name).parts:
        if part == "..":
            if parts:
                parts.pop()
        elif part != ".":
            parts.append(part)
    return "/".join(parts)


def find_main(texts: dict[str, str]) -> str | None:
    """The main ``.tex`` file among a paper's (comment-free) sources, or None."""
    tex = {n: t for n, t in texts.items() if n.lower().endswith(_TEX_SUFFIXES) and _is_source(n)}
    if not tex:
        return None
    candidates = [n for n, t in tex.items() if _DOCUMENTCLASS.search(t)] or [
        n for n, t in tex.items() if _BEGIN_DOCUMENT.search(t)
    ]
    if not candidates:
        return next(iter(tex)) if len(tex) == 1 else None

    def score(name: str) -> tuple[int, int, int, str]:
        text = tex[name]
        base = _folder(name)
        refs = sum(
            _resolve(m.group(1) or m.group(2), base, texts) is not None
            for m in _INPUT.finditer(text)
        )
        has_body = _BEGIN_DOCUMENT.search(text) is not None
        return (has_body, refs, len(text), name)

    return max(candidates, key=score)


def expand_inputs(
    name: str,
    texts: dict[str, str],
    base: str = "",
    max_depth: int = 20,
    max_chars: int = 64_000_000,
) -> str:
    """The text of ``name`` with each ``\\input``/``\\include`` of a known file inlined.

    Unknown targets (packages such as ``\\input xy``, missing files) are left as they are; a file
    that inputs itself, directly or not, is not expanded again, and nothing more is inlined
    once the text would pass ``max_chars``.
    """

    used = len(texts[name])

    def expand(current: str, stack: tuple[str, ...]) -> str:
        def replace(m: re.Match) -> str:
            nonlocal used
            target = _resolve(m.group(1) or m.group(2), base, texts)
            if target is None or target in stack or len(stack) >= max_depth:
                return m.group(0)
            if used + len(texts[target]) > max_chars:
                return m.group(0)  # one file inlined many times: the text stays bounded
            used += len(texts[target])
            return expand(target, (*stack, target))

        return _INPUT.sub(replace, texts[current])

    return expand(name, (name,))


def read(path: Path, ctx: Context, opts: Options) -> Iterator[Document]:
    """One document per paper: the main file with comments removed and inputs inlined."""
    path = Path(path)
    skipped: list[tuple[str, str]] = []
    files, damage = _read_files(path, opts, skipped)
    for member, reason in skipped:
        where = member if path.is_dir() else f"{path}:{member}"
        ctx.bad_input(where, reason)
    if damage is not None:
        ctx.bad_input(str(path), damage.reason, str(damage))
    if not files:
        return
    texts = {
        name: strip_comments(_decode(data), keep_headings=True)
        for name, data in files.items()
        if b"\x00" not in data[:8192]  # figures and other binaries
    }
    stem = _paper_id(path)
    meta = {"arxiv_id": _arxiv_id(stem), "input": path.name, "files": len(files)}
    if damage is not None:
        meta["damaged"] = damage.reason  # built from the files read before the damage
    main = find_main(texts)
    if main is None:
        ctx.drop(Document("", stem, NAME, meta), "no_main_file")
        return
    base = _folder(main)
    meta["main_file"] = main
    yield Document(
        expand_inputs(main, texts, base, max_chars=opts.max_paper_bytes), stem, NAME, meta
    )


# --- the clean step: macros, preamble, bibliography ---------------------------------------


@dataclass(frozen=True)
class Macro:
    nargs: int
    body: str
    default: str | None = None  # the first argument is optional, with this default


_DEFINITION = re.compile(
    r"\\(?:(?:re)?newcommand|providecommand|DeclareRobustCommand)\*?"
    r"|\\[gex]?def(?![a-zA-Z])|\\DeclareMathOperator\*?"
)
_NAME = re.compile(r"\s*(?:\{\s*(\\[a-zA-Z@]+)\s*\}|(\\[a-zA-Z@]+))")
_DEF_PARAMS = re.compile(r"((?:#[1-9])*)\s*\{")
_PARAM = re.compile(r"#(#|[1-9])")
_COMMAND = re.compile(r"\\(?:[a-zA-Z]+|.)", re.DOTALL)
# Commands whose redefinition is layout, not text: expanding them would break the structure.
_KEEP = re.compile(
    r"begin|end|part|chapter|(sub)*section|(sub)?paragraph|item|input|include|label|ref|cite"
    r"|caption|footnote|document|appendix"
)


def _group(text: str, start: int, open_: str = "{", close: str = "}") -> int | None:
    """The end (exclusive) of the balanced group opening at ``text[start]``, or None."""
    if start >= len(text) or text[start] != open_:
        return None
    depth, i = 0, start
    while i < len(text):
        c = text[i]
        if c == "\\":
            i += 2
            continue
        if c == open_:
            depth += 1
        elif c == close:
            depth -= 1
            if depth == 0:
                return i + 1
        i += 1
    return None


def _skip_space(text: str, i: int) -> int:
    while i < len(text) and text[i] in " \t\n":
        i += 1
    return i


def _parse_definition(text: str, m: re.Match) -> tuple[str, Macro, int] | None:
    """(name, macro, end) for the definition that ``m`` starts, or None if it is not simple."""
    kind = m.group(0)
    name_m = _NAME.match(text, m.end())
    if name_m is None:
        return None
    name = (name_m.group(1) or name_m.group(2))[1:]
    i = name_m.end()
    nargs, default = 0, None
    if kind.endswith("def"):
        params = _DEF_PARAMS.match(text, i)
        if params is None:
            return None  # delimited parameters: not a simple macro
        nargs, i = len(params.group(1)) // 2, params.end() - 1
    elif "newcommand" in kind or "providecommand" in kind or "Robust" in kind:
        i = _skip_space(text, i)
        if text.startswith("[", i):
            end = text.find("]", i)
            if end < 0 or not text[i + 1 : end].strip().isdigit():
                return None
            nargs, i = int(text[i + 1 : end]), _skip_space(text, end + 1)
            if text.startswith("[", i):
                end = _group(text, i, "[", "]")
                if end is None:
                    return None
                default, i = text[i + 1 : end - 1], end
    i = _skip_space(text, i)
    end = _group(text, i)
    if end is None:
        return None
    body = text[i + 1 : end - 1]
    if "DeclareMathOperator" in kind:
        body = ("\\operatorname*{" if kind.endswith("*") else "\\operatorname{") + body + "}"
    return name, Macro(nargs, body, default), end


def collect_macros(tex: str) -> tuple[dict[str, Macro], str]:
    """The user's simple macros, and ``tex`` with their definitions deleted."""
    macros: dict[str, Macro] = {}
    kept: list[str] = []
    pos = 0
    for m in _DEFINITION.finditer(tex):
        if m.start() < pos:
            continue  # inside a definition already taken (a macro that defines macros)
        parsed = _parse_definition(tex, m)
        if parsed is None:
            continue
        name, macro, end = parsed
        provided = m.group(0).startswith("\\provide") and name in macros
        if "@" not in name and not _KEEP.fullmatch(name) and not provided:
            macros[name] = macro
        kept.append(tex[pos : m.start()])
        pos = end
    kept.append(tex[pos:])
    return macros, "".join(kept)


def _argument(text: str, i: int) -> tuple[str, int] | None:
    """One undelimited argument at ``i``: a braced group's contents, a command or a character."""
    i = _skip_space(text, i)
    if i >= len(text) or text[i] in "}]":
        return None
    if text[i] == "{":
        end = _group(text, i)
        return None if end is None else (text[i + 1 : end - 1], end)
    if text[i] == "\\":
        m = _COMMAND.match(text, i)
        return m.group(0), m.end()
    return text[i], i + 1


def _substitute(body: str, args: list[str]) -> str:
    def arg(m: re.Match) -> str:
        k = m.group(1)
        if k == "#":
            return "#"
        return args[int(k) - 1] if int(k) <= len(args) else m.group(0)

    return _PARAM.sub(arg, body)


def expand_macros(tex: str, macros: dict[str, Macro], max_passes: int = 10) -> str:
    """Replace each use of a macro by its body with its arguments, until nothing changes.

    A use whose arguments cannot be read (end of a group, unbalanced braces) is left as it is.
    Self-referencing macros stop after ``max_passes`` or when the text grows past 4x.
    """
    if not macros:
        return tex
    names = sorted(macros, key=len, reverse=True)
    pattern = re.compile(r"\\(" + "|".join(map(re.escape, names)) + r")(?![a-zA-Z@])")
    limit = 4 * len(tex) + 1_000_000
    for _ in range(max_passes):
        out: list[str] = []
        pos, changed = 0, False
        for m in pattern.finditer(tex):
            if m.start() < pos:
                continue  # part of an argument already consumed
            macro = macros[m.group(1)]
            i, args = m.end(), []
            if macro.default is not None:
                j = _skip_space(tex, i)
                end = _group(tex, j, "[", "]") if tex.startswith("[", j) else None
                args.append(tex[j + 1 : end - 1] if end else macro.default)
                i = end or i
            while len(args) < macro.nargs:
                arg = _argument(tex, i)
                if arg is None:
                    break
                args.append(arg[0])
                i = arg[1]
            if len(args) < macro.nargs:
                continue
            out.append(tex[pos : m.start()])
            out.append(_substitute(macro.body, args))
            pos, changed = i, True
        out.append(tex[pos:])
        tex = "".join(out)
        if not changed or len(tex) > limit:
            break
    return tex


_FIRST_HEADING = re.compile(r"\\(?:part|chapter|section|subsection|subsubsection)\*?\s*[\[{]")
_END_DOCUMENT = re.compile(r"\\end\s*\{document\}")
# A "References" heading right before the bibliography goes with it.
_BIB_HEADING = r"(?:\\(?:section|chapter)\*?\s*\{\s*(?:References|Bibliography)\s*\}\s*)?"
_BIB_ENV = re.compile(
    _BIB_HEADING + r"\\begin\s*\{(thebibliography|references)\}.*?(?:\\end\s*\{\1\}|\Z)",
    re.DOTALL | re.IGNORECASE,
)
_BIB_COMMAND = re.compile(
    _BIB_HEADING
    + r"(?:\\(?:bibliography|bibliographystyle|addbibresource|nobibliography)\s*(?:\[[^\]]*\])?"
    r"\s*\{[^}]*\}|\\printbibliography\b(?:\[[^\]]*\])?)"
)
_APPENDIX = re.compile(r"\\appendix(?![a-zA-Z])|\\begin\s*\{appendices\}")


_PROSE_LINE = re.compile(r"(?m)^[ \t]*[^\s\\%{}]")  # a line that does not open with a command


def _line_before(tex: str, i: int) -> str:
    return tex[tex.rfind("\n", 0, i) + 1 : i]


def _first_heading(tex: str, start: int) -> int | None:
    """Where the paper's sections begin: its first heading after ``start``, or a heading its
    author commented out before it when text lies between the two (1602.00123 comments out
    ``\\section{Introduction}`` and ``{Results}``: its first live heading is the supplement)."""
    live = next(
        (m for m in _FIRST_HEADING.finditer(tex, start) if "%" not in _line_before(tex, m.start())),
        None,
    )
    hidden = _COMMENTED_HEADING.search(tex, start, live.start() if live else len(tex))
    if hidden is None:
        return live.start() if live else None
    if live is None or _PROSE_LINE.search(tex, hidden.end(), live.start()):
        return hidden.start()
    return live.start()


def clean(tex: str, opts: Options) -> str | None:
    """The paper's text as LLaMA kept it, or None if it has no section heading."""
    macros, tex = collect_macros(tex) if opts.expand_macros else ({}, tex)
    end = _END_DOCUMENT.search(tex)
    if end:
        tex = tex[: end.start()]
    begin = _BEGIN_DOCUMENT.search(tex)
    start = begin.end() if begin else 0
    heading = _first_heading(tex, start)
    if heading is None:
        if opts.drop_without_section:
            return None
        heading = start
    tex = _COMMENTED_HEADING.sub("", tex[heading:])
    tex = _BIB_COMMAND.sub("", _BIB_ENV.sub("", tex))
    if not opts.keep_appendix and (appendix := _APPENDIX.search(tex)):
        tex = tex[: appendix.start()]
    tex = expand_macros(tex, macros, opts.max_macro_passes)
    tex = re.sub(r"[ \t]+\n", "\n", tex)
    return re.sub(r"\n{3,}", "\n\n", tex).strip() + "\n"


def prepare(opts: Options, input_root: Path, work_dir: Path) -> None:
    """Nothing to train or download for arXiv."""


def steps(opts: Options, work_dir: Path) -> list[Step]:
    def clean_doc(doc: Document) -> Document | str:
        text = clean(doc.text, opts)
        if text is None:
            return "no_section"
        doc.text = text
        return doc

    return [map_step("clean", clean_doc)]
