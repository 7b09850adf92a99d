"""KV caches for generation: the batch decode cache, and a static per-row cache for serving.

``DecodeCache`` is the model's ``KVCache`` (every row at the same positions) whose one-token
step attends with two small matmuls (``decode_attention``); ``generate_tokens`` installs it.

``StaticCache`` preallocates keys and values for ``batch_size`` independent rows, each row its
own sequence at its own positions, so a server can decode many requests in one fixed-shape step
and start a new request in a free row while the others go on::

    cache = StaticCache(model, batch_size=8, max_seq_len=1024)  # installs itself in the model
    cache.select(torch.tensor([3]))                  # prefill request in row 3, one chunk
    h = model.hidden(prompt[None], positions=torch.arange(len(prompt))[None])   # (1, T, dim)
    cache.select(None)                               # a decode step over all 8 rows
    h = model.hidden(last_tokens[:, None], positions=next_positions[:, None])   # (8, 1, dim)
    logits = model.logits(h[:, -1])                  # (8, vocab)
    cache.close()                                    # uninstall (or use ``with StaticCache(...)``)

``model.hidden(tokens (R, T), positions=pos (R, T))`` after ``select(rows)`` (R rows; None: all
rows in order) writes row ``rows[r]``'s keys and values at positions ``pos[r]`` and lets query
t of that row attend to the keys at positions s <= pos[r, t] of that row: the keys its own
sequence wrote there, this call included. A row's sequence restarts at position 0 when the row
is reused: keys an earlier sequence left at later positions are never seen, because they are
overwritten before the new sequence reaches them. A row idle in a decode step can be fed any
token at any position; it only overwrites its own entry there. No ``mask`` is taken; ``start_pos``
without ``positions`` means positions start_pos.. in every row.

A decode step (R = batch_size, T = 1, ``select(None)``) has the same shapes every time and no
host synchronization under ``torch.compile`` (attention runs over all max_seq_len positions
with a mask, as gpt-fast does), so it can be compiled with ``mode="reduce-overhead"`` (CUDA
graphs). Eager steps on CPU attend over the positions up to the furthest one used, rounded up
to ``SPAN``. Positions are checked (0 <= p < max_seq_len) in eager mode only.
"""

from __future__ import annotations

import os

import torch

from ..errors import PastureError
from ..model import KVCache, Transformer
from ..model.llama import attention

SPAN = 64  # eager CPU attention reads the cache in blocks of this many positions


