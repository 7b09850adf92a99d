"""llama2.c's ``.bin`` checkpoints (karpathy/llama2.c ``export.py``, read by ``run.c``).

Two float32 layouts are read and written:

- version 0 ("legacy"): 7 int32 (dim, hidden_dim, n_layers, n_heads, n_kv_heads, vocab_size,
  seq_len; a negative vocab_size means an untied classifier follows), then the embedding, the
  layer tensors grouped by kind, the final norm, the RoPE cos/sin tables and the classifier;
- version 1: magic ``ak42``, version, the same 7 int32, a shared-classifier byte, zeros up to
  256 bytes, then the norms first and the matrices grouped by kind.

Version 2 (int8 Q8_0) is not supported. llama2.c keeps wq/wk in Meta's interleaved rotary layout
(``run.c`` rotates pairs (i, i+1)), so nothing is permuted. ``run.c`` hard-codes RMSNorm eps 1e-5
and RoPE theta 10000. The format has no slot for a tokenizer: it travels beside the weights as
``<name>.model`` (or a ``tokenizer.model`` in the same folder).

    >>> ckpt = load(Path("stories260K.bin"))
    >>> save(ckpt, Path("stories260K-v1.bin"), version=1)
"""

from __future__ import annotations

import struct
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..data.tokenizer import Tokenizer
from ..errors import PastureError
from ..files import atomic_file, write_bytes
from ..model import ConfigError, ModelArgs
from .weights import Checkpoint, check_file

MAGIC = 0x616B3432  # "ak42" read as a little-endian uint32
V0_HEADER_BYTES = 7 * 4
V1_HEADER_BYTES = 256
NORM_EPS = 1e-5  # run.c's rmsnorm
ROPE_THETA = 10000.0  # run.c's RoPE

_HEADER_NAMES = {"max_seq_len": "seq_len", "norm_eps": "norm eps"}  # ModelArgs → header names
_ATTENTION = ("wq", "wk", "wv", "wo")
_FFN = ("w1", "w2", "w3")


