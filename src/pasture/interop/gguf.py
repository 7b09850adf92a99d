"""GGUF, llama.cpp's single-file format, via the ``gguf`` package (``pip install 'pasture[gguf]'``).

Read: architecture ``llama`` only; F32, F16, BF16 and the quantized types that
``gguf.quants.dequantize`` knows are converted to float32; an embedded SentencePiece
(``tokenizer.ggml.model == "llama"``) vocabulary becomes a :class:`Tokenizer`. Write: F32, or F16
matrices with F32 norms (what llama.cpp calls "mostly F16"), plus the tokenizer.

llama.cpp's converter undoes Hugging Face's rotary permutation, so GGUF q/k rows are already in
Meta's interleaved layout and nothing is permuted here (``tests/interop/test_gguf.py`` checks
this against transformers' own GGUF converter).

    >>> ckpt = load(Path("llama-2-tiny-random.gguf"))
    >>> save(ckpt, Path("copy.gguf"), dtype="f16")
"""

from __future__ import annotations

import math
import mmap
import os
import re
import struct
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import torch

from ..data.tokenizer import Tokenizer
from ..errors import PastureError
from ..files import atomic_file
from ..model import ConfigError, ModelArgs
from .weights import Checkpoint, check_file

MAGIC = b"GGUF"

_TOP_KEYS = {
    "token_embd.weight": "tok_embeddings.weight",
    "output_norm.weight": "norm.weight",
    "output.weight": "output.weight",
}
_LAYER_KEYS = {
    "attn_q": "attention.wq",
    "attn_k": "attention.wk",
    "attn_v": "attention.wv",
    "attn_output": "attention.wo",
    "ffn_gate": "feed_forward.w1",
    "ffn_down": "feed_forward.w2",
    "ffn_up": "feed_forward.w3",
    "attn_norm": "attention_norm",
    "ffn_norm": "ffn_norm",
}
# ModelArgs field → the GGUF metadata key it comes from, for error messages.
_METADATA_KEYS = {
    "dim": "llama.embedding_length",
    "n_layers": "llama.block_count",
    "n_heads": "llama.attention.head_count",
    "n_kv_heads": "llama.attention.head_count_kv",
    "vocab_size": "token_embd rows",
    "hidden_dim": "llama.feed_forward_length",
    "norm_eps": "llama.attention.layer_norm_rms_epsilon",
    "rope_theta": "llama.rope.freq_base",
    "max_seq_len": "llama.context_length",
}
_GGUF_LAYER = re.compile(r"blk\.(\d+)\.(\w+)\.weight$")
_META_LAYER = re.compile(r"layers\.(\d+)\.(.+)\.weight$")


def _gguf() -> ModuleType:
    try:
        import gguf
    except ImportError:
        raise PastureError(
            "GGUF support needs the gguf package: pip install 'pasture[gguf]'"
        ) from None
    return gguf


def detect(path: Path) -> bool:
    if not path.is_file():
        return False
    with open(path, "rb") as f:
        return f.read(4) == MAGIC


def check_destination(path: Path, force: bool = False) -> None:
    """A file that exists must be a GGUF file to be replaced without ``force``."""
    check_file(path, "GGUF", detect, force)


def meta_key(name: str, source: Path) -> str:
    if name in _TOP_KEYS:
        return _TOP_KEYS[name]
    match = _GGUF_LAYER.match(name)
    if match is None or match.group(2) not in _LAYER_KEYS:
        raise PastureError(f"{source}: unexpected tensor {name} for a LLaMA model")
    return f"layers.{match.group(1)}.{_LAYER_KEYS[match.group(2)]}.weight"


def gguf_name(key: str) -> str:
    for name, meta in _TOP_KEYS.items():
        if meta == key:
            return name
    layer, part = _META_LAYER.match(key).groups()
    short = next(k for k, v in _LAYER_KEYS.items() if v == part)
    return f"blk.{layer}.{short}.weight"


def _value(field: Any, gguf: ModuleType) -> Any:
    """A reader field's value as Python: str, int, float or a list of them."""
    kinds = gguf.GGUFValueType

    def decode(part: np.ndarray, kind: Any) -> Any:
        return bytes(part).decode("utf-8") if kind == kinds.STRING else part.tolist()[0]

    if field.types[0] == kinds.ARRAY:
        return [decode(field.parts[i], field.types[-1]) for i in field.data]
    return decode(field.parts[field.data[0]], field.types[0])


