"""The arXiv source on the real e-prints and tex folders: main file, inputs, comments, macros."""

from __future__ import annotations

import gzip
import io
import re
import shutil
import tarfile
from pathlib import Path

import pytest

from pasture.data.document import Context, Document, run_steps
from pasture.data.sources import arxiv

# input -> (main file, first heading, a comment in the body, (a user macro used in it, its body))
PAPERS = {
    "eprint/1602.00123.tar": (
        "Unconventional_pairing.tex",
        "Conventional superconductors are well understood",  # its %\section{Introduction}
        "refers to the vertex geometry",
        ("BAN", r"\ensuremath{B_{1g}\,}"),
    ),
    "eprint/1801.03879-1.tar.gz": (
        "defective-fpt.tex",
        r"\section{Introduction}",
        "Parameter & Result & Reference",
        ("DC", r"\textsc{Defective Coloring}"),
    ),
    "eprint/1911.02782.gz": (
        "main.tex",
        r"\section{Introduction}",
        "and for which we cannot provide bibliography-paper linking",
        ("gorc", r"\textsc{S2ORC}\xspace"),
    ),
    "eprint/2004.14974.gz": (
        "emnlp2020.tex",
        r"\section{Introduction}",
        "In turn, interest in fact-checking has spurred",
        ("ours", r"\textsc{SciFact}\xspace"),
    ),
    "tex/1707.08043": (
        "main.tex",
        r"\section*{Introduction}",
        r"\end{acknowledgements}",
        None,  # defines 242 macros and uses none of them after the first section
    ),
    "tex/1708.00137": (
        "main.tex",
        r"\section*{Introduction}",
        "the two state vector formalism of Aharanov",
        ("lin", r"{\cal L}"),
    ),
    "tex/1803.07574": ("main.tex", r"\section{Introduction}", r"\clearpage", None),
}


class Run:
    def __init__(self, inputs: list[Path], opts: arxiv.Options | None = None) -> None:
        opts = opts or arxiv.Options()
        self.drops: list[tuple[str, str, Document | None, str]] = []
        self.ctx = Context("test", sink=lambda *event: self.drops.append(event))
        self.docs: list[Document] = []
        for shard in arxiv.shards(inputs, opts):
            docs = (doc for path in shard for doc in arxiv.read(path, self.ctx, opts))
            self.docs += run_steps(docs, arxiv.steps(opts, Path("unused")), self.ctx)
        self.by_id = {doc.id: doc for doc in self.docs}

    def bad_inputs(self) -> list[tuple[str, str]]:
        return [(file, why) for _, why, doc, file in self.drops if doc is None]


@pytest.fixture(scope="module")
def root(shared_data: Path) -> Path:
    return shared_data / "pretrain"


@pytest.fixture(scope="module")
def full_run(root: Path) -> Run:
    inputs = arxiv.find_inputs(root, arxiv.Options())
    assert [p.relative_to(root / "arxiv").as_posix() for p in inputs] == sorted(PAPERS)
    return Run(inputs)


def _paper_id(name: str) -> str:
    return Path(name).name.removesuffix(".gz").removesuffix(".tar")


@pytest.mark.parametrize("name", sorted(PAPERS))
def test_paper_cleaned(full_run: Run, name: str) -> None:
    main, heading, comment, macro = PAPERS[name]
    doc = full_run.by_id[_paper_id(name)]
    assert doc.metadata["main_file"] == main
    assert doc.metadata["arxiv_id"] == _paper_id(name)[:10]
    text = doc.text
    assert text.startswith(heading)  # nothing of the preamble, title or abstract
    for gone in (r"\documentclass", r"\begin{document}", r"\end{document}", r"\usepackage"):
        assert gone not in text
    for gone in ("thebibliography", r"\bibitem", r"\bibliography", r"\newcommand", r"\def\\"):
        assert gone not in text
    assert comment not in text
    assert not re.search(r"(?<!\\)%", text), "an unescaped % (a comment) is left"
    if macro is not None:
        name_, body = macro
        assert not re.search(rf"\\{name_}(?![a-zA-Z])", text)
        assert body in text


def test_escaped_percent_survives(full_run: Run) -> None:
    assert "evidence in 63\\% of cited abstracts" in full_run.by_id["2004.14974"].text
    assert full_run.by_id["1911.02782"].text.count("\\%") == 19


