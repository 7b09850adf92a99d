"""The pretraining mixture loader (paper §2.1 and Table 1): packed windows, sampled by source.

Each source's shards are read as one token stream (documents already separated by EOS) and cut
into non-overlapping windows of ``seq_len + 1`` tokens: a window gives the inputs and, shifted by
one, the targets, packed across document boundaries as LLaMA trains. The tail shorter than a
window is never read. Each source visits its windows in a seeded random order per epoch and
starts a new epoch (a new order) when it runs out, so small sources repeat, as Books and
Wikipedia do in the paper (~2 epochs)::

    from pasture.data.loader import LLAMA_MIXTURE, MixtureLoader, mixture_report
    from pasture.data.shards import list_shards
    sources = {name: list_shards(f"shards/{name}") for name in LLAMA_MIXTURE}
    loader = MixtureLoader(sources, LLAMA_MIXTURE, seq_len=2048, batch_size=4, seed=0,
                           rank=rank, world_size=world_size)
    for inputs, targets in loader:   # int64 torch tensors, (batch_size, seq_len) each
        ...
    checkpoint["data"] = loader.state_dict()   # plain JSON-able dict, the same on every rank
    print(mixture_report(loader.tokens, LLAMA_MIXTURE, token_budget=1.4e12)[1])

The global stream does not depend on the number of ranks. Global sequence ``k`` (0, 1, ...)
takes its source from the mixture weights by a counter-based hash of ``(seed, k)``, then that
source's next window. Rank ``r`` of ``world_size`` trains on the sequences with
``k % world_size == r``, and every step consumes ``batch_size * world_size`` global sequences.
Every rank follows the whole stream's bookkeeping (cheap counters) and reads only its own
tokens. So a checkpoint taken with one world size (or batch size) resumes exactly with another.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import numpy as np
import torch

from ..errors import PastureError
from .shards import Shard

# Paper Table 1: sampling proportion of each pretraining source.
LLAMA_MIXTURE: dict[str, float] = {
    "commoncrawl": 0.67,
    "c4": 0.15,
    "github": 0.045,
    "wikipedia": 0.045,
    "books": 0.045,
    "arxiv": 0.025,
    "stackexchange": 0.02,
}

STATE_FORMAT = "pasture.mixture_loader/1"
_MASK64 = (1 << 64) - 1
_GAMMA = 0x9E3779B97F4A7C15  # SplitMix64's constants
_MUL1 = 0xBF58476D1CE4E5B9
_MUL2 = 0x94D049BB133111EB
_FEISTEL_ROUNDS = 8  # 4 suffice for large n; tiny sources (1-bit halves) need 6-8


class MixtureLoader:
    """Batches of packed ``seq_len + 1`` windows from several sources, mixed by weight.

    ``sources`` maps a source name to its shard prefixes (read in the given order); ``weights``
    maps the same names to sampling proportions (normalized here; 0 leaves a source unsampled).
    ``batch_size`` is sequences per rank per step. ``state_dict()`` / ``load_state_dict()``
    resume the stream exactly, also under another ``world_size`` or ``batch_size``; the seed,
    ``seq_len``, weights and shards must be the ones the state was saved with.
    """

    def __init__(
        self,
        sources: Mapping[str, Sequence[str | Path]],
        weights: Mapping[str, float] = LLAMA_MIXTURE,
        *,
        seq_len: int,
        batch_size: int,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        if seq_len < 1 or batch_size < 1:
            raise PastureError(f"seq_len ({seq_len}) and batch_size ({batch_size}) must be ≥ 1")
        if not 0 <= rank < world_size:
            raise PastureError(f"rank {rank} outside world_size {world_size}")
        self.names = _check_weights(sources, weights)  # sorted: dict order never moves the stream
        total = sum(float(weights[n]) for n in self.names)
        self.weights = {n: float(weights[n]) / total for n in self.names}
        self.seq_len, self.batch_size, self.seed = seq_len, batch_size, seed
        self.rank, self.world_size = rank, world_size
        self._streams = [_TokenStream(n, sources[n], seq_len + 1) for n in self.names]
        vocabs = {s.vocab_size for s in self._streams}
        if len(vocabs) > 1:
            found = ", ".join(f"{s.name}: {s.vocab_size}" for s in self._streams)
            raise PastureError(f"shards disagree on vocab_size ({found}); use one tokenizer")
        self._thresholds = _thresholds([self.weights[n] for n in self.names])
        self._mix_key = _key(seed, "mixture")
        self._sequences = 0  # global sequences consumed, all ranks together
        self._consumed = [0] * len(self.names)  # windows taken from each source, all epochs
        self._orders: dict[tuple[int, int], _WindowOrder] = {}

    @property
    def tokens(self) -> dict[str, int]:
        """Tokens per source (EOS separators included), for ``mixture_report``."""
        return {s.name: s.num_tokens for s in self._streams}

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Endless ``(inputs, targets)`` int64 tensors, each ``(batch_size, seq_len)``."""
        while True:
            inputs, targets = self.next_batch()
            yield torch.from_numpy(inputs), torch.from_numpy(targets)

    def next_batch(self) -> tuple[np.ndarray, np.ndarray]:
        """This rank's next step as int64 numpy arrays ``(inputs, targets)``."""
        count = self.batch_size * self.world_size
        ks = np.arange(self._sequences, self._sequences + count, dtype=np.uint64)
        source = self._draw(ks)
        ordinal = np.empty(count, dtype=np.int64)  # k's index within its source's visits
        consumed = list(self._consumed)
        for s in range(len(self.names)):
            hits = np.flatnonzero(source == s)
            ordinal[hits] = consumed[s] + np.arange(hits.size)
            consumed[s] += hits.size
        window = np.empty((self.batch_size, self.seq_len + 1), dtype=np.int64)
        mine = np.flatnonzero(ks % np.uint64(self.world_size) == np.uint64(self.rank))
        for row, j in enumerate(mine):
            s = int(source[j])
            stream = self._streams[s]
            epoch, position = divmod(int(ordinal[j]), stream.num_windows)
            stream.read(self._order(s, epoch)(position), window[row])
        self._sequences += count
        self._consumed = consumed
        return np.ascontiguousarray(window[:, :-1]), np.ascontiguousarray(window[:, 1:])

    def state_dict(self) -> dict:
        """Everything needed to resume exactly, as plain JSON types; the same on every rank."""
        sources = {}
        for name, stream, consumed in zip(self.names, self._streams, self._consumed, strict=True):
            epoch, position = divmod(consumed, stream.num_windows)
            sources[name] = {"epoch": epoch, "position": position, "windows": stream.num_windows}
        return {
            "format": STATE_FORMAT,
            "seed": self.seed,
            "seq_len": self.seq_len,
            "sequences": self._sequences,
            "weights": dict(self.weights),
            "sources": sources,
        }

    def load_state_dict(self, state: Mapping) -> None:
        """Continue from ``state``; rank, world size and batch size may differ from the saver's."""
        if state.get("format") != STATE_FORMAT:
            raise PastureError(
                f"data-loader state has format {state.get('format')!r}, expected {STATE_FORMAT!r}"
            )
        missing = {"seed", "seq_len", "sequences", "weights", "sources"} - set(state)
        if missing:
            raise PastureError(f"data-loader state lacks {sorted(missing)}; not a saved state")
        for key in ("seed", "seq_len"):
            if state[key] != getattr(self, key):
                raise PastureError(
                    f"data-loader state has {key}={state[key]}, this loader {getattr(self, key)}; "
                    f"resume with the {key} the checkpoint was trained with"
                )
        if sorted(state["sources"]) != self.names:
            raise PastureError(
                f"data-loader state has sources {sorted(state['sources'])}, this loader "
                f"{self.names}"
            )
        for name in self.names:
            if not math.isclose(state["weights"][name], self.weights[name], rel_tol=1e-9):
                raise PastureError(
                    f"data-loader state weighs {name!r} {state['weights'][name]:.6g}, this loader "
                    f"{self.weights[name]:.6g} (normalized); resume with the same mixture"
                )
        consumed = []
        for name, stream in zip(self.names, self._streams, strict=True):
            saved = state["sources"][name]
            if saved["windows"] != stream.num_windows:
                raise PastureError(
                    f"source {name!r} has {stream.num_windows} windows of {self.seq_len + 1} "
                    f"tokens, the checkpoint's had {saved['windows']}; resume with the same shards"
                )
            consumed.append(int(saved["epoch"]) * stream.num_windows + int(saved["position"]))
        self._sequences = int(state["sequences"])
        self._consumed = consumed

    def _draw(self, ks: np.ndarray) -> np.ndarray:
        """The source index of each global sequence number in ``ks`` (uint64)."""
        return np.searchsorted(self._thresholds, _uniforms(self._mix_key, ks), side="right")

    def _order(self, source: int, epoch: int) -> _WindowOrder:
        order = self._orders.get((source, epoch))
        if order is None:
            if len(self._orders) > 4 * len(self.names):
                self._orders.clear()
            key = _key(self.seed, self.names[source], epoch)
            order = self._orders[source, epoch] = _WindowOrder(
                self._streams[source].num_windows, key
            )
        return order


