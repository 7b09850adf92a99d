"""SentencePiece BPE tokenizer (paper §2.1): digits split, byte fallback for unknown UTF-8.

A ``Tokenizer`` wraps ``sentencepiece.SentencePieceProcessor`` plus the serialized ``ModelProto``
it was loaded from. It reads Meta's ``tokenizer.model`` (or any SentencePiece model), rebuilds a
model from a bare vocabulary (GGUF, llama2.c ``tokenizer.bin``) and trains a new one::

    from pasture.data.corpus import default_corpus_files
    from pasture.data.tokenizer import Tokenizer, train_tokenizer
    tok = train_tokenizer(default_corpus_files(4_000_000), Path("tok.model"), vocab_size=4096)
    tok = Tokenizer.from_file("tokenizer.model")
    ids = tok.encode("Hello world", bos=True)
"""

from __future__ import annotations

import io
import os
import re
import struct
from collections.abc import Iterator, Sequence
from pathlib import Path

import sentencepiece as spm
from google.protobuf.message import DecodeError
from sentencepiece import sentencepiece_model_pb2 as sp_pb2

from ..errors import PastureError
from ..files import write_bytes

NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6  # SentencePiece = GGUF
_BYTE_PIECE = re.compile(r"<0x[0-9A-F]{2}>")
_SPACE = "\u2581"  # "▁", SentencePiece's escaped whitespace

# Meta's trainer_spec for LLaMA's tokenizer.model (everything but input, sizes and threads).
LLAMA_TRAINER_SPEC: dict[str, object] = {
    "model_type": "bpe",
    "character_coverage": 0.99995,
    "max_sentence_length": 4192,
    "shuffle_input_sentence": True,
    "max_sentencepiece_length": 16,
    "split_by_unicode_script": True,
    "split_by_whitespace": True,
    "split_by_number": True,
    "treat_whitespace_as_suffix": False,
    "split_digits": True,
    "allow_whitespace_only_pieces": True,
    "byte_fallback": True,
    "vocabulary_output_piece_score": True,
    "hard_vocab_limit": True,
    "use_all_vocab": False,
    "self_test_sample_size": 0,
    "unk_id": 0,
    "bos_id": 1,
    "eos_id": 2,
    "pad_id": -1,
}
# Meta's normalizer_spec: no Unicode normalization, no whitespace collapsing.
LLAMA_NORMALIZER_SPEC: dict[str, object] = {
    "name": "identity",
    "add_dummy_prefix": True,
    "remove_extra_whitespaces": False,
    "escape_whitespaces": True,
}