def test_scifact_inputs_and_macros(full_run: Run) -> None:
    text = full_run.by_id["2004.14974"].text
    # \input files after the first section are inlined, nested ones (tables/, figures/) too
    assert "Due to rapid growth in the scientific literature" in text  # 01-introduction
    assert "Claim verification allows us to trace the sources" in text  # 08-conclusion
    assert r"\subcaption{Distribution of claim labels in \textsc{SciFact}\xspace.}" in text
    assert r"\caption{The evidence collection interface.}" in text  # only in the arXiv appendix
    assert "\\input" not in text
    # 00-abstract is input before \section{Introduction}: it goes with the preamble
    assert "We introduce scientific claim verification, a new task" not in text
    # macros from commands.tex and gww-chars.tex, both \input in the preamble
    assert r"\textsc{VeriSci}\xspace" in text and "\\sysname" not in text
    assert r"$\textrm{Abstract}_{\textrm{Label+Rationale}}$" in text
    assert r"corpus of abstracts ${\mathcal{A}}$" in text  # \cA from gww-chars.tex
    # appendices are kept: only the bibliography between them and the body goes
    assert r"\section{Model implementation details}" in text


def test_macros_with_arguments_expanded(full_run: Run) -> None:
    text = full_run.by_id["1708.00137"].text
    assert r"W_1=&[[\mathds{1}]] = \mathds{1}" in text  # \Proj[1]{[[#1]]} of \id
    assert "\\Proj" not in text and "\\ket{" not in text
    assert r"\operatorname{Tr}" in text and "\\tr " not in text  # \DeclareMathOperator


def test_commented_out_headings_keep_the_body(full_run: Run) -> None:
    # 1602.00123 comments out \section{Introduction} and \section{Results}; its first live
    # heading is the supplement. The commented-out heading marks where the body starts (as in
    # RedPajama, which finds headings before removing comments): the letter keeps its body.
    text = full_run.by_id["1602.00123"].text
    assert len(text) == 25_478  # 1,975 when only the supplement was kept
    assert "below a critical transition temperature" in text  # the introduction
    assert "friends and foes" in text  # the results, before the supplement
    assert r"\section{SUPPLEMENTAL MATERIAL}" in text
    assert (
        "We study the temperature-dependent electronic" not in text
    )  # the abstract still goes with the front matter
    assert r"\maketitle" not in text
    # 1801.03879 comments out the template's \section{Typesetting instructions}: only
    # commands lie between it and \section{Introduction}, where the body starts.
    assert full_run.by_id["1801.03879-1"].text.startswith(r"\section{Introduction}")


def test_first_heading_rule() -> None:
    opts = arxiv.Options()
    head = "\\documentclass{article}\n\\begin{document}\n\\title{T}\\maketitle\n"

    def cleaned(body: str) -> str | None:
        read = arxiv.strip_comments(head + body + "\\end{document}\n", keep_headings=True)
        return arxiv.clean(read, opts)

    assert cleaned("% \\section{Intro}\nText.\n%\\section{Results}\nMore.\n") == "Text.\nMore.\n"
    assert cleaned("%\\section{Old}\n\\newcounter{c}\n\\section{New}\nText.\n") == (
        "\\section{New}\nText.\n"
    )
    assert cleaned("%\\section{Intro}\nText.\n\\section{Appendix}\nA.\n") == (
        "Text.\n\\section{Appendix}\nA.\n"
    )
    # a heading inside a comment environment is not the author's structure
    assert cleaned("\\begin{comment}\n%\\section{X}\n\\end{comment}\nNo heading.\n") is None
    assert arxiv.strip_comments("%\\section{X}\nA % b\n") == "A \n"  # by default, all go
    hidden_input = "%\\section{\\input{t}}\nA\n"  # never kept: \input would inline t here
    assert arxiv.strip_comments(hidden_input, keep_headings=True) == "A\n"


