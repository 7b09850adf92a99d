"""Meta's checkpoint format: ``params.json`` + ``consolidated.NN.pth`` (+ ``tokenizer.model``).

Model-parallel shards are split the way Meta's release split them: ``wq wk wv w1 w3 output``
along the output dimension (rows), ``wo w2`` along the input dimension (columns),
``tok_embeddings`` along the model dimension (columns); norms are replicated.
"""

from __future__ import annotations

import json
import re
from dataclasses import replace
from pathlib import Path

import torch

from ..data.tokenizer import Tokenizer
from ..errors import PastureError
from ..model import ConfigError, ModelArgs
from .weights import (
    Checkpoint,
    FolderLayout,
    check_folder,
    folder_writer,
    load_pickled_state,
    read_json,
)

_COLUMN_SPLIT = re.compile(r"(attention\.wo|feed_forward\.w2|tok_embeddings)\.weight$")
_REPLICATED = re.compile(r"norm\.weight$")
# params.json keys across Meta's LLaMA-1, Llama 2 and Code Llama releases.
_PARAM_KEYS = {
    "dim",
    "n_layers",
    "n_heads",
    "n_kv_heads",
    "vocab_size",
    "multiple_of",
    "ffn_dim_multiplier",
    "norm_eps",
    "rope_theta",
    "max_seq_len",
}


def detect(path: Path) -> bool:
    return path.is_dir() and (path / "params.json").is_file()


def _is_params(path: Path) -> bool:
    try:
        return isinstance(read_json(path), dict)
    except (OSError, UnicodeDecodeError, ValueError, RecursionError):
        return False


LAYOUT = FolderLayout(
    "Meta",
    "params.json",
    re.compile(r"params\.json|consolidated\.\d+\.pth|tokenizer\.model"),
    _is_params,
)


def check_destination(path: Path, force: bool = False) -> None:
    check_folder(path, LAYOUT, force)


def shard_dim(key: str) -> int | None:
    """The dimension Meta split ``key`` along across model-parallel ranks (None: replicated)."""
    if _REPLICATED.search(key):
        return None
    return 1 if _COLUMN_SPLIT.search(key) else 0


def _read_params(path: Path) -> dict:
    try:
        params = read_json(path)
    except (OSError, ValueError, RecursionError) as e:  # ValueError: bad JSON or UTF-8, too big
        raise PastureError(f"{path}: unreadable params.json ({e})") from None
    if not isinstance(params, dict):
        raise PastureError(f"{path}: params.json must hold a JSON object")
    unknown = sorted(set(params) - _PARAM_KEYS)
    if unknown:
        raise PastureError(f"{path}: unknown key {unknown[0]!r} (known: {sorted(_PARAM_KEYS)})")
    return params


def merge_shards(
    shards: list[dict[str, torch.Tensor]], files: list[Path] | None = None
) -> dict[str, torch.Tensor]:
    """One state dict from Meta's model-parallel shards (``files`` name them in errors)."""
    if len(shards) == 1:
        return dict(shards[0])
    names = [str(f) for f in files] if files else [f"shard {i}" for i in range(len(shards))]
    for name, shard in zip(names[1:], shards[1:], strict=True):
        if shard.keys() != shards[0].keys():
            odd = sorted(shard.keys() ^ shards[0].keys())[0]
            raise PastureError(
                f"{name}: holds other tensors than {names[0]} ({odd}); not shards of one model"
            )
    merged = {}
    for key in shards[0]:
        dim = shard_dim(key)
        parts = [shard[key] for shard in shards]
        if dim is None:
            merged[key] = parts[0]
            continue
        rest = [tuple(p.shape[:dim] + p.shape[dim + 1 :]) for p in parts]
        for name, part, shape in zip(names, parts, rest, strict=True):
            if part.ndim <= dim or shape != rest[0] or part.dtype != parts[0].dtype:
                raise PastureError(
                    f"{name}: {key} {tuple(part.shape)} does not join {tuple(parts[0].shape)} "
                    f"of {names[0]} along dimension {dim}; not shards of one model"
                )
        merged[key] = torch.cat(parts, dim=dim)
    return merged


def split_shards(state: dict[str, torch.Tensor], n: int) -> list[dict[str, torch.Tensor]]:
    """Meta's model-parallel split of one state dict into ``n`` shards."""
    if n < 1:
        raise ValueError(f"shards must be at least 1, got {n}")
    shards: list[dict[str, torch.Tensor]] = [{} for _ in range(n)]
    for key, tensor in state.items():
        dim = shard_dim(key)
        if dim is not None and tensor.shape[dim] % n:
            raise ValueError(f"cannot split {key} {tuple(tensor.shape)} into {n} shards")
        parts = [tensor] * n if dim is None else torch.chunk(tensor, n, dim=dim)
        for shard, part in zip(shards, parts, strict=True):
            shard[key] = part.clone(memory_format=torch.contiguous_format)
    return shards