@dataclass
class Header:
    version: int
    dim: int
    hidden_dim: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    vocab_size: int
    seq_len: int
    shared_classifier: bool

    @property
    def header_bytes(self) -> int:
        return V0_HEADER_BYTES if self.version == 0 else V1_HEADER_BYTES

    def tensor_shapes(self) -> list[tuple[str, tuple[int, ...]]]:
        """(Meta key or rope table name, shape) in file order."""
        d, hid, n, v = self.dim, self.hidden_dim, self.n_layers, self.vocab_size
        kv_dim = self.n_kv_heads * (d // self.n_heads)
        matrix = {
            "wq": (d, d),
            "wk": (kv_dim, d),
            "wv": (kv_dim, d),
            "wo": (d, d),
            "w1": (hid, d),
            "w2": (d, hid),
            "w3": (hid, d),
        }

        def stacked(kind: str) -> list[tuple[str, tuple[int, ...]]]:
            module = "attention" if kind in _ATTENTION else "feed_forward"
            return [(f"layers.{i}.{module}.{kind}.weight", matrix[kind]) for i in range(n)]

        def norms(kind: str) -> list[tuple[str, tuple[int, ...]]]:
            return [(f"layers.{i}.{kind}.weight", (d,)) for i in range(n)]

        embedding = [("tok_embeddings.weight", (v, d))]
        if self.version == 0:
            half = d // self.n_heads // 2
            order = [
                *embedding,
                *norms("attention_norm"),
                *(entry for kind in _ATTENTION for entry in stacked(kind)),
                *norms("ffn_norm"),
                *(entry for kind in _FFN for entry in stacked(kind)),
                ("norm.weight", (d,)),
                ("freq_cis_real", (self.seq_len, half)),
                ("freq_cis_imag", (self.seq_len, half)),
            ]
        else:
            order = [
                *norms("attention_norm"),
                *norms("ffn_norm"),
                ("norm.weight", (d,)),
                *embedding,
                *(entry for kind in _ATTENTION + _FFN for entry in stacked(kind)),
            ]
        if not self.shared_classifier:
            order.append(("output.weight", (v, d)))
        return order

    def file_size(self) -> int:
        """Bytes the header implies, by arithmetic (a lying n_layers builds no list)."""
        d, hid, v = self.dim, self.hidden_dim, self.vocab_size
        kv_dim = self.n_kv_heads * (d // self.n_heads)
        per_layer = 2 * d * d + 2 * kv_dim * d + 3 * hid * d + 2 * d
        n_floats = v * d + self.n_layers * per_layer + d
        if self.version == 0:
            n_floats += 2 * self.seq_len * (d // self.n_heads // 2)  # RoPE cos/sin tables
        if not self.shared_classifier:
            n_floats += v * d
        return self.header_bytes + 4 * n_floats

    def to_args(self) -> ModelArgs:
        return ModelArgs(
            dim=self.dim,
            n_layers=self.n_layers,
            n_heads=self.n_heads,
            n_kv_heads=self.n_kv_heads,
            vocab_size=self.vocab_size,
            hidden_dim=self.hidden_dim,
            norm_eps=NORM_EPS,
            rope_theta=ROPE_THETA,
            max_seq_len=self.seq_len,
            tie_embeddings=self.shared_classifier,
        )


def read_header(path: Path) -> Header:
    """Parse and sanity-check the header; the file size must match what it implies."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(V1_HEADER_BYTES)
    except OSError as e:
        raise PastureError(f"{path}: cannot read ({e.strerror})") from None
    if len(head) < V0_HEADER_BYTES:
        raise PastureError(
            f"{path}: {size} bytes is shorter than a llama2.c header ({V0_HEADER_BYTES} bytes)"
        )
    (magic,) = struct.unpack_from("<I", head)
    if magic == MAGIC:
        if len(head) < V1_HEADER_BYTES:
            raise PastureError(
                f"{path}: truncated: {size} bytes is shorter than the 256-byte llama2.c v1 header"
            )
        (version,) = struct.unpack_from("<i", head, 4)
        if version == 2:
            raise PastureError(
                f"{path}: llama2.c version 2 (int8 Q8_0) checkpoints are not supported; "
                "export a float32 version 0 or 1 file instead"
            )
        if version != 1:
            raise PastureError(f"{path}: llama2.c checkpoint version {version} is not supported")
        params = struct.unpack_from("<7i", head, 8)
        shared = bool(head[36])
    else:
        version = 0
        params = struct.unpack_from("<7i", head)
        shared = params[5] > 0  # legacy: a negative vocab size flags an untied classifier
        params = (*params[:5], abs(params[5]), params[6])
    header = Header(version, *params, shared_classifier=shared)
    _check_header(header, path)
    expected = header.file_size()
    if size < expected:
        raise PastureError(
            f"{path}: truncated: {size} bytes, the llama2.c v{version} header implies {expected}"
        )
    if size > expected:
        raise PastureError(
            f"{path}: {size - expected} trailing bytes after the tensors the llama2.c "
            f"v{version} header implies ({expected} bytes); not a llama2.c file, or corrupt"
        )
    return header


def _check_header(h: Header, path: Path) -> None:
    names = ("dim", "hidden_dim", "n_layers", "n_heads", "n_kv_heads", "vocab_size", "seq_len")
    for name in names:
        if getattr(h, name) <= 0:
            raise PastureError(
                f"{path}: header {name}={getattr(h, name)} is not positive; "
                "not a llama2.c checkpoint, or corrupt"
            )
    if h.dim % h.n_heads or (h.dim // h.n_heads) % 2 or h.n_heads % h.n_kv_heads:
        raise PastureError(
            f"{path}: header dim={h.dim}, n_heads={h.n_heads}, n_kv_heads={h.n_kv_heads} "
            "do not describe a LLaMA model (dim/n_heads must be even and n_kv_heads divide n_heads)"
        )


def detect(path: Path) -> bool:
    """A v1 file by its magic; a legacy file by a sane header whose sizes add up exactly."""
    if not path.is_file():
        return False
    with open(path, "rb") as f:
        head = f.read(8)
    if len(head) == 8 and struct.unpack_from("<I", head)[0] == MAGIC:
        return True
    try:
        return read_header(path).version == 0
    except PastureError:
        return False


def _is_tokenizer(path: Path) -> bool:
    if path.stat().st_size > 2**26:  # real SentencePiece models are a few MB
        return False
    try:
        Tokenizer.from_file(path)
    except PastureError:
        return False
    return True


def check_destination(path: Path, force: bool = False) -> None:
    """The checkpoint is ``path`` and its tokenizer ``path.with_suffix(".model")``: each that
    exists must be of its kind (a llama2.c file, a SentencePiece model) unless ``force``."""
    if path.suffix == ".model":
        raise PastureError(
            f"{path}: a llama2.c checkpoint named .model would collide with its tokenizer "
            "(written beside it as NAME.model); name it NAME.bin"
        )
    check_file(path, "llama2.c", detect, force)
    check_file(path.with_suffix(".model"), "SentencePiece tokenizer", _is_tokenizer, force)


def load(path: Path) -> Checkpoint:
    header = read_header(path)
    data = np.memmap(path, dtype="<f4", mode="r", offset=header.header_bytes)
    state: dict[str, torch.Tensor] = {}
    offset = 0
    for name, shape in header.tensor_shapes():
        count = int(np.prod(shape))
        if not name.startswith("freq_cis"):  # run.c recomputes RoPE; so do we
            block = np.array(data[offset : offset + count], dtype=np.float32)
            state[name] = torch.from_numpy(block).reshape(shape)
        offset += count
    del data
    try:
        args = header.to_args()
    except ConfigError as e:
        raise PastureError(
            f"{path}: header {_HEADER_NAMES.get(e.field, e.field)} {e.problem}"
        ) from None
    ckpt = Checkpoint(
        args,
        state,
        _sidecar_tokenizer(path),
        source=str(path),
        format="llama2c",
        metadata={"version": header.version},
    )
    ckpt.validate()
    return ckpt


def _sidecar_tokenizer(path: Path) -> Tokenizer | None:
    for candidate in (path.with_suffix(".model"), path.parent / "tokenizer.model"):
        if candidate.is_file():
            return Tokenizer.from_file(candidate)
    return None


def rope_tables(head_dim: int, seq_len: int, theta: float = ROPE_THETA) -> tuple:
    """cos and sin of pos·theta^(-2i/head_dim), (seq_len, head_dim/2) each, float32.

    Computed the way llama2.c's ``precompute_freqs_cis`` does, so a v0 export is byte-exact.
    """
    freqs = 1.0 / (theta ** (torch.arange(0, head_dim, 2)[: head_dim // 2].float() / head_dim))
    angles = torch.outer(torch.arange(seq_len), freqs).float()  # (seq_len, head_dim/2)
    return torch.cos(angles), torch.sin(angles)


def save(ckpt: Checkpoint, path: Path, version: int = 1, force: bool = False) -> None:
    """Write a float32 llama2.c checkpoint (v1 by default, v0 with ``version=0``).

    A tokenizer, if any, is written beside it as ``path.with_suffix(".model")``. Without one, a
    ``.model`` left there by the checkpoint this replaces is removed (it would be read as this
    model's tokenizer); so is any ``.model`` there with ``force``.
    """
    if version not in (0, 1):
        raise PastureError(
            f"{path}: llama2.c version {version} cannot be written; choose version 0 or 1"
        )
    check_destination(path, force)
    replaces_checkpoint = detect(path)
    ckpt.validate()
    args = ckpt.args
    if args.rope_theta != ROPE_THETA:
        raise PastureError(
            f"{path}: llama2.c's run.c hard-codes RoPE theta {ROPE_THETA:g}; this model uses "
            f"{args.rope_theta:g}, so it cannot be exported to llama2.c without changing it"
        )
    if args.norm_eps != NORM_EPS:
        warnings.warn(
            f"{path}: llama2.c's run.c uses RMSNorm eps {NORM_EPS:g}, this model {args.norm_eps:g}",
            stacklevel=2,
        )
    header = Header(
        version,
        args.dim,
        args.ffn_hidden_dim,
        args.n_layers,
        args.n_heads,
        args.kv_heads,
        args.vocab_size,
        args.max_seq_len,
        shared_classifier=args.tie_embeddings,
    )
    cos, sin = rope_tables(args.head_dim, args.max_seq_len)
    tensors = {**ckpt.state_dict, "freq_cis_real": cos, "freq_cis_imag": sin}
    with atomic_file(path) as tmp, open(tmp, "wb") as f:
        f.write(_header_bytes(header))
        for name, _ in header.tensor_shapes():
            tensor = tensors[name].detach().to("cpu", torch.float32).contiguous()
            tensor.numpy().astype("<f4", copy=False).tofile(f)
    sidecar = path.with_suffix(".model")
    if ckpt.tokenizer is not None:
        write_bytes(sidecar, ckpt.tokenizer.to_bytes())
    elif replaces_checkpoint or force:
        sidecar.unlink(missing_ok=True)


def _header_bytes(h: Header) -> bytes:
    if h.version == 0:
        vocab = h.vocab_size if h.shared_classifier else -h.vocab_size
        params = (h.dim, h.hidden_dim, h.n_layers, h.n_heads, h.n_kv_heads, vocab, h.seq_len)
        return struct.pack("<7i", *params)
    params = (h.dim, h.hidden_dim, h.n_layers, h.n_heads, h.n_kv_heads, h.vocab_size, h.seq_len)
    head = struct.pack("<Ii7iB", MAGIC, 1, *params, int(h.shared_classifier))
    return head + b"\0" * (V1_HEADER_BYTES - len(head))


__all__ = ["detect", "load", "save", "read_header", "rope_tables", "Header", "MAGIC"]
