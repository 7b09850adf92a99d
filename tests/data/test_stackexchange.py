"""The Stack Exchange reader on the real beer/coffee Posts.xml, and on damaged copies."""

from __future__ import annotations

import html
import json
import logging
import re
import shutil
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from pasture.data.document import Context, Document, run_steps
from pasture.data.pipeline import BuildConfig, build_dataset
from pasture.data.sources import stackexchange
from pasture.errors import PastureError

ALL_SITES = stackexchange.Options(sites=["*"])
SITES = {"beer.stackexchange.com": 663, "coffee.stackexchange.com": 225}  # questions, MANIFEST
TAG = re.compile(
    r"</?(?:p|a|b|i|em|strong|code|pre|div|span|br|hr|blockquote|ul|ol|li|img|h[1-6]|sup|sub|"
    r"strike|del|table|tr|td)\b[^<>]*>",
    re.I,
)


def run_source(path: Path, work_dir: Path, opts=ALL_SITES) -> tuple[list[Document], Context]:
    ctx = Context(shard="test")
    steps = stackexchange.steps(opts, work_dir)
    return list(run_steps(stackexchange.read(path, ctx, opts), steps, ctx)), ctx


@pytest.fixture(scope="module")
def inputs(shared_data: Path) -> list[Path]:
    return stackexchange.find_inputs(shared_data / "pretrain", ALL_SITES)


@pytest.fixture(scope="module")
def everything(inputs: list[Path], tmp_path_factory) -> dict[str, list[Document]]:
    work = tmp_path_factory.mktemp("se")
    return {path.parent.name: run_source(path, work)[0] for path in inputs}


def raw_rows(path: Path) -> list[dict[str, str]]:
    """The rows of a Posts.xml, parsed on their own (not by the reader under test)."""
    return [dict(row.attrib) for row in ET.parse(path).getroot().iter("row")]


def test_find_inputs_and_shards(inputs: list[Path]) -> None:
    assert [p.parent.name for p in inputs] == sorted(SITES)
    assert stackexchange.shards(inputs, ALL_SITES) == [[p] for p in inputs]


@pytest.mark.full_data  # a sample outside tests/assets/data
def test_default_keeps_the_largest_sites_given(
    shared_data: Path, inputs: list[Path], tmp_path: Path
) -> None:
    # RedPajama's count.py: a site's size is its number of posts; the 28 largest are kept.
    opts = stackexchange.Options()
    assert opts.largest_sites == 28
    stackexchange.prepare(opts, shared_data / "pretrain", tmp_path)
    chosen = json.loads((tmp_path / stackexchange.SITES_FILE).read_text())
    assert chosen["sites"] == sorted(SITES)
    assert chosen["posts"] == {"beer.stackexchange.com": 2354, "coffee.stackexchange.com": 592}
    for path in inputs:  # 0 documents from either before: neither was among 28 fixed names
        docs, ctx = run_source(path, tmp_path, opts)
        assert len(docs) == SITES[path.parent.name] and not ctx.stage_stats("site").dropped
    one = stackexchange.Options(largest_sites=1)
    stackexchange.prepare(one, shared_data / "pretrain", tmp_path / "one")
    docs, ctx = run_source(inputs[1], tmp_path / "one", one)  # coffee: 592 posts < 2354
    assert docs == [] and ctx.stage_stats("site").dropped == {"site": 225}
    listed = stackexchange.Options(sites=["coffee.stackexchange.com"])
    assert len(run_source(inputs[1], tmp_path / "none", listed)[0]) == 225
    with pytest.raises(PastureError, match="prepare"):
        stackexchange.steps(opts, tmp_path / "none")
    with pytest.raises(PastureError, match="largest_sites = 0"):
        stackexchange.Options(largest_sites=0)


def test_count_posts_across_read_boundaries(tmp_path: Path) -> None:
    path = tmp_path / "Posts.xml"
    row = b'<row Id="1" PostTypeId="1" Body="&lt;row&gt; is text" />\n'
    for gap in range(6):  # a "<row" cut anywhere by the 1 MiB reads
        path.write_bytes(b"<posts>" + b" " * (stackexchange._CHUNK - 7 - gap) + row * 3)
        assert stackexchange.count_posts(path) == 3


def test_every_question_is_one_document(everything, inputs: list[Path]) -> None:
    for path in inputs:
        site = path.parent.name
        docs = everything[site]
        questions = [r["Id"] for r in raw_rows(path) if r["PostTypeId"] == "1"]
        assert len(docs) == SITES[site] == len(questions)
        assert [d.id for d in docs] == [f"{site}/{q}" for q in questions]  # file order
        assert all(
            d.metadata["url"] == f"https://{site}/questions/{d.id.split('/')[1]}" for d in docs
        )