def _available_bytes(device: torch.device) -> int | None:
    """Memory a new allocation can take on ``device`` (None: unknown)."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    if device.type != "cpu":
        return None
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def check_memory(
    model: Transformer,
    batch: int,
    positions: int,
    fix: str = "lower max_new_tokens (or the number of prompts)",
) -> None:
    """Refuse, before allocating, a KV cache (plus token buffers) that memory cannot hold.

    A config can claim a context of millions of positions; the cache is allocated for the
    positions a request can reach, so a large ``max_new_tokens`` must fit in memory. ``fix``
    ends the error line: what the user can lower.
    """
    args, weight = model.args, model.tok_embeddings.weight
    kv = 2 * args.n_layers * batch * positions * args.kv_heads * args.head_dim
    needed = kv * weight.element_size() + 9 * batch * positions  # + token ids and prompt mask
    available = _available_bytes(weight.device)
    if available is not None and needed > available:
        raise PastureError(
            f"{batch} row(s) × {positions:,} positions need {needed / 2**30:,.1f} GiB for the "
            f"KV cache; {available / 2**30:,.1f} GiB is available on {weight.device}: {fix}"
        )


def decode_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Attention of one query per head over all keys: q (B, H, 1, D), k/v (B, Hkv, L, D)."""
    B, H, _, D = q.shape
    n_kv = k.shape[1]
    q = q.reshape(B, n_kv, H // n_kv, D)  # (B, Hkv, group, D): query heads sharing a KV head
    scores = torch.matmul(q, k.transpose(-2, -1)) * D**-0.5  # (B, Hkv, group, L)
    probs = torch.softmax(scores, dim=-1, dtype=torch.float32).to(q.dtype)
    return torch.matmul(probs, v).view(B, H, 1, D)  # (B, H, 1, D)


def masked_decode_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, visible: torch.Tensor
) -> torch.Tensor:
    """``decode_attention`` where ``visible`` (B, 1, 1, L) says which keys each row sees.

    Each row's result depends on that row alone: CPU SDPA with a mask splits a batch over
    threads by row index, so with it a row's last bits depended on where it sat in the batch
    (continuous batching must give a request the output it gets alone)."""
    B, H, _, D = q.shape
    n_kv = k.shape[1]
    grouped = q.reshape(B, n_kv, H // n_kv, D)  # (B, Hkv, group, D)
    scores = torch.matmul(grouped, k.transpose(-2, -1)) * D**-0.5  # (B, Hkv, group, L)
    scores = scores.masked_fill(~visible, float("-inf"))
    probs = torch.softmax(scores, dim=-1, dtype=torch.float32).to(q.dtype)
    return torch.matmul(probs, v).view(B, H, 1, D)  # (B, H, 1, D)


class DecodeCache(KVCache):
    """A ``KVCache`` whose one-token steps use ``decode_attention``: SDPA's CPU flash kernel
    tiles for long queries and is ~10x slower at a query length of 1."""

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
        if mask is not None or q.shape[2] != 1 or start_pos == 0:
            return super().attend(q, k, v, start_pos=start_pos, positions=positions, mask=mask)
        k, v = self.update(start_pos, k, v)  # (B, Hkv, start_pos + 1, D)
        return decode_attention(q, k, v)


class RowCache(KVCache):
    """One attention layer's part of a ``StaticCache``: row r holds its own sequence."""

    def __init__(
        self,
        batch_size: int,
        max_seq_len: int,
        n_kv_heads: int,
        head_dim: int,
        dtype: torch.dtype,
        device: torch.device | str | None = None,
    ) -> None:
        super().__init__(batch_size, max_seq_len, n_kv_heads, head_dim, dtype, device)
        self.rows: torch.Tensor | None = None  # set by StaticCache.select
        self.check = False  # one layer checks positions (eagerly), not every layer
        index = torch.arange(max(batch_size, max_seq_len), device=device)
        self.register_buffer("index", index, persistent=False)

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
        if mask is not None:
            raise ValueError("a StaticCache attends by positions: pass positions, not a mask")
        R, _, T, _ = q.shape
        B, _, S, _ = self.k.shape
        selected = B if self.rows is None else self.rows.shape[0]
        if selected != R:
            raise ValueError(f"{R} rows of tokens for {selected} selected cache rows")
        if positions is None:
            positions = (start_pos + self.index[:T]).expand(R, T)  # (R, T)
        compiling = torch.compiler.is_compiling()
        eager_check = self.check and not compiling
        if eager_check and (int(positions.min()) < 0 or int(positions.max()) >= S):
            raise ValueError(f"positions must be in 0..{S - 1} (the cache's length)")
        rows = self.index[:B, None] if self.rows is None else self.rows[:, None]  # (R, 1)
        # Advanced indices on dims 0 and 2 around a slice: the value is (R, T, Hkv, D).
        self.k[rows, :, positions] = k.transpose(1, 2).to(self.k.dtype)
        self.v[rows, :, positions] = v.transpose(1, 2).to(self.v.dtype)
        # Compiled steps keep fixed shapes: every position, masked. Eager CPU steps read keys
        # up to the furthest position any row reached, rounded up to SPAN (few shapes): a
        # short sequence in a long cache then streams its few positions per step, not
        # max_seq_len. Keys past a row's position are masked either way (exact zeros).
        L = S
        if not compiling and positions.device.type == "cpu":
            L = min(S, -(-(int(positions.max()) + 1) // SPAN) * SPAN)
        # (R, Hkv, L, D): a view for every row, a copy of the L positions of the selected ones
        keys = self.k[:, :, :L] if self.rows is None else self.k[self.rows, :, :L]
        values = self.v[:, :, :L] if self.rows is None else self.v[self.rows, :, :L]
        visible = self.index[:L] <= positions[:, None, :, None]  # (R, 1, T, L)
        if T == 1:
            return masked_decode_attention(q, keys, values, visible)
        return attention(q, keys, values, visible)

    def fork(self, batch_size: int) -> None:
        raise ValueError("a StaticCache's rows are independent: select rows, do not fork")


class StaticCache:
    """Preallocated keys and values, (batch_size, n_kv_heads, max_seq_len, head_dim) per layer
    in the model's dtype and device, installed in ``model``'s attention layers until ``close``.
    See the module docstring for how a forward reads and writes it."""

    def __init__(
        self,
        model: Transformer,
        batch_size: int,
        max_seq_len: int | None = None,
        fix: str = "lower batch_size or max_seq_len",
    ) -> None:
        """``fix`` ends the error line when memory cannot hold the cache: what to lower."""
        if batch_size < 1:
            raise ValueError(f"batch_size {batch_size} must be at least 1")
        self.model, self.batch_size = model, batch_size
        self.max_seq_len = min(max_seq_len or model.args.max_seq_len, model.args.max_seq_len)
        check_memory(model, batch_size, self.max_seq_len, fix)
        self.layers: list[RowCache] = model.setup_cache(batch_size, self.max_seq_len, RowCache)
        self.layers[0].check = True
        # Compiled steps index the rotary table as it is: build it for every reachable position.
        model.rotary(model.tok_embeddings.weight.device, self.max_seq_len)

    def select(self, rows: torch.Tensor | None) -> None:
        """The next forwards read and write only cache rows ``rows`` (1-D, R distinct indices;
        row r of the tokens is cache row rows[r]); None: every row, in order."""
        if rows is not None:
            if rows.dim() != 1 or rows.dtype != torch.long or not len(rows):
                raise ValueError("rows must be a non-empty 1-D tensor of row indices (long)")
            rows = rows.to(self.layers[0].k.device)
            if not torch.compiler.is_compiling():
                if int(rows.min()) < 0 or int(rows.max()) >= self.batch_size:
                    raise ValueError(f"rows must be in 0..{self.batch_size - 1}")
                if len(rows.unique()) != len(rows):
                    raise ValueError("rows must be distinct")
        for cache in self.layers:
            cache.rows = rows

    def close(self) -> None:
        """Uninstall from the model (the layers this cache is still installed in)."""
        for layer, cache in zip(self.model.layers, self.layers, strict=True):
            if layer.attention.cache is cache:
                layer.attention.cache = None

    def __enter__(self) -> StaticCache:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