def test_single_gzipped_tex_and_truncated_eprint(root: Path, tmp_path: Path) -> None:
    folder = tmp_path / "arxiv"
    folder.mkdir()
    for name in ("1801.03879-1.tar.gz", "1911.02782.gz"):
        shutil.copy(root / "arxiv" / "eprint" / name, folder / name)
    single = folder / "1707.08043.gz"  # how arXiv serves a one-file paper
    single.write_bytes(gzip.compress((root / "arxiv/tex/1707.08043/main.tex").read_bytes()))
    truncated = folder / "2004.14974.gz"
    raw = (root / "arxiv" / "eprint" / "2004.14974.gz").read_bytes()
    truncated.write_bytes(raw[: len(raw) // 2])
    early = folder / "2004.99999.tar.gz"  # cut before its main file
    early.write_bytes(raw[:3000])
    bogus = folder / "2004.88888.tar.gz"
    bogus.write_bytes(b"not an archive\n" * 50)

    run = Run(arxiv.find_inputs(tmp_path, arxiv.Options()))
    assert sorted(run.bad_inputs()) == [
        (str(truncated), "truncated"),
        (str(bogus), "corrupt"),
        (str(early), "truncated"),
    ]
    full = Run(arxiv.find_inputs(root, arxiv.Options()))
    for paper in ("1801.03879-1", "1911.02782", "1707.08043"):
        assert run.by_id[paper].text == full.by_id[paper].text
    assert run.by_id["1707.08043"].metadata["main_file"] == "1707.08043.tex"
    # the sections were read before the damage; the tables at the end of the tar were not
    damaged = run.by_id["2004.14974"]
    assert damaged.metadata["damaged"] == "truncated"
    assert "Due to rapid growth in the scientific literature" in damaged.text
    assert "2004.99999" not in run.by_id
    assert run.ctx.stats["read"].dropped == {"truncated": 2, "corrupt": 1, "no_main_file": 1}


def _tar(path: Path, files: dict[str, str]) -> Path:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        for name, text in files.items():
            data = text.encode("utf-8")
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    path.write_bytes(buf.getvalue())
    return path


def test_main_file_choice_and_input_resolution(tmp_path: Path) -> None:
    files = {
        "._main.tex": "\x00\x05\x16\x07 AppleDouble",
        "old.tex": "\\documentclass{article}\n\\begin{document}\n\\section{Old}\nold\n"
        "\\end{document}\n",
        "main.tex": "\\documentclass{article}\n\\newcommand{\\name}[2][dear]{#1 #2}\n"
        "\\begin{document}\n\\input{sections/intro}\n\\include{sections/loop.tex}\n"
        "\\end{document}\n",
        "sections/intro.tex": "\\section{Intro}\n\\name{reader}, \\name[fellow]{reader}.\n"
        "% \\input{sections/hidden}\n\\input sections/more\n",
        "sections/more.tex": "More text 5\\% here.\n",
        "sections/hidden.tex": "HIDDEN\n",
        "sections/loop.tex": "Loop \\input{sections/loop}\n",
    }
    paper = _tar(tmp_path / "2101.00001.tar", files)
    run = Run([paper])
    doc = run.by_id["2101.00001"]
    assert doc.metadata["main_file"] == "main.tex"
    assert doc.text == (
        "\\section{Intro}\ndear reader, fellow reader.\nMore text 5\\% here.\n\n"
        "Loop \\input{sections/loop}\n"
    )


def test_expand_macros_cases() -> None:
    macros, rest = arxiv.collect_macros(
        "\\newcommand{\\R}{\\mathbb{R}}\n\\def\\pair#1#2{(#1, #2)}\n"
        "\\newcommand\\vect[1]{\\mathbf{#1}}\\providecommand{\\R}{X}\n"
        "\\def\\loop{\\loop x}\\def\\delim#1.{#1}\nbody"
    )
    assert set(macros) == {"R", "pair", "vect", "loop"}  # \delim has a delimited parameter
    assert rest.strip() == "\\def\\delim#1.{#1}\nbody"
    assert arxiv.expand_macros("$\\R^n$, \\Rset", macros) == "$\\mathbb{R}^n$, \\Rset"
    assert arxiv.expand_macros("\\pair{a}{\\vect{b_{1}}}", macros) == "(a, \\mathbf{b_{1}})"
    assert arxiv.expand_macros("\\pair x y", macros) == "(x, y)"
    assert arxiv.expand_macros("{\\vect}", macros) == "{\\vect}"  # no argument: left alone
    looped = arxiv.expand_macros("\\loop", macros, max_passes=5)
    assert looped == "\\loop" + " x" * 5


def test_strip_comments() -> None:
    tex = "a % note\n  % whole line\nb \\% c\\\\% gone\nd\n"
    assert arxiv.strip_comments(tex) == "a \nb \\% c\\\\\nd\n"
    env = "keep\n\\begin{comment}\ndraft \\section{X}\n\\end{comment}\nkept\n"
    assert arxiv.strip_comments(env) == "keep\n\nkept\n"


def test_no_section_dropped_or_kept(tmp_path: Path) -> None:
    body = "\\documentclass{article}\n\\begin{document}\nJust a note.\n\\end{document}\n"
    folder = tmp_path / "arxiv" / "note"
    folder.mkdir(parents=True)
    (folder / "note.tex").write_text(body)
    run = Run([folder])
    assert not run.docs and run.ctx.stats["clean"].dropped["no_section"] == 1
    kept = Run([folder], arxiv.Options(drop_without_section=False))
    assert kept.by_id["note"].text == "Just a note.\n"


def test_deterministic(root: Path) -> None:
    inputs = arxiv.find_inputs(root, arxiv.Options())
    assert [[p] for p in inputs] == arxiv.shards(inputs, arxiv.Options())
    first, second = Run(inputs), Run(inputs)
    assert [(d.id, d.text, d.metadata) for d in first.docs] == [
        (d.id, d.text, d.metadata) for d in second.docs
    ]