# Bytes of each scalar GGUF value type (GGUFValueType: 0-7, 10-12); 8 is a string, 9 an array.
_SCALAR_BYTES = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}
_MAX_DIMS = 4  # GGML_MAX_DIMS
_MAX_ARRAY_NESTING = 2


def check_header(path: Path, gguf: ModuleType) -> None:
    """Walk the header and refuse any count, length or tensor extent that exceeds the file.

    ``gguf.GGUFReader`` trusts them: an array that claims 2^60 elements loops forever and a
    tensor count of 2^40 allocates without bound. Here every claim is checked against the bytes
    that remain, so the walk costs at most one step per byte of header.
    """
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        data = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) if size else b""
    view = memoryview(data)
    try:
        _walk_header(view, size, path, gguf)
    finally:
        view.release()
        if isinstance(data, mmap.mmap):
            data.close()


def _walk_header(data: memoryview, size: int, path: Path, gguf: ModuleType) -> None:
    def corrupt(problem: str) -> PastureError:
        return PastureError(f"{path}: truncated or corrupt GGUF file: {problem}")

    if size < 24:
        raise corrupt(f"{size} bytes is shorter than a GGUF header (24 bytes)")
    order = "<"
    if struct.unpack_from("<I", data, 4)[0] & 0xFFFF == 0:
        order = ">"  # written on a big-endian machine, as GGUFReader detects it
    version, n_tensors, n_kv = struct.unpack_from(order + "IQQ", data, 4)
    pos = 24

    def take(n: int, what: str) -> int:
        nonlocal pos
        if n > size - pos:
            raise corrupt(f"{what} needs {n:,} bytes at offset {pos:,}; {size - pos:,} remain")
        start, pos = pos, pos + n
        return start

    def number(fmt: str, what: str) -> int:
        return struct.unpack_from(order + fmt, data, take(struct.calcsize(fmt), what))[0]

    def string(what: str) -> None:
        take(number("Q", what), what)

    def value(kind: int, what: str, depth: int = 0) -> None:
        if kind in _SCALAR_BYTES:
            take(_SCALAR_BYTES[kind], what)
        elif kind == 8:
            string(what)
        elif kind == 9:
            item, count = number("I", what), number("Q", what)
            if depth >= _MAX_ARRAY_NESTING:
                raise corrupt(f"{what}: arrays nested deeper than {_MAX_ARRAY_NESTING}")
            if item in _SCALAR_BYTES:
                take(count * _SCALAR_BYTES[item], f"{what} ({count:,} elements)")
                return
            smallest = 8 if item == 8 else 12  # a string's length; an array's type and count
            if count * smallest > size - pos:
                raise corrupt(f"{what} claims {count:,} elements; the file is {size:,} bytes")
            for _ in range(count):
                value(item, what, depth + 1)
        else:
            raise corrupt(f"{what}: unknown value type {kind}")

    if version not in (2, 3):
        raise PastureError(f"{path}: GGUF version {version} is not supported (2 and 3 are)")
    if n_kv * 13 > size - pos:  # key length, key, type, smallest value
        raise corrupt(f"{n_kv:,} metadata entries cannot fit in {size:,} bytes")
    for i in range(n_kv):
        string(f"metadata key {i}")
        value(number("I", f"metadata entry {i}"), f"metadata entry {i}")
    if n_tensors * 24 > size - pos:  # name length, dims, type, offset
        raise corrupt(f"{n_tensors:,} tensors cannot fit in {size:,} bytes")
    for i in range(n_tensors):
        string(f"tensor {i} name")
        n_dims = number("I", f"tensor {i}")
        if n_dims > _MAX_DIMS:
            raise corrupt(f"tensor {i} has {n_dims} dimensions (at most {_MAX_DIMS})")
        dims = [number("Q", f"tensor {i}") for _ in range(n_dims)]
        kind, offset = number("I", f"tensor {i}"), number("Q", f"tensor {i}")
        try:
            block, block_bytes = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType(kind)]
        except (ValueError, KeyError):
            raise corrupt(f"tensor {i} has unknown type {kind}") from None
        elements = math.prod(dims)
        if offset + elements * block_bytes // block > size:
            raise corrupt(f"tensor {i} of shape {dims} at offset {offset:,} exceeds the file")


