"""Tokenized, packed shards: the training stream on disk (paper §2.1: BPE ids, documents packed).

A shard is two files beside each other:

* ``NAME.bin`` — every token id of every document, fixed width, little-endian: ``uint16`` when
  ``vocab_size <= 65536`` (LLaMA's 32,000), else ``uint32``. The writer appends one EOS id after
  each document; that EOS is the only separator (no BOS inside the stream, as LLaMA packs).
* ``NAME.idx`` — a 48-byte header (magic ``PASTSHRD``, version, token width in bytes, vocab size,
  document count, token count, EOS id) then ``num_docs + 1`` ``uint64`` offsets: the start of
  each document in ``NAME.bin`` and, last, the token count. Document ``i`` is
  ``tokens[offsets[i] : offsets[i + 1] - 1]`` (its EOS dropped).

``ShardWriter`` writes both files under temporary names and renames them on a clean close,
``.bin`` first and ``.idx`` last: a shard exists exactly when its ``.idx`` does, so a crash or an
exception never leaves something that looks finished::

    from pasture.data.shards import Shard, tokenize_documents
    from pasture.data.tokenizer import Tokenizer
    tok = Tokenizer.from_file("tokenizer.model")
    stats = tokenize_documents(["first document", "second one"], tok, "out/wiki-00000")
    shard = Shard("out/wiki-00000")
    tok.decode(shard.document(1))  # "second one"
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING

import numpy as np

from ..errors import PastureError
from ..files import atomic_file

if TYPE_CHECKING:
    from .tokenizer import Tokenizer

MAGIC = b"PASTSHRD"
VERSION = 1
# magic, version, token width (bytes), vocab_size, num_docs, num_tokens, eos_id
_HEADER = struct.Struct("<8sIIQQQq")
_DTYPES = {2: np.dtype("<u2"), 4: np.dtype("<u4")}
_OFFSET = np.dtype("<u8")


def token_dtype(vocab_size: int) -> np.dtype:
    """``uint16`` when every id fits (vocab_size <= 65536), else ``uint32``; little-endian."""
    if not 0 < vocab_size <= 2**32:
        raise PastureError(f"vocab_size {vocab_size} out of range (1..2**32)")
    return _DTYPES[2] if vocab_size <= 2**16 else _DTYPES[4]


def list_shards(directory: str | Path) -> list[Path]:
    """The finished shards (those with an ``.idx``) in ``directory``, as sorted path prefixes."""
    directory = Path(directory)
    if not directory.is_dir():
        raise PastureError(f"{directory}: no such directory (looking for shards)")
    return sorted(p.with_suffix("") for p in directory.glob("*.idx"))


class ShardWriter:
    """Writes one shard; use as a context manager. ``add(ids)`` appends a document plus EOS.

    The writer, not the caller, appends ``eos_id`` after each document. Nothing appears under the
    final names until the ``with`` block ends without an exception; an exception (or ``abort()``)
    deletes the temporary files. An existing shard of the same name is replaced.
    """

    def __init__(self, path_prefix: str | Path, vocab_size: int, eos_id: int) -> None:
        self.prefix = Path(path_prefix)
        self.vocab_size = vocab_size
        self.dtype = token_dtype(vocab_size)
        if not 0 <= eos_id < vocab_size:
            raise PastureError(f"{self.prefix}: eos_id {eos_id} outside the vocabulary")
        self.eos_id = eos_id
        self.bin_path = self.prefix.with_name(self.prefix.name + ".bin")
        self.idx_path = self.prefix.with_name(self.prefix.name + ".idx")
        self._stack: ExitStack | None = None
        self._idx_tmp: Path | None = None
        self._eos = np.array([eos_id], dtype=self.dtype).tobytes()
        self._offsets = [0]
        self._file = None

    @property
    def num_docs(self) -> int:
        return len(self._offsets) - 1

    @property
    def num_tokens(self) -> int:
        return self._offsets[-1]

    def __enter__(self) -> ShardWriter:
        # Exits run in reverse: the old .idx goes first, then .bin is renamed, then .idx, so a
        # replaced shard never pairs an old .idx with the new .bin.
        stack = ExitStack()
        try:
            self._idx_tmp = stack.enter_context(atomic_file(self.idx_path))
            bin_tmp = stack.enter_context(atomic_file(self.bin_path))
            stack.push(self._unlink_old_idx)
            self._file = open(bin_tmp, "wb")  # noqa: SIM115 - closed in close()/abort()
        except OSError as e:
            stack.close()
            raise PastureError(f"{self.bin_path}: cannot write ({e.strerror or e})") from e
        self._stack = stack
        return self

    def _unlink_old_idx(self, exc_type: type[BaseException] | None, *_: object) -> None:
        if exc_type is None:
            self.idx_path.unlink(missing_ok=True)

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()

    def add(self, ids: Sequence[int] | np.ndarray) -> None:
        """Append one document's token ids (without EOS: the writer adds it)."""
        if self._file is None:
            raise PastureError(f"{self.prefix}: ShardWriter.add outside its `with` block")
        arr = np.asarray(ids, dtype=np.int64)
        if arr.ndim != 1:
            raise PastureError(f"{self.prefix}: a document is a 1-D sequence of ids")
        if arr.size and (arr.min() < 0 or arr.max() >= self.vocab_size):
            bad = int(arr[(arr < 0) | (arr >= self.vocab_size)][0])
            raise PastureError(
                f"{self.prefix}: token id {bad} outside the vocabulary (size {self.vocab_size}); "
                "was the shard opened with the tokenizer's vocab_size?"
            )
        self._file.write(arr.astype(self.dtype).tobytes())
        self._file.write(self._eos)
        self._offsets.append(self._offsets[-1] + arr.size + 1)

    def close(self) -> None:
        """Finish: fsync, then rename ``.bin`` and, last, ``.idx`` to their final names."""
        if self._file is None or self._stack is None:
            return
        try:
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()
            self._file = None
            header = _HEADER.pack(
                MAGIC,
                VERSION,
                self.dtype.itemsize,
                self.vocab_size,
                self.num_docs,
                self.num_tokens,
                self.eos_id,
            )
            with open(self._idx_tmp, "wb") as f:
                f.write(header)
                f.write(np.asarray(self._offsets, dtype=_OFFSET).tobytes())
            stack, self._stack = self._stack, None
            stack.close()
        except OSError as e:
            self.abort()
            raise PastureError(f"{self.prefix}: cannot finish shard ({e.strerror or e})") from e

    def abort(self) -> None:
        """Drop everything written so far; the final names are left untouched."""
        if self._file is not None:
            self._file.close()
            self._file = None
        if self._stack is not None:
            stack, self._stack = self._stack, None
            err = RuntimeError("shard aborted")
            stack.__exit__(type(err), err, None)  # the temporary files go, nothing is renamed


