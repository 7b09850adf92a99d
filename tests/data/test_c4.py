"""C4 source: both JSON-lines variants, C4's heuristics, span dedup, damage handling."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from pasture.data.document import Context, run_steps
from pasture.data.sources import c4

FIRST1000 = "pretrain/c4/c4-en-train.00000-of-01024_first1000.jsonl.gz"


@pytest.fixture(scope="module")
def real_docs(shared_data: Path) -> list:
    ctx = Context("test")
    return [
        d
        for p in c4.find_inputs(shared_data / "pretrain", c4.Options())
        for d in c4.read(p, ctx, c4.Options())
    ]


def test_read_both_variants(shared_data: Path, real_docs: list) -> None:
    names = [p.name for p in c4.find_inputs(shared_data / "pretrain", c4.Options())]
    assert names[0] == "c4-en-train.00000-of-01024_first1000.jsonl.gz" and len(names) == 4
    assert len(real_docs) == 1030
    first = real_docs[0]
    assert first.text.startswith("Beginners BBQ Class Taking Place in Missoula!")
    assert first.metadata == {
        "url": "https://klyq.com/beginners-bbq-class-taking-place-in-missoula/",
        "timestamp": "2019-04-25T12:57:54Z",  # stored as "2019-04-25 12:57:54"
    }
    olmo = real_docs[1000]
    assert olmo.metadata["timestamp"] == "2019-04-21T18:54:04Z"  # OLMo's "date"
    assert len({d.id for d in real_docs}) == 1030
    assert c4.normalize_timestamp("2019-04-25 12:57:54") == "2019-04-25T12:57:54Z"


@pytest.mark.slow
def test_real_c4_mostly_passes_and_lines_are_clean(real_docs: list) -> None:
    docs = [c4.Document(d.text, d.id, d.source, dict(d.metadata)) for d in real_docs]
    ctx = Context("test")
    steps = c4.steps(c4.Options(min_language_score=0.5), Path("."))
    out = list(run_steps(docs, steps, ctx))
    assert len(out) >= 1000  # already C4-filtered
    assert ctx.stats["bad_words"].dropped == {}  # C4 applied the same list
    for doc in out:
        for line in doc.text.split("\n"):
            assert line.endswith((".", "!", "?", '"')) and len(line.split()) >= 5, line
    # menu lines and lines without terminal punctuation go; the page's own lines stay
    page = real_docs[0].text
    noisy = page.replace("\n", "\nHome | About | Contact\nRead more about BBQ classes here\n", 2)
    assert c4.clean_page(noisy, c4.Options()) == page


GOOD = (
    "The library opens at nine in the morning on weekdays. Children can borrow up to five books "
    "at a time. The reading room on the second floor is quiet and has large windows."
)
PLANTED = {
    "lorem": ("lorem_ipsum", GOOD + "\nLorem ipsum dolor sit amet, consectetur adipiscing elit."),
    "curly": ("curly_brace", GOOD + "\nThe function body is written as { return value; } here."),
    "short": ("too_few_sentences", "Just one sentence with enough words in it.\nMenu\nHome"),
    "bad": (
        "bad_words",
        "The market sells fresh fish every Friday morning. Prices are lower than in the shops. "
        "This page also talks about porn in a sentence that is long enough.",
    ),
    "german": (
        "language",
        "Die Bibliothek öffnet um neun Uhr morgens an Werktagen. Kinder dürfen bis zu fünf "
        "Bücher ausleihen. Der Lesesaal im zweiten Stock ist ruhig und hat große Fenster.",
    ),
    "copy": ("too_few_sentences", GOOD),  # its three sentences were seen in an earlier page
}


def test_planted_bad_pages_are_removed_with_their_reason(shared_data: Path, tmp_path: Path) -> None:
    with gzip.open(shared_data / FIRST1000, "rt") as f:
        real = [json.loads(line) for _, line in zip(range(20), f, strict=False)]
    rows = [
        {
            "text": GOOD + "\nCheck the javascript settings of your browser, please.",
            "url": "u0",
            "timestamp": "2019-04-25 12:57:54",
        }
    ]
    rows += [
        {"text": text, "url": key, "date": "2019-04-21T18:54:04Z"}
        for key, (_, text) in PLANTED.items()
    ]
    folder = tmp_path / "c4"
    folder.mkdir()
    with gzip.open(folder / "planted.json.gz", "wt") as f:
        for row in real + rows:
            f.write(json.dumps(row) + "\n")
    opts = c4.Options(min_language_score=0.5)  # py3langid is less sure than langdetect
    ctx = Context("test")
    docs = (d for p in c4.find_inputs(tmp_path, opts) for d in c4.read(p, ctx, opts))
    dropped: dict[str, str] = {}
    ctx.sink = lambda stage, reason, doc, file: dropped.setdefault(doc.metadata["url"], reason)
    out = {d.metadata["url"]: d for d in run_steps(docs, c4.steps(opts, tmp_path), ctx)}
    for key, (reason, _) in PLANTED.items():
        assert dropped.get(key) == reason, key
    assert out["u0"].text == GOOD  # the javascript line is gone, the page stays
    assert sum(1 for r in real if r["url"] in out) >= 19


def test_damaged_files(shared_data: Path, tmp_path: Path) -> None:
    data = (shared_data / "pretrain/c4/olmo_c4-sample.01.json.gz").read_bytes()
    cut = tmp_path / "cut.json.gz"
    cut.write_bytes(data[: len(data) // 2])
    ctx = Context("test")
    docs = list(c4.read(cut, ctx, c4.Options()))
    assert 1 <= len(docs) < 10 and ctx.stats["read"].dropped == {"truncated": 1}

    lines = gzip.decompress(data).decode().splitlines()
    bad = tmp_path / "bad.jsonl"
    bad.write_text("\n".join([lines[0], '{"text": "unterminated', '{"url": "no text"}', lines[1]]))
    ctx = Context("test")
    assert len(list(c4.read(bad, ctx, c4.Options()))) == 2
    assert ctx.stats["read"].dropped == {"malformed_record": 2}
