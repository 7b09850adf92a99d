"""The tokens a training run reads, and the tokenizer they were made with: ``[data]`` of a
training config, resolved once (``prepare_data``) and recorded in ``RUN/config.json``.

Either a ``pasture data build`` output (``data.shards``: ``tokens/SOURCE/*.{bin,idx}``, the
build's mixture and tokenizer), or the default corpus: Python's standard library, tokenized
once into ``RUN/data`` with a tokenizer trained there (or ``data.tokenizer``); every 50th file
is held out for the validation loss.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import torch.distributed as dist

from ..errors import PastureError
from .corpus import default_corpus_files, iter_documents
from .shards import Shard, list_shards, tokenize_documents
from .tokenizer import Tokenizer, train_tokenizer

Sources = dict[str, list[Path]]  # source name → its token shard prefixes


@dataclass
class DataConfig:
    """``[data]`` of a training config."""

    shards: str = ""  # `pasture data build` output folder; empty: the default corpus (stdlib)
    validation: str = ""  # a build of held-out data (the default corpus holds out its own)
    mixture: dict[str, float] = field(default_factory=dict)  # empty: the build's mixture
    tokenizer: str = ""  # SentencePiece model; empty: the build's, or one trained on stdlib
    vocab_size: int = 2000  # for a tokenizer trained here
    corpus_bytes: int = 4_000_000  # how much of the default corpus to use
    seq_len: int = 256

    def __post_init__(self) -> None:
        for name, low in (("seq_len", 1), ("corpus_bytes", 1), ("vocab_size", 16)):
            if getattr(self, name) < low:  # SentencePiece needs 16: its specials and bytes
                raise PastureError(f"data.{name} = {getattr(self, name)}: must be {low} or more")
        for source, weight in self.mixture.items():
            if not (math.isfinite(weight) and weight >= 0):
                raise PastureError(f"data.mixture.{source} = {weight!r}: must be finite, >= 0")


@dataclass
class Prepared:
    """What ``prepare_data`` resolved: the training and held-out shards, their vocabulary, and
    where the tokens and their tokenizer are."""

    sources: Sources
    weights: dict[str, float]
    held_out: tuple[Sources, dict[str, float]] | None
    vocab_size: int
    data_dir: Path  # data.shards, or RUN/data for the default corpus
    tokenizer: Path


def tokenizer_path(cfg: DataConfig, run_dir: Path) -> Path:
    """The SentencePiece model of the run's tokens: ``data.tokenizer``, else the build's (`pasture
    data build` copies it into its output), else the one trained in ``RUN/data``."""
    if cfg.tokenizer:
        return Path(cfg.tokenizer)
    if cfg.shards:
        return Path(cfg.shards) / "tokenizer.model"
    return run_dir / "data" / "tokenizer.model"


def _built_shards(folder: Path, mixture: dict[str, float]) -> tuple[Sources, dict[str, float]]:
    root = folder / "tokens"
    if not root.is_dir():
        raise PastureError(f"{root}: no token shards (run `pasture data build` first)")
    sources = {d.name: list_shards(d) for d in sorted(root.iterdir()) if d.is_dir()}
    sources = {name: shards for name, shards in sources.items() if shards}
    if not sources:
        raise PastureError(f"{root}: no finished shards")
    weights = mixture or json.loads((folder / "config.json").read_text())["mixture"]
    return sources, {name: w for name, w in weights.items() if name in sources}


def prepare_data(cfg: DataConfig, run_dir: Path, rank: int) -> Prepared:
    """The run's shards, tokenizing the default corpus first if needed (rank 0; the others
    wait at a barrier)."""
    tokenizer = tokenizer_path(cfg, run_dir)
    if cfg.shards:
        sources, weights = _built_shards(Path(cfg.shards), cfg.mixture)
        held_out = _built_shards(Path(cfg.validation), cfg.mixture) if cfg.validation else None
        vocab = Shard(next(iter(sources.values()))[0]).vocab_size
        return Prepared(sources, weights, held_out, vocab, Path(cfg.shards), tokenizer)
    data_dir = run_dir / "data"
    prefix, val_prefix = data_dir / "stdlib", data_dir / "stdlib-val"
    if rank == 0 and not prefix.with_suffix(".idx").exists():
        data_dir.mkdir(parents=True, exist_ok=True)
        files = default_corpus_files(max_bytes=cfg.corpus_bytes)
        held, kept = files[::50], [f for i, f in enumerate(files) if i % 50]
        if not tokenizer.exists():
            train_tokenizer(kept, tokenizer, vocab_size=cfg.vocab_size)
        model = Tokenizer.from_file(tokenizer)
        tokenize_documents(iter_documents(held), model, val_prefix)
        tokenize_documents(iter_documents(kept), model, prefix)  # its .idx marks "done"
    if dist.is_initialized():
        dist.barrier()
    one, vocab = {"stdlib": 1.0}, Shard(prefix).vocab_size
    held_out = ({"stdlib": [val_prefix]}, one)
    return Prepared({"stdlib": [prefix]}, one, held_out, vocab, data_dir, tokenizer)
