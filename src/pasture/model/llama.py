"""The LLaMA architecture (Touvron et al. 2023, §2.2), single device.

Pre-norm RMSNorm, SwiGLU feed-forward, rotary embeddings, no biases, causal attention through
``scaled_dot_product_attention``. Parameter names are Meta's checkpoint keys, so
``model.state_dict()`` is a Meta ``consolidated.00.pth``. Parallelism is applied from outside.

    >>> from pasture.model import ModelArgs, Transformer
    >>> model = Transformer(ModelArgs(dim=64, n_layers=2, n_heads=4, vocab_size=512))
    >>> logits = model(torch.tensor([[1, 5, 9]]))  # (1, 3, 512), every position
    >>> h = model.hidden(torch.tensor([[1, 5, 9]]))  # (1, 3, 64), before the final norm
    >>> last = model.logits(h[:, -1])  # (1, 512): the vocabulary projection where it is needed

The contract is ``forward(tokens, start_pos=0, *, positions=None, mask=None)`` (see
``Transformer.hidden``). Decoding installs a cache in each attention layer (``setup_cache``);
the layer hands its queries, keys and values to the cache's ``attend``.
"""

from __future__ import annotations

import math
import operator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import PastureError

# Sane limits on a config, checked before anything is built: far above every released
# LLaMA-family model (Llama 3.1 405B: dim 16,384, 126 layers, 128 heads, vocab 128,256, SwiGLU
# 53,248; the longest contexts are about 10M positions), far below what a header that lies could
# make Pasture allocate. Checkpoint readers also check every shape against the file's size.
LIMITS = {
    "dim": 2**16,
    "n_layers": 2**12,
    "n_heads": 2**12,
    "n_kv_heads": 2**12,
    "vocab_size": 2**24,
    "multiple_of": 2**16,
    "hidden_dim": 2**20,
    "max_seq_len": 2**24,
}