class _TokenStream:
    """One source's shards read back to back as a single token array, cut into windows."""

    def __init__(self, name: str, prefixes: Sequence[str | Path], window: int) -> None:
        if not prefixes:
            raise PastureError(f"source {name!r} has no shards; list its shard prefixes")
        self.name = name
        self.shards = [Shard(p) for p in prefixes]
        self.vocab_size = self.shards[0].vocab_size
        for shard in self.shards:
            if shard.vocab_size != self.vocab_size:
                raise PastureError(
                    f"{shard.idx_path}: vocab_size {shard.vocab_size}, but "
                    f"{self.shards[0].idx_path} has {self.vocab_size}; use one tokenizer"
                )
        sizes = [s.num_tokens for s in self.shards]
        self.starts = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
        self.num_tokens = int(self.starts[-1])
        self.window = window
        self.num_windows = self.num_tokens // window
        if self.num_windows == 0:
            raise PastureError(
                f"source {name!r} has {self.num_tokens} tokens in {len(self.shards)} shard(s), "
                f"fewer than one window of seq_len + 1 = {window}; add data or shorten seq_len"
            )

    def read(self, w: int, out: np.ndarray) -> None:
        """Copy window ``w`` (tokens ``[w * window, (w + 1) * window)``) into ``out``."""
        pos = w * self.window
        i = int(np.searchsorted(self.starts, pos, side="right")) - 1
        done = 0
        while done < self.window:
            shard = self.shards[i]
            start = pos + done - int(self.starts[i])
            n = min(self.window - done, shard.num_tokens - start)
            out[done : done + n] = shard.tokens[start : start + n]
            done += n
            i += 1


