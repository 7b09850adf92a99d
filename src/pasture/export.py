"""``pasture export RUN_DIR DST --to hf|meta|llama2c|gguf``: a training checkpoint (sharded DCP,
any world size) as a model file in any format the foundation writes, with the run's tokenizer.

    pasture export runs/debug runs/debug-hf --to hf
    pasture generate --checkpoint runs/debug-hf --prompt "def main():"
"""

from __future__ import annotations

import json
from pathlib import Path

from . import interop
from .config import build
from .data.tokenizer import Tokenizer
from .errors import PastureError
from .interop import Checkpoint
from .model import Transformer, preset
from .train import checkpoint as train_checkpoint
from .train.config import TrainConfig


def load_trained(run_dir: Path, step_dir: Path | None = None) -> Checkpoint:
    """The model of a run's latest (or given) checkpoint, unsharded, on CPU, in float32."""
    config_file = run_dir / "config.json"
    if not config_file.is_file():
        raise PastureError(f"{run_dir}: not a training run (no config.json)")
    cfg = build(TrainConfig, json.loads(config_file.read_text()), str(config_file))
    step_dir = step_dir or train_checkpoint.latest(run_dir)
    if step_dir is None:
        raise PastureError(f"{run_dir}: no complete checkpoint to export")
    tokenizer_path = Path(cfg.data.tokenizer) if cfg.data.tokenizer else None
    if tokenizer_path is None and (run_dir / "data" / "tokenizer.model").is_file():
        tokenizer_path = run_dir / "data" / "tokenizer.model"
    if tokenizer_path is None and cfg.data.shards:
        candidate = Path(cfg.data.shards) / "tokenizer.model"
        tokenizer_path = candidate if candidate.is_file() else None
    tokenizer = Tokenizer.from_file(tokenizer_path) if tokenizer_path else None
    overrides: dict = {}
    if cfg.model.max_seq_len:
        overrides["max_seq_len"] = cfg.model.max_seq_len
    entries = train_checkpoint.read_metadata(step_dir).state_dict_metadata
    if "model.tok_embeddings.weight" not in entries:
        raise PastureError(f"{step_dir}: not a Pasture training checkpoint (no embeddings)")
    vocab = entries["model.tok_embeddings.weight"].size[0]
    try:
        args = preset(cfg.model.preset, vocab_size=vocab, **overrides)
    except PastureError as e:  # the shapes come from the checkpoint's (untrusted) metadata
        raise PastureError(f"{step_dir}: {e}") from None
    model = Transformer(args)
    state = {"model": model.state_dict()}
    train_checkpoint.dcp_load(state, step_dir, no_dist=True)
    model.load_state_dict(state["model"])
    return Checkpoint.from_model(model.float(), tokenizer)


def export(
    run_dir: Path, dst: Path, fmt: str, dtype: str | None = None, force: bool = False
) -> Checkpoint:
    """Write the run's latest checkpoint at ``dst``; an existing ``dst`` is replaced only if it
    is a checkpoint of ``fmt`` (else ``force``, and then only ``fmt``'s files)."""
    interop.check_destination(dst, fmt, force)  # before the (long) load
    ckpt = load_trained(run_dir)
    interop.save(ckpt, dst, fmt, dtype=dtype, force=force)
    return ckpt


__all__ = ["export", "load_trained"]
