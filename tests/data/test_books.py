"""The Gutenberg reader and book-level dedup on the real PG samples."""

from __future__ import annotations

from pathlib import Path

import pytest

from pasture.data.document import Context, Document, run_steps
from pasture.data.sources import books

OPTS = books.Options()


def run_source(paths: list[Path], work_dir: Path, opts=OPTS):
    drops: list[tuple[str, str, Document | None, str]] = []
    ctx = Context(shard="test", sink=lambda *args: drops.append(args))
    docs = (doc for path in paths for doc in books.read(path, ctx, opts))
    return list(run_steps(docs, books.steps(opts, work_dir), ctx)), ctx, drops


@pytest.fixture(scope="module")
def built(shared_data: Path, tmp_path_factory):
    inputs = books.find_inputs(shared_data / "pretrain", OPTS)
    (shard,) = books.shards(inputs, OPTS)
    return run_source(shard, tmp_path_factory.mktemp("books"))


def by_id(docs: list[Document]) -> dict[str, Document]:
    return {doc.id: doc for doc in docs}


def test_find_inputs_and_shards(shared_data: Path) -> None:
    inputs = books.find_inputs(shared_data / "pretrain", OPTS)
    names = ["16215-8.txt", "16215.txt", "24675-8.txt", "3261.txt", "9198-8.txt", "972.txt"]
    assert [p.name for p in inputs] == names  # no LICENSE-*.txt, no .rdf
    assert books.shards(inputs, OPTS) == [inputs]


def test_near_duplicate_pair_collapses(built) -> None:
    docs, ctx, drops = built
    assert sorted(by_id(docs)) == [
        "gutenberg/16215-8",
        "gutenberg/24675-8",
        "gutenberg/3261",
        "gutenberg/9198-8",
        "gutenberg/972",
    ]
    assert ctx.stage_stats("near_duplicate").dropped == {"near_duplicate": 1}
    ((stage, reason, dup, _),) = drops
    assert (stage, reason, dup.id) == ("near_duplicate", "near_duplicate", "gutenberg/16215")
    assert dup.metadata["duplicate_of"] == "gutenberg/16215-8"
    assert dup.metadata["overlap"] > 0.99


def test_headers_and_license_are_gone(built) -> None:
    docs, _, _ = built
    starts = {
        "gutenberg/972": "THE DEVIL'S DICTIONARY\n\nby Ambrose Bierce",
        "gutenberg/3261": "NEWS FROM NOWHERE\nOR\nAN EPOCH OF REST",
        "gutenberg/9198-8": "THE COMPLETE ANGLER;",
        "gutenberg/24675-8": "ELK DEEL IS AFZONDERLIJK VERKRIJGBAAR",
        "gutenberg/16215-8": "Transcribers Note:",
    }
    for doc in docs:
        assert doc.text.startswith(starts[doc.id]), doc.id
        upper = doc.text.upper()
        for boilerplate in (
            "PROJECT GUTENBERG LICENSE",
            "PROJECT GUTENBERG-TM",
            "START OF THIS PROJECT",
            "START OF THE PROJECT",
            "END OF THIS PROJECT",
            "END OF THE PROJECT",
            "END OF PROJECT GUTENBERG",
        ):
            assert boilerplate not in upper, (doc.id, boilerplate)
        assert "PRODUCED BY" not in upper[:500]  # the PG credit line after the start marker
        assert "\r" not in doc.text
        assert doc.metadata["gutenberg_markers"] is True


def test_variant_marker_of_3261(built) -> None:
    doc = by_id(built[0])["gutenberg/3261"]
    assert doc.text.endswith("{3}  Cirencester and Burford he must have meant.")
    assert doc.metadata["title"].startswith("News from Nowhere")
    assert doc.metadata["author"] == "William Morris"


def test_latin1_books_are_decoded(built) -> None:
    found = by_id(built[0])
    assert "tête-à-tête" in found["gutenberg/16215-8"].text
    assert found["gutenberg/16215-8"].metadata["encoding"] == "latin-1"
    assert found["gutenberg/24675-8"].metadata["author"] == "Gabriël (AKA Carel van Nievelt)"
    assert found["gutenberg/24675-8"].metadata["language"] == "Dutch"
    assert found["gutenberg/972"].metadata["encoding"] == "utf-8"
    assert found["gutenberg/972"].metadata["title"] == "The Devil's Dictionary"


def test_deterministic(built, shared_data: Path, tmp_path: Path) -> None:
    inputs = books.find_inputs(shared_data / "pretrain", OPTS)
    again, _, _ = run_source(inputs, tmp_path)
    assert [(d.id, d.text) for d in again] == [(d.id, d.text) for d in built[0]]


def test_containment_overlap_catches_a_book_inside_a_longer_one(tmp_path: Path) -> None:
    story = " ".join(f"word{i} and then the story went on" for i in range(400))
    other = " ".join(f"token{i} unrelated prose follows here" for i in range(400))
    a, b = books.shingles(story), books.shingles(story + " " + other)
    assert books.overlap(a, b) > 0.99  # Jaccard would be about 0.5
    assert books.overlap(a, books.shingles(other)) < 0.01
    (tmp_path / "b").mkdir()
    anthology, single = tmp_path / "b" / "1.txt", tmp_path / "b" / "2.txt"
    anthology.write_text(story + "\n\n" + other)
    single.write_text(story)
    docs, ctx, drops = run_source([anthology, single], tmp_path)
    assert [d.id for d in docs] == ["gutenberg/1"]
    assert drops[0][2].metadata["duplicate_of"] == "gutenberg/1"


def test_files_without_markers_empty_and_invalid_utf8(tmp_path: Path) -> None:
    plain = tmp_path / "100.txt"
    plain.write_bytes(b"Title: A Plain Book\r\n\r\nIt was a dark night.\r\n")
    empty = tmp_path / "101.txt"
    empty.write_bytes(b"")
    latin = tmp_path / "102-8.txt"  # not valid UTF-8: read as Latin-1, as PG's -8 files are
    latin.write_bytes(
        b"*** START OF THIS PROJECT GUTENBERG EBOOK X ***\r\nCaf\xe9 cr\xe8me.\r\n"
        b"*** END OF THIS PROJECT GUTENBERG EBOOK X ***\r\nlicense"
    )
    utf8 = tmp_path / "103.txt"
    utf8.write_bytes("***START OF THE PROJECT GUTENBERG EBOOK Y***\nNaïve café.\n".encode())
    docs, ctx, drops = run_source([plain, empty, latin, utf8], tmp_path)
    found = by_id(docs)
    assert found["gutenberg/100"].text == "Title: A Plain Book\n\nIt was a dark night."
    assert found["gutenberg/100"].metadata["gutenberg_markers"] is False
    assert found["gutenberg/100"].metadata["title"] == "A Plain Book"
    assert found["gutenberg/102-8"].text == "Café crème."
    # No end marker: cut after the start marker only, rather than lose the book.
    assert found["gutenberg/103"].metadata["gutenberg_markers"] is False
    assert found["gutenberg/103"].text == "Naïve café."
    assert ctx.stage_stats("read").dropped == {"empty_file": 1}
    assert [(stage, reason, file) for stage, reason, _, file in drops] == [
        ("read", "empty_file", str(empty))
    ]