class Shard:
    """A finished shard, memory-mapped read-only: ``tokens``, ``offsets``, ``document(i)``."""

    def __init__(self, path_prefix: str | Path) -> None:
        self.prefix = Path(path_prefix)
        self.idx_path = self.prefix.with_name(self.prefix.name + ".idx")
        self.bin_path = self.prefix.with_name(self.prefix.name + ".bin")
        try:
            idx = self.idx_path.read_bytes()
        except FileNotFoundError as e:
            raise PastureError(
                f"{self.idx_path}: no such shard index (missing, or its writer did not finish)"
            ) from e
        except OSError as e:
            raise PastureError(f"{self.idx_path}: cannot read ({e.strerror or e})") from e
        if len(idx) < _HEADER.size or idx[:8] != MAGIC:
            raise PastureError(f"{self.idx_path}: not a Pasture shard index (bad magic)")
        _, version, width, vocab, docs, tokens, eos = _HEADER.unpack_from(idx)
        if version != VERSION:
            raise PastureError(
                f"{self.idx_path}: shard format version {version}; this Pasture reads {VERSION}"
            )
        if width not in _DTYPES:
            raise PastureError(f"{self.idx_path}: corrupt index (token width {width} bytes)")
        if len(idx) != _HEADER.size + (docs + 1) * _OFFSET.itemsize:
            raise PastureError(
                f"{self.idx_path}: corrupt index ({len(idx)} bytes for {docs} documents)"
            )
        offsets = np.frombuffer(idx, dtype=_OFFSET, offset=_HEADER.size)
        if offsets[0] != 0 or offsets[-1] != tokens or np.any(np.diff(offsets) < 1):
            raise PastureError(f"{self.idx_path}: corrupt index (offsets do not fit the tokens)")
        self.dtype = _DTYPES[width]
        self.vocab_size = int(vocab)
        self.num_docs = int(docs)
        self.num_tokens = int(tokens)
        self.eos_id = int(eos)
        self.offsets = offsets.astype(np.int64)
        try:
            size = self.bin_path.stat().st_size
        except FileNotFoundError as e:
            raise PastureError(f"{self.bin_path}: missing (its .idx exists)") from e
        if size != self.num_tokens * width:
            raise PastureError(
                f"{self.bin_path}: truncated or corrupt ({size} bytes, the index says "
                f"{self.num_tokens} tokens × {width} bytes = {self.num_tokens * width})"
            )
        if self.num_tokens == 0:
            self.tokens = np.empty(0, dtype=self.dtype)
        else:
            self.tokens = np.memmap(self.bin_path, dtype=self.dtype, mode="r")

    def __len__(self) -> int:
        return self.num_docs

    def document(self, i: int) -> np.ndarray:
        """Document ``i``'s token ids, without the EOS separator."""
        if not 0 <= i < self.num_docs:
            raise IndexError(f"document {i} out of range ({self.num_docs} in {self.prefix})")
        return self.tokens[self.offsets[i] : self.offsets[i + 1] - 1]