class _WindowOrder:
    """A seeded random permutation of ``range(n)``, one index at a time, O(1) memory.

    A table from ``np.random.permutation`` would cost 8 bytes per window on every rank (GBs for
    CommonCrawl); a keyed Feistel network on the next even power of two is a bijection, and
    cycle-walking (re-applying it until the value lands below ``n``) restricts it to ``range(n)``.
    """

    def __init__(self, n: int, key: int) -> None:
        bits = max(2, (n - 1).bit_length())
        self.half = (bits + 1) // 2
        self.mask = (1 << self.half) - 1
        self.n = n
        self.keys = [_mix64(key + r * _GAMMA) for r in range(_FEISTEL_ROUNDS)]

    def __call__(self, i: int) -> int:
        x = i
        while True:
            left, right = x >> self.half, x & self.mask
            for k in self.keys:
                left, right = right, left ^ (_mix64(right ^ k) & self.mask)
            x = (left << self.half) | right
            if x < self.n:
                return x


def mixture_report(
    tokens: Mapping[str, int],
    weights: Mapping[str, float] = LLAMA_MIXTURE,
    token_budget: float = 1.4e12,
    disk_bytes: Mapping[str, int] | None = None,
) -> tuple[list[dict], str]:
    """The paper's Table 1 for a data set: sampling proportion, epochs, disk size per source.

    ``tokens`` are each source's token counts (``MixtureLoader.tokens``); epochs are
    ``proportion × token_budget / tokens`` (1.4T: the 33B/65B budget; 1T for 7B/13B).
    ``disk_bytes`` (e.g. summed ``ShardStats.text_bytes``) fills the disk-size column.
    Returns one dict per source and the same as a markdown table.
    """
    for name in weights:
        if name not in tokens:
            raise PastureError(f"mixture_report: no token count for source {name!r}")
        if tokens[name] <= 0:
            raise PastureError(f"mixture_report: source {name!r} has {tokens[name]} tokens")
    total = sum(float(w) for w in weights.values())
    if not total > 0:
        raise PastureError(f"mixture_report: weights sum to {total}; need a positive sum")
    rows, lines = [], ["| Dataset | Sampling prop. | Epochs | Disk size |", "|---|---:|---:|---:|"]
    for name, weight in weights.items():
        proportion = float(weight) / total
        size = None if disk_bytes is None else int(disk_bytes[name])
        row = {
            "source": name,
            "sampling_proportion": proportion,
            "epochs": proportion * token_budget / tokens[name],
            "tokens": int(tokens[name]),
            "disk_bytes": size,
        }
        rows.append(row)
        disk = "–" if size is None else _human_bytes(size)
        lines.append(f"| {name} | {100 * proportion:.1f}% | {row['epochs']:.2f} | {disk} |")
    return rows, "\n".join(lines)


