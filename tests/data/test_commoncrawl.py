"""CommonCrawl source: WET/WARC readers on the real samples, damage handling, CCNet steps."""

from __future__ import annotations

import gzip
import json
import shutil
from collections import Counter
from pathlib import Path

import pytest

from pasture.data.ccnet.language import language_step
from pasture.data.document import Context, run_steps
from pasture.data.sources import commoncrawl as cc

CC = "pretrain/commoncrawl"
WARC = "warc/CC-MAIN-2020-34_excerpt_resiliparse.warc.gz"
FIXTURE = "wet/ccnet_test_sample.warc.wet"


def _read(path: Path, ctx: Context | None = None) -> list:
    return list(cc.read(path, ctx or Context("test"), cc.Options()))


def test_find_inputs_and_shards(shared_data: Path) -> None:
    inputs = cc.find_inputs(shared_data / "pretrain", cc.Options())
    names = [p.relative_to(shared_data / CC).as_posix() for p in inputs]
    assert names == [
        "warc/CC-MAIN-2020-34_excerpt_resiliparse.warc.gz",
        "warc/CC-MAIN-2024-22_whirlwind.warc.gz",
        "wet/CC-MAIN-2024-22_whirlwind.warc.wet.gz",
        "wet/ccnet_test_sample.warc.wet",
    ]
    assert cc.shards(inputs, cc.Options(files_per_shard=3)) == [inputs[:3], inputs[3:]]


def test_ccnet_fixture_parses_despite_bad_lengths(shared_data: Path) -> None:
    docs = _read(shared_data / CC / FIXTURE)
    assert [d.metadata["url"] for d in docs] == [
        "http://sample_english.com",
        "http://sample_chinese.zh",
        "http://sample_russian.ru",
    ]
    first = docs[0]
    assert first.metadata["title"] == "Famous Mark Twain Quotes"
    assert first.text.startswith("Don't part with your illusions.")
    assert first.text.endswith("Truth isn't.")
    assert first.metadata["date_download"] == "2019-03-18T00:00:00Z"
    assert first.metadata["digest"] == "sha1:XQZHW7QWIG54HVAV3KPRW6MK5ILDNCER"
    assert first.metadata["cc_segment"] == "CC-MAIN-20190318132220-20190318153634-00064.warc.wet.gz"
    assert first.metadata["crawl"] == "CC-MAIN-2019-13"
    assert len({d.id for d in docs}) == 3


def test_whirlwind_wet_and_warc(shared_data: Path) -> None:
    (wet,) = _read(shared_data / CC / "wet/CC-MAIN-2024-22_whirlwind.warc.wet.gz")
    (warc,) = _read(shared_data / CC / "warc/CC-MAIN-2024-22_whirlwind.warc.gz")
    for doc in (wet, warc):
        assert doc.metadata["url"] == "https://an.wikipedia.org/wiki/Escopete"
        assert doc.metadata["date_download"] == "2024-05-18T01:58:10Z"
        assert "Escopete" in doc.metadata["title"]
        assert "Escopete" in doc.text
    assert wet.metadata["cc_languages"] == "spa"
    assert warc.metadata["source_domain"] == "an.wikipedia.org"


def test_warc_excerpt_languages(shared_data: Path) -> None:
    ctx = Context("test")
    docs = _read(shared_data / CC / WARC, ctx)
    assert len(docs) == 16 and all(d.text.strip() for d in docs)
    language = language_step(None, 0.0)
    kept = list(language(docs, ctx))
    assert Counter(d.metadata["language"] for d in kept) == Counter(
        zh=11, de=2, en=1, nl=1, ru=1
    )  # as CC's CLD2 metadata says (MANIFEST)
    english = language_step(["en"], 0.5)
    ctx = Context("test")
    assert len(list(english(docs, ctx))) == 1
    assert ctx.stats["read"].dropped["language"] == 15