@dataclass(frozen=True)
class ShardStats:
    """What ``tokenize_documents`` wrote; ``text_bytes`` (UTF-8) is the paper's "disk size"."""

    prefix: Path
    num_docs: int
    num_tokens: int  # EOS separators included
    text_bytes: int


def encode_batch(tokenizer: Tokenizer, texts: Sequence[str]) -> list[list[int]]:
    """Token ids of each text (no BOS/EOS), one SentencePiece call for the whole batch.

    ``Tokenizer`` only offers one-string ``encode``; SentencePiece encodes a list in C++ across
    threads, several times faster, so use the processor it holds when there is one.
    """
    sp = getattr(tokenizer, "_sp", None)
    if sp is not None:
        return sp.encode(list(texts))
    return [tokenizer.encode(t) for t in texts]


def tokenize_documents(
    texts: Iterable[str],
    tokenizer: Tokenizer,
    out_prefix: str | Path,
    *,
    batch_size: int = 1024,
) -> ShardStats:
    """Encode ``texts`` (one document each, empty ones kept) into the shard ``out_prefix``.

    Each document is written as ``ids + [eos]``; no BOS. Encoding runs ``batch_size`` documents
    per SentencePiece call.
    """
    eos = tokenizer.eos_id
    if eos < 0:
        raise PastureError(f"{out_prefix}: the tokenizer has no EOS id to separate documents")
    text_bytes = 0
    with ShardWriter(out_prefix, tokenizer.vocab_size, eos) as writer:
        batch: list[str] = []
        for text in texts:
            batch.append(text)
            text_bytes += len(text.encode("utf-8"))
            if len(batch) == batch_size:
                for ids in encode_batch(tokenizer, batch):
                    writer.add(ids)
                batch = []
        for ids in encode_batch(tokenizer, batch):
            writer.add(ids)
    return ShardStats(writer.prefix, writer.num_docs, writer.num_tokens, text_bytes)
