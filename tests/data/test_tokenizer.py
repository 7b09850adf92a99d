"""Tokenizer: Meta's model, rebuilding from a vocabulary (GGUF, llama2.c), training, errors.

All on real files from ../shared/data (see models/MANIFEST.md and pretrain/MANIFEST.md).
"""

from __future__ import annotations

import bz2
import gzip
import json
import lzma
import tarfile
from pathlib import Path

import pytest
import sentencepiece as spm

from pasture.data.corpus import default_corpus_files, iter_documents
from pasture.data.tokenizer import Tokenizer, train_tokenizer
from pasture.errors import PastureError

META_REFERENCE = {  # models/MANIFEST.md, sentencepiece 0.2.x, no BOS
    "Hello world": [15043, 3186],
    "Once upon a time, there was a little girl named Lily.": [
        9038, 2501, 263, 931, 29892, 727, 471, 263, 2217, 7826, 4257, 365, 2354, 29889,
    ],
    "The capital of France is Paris.": [450, 7483, 310, 3444, 338, 3681, 29889],
    "  leading spaces and 12345 digits": [
        259, 8236, 8162, 322, 29871, 29896, 29906, 29941, 29946, 29945, 13340,
    ],
    "Grüß Gott — 你好": [1632, 29993, 30034, 13351, 813, 29871, 30919, 31076],
}  # fmt: skip
TOK512_REFERENCE = {
    "Hello world": [346, 306, 414, 263, 304, 341],
    "Once upon a time, there was a little girl named Lily.": [
        403, 407, 261, 378, 432, 383, 286, 261, 376, 298, 315, 421, 395, 317, 426,
    ],
}  # fmt: skip


@pytest.fixture(scope="module")
def models(shared_data: Path) -> Path:
    return shared_data / "models"


@pytest.fixture(scope="module")
def meta_model(models: Path) -> Path:
    return models / "llama-tokenizer" / "tokenizer.model"


def _chunks(text: str, size: int = 8000) -> list[str]:
    """Split at line starts into documents of about ``size`` characters."""
    docs, cur, n = [], [], 0
    for line in text.splitlines(keepends=True):
        cur.append(line)
        n += len(line)
        if n >= size:
            docs.append("".join(cur))
            cur, n = [], 0
    if cur:
        docs.append("".join(cur))
    return docs


@pytest.fixture(scope="module")
def mixed_docs(shared_data: Path) -> list[str]:
    """About 1.7 MB of real text: web, Wikipedia (en, de, bg, uk, ja), C code, TeX,
    books (CRLF, Latin-1), HTML-escaped Q&A."""
    pre = shared_data / "pretrain"
    wiki = pre / "wikipedia"
    sources: list[str] = []
    with gzip.open(pre / "c4" / "c4-en-train.00000-of-01024_first1000.jsonl.gz", "rt") as f:
        sources += [json.loads(line)["text"] for _, line in zip(range(120), f, strict=False)]
    with bz2.open(
        wiki / "enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2"
    ) as f:
        sources.append(f.read(200_000).decode("utf-8", errors="ignore"))
    with bz2.open(wiki / "bgwiki-latest-pages-articles-shortened.xml.bz2") as f:
        sources.append(f.read().decode("utf-16")[:100_000])  # UTF-16 with BOM
    sources.append((wiki / "dewiki-20170701-sample.xml").read_text("utf-8")[:150_000])
    for name in ("ukwiki-truncated-100k.xml.xz", "jawiki-truncated-100k.xml.xz"):
        with lzma.open(wiki / name) as f:
            sources.append(f.read(150_000).decode("utf-8", errors="ignore"))
    with tarfile.open(pre / "github" / "cJSON-a29814f285cc.tar.gz") as tar:
        members = sorted(
            (m for m in tar.getmembers() if m.name.endswith((".c", ".h"))), key=lambda m: m.name
        )
        for m in members[:40]:
            sources.append(tar.extractfile(m).read().decode("utf-8", errors="replace"))
    sources.append((pre / "arxiv" / "tex" / "1708.00137" / "main.tex").read_text("utf-8"))
    gutenberg = pre / "books" / "gutenberg"
    sources.append((gutenberg / "972.txt").read_bytes()[:120_000].decode("ascii"))  # CRLF kept
    sources.append((gutenberg / "24675-8.txt").read_bytes()[:60_000].decode("latin-1"))
    posts = pre / "stackexchange" / "coffee.stackexchange.com" / "Posts.xml"
    sources.append(posts.read_bytes()[:60_000].decode("utf-8-sig", errors="ignore"))
    docs = [doc for source in sources for doc in _chunks(source)]
    text = "".join(docs)
    assert len(text.encode("utf-8")) >= 1_000_000
    # The mixture must exercise what the tokenizer has to get right.
    for probe in ("\r\n", "    ", "1", "\t", "Ü", "ж", "の", "日本"):
        assert probe in text, probe
    return docs