def _check_weights(sources: Mapping[str, Sequence], weights: Mapping[str, float]) -> list[str]:
    unknown = sorted(set(weights) - set(sources))
    if unknown:
        raise PastureError(
            f"mixture weights name source(s) {unknown} with no shards given (sources: "
            f"{sorted(sources)}); give their shards or drop them from the weights"
        )
    unweighted = sorted(set(sources) - set(weights))
    if unweighted:
        raise PastureError(
            f"source(s) {unweighted} have shards but no mixture weight; give each a weight"
        )
    for name, w in weights.items():
        if not (math.isfinite(w) and w >= 0):
            raise PastureError(f"mixture weight of {name!r} is {w}; weights must be finite, ≥ 0")
    if not sum(weights.values()) > 0:
        raise PastureError("mixture weights sum to 0; at least one source needs a positive weight")
    return sorted(sources)


def _thresholds(weights: Sequence[float]) -> np.ndarray:
    """Cumulative bounds: source i owns uniforms in ``[bound[i-1], bound[i])``."""
    bounds = np.cumsum(weights)
    last = max(i for i, w in enumerate(weights) if w > 0)
    bounds[last:] = 1.0  # rounding must never hand the tail to a zero-weight source
    return bounds


def _key(*parts: object) -> int:
    """A 64-bit key from parts, stable across processes and Python versions."""
    digest = hashlib.blake2b("/".join(map(str, parts)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little")


def _mix64(x: int) -> int:
    """SplitMix64's finalizer: a 64-bit bijection that scrambles every bit."""
    x = ((x ^ (x >> 30)) * _MUL1) & _MASK64
    x = ((x ^ (x >> 27)) * _MUL2) & _MASK64
    return x ^ (x >> 31)


def _uniforms(key: int, ks: np.ndarray) -> np.ndarray:
    """Uniform [0, 1) doubles for counters ``ks``: the ``k``-th SplitMix64 output under ``key``."""
    x = np.uint64(key) + (ks + np.uint64(1)) * np.uint64(_GAMMA)  # uint64 arrays wrap mod 2**64
    x = (x ^ (x >> np.uint64(30))) * np.uint64(_MUL1)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(_MUL2)
    x = x ^ (x >> np.uint64(31))
    return (x >> np.uint64(11)).astype(np.float64) * 2.0**-53


def _human_bytes(n: int) -> str:
    for unit, scale in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.3g} {unit}"
    return f"{n} B"