def test_answers_sorted_by_score(everything, inputs: list[Path]) -> None:
    for path in inputs:
        rows = raw_rows(path)
        answers: dict[str, list[tuple[int, int]]] = {}
        for row in rows:
            if row["PostTypeId"] == "2":
                answers.setdefault(row["ParentId"], []).append((-int(row["Score"]), int(row["Id"])))
        bodies = {row["Id"]: row["Body"] for row in rows}
        multi = 0
        for doc in everything[path.parent.name]:
            qid = doc.id.split("/")[1]
            expected = [aid for _, aid in sorted(answers.get(qid, []))]
            assert doc.metadata["answer_ids"] == expected
            scores = doc.metadata["answer_scores"]
            assert scores == sorted(scores, reverse=True)
            # In the text too: each answer's start comes after the previous answer's (compared
            # without whitespace and list markers, which the HTML-to-text step lays out).
            position = len(doc.metadata["title"])
            for aid in expected:
                before_list = html.unescape(bodies[str(aid)]).split("<li")[0]
                tagless = re.sub(r"<[^>]+>", "", before_list)
                start = "".join(tagless.split())[:24]
                if not start:
                    continue
                found = re.compile(r"\s*".join(map(re.escape, start))).search(doc.text, position)
                assert found, (doc.id, aid)
                position = found.end()
            multi += len(expected) > 1
        assert multi > 20


def test_html_removed_and_entities_decoded(everything) -> None:
    docs = [doc for site_docs in everything.values() for doc in site_docs]
    for doc in docs:
        assert not TAG.search(doc.text), (doc.id, TAG.search(doc.text).group())
        for entity in ("&amp;", "&lt;", "&gt;", "&quot;", "&#39;", "&#xA;", "&nbsp;"):
            assert entity not in doc.text, (doc.id, entity)
    assert any('"' in doc.text for doc in docs) and any("<" in doc.text for doc in docs)
    coffee_1 = everything["coffee.stackexchange.com"][0]
    assert coffee_1.text.startswith("How should I store whole bean coffee?\n\nI just got a pound")
    assert coffee_1.metadata["tags"] == ["storage", "whole-bean"]


def test_code_blocks_keep_their_text(everything, inputs: list[Path]) -> None:
    checked = 0
    for path in inputs:
        texts = {d.id.split("/")[1]: d.text for d in everything[path.parent.name]}
        for row in raw_rows(path):
            qid = row["Id"] if row["PostTypeId"] == "1" else row.get("ParentId")
            for code in re.findall(
                r"<pre[^>]*><code>(.*?)</code></pre>", row.get("Body", ""), re.S
            ):
                line = html.unescape(code).strip().split("\n")[0].strip()
                if qid in texts and line:
                    assert line in texts[qid], (qid, line)
                    checked += 1
    assert checked > 10


# ---- damaged copies ------------------------------------------------------------------------


@pytest.fixture
def coffee(inputs: list[Path], tmp_path: Path) -> tuple[bytes, Path]:
    (tmp_path / "coffee.stackexchange.com").mkdir()
    return inputs[1].read_bytes(), tmp_path / "coffee.stackexchange.com" / "Posts.xml"


def _complete_rows_before(data: bytes, offset: int) -> list[dict[str, str]]:
    lines = data[:offset].decode("utf-8-sig").split("\n")[:-1]  # the last one may be partial
    text = "\n".join(line for line in lines if line.strip().startswith("<row"))
    return [dict(r.attrib) for r in ET.fromstring(f"<posts>{text}</posts>").iter("row")]


def _check_prefix(docs: list[Document], data: bytes, offset: int) -> None:
    rows = _complete_rows_before(data, offset)
    questions = [r["Id"] for r in rows if r["PostTypeId"] == "1"]
    assert [d.id.split("/")[1] for d in docs] == questions and len(questions) > 50
    seen = {}
    for r in rows:
        if r["PostTypeId"] == "2":
            seen.setdefault(r["ParentId"], set()).add(int(r["Id"]))
    for doc in docs:  # each with the answers read before the damage
        assert set(doc.metadata["answer_ids"]) == seen.get(doc.id.split("/")[1], set())


