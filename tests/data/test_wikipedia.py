"""The Wikipedia reader on the real dump samples, and on damaged copies of them."""

from __future__ import annotations

import bz2
import gzip
import html
import lzma
import re
import shutil
from pathlib import Path

import pytest

from pasture.data.document import Context, Document, run_steps
from pasture.data.sources import wikipedia

OPTS = wikipedia.Options()


@pytest.fixture(scope="module")
def wiki(shared_data: Path) -> Path:
    return shared_data / "pretrain" / "wikipedia"


def run_source(path: Path, work_dir: Path, opts=OPTS) -> tuple[list[Document], Context]:
    ctx = Context(shard="test")
    steps = wikipedia.steps(opts, work_dir)
    return list(run_steps(wikipedia.read(path, ctx, opts), steps, ctx)), ctx


def read_only(path: Path) -> tuple[list[Document], Context]:
    ctx = Context(shard="test")
    return list(wikipedia.read(path, ctx, OPTS)), ctx


def dropped(ctx: Context, stage: str) -> dict[str, int]:
    return dict(ctx.stage_stats(stage).dropped)


def test_find_inputs_and_shards(shared_data: Path) -> None:
    inputs = wikipedia.find_inputs(shared_data / "pretrain", OPTS)
    assert [p.name for p in inputs] == [
        "bgwiki-latest-pages-articles-shortened.xml.bz2",
        "dewiki-20170701-sample.xml",
        "enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2",
        "enwiki-table-markup.xml.bz2",
        "jawiki-truncated-100k.xml.xz",
        "ukwiki-truncated-100k.xml.xz",
    ]
    # the two enwiki dumps may hold the same pages (one has no page range): one shard
    assert [[p.name for p in shard] for shard in wikipedia.shards(inputs, OPTS)] == [
        [inputs[0].name],
        [inputs[1].name],
        [inputs[2].name, inputs[3].name],
        [inputs[4].name],
        [inputs[5].name],
    ]


def _build_shards(root: Path, work_dir: Path, opts=OPTS) -> tuple[list[Document], Context]:
    """Every shard of ``root`` as the build runs it: prepare, then read → steps per shard."""
    wikipedia.prepare(opts, root, work_dir)
    ctx, docs = Context(shard="test"), []
    for shard in wikipedia.shards(wikipedia.find_inputs(root, opts), opts):
        read = (d for path in shard for d in wikipedia.read(path, ctx, opts))
        docs += run_steps(read, wikipedia.steps(opts, work_dir), ctx)
    return docs, ctx


@pytest.mark.slow
def test_ids_unique_and_the_newest_revision_kept(wiki: Path, tmp_path: Path) -> None:
    # enwiki/316 is in both enwiki samples: revision 708657499 (2016) and 816755349 (2017).
    root = tmp_path / "in"
    (root / "wikipedia").mkdir(parents=True)
    names = [p.name for p in wiki.glob("enwiki-*")]
    for name in names:
        shutil.copyfile(wiki / name, root / "wikipedia" / name)
    docs, ctx = _build_shards(root, tmp_path / "work")
    ids = [d.id for d in docs]
    assert len(ids) == len(set(ids)) == 110  # 111 before: enwiki/316 twice
    page = [d for d in docs if d.id == "enwiki/316"]
    assert [d.metadata["revision_id"] for d in page] == [816755349]
    assert page[0].metadata["file"] == "enwiki-table-markup.xml.bz2"
    assert dropped(ctx, "dedup") == {"older_revision": 1}


def test_identical_dumps_kept_once_and_ranges_shard_apart(wiki: Path, tmp_path: Path) -> None:
    root = tmp_path / "in"
    (root / "wikipedia").mkdir(parents=True)
    data = (wiki / "dewiki-20170701-sample.xml").read_bytes()
    for name in ("dewiki-a.xml", "dewiki-b.xml"):
        (root / "wikipedia" / name).write_bytes(data)
    once, _ = run_source(wiki / "dewiki-20170701-sample.xml", tmp_path / "none")
    docs, ctx = _build_shards(root, tmp_path / "work")
    assert [(d.id, d.text) for d in docs] == [(d.id, d.text) for d in once]
    assert dropped(ctx, "dedup") == {"duplicate": 79}  # every page of the second copy
    assert {d.metadata["file"] for d in docs} == {"dewiki-a.xml"}
    # split dumps name their page ranges: disjoint ranges are separate shards
    names = ["dewiki-x.xml-p1p99.bz2", "dewiki-x.xml-p100p199.bz2", "dewiki-y.xml-p150p250.bz2"]
    paths = [root / "wikipedia" / n for n in names]
    assert wikipedia.shards(paths, OPTS) == [[paths[1], paths[2]], [paths[0]]]  # sorted


def test_japanese_is_out_of_the_paper_languages(wiki: Path, tmp_path: Path) -> None:
    docs, ctx = run_source(wiki / "jawiki-truncated-100k.xml.xz", tmp_path)
    assert docs == []
    assert dropped(ctx, "language")["language"] > 100  # every article that got that far
    assert ctx.stage_stats("wikitext").docs_in == 0
    assert dropped(ctx, "read") == {"truncated": 1}