class ConfigError(PastureError, ValueError):
    """An invalid ``ModelArgs`` field: ``field`` names it, ``problem`` says what is wrong.

    A ``PastureError`` (configs come from users' files) and a ``ValueError``."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field} {problem}")
        self.field, self.problem = field, problem


def _integer(name: str, value: object) -> int:
    if isinstance(value, bool) or not hasattr(value, "__index__"):
        raise ConfigError(name, f"must be an integer, got {value!r}")
    value = operator.index(value)
    if not 1 <= value <= LIMITS[name]:
        raise ConfigError(name, f"must be in 1..{LIMITS[name]:,}, got {value:,}")
    return value


def _positive_number(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(name, f"must be a number, got {value!r}")
    try:
        number = float(value)
    except OverflowError:
        number = math.inf
    if not math.isfinite(number) or number <= 0:
        raise ConfigError(name, f"must be a finite number above 0, got {value!r}")
    return number


@dataclass
class ModelArgs:
    dim: int = 4096
    n_layers: int = 32
    n_heads: int = 32
    n_kv_heads: int | None = None  # None: multi-head attention; fewer: grouped-query attention
    vocab_size: int = 32000
    multiple_of: int = 256  # SwiGLU hidden size is rounded up to a multiple of this
    ffn_dim_multiplier: float | None = None
    hidden_dim: int | None = None  # explicit SwiGLU hidden size; overrides the rounding rule
    norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    max_seq_len: int = 2048
    tie_embeddings: bool = False  # the paper unties; llama2.c models tie

    def __post_init__(self) -> None:
        """Types, ranges and divisibility, checked before anything is built (ConfigError)."""
        for name in ("dim", "n_layers", "n_heads", "vocab_size", "multiple_of", "max_seq_len"):
            setattr(self, name, _integer(name, getattr(self, name)))
        for name in ("n_kv_heads", "hidden_dim"):
            if getattr(self, name) is not None:
                setattr(self, name, _integer(name, getattr(self, name)))
        for name in ("norm_eps", "rope_theta", "ffn_dim_multiplier"):
            value = getattr(self, name)
            if value is not None or name != "ffn_dim_multiplier":
                setattr(self, name, _positive_number(name, value))
        if not isinstance(self.tie_embeddings, bool):
            raise ConfigError("tie_embeddings", f"must be true/false, got {self.tie_embeddings!r}")
        if self.dim % self.n_heads:
            raise ConfigError("dim", f"{self.dim} is not divisible by n_heads {self.n_heads}")
        if self.head_dim % 2:
            raise ConfigError("dim", f"head dim {self.head_dim} must be even for rotary embeddings")
        if self.n_heads % self.kv_heads:
            raise ConfigError(
                "n_kv_heads", f"{self.kv_heads}: n_heads {self.n_heads} is not a multiple of it"
            )
        if self.ffn_hidden_dim < 1 or self.ffn_hidden_dim > LIMITS["hidden_dim"]:
            raise ConfigError(
                "hidden_dim",
                f"{self.ffn_hidden_dim} (SwiGLU size) is outside 1..{LIMITS['hidden_dim']:,}",
            )

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_heads

    @property
    def kv_heads(self) -> int:
        return self.n_kv_heads or self.n_heads

    @property
    def ffn_hidden_dim(self) -> int:
        """2/3 · 4d rounded up to ``multiple_of`` (the paper's SwiGLU size), as in Meta's code."""
        if self.hidden_dim is not None:
            return self.hidden_dim
        hidden = int(2 * 4 * self.dim / 3)
        if self.ffn_dim_multiplier is not None:
            hidden = int(self.ffn_dim_multiplier * hidden)
        return self.multiple_of * ((hidden + self.multiple_of - 1) // self.multiple_of)


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Normalize in float32 even under bf16 autocast, as Meta's reference does.
        xf = x.float()
        normed = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return normed.to(x.dtype) * self.weight


def rotary_frequencies(head_dim: int, positions: torch.Tensor, theta: float) -> torch.Tensor:
    """exp(i · position · theta^(-2k/head_dim)) for each position and pair k: (T, head_dim / 2).

    Complex, as in Meta's reference, so ``model.to(torch.bfloat16)`` leaves it in full precision.
    """
    exponents = torch.arange(0, head_dim, 2, device=positions.device).float() / head_dim
    inv_freq = 1.0 / theta**exponents
    angles = positions.float()[:, None] * inv_freq[None, :]
    return torch.polar(torch.ones_like(angles), angles)


def apply_rotary(x: torch.Tensor, freqs_cis: torch.Tensor) -> torch.Tensor:
    """Rotate consecutive pairs (x[2k], x[2k+1]) of each head: Meta's interleaved convention.

    ``freqs_cis`` is the real view (cos, sin) of ``rotary_frequencies``: (T, D/2, 2) shared by
    the batch, or (B, T, D/2, 2) for per-row positions. Eager, one complex multiply (as Meta's
    reference; fewest kernels); under torch.compile the same products in real arithmetic, since
    Inductor generates no code for complex operators (it falls back to eager for them).
    """
    B, T, H, D = x.shape
    pairs = x.float().reshape(B, T, H, D // 2, 2)  # (B, T, H, D/2, 2)
    freqs = freqs_cis.view(-1, T, 1, D // 2, 2)  # (1 or B, T, 1, D/2, 2)
    if torch.compiler.is_compiling():
        x_even, x_odd = pairs[..., 0], pairs[..., 1]
        cos, sin = freqs[..., 0], freqs[..., 1]
        rotated = torch.stack((x_even * cos - x_odd * sin, x_even * sin + x_odd * cos), dim=-1)
    else:
        rotated = torch.view_as_real(torch.view_as_complex(pairs) * torch.view_as_complex(freqs))
    return rotated.reshape(B, T, H, D).to(x.dtype)


class KVCache(nn.Module):
    """Keys and values of the positions run so far, (B, n_kv_heads, max_seq_len, head_dim).

    The attention layer it is installed in (``Transformer.setup_cache``) delegates to
    ``attend``: every row is at the same positions, a call at ``start_pos`` stores its keys
    there and attends causally over everything stored up to it. Other caches (generate's
    decode cache, the per-row ``StaticCache``) subclass it and override ``attend``.
    """

    def __init__(
        self,
        batch_size: int,
        max_seq_len: int,
        n_kv_heads: int,
        head_dim: int,
        dtype: torch.dtype,
        device: torch.device | str | None = None,
    ) -> None:
        super().__init__()
        shape = (batch_size, n_kv_heads, max_seq_len, head_dim)
        self.register_buffer("k", torch.zeros(shape, dtype=dtype, device=device), persistent=False)
        self.register_buffer("v", torch.zeros(shape, dtype=dtype, device=device), persistent=False)

    def update(
        self, start_pos: int, k: torch.Tensor, v: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Store k, v (B, n_kv_heads, T, head_dim) at ``start_pos``; return all so far."""
        end = start_pos + k.shape[2]
        if end > self.k.shape[2]:
            raise ValueError(f"KV cache holds {self.k.shape[2]} positions, asked for {end}")
        self.k[:, :, start_pos:end] = k
        self.v[:, :, start_pos:end] = v
        return self.k[:, :, :end], self.v[:, :, :end]

    def attend(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        *,
        start_pos: int = 0,
        positions: torch.Tensor | None = None,
        mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Store k, v (B, Hkv, T, D) at ``start_pos`` and attend q (B, H, T, D) over every
        stored key: query i sees keys up to start_pos + i, or where ``mask`` (B, 1, T,
        start_pos + T) is True. ``positions`` (rotary only) play no part here."""
        k, v = self.update(start_pos, k, v)  # (B, Hkv, start_pos + T, D)
        T = q.shape[2]
        if mask is None and start_pos:
            mask = torch.ones(T, start_pos + T, dtype=torch.bool, device=q.device).tril(start_pos)
        return attention(q, k, v, mask)

    def fork(self, batch_size: int) -> None:
        """Every row of a new batch of ``batch_size`` rows starts from row 0 (a shared prefix)."""
        self.k = self.k[:1].expand(batch_size, -1, -1, -1).clone()
        self.v = self.v[:1].expand(batch_size, -1, -1, -1).clone()


def attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None = None
) -> torch.Tensor:
    """Softmax attention of q (B, H, T, D) over k, v (B, Hkv, S, D), H a multiple of Hkv
    (grouped-query): causal when ``mask`` is None (S == T), else True where a query sees a key."""
    gqa = q.shape[1] != k.shape[1]
    if mask is None:
        # Flash / memory-efficient kernels, no materialized mask.
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=gqa)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=gqa)


class Attention(nn.Module):
    def __init__(self, args: ModelArgs) -> None:
        super().__init__()
        self.head_dim = args.head_dim
        self.wq = nn.Linear(args.dim, args.n_heads * args.head_dim, bias=False)
        self.wk = nn.Linear(args.dim, args.kv_heads * args.head_dim, bias=False)
        self.wv = nn.Linear(args.dim, args.kv_heads * args.head_dim, bias=False)
        self.wo = nn.Linear(args.n_heads * args.head_dim, args.dim, bias=False)
        self.cache: KVCache | None = None  # set by Transformer.setup_cache (or a StaticCache)

    def forward(
        self,
        x: torch.Tensor,
        freqs_cis: torch.Tensor,
        *,
        start_pos: int = 0,
        positions: torch.Tensor | None = None,
        mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        B, T, _ = x.shape
        # -1 heads: all of them, or this rank's slice under tensor parallelism.
        q = self.wq(x).view(B, T, -1, self.head_dim)  # (B, T, H, D)
        k = self.wk(x).view(B, T, -1, self.head_dim)  # (B, T, Hkv, D)
        v = self.wv(x).view(B, T, -1, self.head_dim)  # (B, T, Hkv, D)
        q, k = apply_rotary(q, freqs_cis), apply_rotary(k, freqs_cis)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # (B, H*, T, D)
        if self.cache is None:
            out = attention(q, k, v, mask)  # (B, H, T, D)
        else:
            out = self.cache.attend(q, k, v, start_pos=start_pos, positions=positions, mask=mask)
        out = out.transpose(1, 2).reshape(B, T, -1)  # (B, T, H*D)
        return self.wo(out)


class FeedForward(nn.Module):
    def __init__(self, dim: int, hidden_dim: int) -> None:
        super().__init__()
        self.w1 = nn.Linear(dim, hidden_dim, bias=False)  # gate
        self.w2 = nn.Linear(hidden_dim, dim, bias=False)  # down
        self.w3 = nn.Linear(dim, hidden_dim, bias=False)  # up

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w2(F.silu(self.w1(x)) * self.w3(x))  # SwiGLU


class TransformerBlock(nn.Module):
    def __init__(self, args: ModelArgs) -> None:
        super().__init__()
        self.attention = Attention(args)
        self.feed_forward = FeedForward(args.dim, args.ffn_hidden_dim)
        self.attention_norm = RMSNorm(args.dim, args.norm_eps)
        self.ffn_norm = RMSNorm(args.dim, args.norm_eps)

    def forward(
        self,
        x: torch.Tensor,
        freqs_cis: torch.Tensor,
        *,
        start_pos: int = 0,
        positions: torch.Tensor | None = None,
        mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        h = x + self.attention(
            self.attention_norm(x), freqs_cis, start_pos=start_pos, positions=positions, mask=mask
        )
        return h + self.feed_forward(self.ffn_norm(h))


class Transformer(nn.Module):
    def __init__(self, args: ModelArgs) -> None:
        super().__init__()
        self.args = args
        self.tok_embeddings = nn.Embedding(args.vocab_size, args.dim)
        self.layers = nn.ModuleList(TransformerBlock(args) for _ in range(args.n_layers))
        self.norm = RMSNorm(args.dim, args.norm_eps)
        self.output = nn.Linear(args.dim, args.vocab_size, bias=False)
        if args.tie_embeddings:
            self.output.weight = self.tok_embeddings.weight
        # A plain attribute, not a buffer: ``model.to(torch.bfloat16)`` must not lower the rotary
        # table's precision. Rebuilt on first use on another device (also after meta builds).
        self.freqs_cis = torch.empty(0, device="meta")

    def forward(
        self,
        tokens: torch.Tensor,
        start_pos: int = 0,
        *,
        positions: torch.Tensor | None = None,
        mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Logits (B, T, vocab), float32, for every position of ``tokens`` (B, T):
        ``logits(hidden(...))``. Callers that need a few positions only (decoding, scoring)
        call ``hidden``, pick the positions, and run ``logits`` on them."""
        return self.logits(self.hidden(tokens, start_pos, positions=positions, mask=mask))

    def hidden(
        self,
        tokens: torch.Tensor,
        start_pos: int = 0,
        *,
        positions: torch.Tensor | None = None,
        mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The last block's output (B, T, dim), before the final norm, for ``tokens`` (B, T).

        Tokens sit at positions start_pos..start_pos+T-1, or at their own ``positions`` (B, T)
        (rotary angles; packed sequences, per-row caches). Attention is causal unless ``mask``
        (B, T, start_pos + T) says which keys each query sees (True: sees). With caches
        installed (``setup_cache``, or ``generate.StaticCache``) earlier keys come from them:
        each attention layer hands its queries, keys and values to its cache's ``attend``.

        Under tensor parallelism (``parallel.parallelize``) this is the rank's sequence shard;
        ``forward`` gathers the logits.
        """
        T = tokens.shape[1]
        if mask is not None and mask.shape[-1] != start_pos + T:
            raise ValueError(f"the mask must cover {start_pos + T} keys, got {mask.shape[-1]}")
        if positions is None:
            if start_pos + T > self.args.max_seq_len:
                raise ValueError(
                    f"positions up to {start_pos + T} exceed max_seq_len {self.args.max_seq_len}"
                )
            freqs_cis = self.rotary(tokens.device, start_pos + T)[start_pos : start_pos + T]
        elif torch.compiler.is_compiling():
            # No host sync in a compiled step: the table was built eagerly for the positions
            # it can reach (a StaticCache builds it for its length).
            freqs_cis = self.freqs_cis[positions]  # (B, T, head_dim / 2, 2)
        else:
            top = int(positions.max())
            if top >= self.args.max_seq_len or int(positions.min()) < 0:
                raise ValueError(f"positions must be in 0..{self.args.max_seq_len - 1}")
            freqs_cis = self.rotary(tokens.device, top + 1)[positions]  # (B, T, head_dim / 2, 2)
        if mask is not None:
            mask = mask[:, None]  # (B, 1, T, S): the same for every head
        h = self.tok_embeddings(tokens)  # (B, T, dim)
        for layer in self.layers:
            h = layer(h, freqs_cis, start_pos=start_pos, positions=positions, mask=mask)
        return h

    def logits(self, h: torch.Tensor) -> torch.Tensor:
        """Final norm and vocabulary projection of hidden states (..., dim): float (..., vocab)."""
        return self.output(self.norm(h)).float()

    def setup_cache(
        self, batch_size: int, max_seq_len: int | None = None, kind: type[KVCache] = KVCache
    ) -> list[KVCache]:
        """Give every attention layer a fresh cache of ``kind`` in the model's dtype and device,
        for ``max_seq_len`` positions (at most the model's); returns them, first layer first.
        ``kind`` is ``KVCache`` or a subclass (generate's decode cache, StaticCache's rows)."""
        max_seq_len = min(max_seq_len or self.args.max_seq_len, self.args.max_seq_len)
        weight = self.tok_embeddings.weight
        caches = []
        for layer in self.layers:
            cache = kind(
                batch_size,
                max_seq_len,
                self.args.kv_heads,
                self.args.head_dim,
                weight.dtype,
                weight.device,
            )
            layer.attention.cache = cache
            caches.append(cache)
        return caches

    def clear_cache(self) -> None:
        """Remove every attention layer's cache (back to plain causal attention)."""
        for layer in self.layers:
            layer.attention.cache = None

    @torch.no_grad()
    def init_weights(self, std: float = 0.02, seed: int | None = None) -> None:
        """Normal(0, std) matrices and embeddings, unit norms; also materializes a meta model."""
        generator = None
        if seed is not None:
            generator = torch.Generator(device=self.tok_embeddings.weight.device).manual_seed(seed)
        for name, param in self.named_parameters():
            if name.endswith("norm.weight"):
                param.fill_(1.0)
            else:
                param.normal_(0.0, std, generator=generator)

    def rotary(self, device: torch.device, length: int | None = None) -> torch.Tensor:
        """The rotary table (L, head_dim / 2, 2) of (cos, sin) on ``device`` for at least
        ``length`` positions (default: max_seq_len).

        It grows in powers of two up to max_seq_len as positions are used, so memory follows
        the sequences actually run, not the context a config claims. Each row depends only on
        its position: a longer table repeats the shorter one's rows exactly.
        """
        need = self.args.max_seq_len if length is None else min(length, self.args.max_seq_len)
        if self.freqs_cis.device != device or self.freqs_cis.shape[0] < need:
            rows = min(self.args.max_seq_len, 1 << max(need - 1, 0).bit_length())
            # A table grown while evaluating (under inference_mode) must also serve training.
            with torch.inference_mode(False):
                positions = torch.arange(rows, device=device)
                table = rotary_frequencies(self.args.head_dim, positions, self.args.rope_theta)
                self.freqs_cis = torch.view_as_real(table).contiguous()
        return self.freqs_cis


def state_dict_shapes(args: ModelArgs) -> dict[str, tuple[int, ...]]:
    """``Transformer(args).state_dict()``'s keys and shapes, computed without building it."""
    d, hidden = args.dim, args.ffn_hidden_dim
    q, kv = args.n_heads * args.head_dim, args.kv_heads * args.head_dim
    shapes: dict[str, tuple[int, ...]] = {"tok_embeddings.weight": (args.vocab_size, d)}
    for i in range(args.n_layers):
        shapes |= {
            f"layers.{i}.attention.wq.weight": (q, d),
            f"layers.{i}.attention.wk.weight": (kv, d),
            f"layers.{i}.attention.wv.weight": (kv, d),
            f"layers.{i}.attention.wo.weight": (d, q),
            f"layers.{i}.feed_forward.w1.weight": (hidden, d),
            f"layers.{i}.feed_forward.w2.weight": (d, hidden),
            f"layers.{i}.feed_forward.w3.weight": (hidden, d),
            f"layers.{i}.attention_norm.weight": (d,),
            f"layers.{i}.ffn_norm.weight": (d,),
        }
    shapes["norm.weight"] = (d,)
    shapes["output.weight"] = (args.vocab_size, d)
    return shapes


def count_parameters(args: ModelArgs) -> int:
    """Parameter count from the config alone (tied weights counted once)."""
    d, hd = args.dim, args.head_dim
    attention = d * args.n_heads * hd * 2 + d * args.kv_heads * hd * 2
    ffn = 3 * d * args.ffn_hidden_dim
    per_layer = attention + ffn + 2 * d
    output = 0 if args.tie_embeddings else args.vocab_size * d
    return args.vocab_size * d + args.n_layers * per_layer + d + output


def flops_per_token(args: ModelArgs, seq_len: int) -> float:
    """Forward+backward FLOPs per token: 6N plus attention (PaLM appendix B convention)."""
    non_embedding = count_parameters(args) - args.vocab_size * args.dim
    return 6 * non_embedding + 12 * args.n_layers * args.dim * seq_len


__all__ = [
    "LIMITS",
    "ConfigError",
    "ModelArgs",
    "RMSNorm",
    "KVCache",
    "Attention",
    "attention",
    "FeedForward",
    "TransformerBlock",
    "Transformer",
    "apply_rotary",
    "rotary_frequencies",
    "count_parameters",
    "flops_per_token",
    "state_dict_shapes",
]