def _args(params: dict, path: Path) -> ModelArgs:
    try:
        return ModelArgs(**{k: v for k, v in params.items() if k in _PARAM_KEYS})
    except ConfigError as e:
        raise PastureError(f"{path / 'params.json'}: {e}") from None


def load(path: Path) -> Checkpoint:
    params = _read_params(path / "params.json")
    vocab = params.get("vocab_size", -1)
    # Meta's release writes -1: the tokenizer decides (so the embedding's rows say).
    vocab_from_weights = type(vocab) is int and vocab <= 0
    _args({**params, "vocab_size": 1} if vocab_from_weights else params, path)  # before loading
    files = sorted(path.glob("consolidated.*.pth"))
    if not files:
        raise PastureError(f"{path}: no consolidated.NN.pth next to params.json")
    state = merge_shards([load_pickled_state(f) for f in files], files)
    state.pop("rope.freqs", None)  # LLaMA-1 stored its rotary table; we recompute it
    if vocab_from_weights:
        embedding = state.get("tok_embeddings.weight")
        if embedding is None or embedding.ndim != 2:
            raise PastureError(f"{path}: missing tensor tok_embeddings.weight")
        params["vocab_size"] = embedding.shape[0]
    args = _args(params, path)
    w1 = state.get("layers.0.feed_forward.w1.weight")
    if w1 is not None and w1.shape[0] != args.ffn_hidden_dim:
        raise PastureError(
            f"{path}: feed_forward.w1 has {w1.shape[0]} rows, params.json implies "
            f"{args.ffn_hidden_dim} (multiple_of / ffn_dim_multiplier)"
        )
    tokenizer = None
    for candidate in (path / "tokenizer.model", path.parent / "tokenizer.model"):
        if candidate.is_file():
            tokenizer = Tokenizer.from_file(candidate)
            break
    ckpt = Checkpoint(args, state, tokenizer, source=str(path), format="meta")
    ckpt.validate()
    return ckpt


def _params_for(args: ModelArgs) -> dict:
    params: dict = {
        "dim": args.dim,
        "n_layers": args.n_layers,
        "n_heads": args.n_heads,
        "vocab_size": args.vocab_size,
        "multiple_of": args.multiple_of,
        "norm_eps": args.norm_eps,
    }
    if args.n_kv_heads is not None and args.n_kv_heads != args.n_heads:
        params["n_kv_heads"] = args.n_kv_heads
    if args.rope_theta != 10000.0:
        params["rope_theta"] = args.rope_theta
    if args.ffn_dim_multiplier is not None:
        params["ffn_dim_multiplier"] = args.ffn_dim_multiplier
    hidden = args.ffn_hidden_dim
    if replace(args, hidden_dim=None).ffn_hidden_dim != hidden:
        # Meta's params have no hidden size: choose multiple_of (and a multiplier below 1 when
        # the size is below 2/3·4d) so that Meta's rounding rule lands exactly on it.
        params["multiple_of"] = hidden
        params.pop("ffn_dim_multiplier", None)
        base = int(2 * 4 * args.dim / 3)
        if hidden < base:
            params["ffn_dim_multiplier"] = hidden / base
    return params


def save(ckpt: Checkpoint, path: Path, shards: int = 1, force: bool = False) -> None:
    """Write ``path/params.json``, ``consolidated.00.pth`` … and ``tokenizer.model``.

    An existing folder must be a Pasture Meta checkpoint, or ``force`` given; either way only
    the files in ``LAYOUT`` are replaced (see ``check_folder``).
    """
    check_destination(path, force)
    if ckpt.args.tie_embeddings:
        # Meta's format has no tied classifier: write the shared matrix twice.
        state = {**ckpt.state_dict, "output.weight": ckpt.state_dict["tok_embeddings.weight"]}
    else:
        state = dict(ckpt.state_dict)
    params = _params_for(ckpt.args)
    try:
        parts = split_shards(state, shards)
    except ValueError as e:
        raise PastureError(f"{path}: {e}") from None
    with folder_writer(path, LAYOUT) as place:
        place("params.json").write_text(json.dumps(params, indent=2) + "\n")
        for rank, shard in enumerate(parts):
            torch.save(shard, place(f"consolidated.{rank:02d}.pth"))
        if ckpt.tokenizer is not None:
            place("tokenizer.model").write_bytes(ckpt.tokenizer.to_bytes())