def test_german_keeps_main_namespace_and_no_redirects(wiki: Path, tmp_path: Path) -> None:
    path = wiki / "dewiki-20170701-sample.xml"
    pages, _ = read_only(path)
    assert len(pages) == 79  # MANIFEST: 79 pages, ns0 36
    assert sum(p.metadata["ns"] == 0 for p in pages) == 36
    docs, ctx = run_source(path, tmp_path)
    assert dropped(ctx, "namespace") == {"namespace": 79 - 36}
    redirects = sum(p.metadata["ns"] == 0 and p.metadata["redirect"] for p in pages)
    assert redirects > 0 and dropped(ctx, "redirect") == {"redirect": redirects}
    assert len(docs) == 36 - redirects
    for doc in docs:
        assert doc.metadata["ns"] == 0 and not doc.metadata["redirect"]
        assert doc.metadata["language"] == "de"
        assert doc.metadata["url"].startswith("https://de.wikipedia.org/wiki/")
        assert not doc.text.upper().startswith(("#WEITERLEITUNG", "#REDIRECT"))
        assert "Kategorie:" not in doc.text and "Datei:" not in doc.text
        assert doc.id.startswith("dewiki/")
    assert len({doc.id for doc in docs}) == len(docs)
    again, _ = run_source(path, tmp_path)
    assert [(d.id, d.text) for d in again] == [(d.id, d.text) for d in docs]


@pytest.mark.slow
def test_truncated_ukrainian_dump_keeps_its_complete_pages(wiki: Path, tmp_path: Path) -> None:
    docs, ctx = run_source(wiki / "ukwiki-truncated-100k.xml.xz", tmp_path)
    assert len(docs) >= 500
    assert dropped(ctx, "read") == {"truncated": 1}
    assert ctx.stage_stats("namespace").docs_in == 532  # 533 page starts, the last one cut
    assert {doc.metadata["language"] for doc in docs} == {"uk"}
    assert len({doc.id for doc in docs}) == len(docs)
    assert all(re.search("[а-яіїєґ]", doc.text) for doc in docs[:50])


def test_utf16_bulgarian_dump(wiki: Path, tmp_path: Path) -> None:
    path = wiki / "bgwiki-latest-pages-articles-shortened.xml.bz2"
    pages, ctx = read_only(path)
    assert len(pages) == 3 and not ctx.stats
    assert all(p.metadata["language"] == "bg" for p in pages)
    docs, _ = run_source(path, tmp_path)
    assert [d.metadata["title"] for d in docs] == ["Григориански календар"]
    assert docs[0].text.startswith("Григорианският календар")


def test_table_markup_is_removed(wiki: Path, tmp_path: Path) -> None:
    path = wiki / "enwiki-table-markup.xml.bz2"  # no <siteinfo>
    docs, ctx = run_source(path, tmp_path)
    assert len(docs) == 5 and not ctx.stage_stats("read").dropped
    wikitext = "\n".join(page.text for page in read_only(path)[0])
    headings = [
        html.unescape(h).strip() for h in re.findall(r"^=+([^=\n{}\[\]<']+)=+\s*$", wikitext, re.M)
    ]
    assert len(headings) > 10
    text = "\n".join(doc.text for doc in docs)
    for markup in ("{|", "|}", "[[", "]]", "{{", "}}", "'''", "''", "<ref", "</"):
        assert markup not in text, markup
    lines = set(text.split("\n"))
    assert all(h in lines for h in headings)  # headings stay, as lines of text
    first = docs[0]
    assert first.text.startswith("The constructive vote of no confidence (in German:")
    assert first.metadata["title"] == "Constructive vote of no confidence"
    assert first.id == "enwiki/217916"


def test_wikitext_to_text() -> None:
    text = wikipedia.wikitext_to_text(
        "{{Infobox person|name=X}}\n'''Bold''' and ''italic'' [[Foo|bar]] [[Baz]] "
        "[[File:x.jpg|thumb|caption [[Q]]]] [[Datei:y.png|mini|z]] word<ref name=a>cite {{c}}"
        "</ref><ref name=b/> [http://example.org label] [[:Category:Seen|seen]]<!-- hidden -->\n"
        "== Heading ==\n* item &amp; more\n"
        '{| class="wikitable"\n|-\n| cell1 || cell2\n|}\n'
        "[[Category:Hidden]] [[Kategorie:Versteckt]] [[de:Deutsch]] <math>x^2</math>"
    )
    assert text == "Bold and italic bar Baz word label seen\nHeading\nitem & more"


def test_language_from_file_name_when_no_xml_lang(tmp_path: Path) -> None:
    path = tmp_path / "dewiki-test.xml"
    path.write_text(
        "<mediawiki><page><title>A</title><ns>0</ns><id>7</id><revision><id>1</id>"
        "<text>Ein [[Satz]].</text></revision></page></mediawiki>",
        encoding="utf-8",
    )
    docs, ctx = run_source(path, tmp_path)
    assert [(d.id, d.text, d.metadata["language"]) for d in docs] == [
        ("dewiki/7", "Ein Satz.", "de")
    ]
    assert not ctx.stage_stats("read").dropped