class Tokenizer:
    """Wraps ``sentencepiece.SentencePieceProcessor`` plus its serialized ``ModelProto``."""

    def __init__(self, proto: sp_pb2.ModelProto, data: bytes, source: str) -> None:
        """Use the ``from_*`` constructors; this one trusts that ``data`` serializes ``proto``."""
        self.source = source
        self._proto = proto
        self._data = data
        self._sp = spm.SentencePieceProcessor()
        try:
            self._sp.LoadFromSerializedProto(data)
        except (RuntimeError, OSError) as e:
            raise PastureError(f"{source or '<bytes>'}: invalid SentencePiece model ({e})") from e

    @classmethod
    def from_file(cls, path: str | Path) -> Tokenizer:
        """Load any SentencePiece ``.model`` file."""
        return cls.from_bytes(_read(Path(path)), source=str(path))

    @classmethod
    def from_bytes(cls, data: bytes, source: str = "") -> Tokenizer:
        """Load a serialized ``ModelProto``; ``source`` names it in error messages."""
        name = source or "<bytes>"
        proto = sp_pb2.ModelProto()
        try:
            proto.ParseFromString(data)
        except DecodeError as e:
            raise PastureError(f"{name}: not a SentencePiece model (corrupt protobuf: {e})") from e
        if not proto.pieces:
            raise PastureError(f"{name}: not a SentencePiece model (no vocabulary pieces)")
        return cls(proto, bytes(data), source)

    @classmethod
    def from_vocab(
        cls,
        pieces: Sequence[str],
        scores: Sequence[float],
        types: Sequence[int],
        *,
        unk_id: int = 0,
        bos_id: int = 1,
        eos_id: int = 2,
        source: str = "",
    ) -> Tokenizer:
        """Build a LLaMA-style BPE model from a vocabulary, as GGUF and llama2.c carry it.

        ``types`` use SentencePiece's enum (1 normal, 2 unknown, 3 control, 4 user-defined,
        5 unused, 6 byte), the same as GGUF's ``tokenizer.ggml.token_type``. BPE merges follow
        the scores (higher merges first).
        """
        name = source or "<vocab>"
        n = len(pieces)
        if not (len(scores) == len(types) == n) or n == 0:
            raise PastureError(
                f"{name}: vocabulary needs equally many pieces, scores and types "
                f"(got {n}, {len(scores)}, {len(types)})"
            )
        bad = next((i for i, t in enumerate(types) if not NORMAL <= int(t) <= BYTE), None)
        if bad is not None:
            raise PastureError(f"{name}: token {bad} has type {types[bad]}, expected 1..6")
        if not 0 <= unk_id < n or int(types[unk_id]) != UNKNOWN:
            raise PastureError(f"{name}: unk_id {unk_id} is not a piece of type unknown (2)")
        for what, i in (("bos_id", bos_id), ("eos_id", eos_id)):
            if i >= n or (i >= 0 and int(types[i]) != CONTROL):
                raise PastureError(f"{name}: {what} {i} is not a piece of type control (3)")

        n_bytes = sum(int(t) == BYTE for t in types)
        if n_bytes not in (0, 256):
            raise PastureError(
                f"{name}: {n_bytes} byte pieces; byte fallback needs all 256 (<0x00>..<0xFF>)"
            )

        proto = sp_pb2.ModelProto()
        for piece, score, kind in zip(pieces, scores, types, strict=True):
            proto.pieces.add(piece=piece, score=float(score), type=int(kind))
        spec = proto.trainer_spec
        for key, value in LLAMA_TRAINER_SPEC.items():
            if key != "model_type":
                setattr(spec, key, value)
        spec.model_type = sp_pb2.TrainerSpec.BPE
        spec.vocab_size = n
        spec.byte_fallback = n_bytes == 256
        spec.unk_id, spec.bos_id, spec.eos_id = unk_id, bos_id, eos_id
        spec.unk_piece = pieces[unk_id]
        if bos_id >= 0:
            spec.bos_piece = pieces[bos_id]
        if eos_id >= 0:
            spec.eos_piece = pieces[eos_id]
        for key, value in LLAMA_NORMALIZER_SPEC.items():
            setattr(proto.normalizer_spec, key, value)
        return cls(proto, proto.SerializeToString(), source)

    def vocab(self) -> tuple[list[str], list[float], list[int]]:
        """Pieces, scores and types by id: the inverse of ``from_vocab``."""
        pieces = self._proto.pieces
        return [p.piece for p in pieces], [p.score for p in pieces], [p.type for p in pieces]

    @property
    def vocab_size(self) -> int:
        return self._sp.get_piece_size()

    @property
    def bos_id(self) -> int:
        return self._sp.bos_id()

    @property
    def eos_id(self) -> int:
        return self._sp.eos_id()

    @property
    def unk_id(self) -> int:
        return self._sp.unk_id()

    def encode(self, text: str, bos: bool = False, eos: bool = False) -> list[int]:
        """Token ids of ``text``, optionally with BOS prepended and EOS appended."""
        return self._sp.encode(text, add_bos=bos, add_eos=eos)

    def decode(self, ids: Sequence[int]) -> str:
        """The text of ``ids`` (control tokens such as BOS/EOS decode to nothing)."""
        return self._sp.decode([int(i) for i in ids])

    def id_to_piece(self, i: int) -> str:
        return self._sp.id_to_piece(int(i))

    def to_bytes(self) -> bytes:
        """The serialized ``ModelProto`` (what a ``.model`` file holds)."""
        return self._data

    def save(self, path: str | Path) -> None:
        """Write the ``.model`` file atomically."""
        _write_atomic(Path(path), self._data)

    @classmethod
    def from_llama2c(cls, path: str | Path) -> Tokenizer:
        """Read a llama2.c ``tokenizer.bin`` (the layout ``save_llama2c`` writes).

        The file keeps pieces and scores only, so types are inferred: id 0 is unknown, the
        ``<s>``/``</s>`` pieces are control, ``<0xHH>`` pieces are bytes, the rest are normal.
        """
        data = _read(Path(path))
        if len(data) < 4:
            raise PastureError(f"{path}: truncated llama2.c tokenizer (no header)")
        (max_len,) = struct.unpack_from("<I", data, 0)
        pieces: list[str] = []
        scores: list[float] = []
        off = 4
        while off < len(data):
            i = len(pieces)
            if off + 8 > len(data):
                raise PastureError(f"{path}: truncated llama2.c tokenizer (inside token {i})")
            score, n = struct.unpack_from("<fi", data, off)
            off += 8
            if n < 0 or n > max_len or off + n > len(data):
                what = "truncated" if 0 <= n <= max_len else "corrupt"
                raise PastureError(
                    f"{path}: {what} llama2.c tokenizer (token {i} claims {n} bytes, "
                    f"max_token_length {max_len}, {len(data) - off} bytes left)"
                )
            try:
                piece = data[off : off + n].decode("utf-8")
            except UnicodeDecodeError as e:
                raise PastureError(f"{path}: token {i} is not valid UTF-8 ({e})") from e
            off += n
            piece = {"\n<s>\n": "<s>", "\n</s>\n": "</s>"}.get(piece, piece)
            pieces.append(piece.replace(" ", _SPACE))
            scores.append(score)
        types = [_llama2c_type(i, p) for i, p in enumerate(pieces)]
        bos = pieces.index("<s>") if "<s>" in pieces else -1
        eos = pieces.index("</s>") if "</s>" in pieces else -1
        return cls.from_vocab(pieces, scores, types, bos_id=bos, eos_id=eos, source=str(path))

    def save_llama2c(self, path: str | Path) -> None:
        """Write llama2.c's ``tokenizer.bin``, byte for byte as its ``tokenizer.py`` exports."""
        tokens: list[bytes] = []
        for i in range(self.vocab_size):
            piece = self._sp.id_to_piece(i)
            if i == self.bos_id:
                piece = "\n<s>\n"
            elif i == self.eos_id:
                piece = "\n</s>\n"
            tokens.append(piece.replace(_SPACE, " ").encode("utf-8"))
        out = io.BytesIO()
        out.write(struct.pack("<I", max(len(b) for b in tokens)))
        for i, b in enumerate(tokens):
            out.write(struct.pack("<fI", self._sp.get_score(i), len(b)))
            out.write(b)
        _write_atomic(Path(path), out.getvalue())


