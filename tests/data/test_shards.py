"""Shards: write/read round trip with Meta's tokenizer on real text, atomic finish, corruption."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from pasture.data.shards import (
    Shard,
    ShardWriter,
    encode_batch,
    list_shards,
    token_dtype,
    tokenize_documents,
)
from pasture.data.tokenizer import Tokenizer
from pasture.errors import PastureError


@pytest.fixture(scope="module")
def tok(shared_data: Path) -> Tokenizer:
    return Tokenizer.from_file(shared_data / "models" / "llama-tokenizer" / "tokenizer.model")


@pytest.fixture(scope="module")
def lines(shared_data: Path) -> list[str]:
    text = (shared_data / "pretrain" / "MANIFEST.md").read_text(encoding="utf-8")
    return text.splitlines()  # empty lines included: empty documents are kept


def test_round_trip_with_llama_tokenizer(tmp_path: Path, tok: Tokenizer, lines: list[str]) -> None:
    stats = tokenize_documents(lines, tok, tmp_path / "manifest", batch_size=16)
    shard = Shard(tmp_path / "manifest")
    expected = [tok.encode(line) for line in lines]

    assert shard.dtype == np.dtype("<u2") and tok.vocab_size == 32000
    assert (tmp_path / "manifest.bin").stat().st_size == 2 * shard.num_tokens
    assert shard.num_docs == stats.num_docs == len(lines)
    assert shard.num_tokens == stats.num_tokens == sum(len(ids) + 1 for ids in expected)
    assert stats.text_bytes == sum(len(line.encode()) for line in lines)
    assert shard.eos_id == tok.eos_id and shard.vocab_size == 32000
    for i, (line, ids) in enumerate(zip(lines, expected, strict=True)):
        assert shard.document(i).tolist() == ids
        assert tok.decode(shard.document(i)) == line
    # The stream is ids + [EOS] per document, nothing else (no BOS).
    stream = [t for ids in expected for t in [*ids, tok.eos_id]]
    assert shard.tokens.tolist() == stream
    assert tok.bos_id not in stream
    assert list_shards(tmp_path) == [tmp_path / "manifest"]


def test_encode_batch_matches_one_by_one(tok: Tokenizer, lines: list[str]) -> None:
    assert encode_batch(tok, lines) == [tok.encode(line) for line in lines]
    assert encode_batch(tok, []) == []


def test_wide_vocabulary_uses_uint32(tmp_path: Path) -> None:
    assert token_dtype(65536) == np.dtype("<u2") and token_dtype(65537) == np.dtype("<u4")
    with ShardWriter(tmp_path / "wide", vocab_size=70000, eos_id=2) as w:
        w.add([65535, 65536, 69999])
        w.add([])
        w.add(np.array([7, 8]))
    shard = Shard(tmp_path / "wide")
    assert shard.dtype == np.dtype("<u4")
    assert shard.tokens.tolist() == [65535, 65536, 69999, 2, 2, 7, 8, 2]
    assert [shard.document(i).tolist() for i in range(3)] == [[65535, 65536, 69999], [], [7, 8]]


def test_exception_inside_with_leaves_no_shard(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError), ShardWriter(tmp_path / "s", 100, eos_id=2) as w:
        w.add([5, 6, 7])
        raise RuntimeError("crash mid-write")
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(PastureError, match=r"s\.idx: no such shard index"):
        Shard(tmp_path / "s")


def test_failed_rewrite_keeps_the_old_shard(tmp_path: Path) -> None:
    with ShardWriter(tmp_path / "s", 100, eos_id=2) as w:
        w.add([5, 6, 7])
    with (
        pytest.raises(PastureError, match="token id 100 outside"),
        ShardWriter(tmp_path / "s", 100, eos_id=2) as w,
    ):
        w.add([1, 100])
    assert Shard(tmp_path / "s").tokens.tolist() == [5, 6, 7, 2]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.bin", "s.idx"]


def test_bin_without_idx_is_not_a_shard(tmp_path: Path) -> None:
    with ShardWriter(tmp_path / "s", 100, eos_id=2) as w:
        w.add([5])
    (tmp_path / "s.idx").unlink()  # what a crash between the two renames leaves
    assert list_shards(tmp_path) == []
    with pytest.raises(PastureError, match="no such shard index"):
        Shard(tmp_path / "s")


def test_truncated_bin_names_the_file(tmp_path: Path, tok: Tokenizer, lines: list[str]) -> None:
    tokenize_documents(lines[:20], tok, tmp_path / "t")
    bin_path = tmp_path / "t.bin"
    bin_path.write_bytes(bin_path.read_bytes()[:-3])
    with pytest.raises(PastureError, match=rf"{bin_path}: truncated"):
        Shard(tmp_path / "t")


def test_corrupt_idx_names_the_file(tmp_path: Path) -> None:
    with ShardWriter(tmp_path / "c", 100, eos_id=2) as w:
        w.add([1, 2, 3])
    idx = tmp_path / "c.idx"
    data = idx.read_bytes()
    idx.write_bytes(b"NOTSHARD" + data[8:])
    with pytest.raises(PastureError, match=rf"{idx}: not a Pasture shard index \(bad magic\)"):
        Shard(tmp_path / "c")
    idx.write_bytes(data[:-8])
    with pytest.raises(PastureError, match=rf"{idx}: corrupt index"):
        Shard(tmp_path / "c")