def test_broken_xml_keeps_questions_before_it(coffee, tmp_path: Path) -> None:
    data, path = coffee
    at = data.index(b"\n", len(data) // 2) + 1
    path.write_bytes(data[:at] + b'  <row Id="99999" Body="<p>broken" />\n' + data[at:])
    docs, ctx = run_source(path, tmp_path)
    _check_prefix(docs, data, at)
    assert ctx.stage_stats("read").dropped == {"bad_xml": 1}


def test_cut_file_keeps_questions_before_the_cut(coffee, tmp_path: Path) -> None:
    data, path = coffee
    at = len(data) * 2 // 3
    path.write_bytes(data[:at])
    docs, ctx = run_source(path, tmp_path)
    _check_prefix(docs, data, at)
    assert ctx.stage_stats("read").dropped == {"truncated": 1}


def test_invalid_utf8(coffee, tmp_path: Path) -> None:
    data, path = coffee
    at = data.index(b"\n", len(data) // 2) + 1
    path.write_bytes(
        data[:at] + b'  <row Id="99999" PostTypeId="1" Body="\xff\xfe" />\n' + data[at:]
    )
    docs, ctx = run_source(path, tmp_path)
    _check_prefix(docs, data, at)
    assert ctx.stage_stats("read").dropped == {"bad_encoding": 1}


def test_empty_file(coffee, tmp_path: Path) -> None:
    _, path = coffee
    path.write_bytes(b"")
    docs, ctx = run_source(path, tmp_path)
    assert docs == [] and ctx.stage_stats("read").dropped == {"empty_file": 1}


def test_answer_before_its_question(tmp_path: Path) -> None:
    path = tmp_path / "tiny.stackexchange.com" / "Posts.xml"
    path.parent.mkdir()
    path.write_text(
        '\ufeff<?xml version="1.0" encoding="utf-8"?>\n<posts>\n'
        '  <row Id="3" PostTypeId="2" ParentId="1" Score="1" Body="&lt;p&gt;low&lt;/p&gt;" />\n'
        '  <row Id="1" PostTypeId="1" Score="5" Title="Q &amp; A?" '
        'Body="&lt;p&gt;Why &amp;amp; how?&lt;/p&gt;" Tags="&lt;a&gt;&lt;b&gt;" />\n'
        '  <row Id="2" PostTypeId="2" ParentId="1" Score="1" Body="&lt;p&gt;tie&lt;/p&gt;" />\n'
        '  <row Id="4" PostTypeId="2" ParentId="1" Score="9" Body="&lt;p&gt;top&lt;/p&gt;" />\n'
        "</posts>\n",
        encoding="utf-8",
    )
    (doc,), ctx = run_source(path, tmp_path)
    assert doc.text == "Q & A?\n\nWhy & how?\n\ntop\n\ntie\n\nlow"
    assert doc.metadata["answer_ids"] == [4, 2, 3] and doc.metadata["tags"] == ["a", "b"]
    assert doc.id == "tiny.stackexchange.com/1" and not ctx.stage_stats("read").dropped


@pytest.mark.full_data  # a sample outside tests/assets/data
def test_an_empty_source_is_a_warning_and_a_row_of_table_1(
    shared_data: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    root = tmp_path / "in"
    (root / "c4").mkdir(parents=True)
    (root / "stackexchange").mkdir()  # no dump given
    shutil.copyfile(shared_data / "pretrain/c4/olmo_c4-sample.01.json.gz", root / "c4/a.json.gz")
    cfg = BuildConfig(workers=1, mixture={"c4": 0.15, "stackexchange": 0.02})
    tokenizer = shared_data / "models" / "llama-tokenizer" / "tokenizer.model"
    with caplog.at_level(logging.WARNING, logger="pasture.data"):
        report = build_dataset(cfg, root, tmp_path / "out", tokenizer=str(tokenizer))
    assert report["empty_sources"] == ["stackexchange"]
    assert [r["source"] for r in report["table1"]] == ["c4", "stackexchange"]
    c4_row, se_row = report["table1"]
    assert c4_row["sampling_proportion"] == 1.0
    assert c4_row["configured_proportion"] == pytest.approx(0.15 / 0.17)
    assert (se_row["sampling_proportion"], se_row["tokens"], se_row["epochs"]) == (0.0, 0, None)
    assert se_row["configured_proportion"] == pytest.approx(0.02 / 0.17)
    assert any(
        "stackexchange: no documents left (no input files)" in r.getMessage()
        and "11.8%" in r.getMessage()
        for r in caplog.records
    )
    md = (tmp_path / "out" / "report.md").read_text()
    assert "| stackexchange | 0.0% **(empty)** | 11.8% | – | 0 B | 0 | 0 B |" in md
    assert "| c4 | 100.0% | 88.2% |" in md
    assert "**Warning: stackexchange is empty** (no input files)" in md