def test_meta_reference_encodings(meta_model: Path) -> None:
    tok = Tokenizer.from_file(meta_model)
    assert (tok.vocab_size, tok.unk_id, tok.bos_id, tok.eos_id) == (32000, 0, 1, 2)
    for text, ids in META_REFERENCE.items():
        assert tok.encode(text) == ids
        assert tok.encode(text, bos=True, eos=True) == [1, *ids, 2]
        assert tok.decode([1, *ids, 2]) == text
    assert [tok.id_to_piece(i) for i in (0, 1, 2, 3, 258)] == [
        "<unk>", "<s>", "</s>", "<0x00>", "<0xFF>"
    ]  # fmt: skip


def _rebuild(how: str, models: Path) -> Tokenizer:
    meta = models / "llama-tokenizer"
    if how == "model file":
        return Tokenizer.from_file(meta / "tokenizer.model")
    if how == "model bytes":
        return Tokenizer.from_bytes((meta / "tokenizer.model").read_bytes())
    if how == "vocab (GGUF)":
        return Tokenizer.from_vocab(*Tokenizer.from_file(meta / "tokenizer.model").vocab())
    return Tokenizer.from_llama2c(meta / "tokenizer.bin")


@pytest.mark.slow
@pytest.mark.parametrize("how", ["model file", "model bytes", "vocab (GGUF)", "llama2.c bin"])
def test_meta_tokenizer_matches_sentencepiece(
    how: str, models: Path, meta_model: Path, mixed_docs: list[str]
) -> None:
    """Every way of getting Meta's tokenizer encodes 1.7 MB exactly as sentencepiece does."""
    reference = spm.SentencePieceProcessor(model_file=str(meta_model))
    tok = _rebuild(how, models)
    assert tok.vocab() == Tokenizer.from_file(meta_model).vocab()
    assert (tok.vocab_size, tok.unk_id, tok.bos_id, tok.eos_id) == (32000, 0, 1, 2)
    expected = reference.encode(mixed_docs)
    assert [tok.encode(doc) for doc in mixed_docs] == expected
    assert sum(map(len, expected)) > 300_000


def test_meta_round_trip(meta_model: Path, mixed_docs: list[str]) -> None:
    """decode(encode(x)) == x exactly, leading spaces, CRLF, tabs and NUL included.

    Identity normalization keeps every character and byte fallback covers any the vocabulary
    lacks; the dummy prefix space added by encode is removed by decode. The one text that
    cannot round-trip is U+2581 itself (SentencePiece's escaped space), which decodes as " ".
    """
    tok = Tokenizer.from_file(meta_model)
    assert not any("\u2581" in doc for doc in mixed_docs)
    for doc in mixed_docs:
        assert tok.decode(tok.encode(doc)) == doc
    for text in ("", " ", "  x  ", "\n\nx", "a\x00b\x7f", "🦙 \u200b\ufeff 𝔘"):
        assert tok.decode(tok.encode(text)) == text
    assert tok.decode(tok.encode("a\u2581b")) == "a b"


@pytest.mark.parametrize(
    ("model", "bin_"),
    [
        ("llama-tokenizer/tokenizer.model", "llama-tokenizer/tokenizer.bin"),
        ("stories260K/tok512.model", "stories260K/tok512.bin"),
    ],
)
def test_llama2c_export_is_byte_exact(models: Path, model: str, bin_: str, tmp_path: Path) -> None:
    out = tmp_path / "tokenizer.bin"
    Tokenizer.from_file(models / model).save_llama2c(out)
    assert out.read_bytes() == (models / bin_).read_bytes()
    again = tmp_path / "again.bin"
    Tokenizer.from_llama2c(out).save_llama2c(again)
    assert again.read_bytes() == out.read_bytes()


def test_tok512_from_llama2c(models: Path, mixed_docs: list[str]) -> None:
    """tok512.model leaves remove_extra_whitespaces at SentencePiece's default (on); the .bin
    cannot carry that, so from_llama2c uses LLaMA's setting (off), which is also what llama2.c's
    run.c does. They agree wherever the text has no runs of spaces or edge spaces."""
    model = Tokenizer.from_file(models / "stories260K" / "tok512.model")
    tok = Tokenizer.from_llama2c(models / "stories260K" / "tok512.bin")
    assert tok.vocab() == model.vocab()
    assert (tok.vocab_size, tok.unk_id, tok.bos_id, tok.eos_id) == (512, 0, 1, 2)
    for text, ids in TOK512_REFERENCE.items():
        assert tok.encode(text) == model.encode(text) == ids
    single_spaced = [" ".join(w for w in doc.split(" ") if w) for doc in mixed_docs]
    assert [tok.encode(d) for d in single_spaced] == [model.encode(d) for d in single_spaced]
    assert model.decode(model.encode("a  b")) == "a b"
    assert tok.decode(tok.encode("a  b")) == "a  b"