def train_tokenizer(
    files: Sequence[Path],
    out: Path,
    vocab_size: int = 32000,
    *,
    max_sentence_length: int = 4192,
    input_sentence_size: int = 2_000_000,
    num_threads: int | None = None,
    seed: int = 0,
) -> Tokenizer:
    """Train a BPE tokenizer with LLaMA's settings on the lines of ``files``; save it to ``out``.

    Paper §2.1 and Meta's ``tokenizer.model``: BPE, digits split, byte fallback, identity
    normalization, unk=0 bos=1 eos=2, no pad. Each line is one training sentence; at most
    ``input_sentence_size`` lines are used, sampled with ``seed``. Undecodable bytes become
    U+FFFD.
    """
    files = [Path(f) for f in files]
    out = Path(out)
    if not files:
        raise PastureError(f"{out}: no input files to train the tokenizer on")
    for f in files:
        if not f.is_file():
            raise PastureError(f"{f}: no such file (tokenizer training input)")
    options = dict(LLAMA_TRAINER_SPEC)
    options.update(
        vocab_size=vocab_size,
        max_sentence_length=max_sentence_length,
        input_sentence_size=input_sentence_size,
        num_threads=num_threads or os.cpu_count() or 1,
        normalization_rule_name="identity",
        add_dummy_prefix=True,
        remove_extra_whitespaces=False,
        minloglevel=2,
    )
    spm.set_random_generator_seed(seed)
    model = io.BytesIO()
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=_lines(files), model_writer=model, **options
        )
    except RuntimeError as e:
        raise PastureError(f"{out}: tokenizer training failed ({e})") from e
    tok = Tokenizer.from_bytes(model.getvalue(), source=str(out))
    tok.save(out)
    return tok


def _llama2c_type(i: int, piece: str) -> int:
    if i == 0:
        return UNKNOWN
    if piece in ("<s>", "</s>"):
        return CONTROL
    return BYTE if _BYTE_PIECE.fullmatch(piece) else NORMAL


def _lines(files: Sequence[Path]) -> Iterator[str]:
    for path in files:
        try:
            with open(path, encoding="utf-8", errors="replace") as f:
                for line in f:
                    yield line.rstrip("\n")
        except OSError as e:
            raise PastureError(f"{path}: cannot read ({e.strerror or e})") from e


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError as e:
        raise PastureError(f"{path}: no such file") from e
    except OSError as e:
        raise PastureError(f"{path}: cannot read ({e.strerror or e})") from e


def _write_atomic(path: Path, data: bytes) -> None:
    try:
        write_bytes(path, data)
    except OSError as e:
        raise PastureError(f"{path}: cannot write ({e.strerror or e})") from e