# ---- damaged copies ------------------------------------------------------------------------


def _pages_before(data: bytes, offset: int) -> int:
    return data[:offset].count(b"</page>")


def _assert_prefix(broken: list[Document], whole: list[Document]) -> None:
    assert [d.id for d in broken] == [d.id for d in whole[: len(broken)]]
    assert [d.text for d in broken] == [d.text for d in whole[: len(broken)]]


@pytest.fixture(scope="module")
def dewiki(wiki: Path) -> tuple[bytes, list[Document]]:
    path = wiki / "dewiki-20170701-sample.xml"
    return path.read_bytes(), read_only(path)[0]


def test_plain_dump_cut_in_the_middle(dewiki, tmp_path: Path) -> None:
    data, whole = dewiki
    cut = len(data) // 2
    path = tmp_path / "dewiki-cut.xml"
    path.write_bytes(data[:cut])
    docs, ctx = read_only(path)
    assert len(docs) == _pages_before(data, cut) > 10
    _assert_prefix(docs, whole)
    assert dropped(ctx, "read") == {"truncated": 1}


def test_broken_xml(dewiki, tmp_path: Path) -> None:
    data, whole = dewiki
    at = data.index(b"</page>", len(data) // 2) + len(b"</page>")
    path = tmp_path / "dewiki-broken.xml"
    path.write_bytes(data[:at] + b"\n  <page><title>x</title></pgae>\n" + data[at:])
    docs, ctx = read_only(path)
    assert len(docs) == _pages_before(data, at)
    _assert_prefix(docs, whole)
    assert dropped(ctx, "read") == {"bad_xml": 1}


def test_invalid_utf8(dewiki, tmp_path: Path) -> None:
    data, whole = dewiki
    at = data.index(b"<text", len(data) // 3) + 40
    path = tmp_path / "dewiki-bytes.xml"
    path.write_bytes(data[:at] + b"\xff\xfe\xc3" + data[at:])
    docs, ctx = read_only(path)
    assert len(docs) == _pages_before(data, at) > 10
    _assert_prefix(docs, whole)
    assert dropped(ctx, "read") == {"bad_encoding": 1}


def test_empty_and_corrupt_files(tmp_path: Path) -> None:
    empty = tmp_path / "enwiki-empty.xml"
    empty.write_bytes(b"")
    docs, ctx = read_only(empty)
    assert docs == [] and dropped(ctx, "read") == {"empty_file": 1}
    empty_bz2 = tmp_path / "enwiki-empty.xml.bz2"
    empty_bz2.write_bytes(bz2.compress(b""))
    assert dropped(read_only(empty_bz2)[1], "read") == {"empty_file": 1}
    corrupt = tmp_path / "enwiki-corrupt.xml.gz"
    corrupt.write_bytes(b"this is not gzip data at all" * 10)
    docs, ctx = read_only(corrupt)
    assert docs == [] and dropped(ctx, "read") == {"corrupt": 1}


def test_gzip_dump_reads_like_plain(dewiki, tmp_path: Path) -> None:
    data, whole = dewiki
    path = tmp_path / "dewiki-sample.xml.gz"
    path.write_bytes(gzip.compress(data, mtime=0))
    docs, ctx = read_only(path)
    assert [(d.id, d.text) for d in docs] == [(d.id, d.text) for d in whole]
    assert not ctx.stats


def test_truncated_compressed_streams(wiki: Path, tmp_path: Path) -> None:
    xz_data = (wiki / "ukwiki-truncated-100k.xml.xz").read_bytes()
    whole = lzma.decompress(xz_data, format=lzma.FORMAT_XZ)  # raw check only; it ends mid-page
    assert whole.count(b"</page>") == 532
    cut_xz = tmp_path / "ukwiki-cut.xml.xz"
    cut_xz.write_bytes(xz_data[: len(xz_data) // 3])
    docs, ctx = read_only(cut_xz)
    assert 50 < len(docs) < 532
    assert [d.metadata["page_id"] for d in docs[:3]] == [
        int(m)
        for m in re.findall(rb"<page>\s*<title>[^<]*</title>\s*<ns>\d+</ns>\s*<id>(\d+)", whole)
    ][:3]
    assert dropped(ctx, "read") == {"truncated": 1}

    bz2_path = wiki / "enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2"
    bz2_data = bz2_path.read_bytes()
    cut_bz2 = tmp_path / "enwiki-cut.xml.bz2"
    cut_bz2.write_bytes(bz2_data[: len(bz2_data) // 2])
    docs, ctx = read_only(cut_bz2)
    full, _ = read_only(bz2_path)
    assert 0 < len(docs) < len(full) == 206
    _assert_prefix(docs, full)
    assert dropped(ctx, "read") == {"truncated": 1}