def _float32(value: float) -> float:
    """The shortest decimal of a float32 field (1e-05, not 9.999999747378752e-06)."""
    return float(str(np.float32(value)))


def load(path: Path) -> Checkpoint:
    gguf = _gguf()
    try:
        check_header(path, gguf)
        reader = gguf.GGUFReader(path, "r")
        fields = {name: _value(field, gguf) for name, field in reader.fields.items()}
        tensors = list(reader.tensors)
    except OSError as e:
        raise PastureError(f"{path}: cannot read ({e})") from None
    except (ValueError, IndexError, KeyError, OverflowError, EOFError) as e:
        raise PastureError(
            f"{path}: truncated or corrupt GGUF file ({type(e).__name__}: {e})"
        ) from None

    arch = fields.get("general.architecture")
    if arch != "llama":
        raise PastureError(
            f"{path}: GGUF architecture {arch!r} is not 'llama'; only LLaMA models can be read"
        )
    scaling = fields.get("llama.rope.scaling.type", "none")
    if scaling != "none":
        raise PastureError(f"{path}: rope scaling {scaling!r} is not supported")

    state: dict[str, torch.Tensor] = {}
    tensor_types: dict[str, str] = {}
    for tensor in tensors:
        key = meta_key(tensor.name, path)
        state[key] = _dequantize(tensor, gguf, path)
        tensor_types[tensor.name] = tensor.tensor_type.name
    if "tok_embeddings.weight" not in state:
        raise PastureError(f"{path}: no token_embd.weight tensor")

    args = _args(fields, state, path)
    metadata: dict[str, object] = {
        "name": fields.get("general.name", ""),
        "tensor_types": tensor_types,
    }
    tokenizer = None
    tokenizer_model = fields.get("tokenizer.ggml.model")
    if tokenizer_model == "llama":
        tokenizer = _tokenizer(fields, path)
    elif tokenizer_model is not None:
        metadata["tokenizer"] = (
            f"embedded {tokenizer_model!r} tokenizer not loaded: only SentencePiece ('llama') "
            "vocabularies are supported"
        )
    ckpt = Checkpoint(args, state, tokenizer, str(path), "gguf", metadata)
    ckpt.validate()
    return ckpt


def _args(fields: dict[str, Any], state: dict[str, torch.Tensor], path: Path) -> ModelArgs:
    """The model's arguments from the ``llama.*`` metadata, checked against the tensors."""

    def need(key: str) -> Any:
        if key not in fields:
            raise PastureError(f"{path}: GGUF metadata lacks {key}")
        return fields[key]

    n_heads = need("llama.attention.head_count")
    try:
        args = ModelArgs(
            dim=need("llama.embedding_length"),
            n_layers=need("llama.block_count"),
            n_heads=n_heads,
            n_kv_heads=fields.get("llama.attention.head_count_kv", n_heads),
            vocab_size=state["tok_embeddings.weight"].shape[0],
            hidden_dim=need("llama.feed_forward_length"),
            norm_eps=_float32(need("llama.attention.layer_norm_rms_epsilon")),
            rope_theta=_float32(fields.get("llama.rope.freq_base", 10000.0)),
            max_seq_len=need("llama.context_length"),
            tie_embeddings="output.weight" not in state,
        )
    except ConfigError as e:
        key = _METADATA_KEYS.get(e.field, e.field)
        raise PastureError(f"{path}: metadata {key} {e.problem}") from None
    except (ValueError, TypeError) as e:
        raise PastureError(f"{path}: inconsistent llama.* metadata ({e})") from None
    if fields.get("llama.vocab_size", args.vocab_size) != args.vocab_size:
        raise PastureError(
            f"{path}: llama.vocab_size {fields['llama.vocab_size']} != "
            f"token_embd rows {args.vocab_size}"
        )
    rope_dims = fields.get("llama.rope.dimension_count", args.head_dim)
    if rope_dims != args.head_dim:
        raise PastureError(
            f"{path}: llama.rope.dimension_count {rope_dims} != head dim {args.head_dim}; "
            "partial rotary embeddings are not part of LLaMA"
        )
    return args