def test_truncated_warc_keeps_records_before_the_cut(shared_data: Path, tmp_path: Path) -> None:
    data = (shared_data / CC / WARC).read_bytes()
    cut = tmp_path / "cut.warc.gz"
    cut.write_bytes(data[: len(data) // 2])
    ctx = Context("test")
    docs = _read(cut, ctx)
    full = _read(shared_data / CC / WARC)
    assert 3 <= len(docs) < 16
    assert [d.text for d in docs] == [d.text for d in full[: len(docs)]]
    assert ctx.stats["read"].dropped == {"truncated": 1}


def test_wet_damage_truncated_and_malformed(shared_data: Path, tmp_path: Path) -> None:
    text = (shared_data / CC / FIXTURE).read_text()
    records = text.split("WARC/1.0\n")
    broken = records[3].replace("WARC-Type: conversion", "WARC-Type conversion")  # zh page
    bad = tmp_path / "bad.warc.wet"
    bad.write_text("WARC/1.0\n".join([*records[:3], broken, *records[4:]]))
    ctx = Context("test")
    docs = _read(bad, ctx)
    assert [d.metadata["url"] for d in docs] == [
        "http://sample_english.com",
        "http://sample_russian.ru",
    ]
    assert ctx.stats["read"].dropped == {"malformed_record": 1}

    packed = gzip.compress(text.encode())
    cut = tmp_path / "cut.warc.wet.gz"
    cut.write_bytes(packed[: int(len(packed) * 0.8)])
    ctx = Context("test")
    docs = _read(cut, ctx)
    full = [d.text for d in _read(shared_data / CC / FIXTURE)]
    assert 1 <= len(docs) < 3 and [d.text for d in docs] == full[: len(docs)]
    assert ctx.stats["read"].dropped == {"truncated": 1}


ENGLISH_PAGE = """\
A Walk Along the River
The river runs through the old town, past the market and the stone bridge.
Every morning the fishermen bring their boats to the small harbour near the church.
Visitors can walk along the water and watch the birds that live on the islands.
In the summer there are concerts in the park, and the cafes stay open until late.
Share this page with your friends on social media."""


@pytest.fixture(scope="module")
def prepared(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A work dir with an LM trained on C4 text (fast), and a tmp copy of the CC inputs with
    a planted page that shares a paragraph with the CCNet fixture's English page."""
    work = tmp_path_factory.mktemp("work")
    c4 = shared_data / "pretrain/c4/c4-en-train.00000-of-01024_first1000.jsonl.gz"
    with gzip.open(c4, "rt") as f:
        texts = [json.loads(line)["text"] for _, line in zip(range(300), f, strict=False)]
    (work / "lm.txt").write_text("\n\n".join(texts))
    root = tmp_path_factory.mktemp("root")
    shutil.copytree(shared_data / CC / "wet", root / "commoncrawl/wet")
    fixture = (shared_data / CC / FIXTURE).read_text()
    twain = "Facts are stubborn things, but statistics are more pliable.\n"
    planted = fixture.split("\n\n\n")[0].replace("sample_english.com", "planted.example")
    planted = planted.replace("Famous Mark Twain Quotes\n", f"{ENGLISH_PAGE}\n{twain}")
    (root / "commoncrawl/wet/zz_planted.warc.wet").write_text(planted + "\n\n\n")
    return work, root


def _opts(work: Path, **kw) -> cc.Options:
    return cc.Options(lm_training_text=str(work / "lm.txt"), lm_vocab_size=2000, lm_order=3, **kw)


def _run(root: Path, work: Path, opts: cc.Options) -> tuple[list, Context]:
    ctx = Context("test")
    (shard,) = cc.shards(cc.find_inputs(root, opts), opts)
    docs = (doc for path in shard for doc in cc.read(path, ctx, opts))
    return list(run_steps(docs, cc.steps(opts, work), ctx)), ctx


@pytest.mark.slow
def test_ccnet_pipeline_dedup_and_schema(shared_data: Path, prepared: tuple[Path, Path]) -> None:
    work, root = prepared
    opts = _opts(work, keep_buckets=["head", "middle", "tail"])
    cc.prepare(opts, root, work)
    info = json.loads((work / "ccnet_lm_en.json").read_text())
    assert info["cutoffs"][0] < info["cutoffs"][1]
    out, ctx = _run(root, work, opts)
    # cc_net's paper mode: the planted file repeats the fixture's three pages, and its English
    # page shares the four Twain lines; every copy of a shared line goes, so the fixture's
    # English page and both Russian copies are left empty. The Chinese page (100 characters,
    # twice) is under cc_net's min_len of 300.
    assert [d.metadata["url"] for d in out] == ["http://planted.example"]
    planted = out[0]
    assert "Facts are stubborn things" not in planted.text
    assert planted.metadata["original_nlines"] == 10 and planted.metadata["nlines"] == 5
    assert planted.metadata["line_ids"] == [0, 1, 2, 3, 4]
    assert ctx.stats["length"].dropped == {"too_short": 2}
    assert ctx.stats["line_dedup"].dropped == {"duplicate_lines": 3}
    assert ctx.stats["language"].dropped["language"] == 1  # Aragonese (whirlwind)
    # The older rule, by name: the first copy stays, no minimum length.
    older, ctx = _run(root, work, _opts(work, line_dedup="keep_first", min_length=0))
    assert [d.metadata["url"] for d in older] == [
        "http://sample_english.com",
        "http://planted.example",
    ]
    assert older[1].text == planted.text
    assert ctx.stats["language"].dropped["language"] == 3  # zh, ru, Aragonese (whirlwind)

    reference = shared_data / CC / "reference_processed/ccnet_cc_en_head-0091.jsonl.gz"
    with gzip.open(reference, "rt") as f:
        expected = set(json.loads(f.readline())["metadata"])
    for doc in out:
        assert expected <= set(doc.metadata), expected - set(doc.metadata)
        assert doc.metadata["bucket"] in ("head", "middle", "tail")
        assert doc.metadata["length"] == len(doc.text)
    again, _ = _run(root, work, opts)
    assert [(d.id, d.text, d.metadata) for d in again] == [(d.id, d.text, d.metadata) for d in out]

    # the default keeps head and middle: a page of word salad lands in the tail
    salad = "\n".join(" ".join(sorted(line.split(), key=len)) for line in ENGLISH_PAGE.split("\n"))
    doc = cc.Document(salad.replace("e", "x"), "salad", "commoncrawl", {"language": "en"})
    ctx = Context("test")
    perplexity = cc.steps(_opts(work), work)[3]
    assert list(perplexity([doc], ctx)) == []
    assert doc.metadata["bucket"] == "tail"
    assert ctx.stats["read"].dropped == {"quality_bucket": 1}


def test_steps_need_prepare(tmp_path: Path) -> None:
    with pytest.raises(cc.PastureError, match="prepare"):
        cc.steps(cc.Options(), tmp_path)