def test_from_vocab_round_trips_through_bytes_and_save(meta_model: Path, tmp_path: Path) -> None:
    tok = Tokenizer.from_vocab(*Tokenizer.from_file(meta_model).vocab(), source="gguf")
    path = tmp_path / "rebuilt.model"
    tok.save(path)
    assert path.read_bytes() == tok.to_bytes()
    assert [p.name for p in tmp_path.iterdir()] == ["rebuilt.model"]  # no temp file left
    again = Tokenizer.from_file(path)
    assert again.vocab() == tok.vocab()
    assert (
        again.encode("  leading spaces and 12345 digits")
        == META_REFERENCE["  leading spaces and 12345 digits"]
    )


def test_train_tokenizer_on_default_corpus(tmp_path: Path) -> None:
    files = default_corpus_files(max_bytes=1_500_000)
    assert files == default_corpus_files(max_bytes=1_500_000)  # deterministic
    assert not any("site-packages" in p.parts or "test" in p.parts for p in files)
    assert sum(p.stat().st_size for p in files) >= 1_500_000
    out = tmp_path / "tok.model"
    tok = train_tokenizer(files, out, vocab_size=1000)
    assert out.is_file() and Tokenizer.from_file(out).vocab() == tok.vocab()
    assert (tok.vocab_size, tok.unk_id, tok.bos_id, tok.eos_id) == (1000, 0, 1, 2)
    pieces, _, types = tok.vocab()
    assert pieces[:3] == ["<unk>", "<s>", "</s>"] and types[:3] == [2, 3, 3]
    assert pieces[3:259] == [f"<0x{b:02X}>" for b in range(256)] and set(types[3:259]) == {6}

    # Paper §2.1: numbers split into digits; unknown UTF-8 falls back to bytes.
    pieces = [tok.id_to_piece(i) for i in tok.encode("12345 and 2024")]
    assert pieces[:6] == ["\u2581", "1", "2", "3", "4", "5"]
    assert pieces[-4:] == ["2", "0", "2", "4"]
    llama = tok.encode("🦙")
    assert [tok.id_to_piece(i) for i in llama][-4:] == ["<0xF0>", "<0x9F>", "<0xA6>", "<0x99>"]
    assert tok.decode(llama) == "🦙"
    assert tok.decode(tok.encode("  def f(x):\n\treturn 10 ** 9 — 羊")) == (
        "  def f(x):\n\treturn 10 ** 9 — 羊"
    )
    text = next(iter_documents(files))
    assert tok.decode(tok.encode(text)) == text
    assert len(tok.encode(text)) < len(text.encode("utf-8")) / 2  # it learned real merges


def test_training_is_deterministic(tmp_path: Path) -> None:
    files = default_corpus_files(max_bytes=300_000)
    a = train_tokenizer(files, tmp_path / "a.model", vocab_size=500)
    b = train_tokenizer(files, tmp_path / "b.model", vocab_size=500)
    assert a.vocab() == b.vocab()


def _llama2c_entry_end(data: bytes, n: int) -> int:
    """Offset just past the first ``n`` entries of a llama2.c tokenizer.bin."""
    off = 4
    for _ in range(n):
        off += 8 + int.from_bytes(data[off + 4 : off + 8], "little")
    return off


def test_errors_name_the_file(models: Path, tmp_path: Path) -> None:
    missing = tmp_path / "nope.model"
    for load in (Tokenizer.from_file, Tokenizer.from_llama2c):
        with pytest.raises(PastureError, match=f"^{missing}: no such file"):
            load(missing)

    garbage = tmp_path / "garbage.model"
    garbage.write_bytes(bytes(range(256)) * 4)
    with pytest.raises(PastureError, match=f"^{garbage}: not a SentencePiece model"):
        Tokenizer.from_file(garbage)
    empty = tmp_path / "empty.model"
    empty.write_bytes(b"")
    with pytest.raises(PastureError, match=f"^{empty}: not a SentencePiece model"):
        Tokenizer.from_file(empty)
    # A llama2.c .bin is not a .model either.
    bin_ = models / "stories260K" / "tok512.bin"
    with pytest.raises(PastureError, match=f"^{bin_}: not a SentencePiece model"):
        Tokenizer.from_file(bin_)

    data = (models / "stories260K" / "tok512.bin").read_bytes()
    for cut in (2, 4 + 5, 1000):
        truncated = tmp_path / f"cut{cut}.bin"
        truncated.write_bytes(data[:cut])
        with pytest.raises(PastureError, match=f"^{truncated}: truncated llama2.c tokenizer"):
            Tokenizer.from_llama2c(truncated)
    # Cut at a token boundary: only the byte pieces give it away.
    short = tmp_path / "short.bin"
    short.write_bytes(data[: _llama2c_entry_end(data, 100)])
    with pytest.raises(PastureError, match=f"^{short}: 97 byte pieces; byte fallback needs all"):
        Tokenizer.from_llama2c(short)

    with pytest.raises(PastureError, match="unk_id 5 is not a piece of type unknown"):
        Tokenizer.from_vocab(
            *Tokenizer.from_file(models / "stories260K/tok512.model").vocab(), unk_id=5
        )
    with pytest.raises(PastureError, match=f"^{tmp_path / 'missing.txt'}: no such file"):
        train_tokenizer([tmp_path / "missing.txt"], tmp_path / "t.model", vocab_size=500)