def _dequantize(tensor: Any, gguf: ModuleType, path: Path) -> torch.Tensor:
    shape = tuple(int(n) for n in reversed(tensor.shape))  # GGUF lists ne0 (a row) first
    try:
        values = gguf.quants.dequantize(tensor.data, tensor.tensor_type)
    except NotImplementedError:
        raise PastureError(
            f"{path}: tensor {tensor.name} has type {tensor.tensor_type.name}, "
            "which cannot be converted to float32"
        ) from None
    return torch.from_numpy(np.array(values, dtype=np.float32).reshape(shape))


def _tokenizer(fields: dict[str, Any], path: Path) -> Tokenizer:
    pieces = fields.get("tokenizer.ggml.tokens")
    if pieces is None:
        raise PastureError(f"{path}: tokenizer.ggml.model is 'llama' but there are no tokens")
    scores = fields.get("tokenizer.ggml.scores", [0.0] * len(pieces))
    types = fields.get("tokenizer.ggml.token_type", [1] * len(pieces))
    return Tokenizer.from_vocab(
        pieces,
        scores,
        types,
        unk_id=fields.get("tokenizer.ggml.unknown_token_id", 0),
        bos_id=fields.get("tokenizer.ggml.bos_token_id", 1),
        eos_id=fields.get("tokenizer.ggml.eos_token_id", 2),
        source=f"{path} (embedded)",
    )


def save(ckpt: Checkpoint, path: Path, dtype: str = "f32", force: bool = False) -> None:
    """Write a llama GGUF: ``dtype="f32"``, or ``"f16"`` for matrices (norms stay F32)."""
    if dtype not in ("f32", "f16"):
        raise PastureError(f"{path}: GGUF dtype {dtype!r} cannot be written; choose f32 or f16")
    check_destination(path, force)
    gguf = _gguf()
    ckpt.validate()
    args = ckpt.args
    arrays = {}
    for key in ckpt.expected_shapes():
        if key == "output.weight" and args.tie_embeddings:
            continue  # llama.cpp ties the classifier when output.weight is absent
        tensor = ckpt.state_dict[key].detach().to("cpu", torch.float32)
        if dtype == "f16" and tensor.ndim == 2:
            half = tensor.half()
            if torch.isinf(half).any() and not torch.isinf(tensor).any():
                raise PastureError(f"{path}: {key} has values beyond float16's range; use f32")
            tensor = half
        arrays[gguf_name(key)] = tensor.contiguous().numpy()

    with atomic_file(path) as tmp:
        writer = gguf.GGUFWriter(tmp, "llama")
        writer.add_name(str(ckpt.metadata.get("name") or path.stem))
        writer.add_vocab_size(args.vocab_size)
        writer.add_context_length(args.max_seq_len)
        writer.add_embedding_length(args.dim)
        writer.add_block_count(args.n_layers)
        writer.add_feed_forward_length(args.ffn_hidden_dim)
        writer.add_rope_dimension_count(args.head_dim)
        writer.add_head_count(args.n_heads)
        writer.add_head_count_kv(args.kv_heads)
        writer.add_layer_norm_rms_eps(args.norm_eps)
        writer.add_rope_freq_base(args.rope_theta)
        file_type = gguf.LlamaFileType.MOSTLY_F16 if dtype == "f16" else gguf.LlamaFileType.ALL_F32
        writer.add_file_type(file_type)
        if ckpt.tokenizer is not None:
            pieces, scores, types = ckpt.tokenizer.vocab()
            writer.add_tokenizer_model("llama")
            writer.add_token_list(pieces)
            writer.add_token_scores(scores)
            writer.add_token_types(types)
            writer.add_bos_token_id(ckpt.tokenizer.bos_id)
            writer.add_eos_token_id(ckpt.tokenizer.eos_id)
            writer.add_unk_token_id(ckpt.tokenizer.unk_id)
        for name, array in arrays.items():
            writer.add_tensor(name, array)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()


__all__ = ["detect", "load", "save", "meta_key", "gguf_name", "MAGIC"]
