"""``pasture export RUN_DIR DST --to hf|meta|llama2c|gguf``: a training checkpoint (sharded DCP,
any world size) as a model file in any format the foundation writes, with the run's tokenizer.

    pasture export runs/debug runs/debug-hf --to hf
    pasture generate --checkpoint runs/debug-hf --prompt "def main():"
"""

from __future__ import annotations

from pathlib import Path

from . import interop
from .data.tokenizer import Tokenizer
from .errors import PastureError
from .interop import Checkpoint
from .model import Transformer
from .train import checkpoint as train_checkpoint
from .train.config import read_record


def load_trained(run_dir: Path, step_dir: Path | None = None) -> Checkpoint:
    """The model of a run's latest (or given) checkpoint, unsharded, on CPU, in float32, with
    the run's tokenizer: both as ``RUN/config.json`` recorded them."""
    record = read_record(run_dir)
    step_dir = step_dir or train_checkpoint.latest(run_dir)
    if step_dir is None:
        raise PastureError(f"{run_dir}: no complete checkpoint to export")
    entries = train_checkpoint.read_metadata(step_dir).state_dict_metadata
    if "model.tok_embeddings.weight" not in entries:
        raise PastureError(f"{step_dir}: not a Pasture training checkpoint (no embeddings)")
    shape = tuple(entries["model.tok_embeddings.weight"].size)  # untrusted: checked, not used
    if shape != (record.model.vocab_size, record.model.dim):
        raise PastureError(
            f"{step_dir}: embeddings of shape {shape}, but {run_dir / 'config.json'} records a "
            f"model of {record.model.vocab_size} × {record.model.dim}; not this run's checkpoint"
        )
    model = Transformer(record.model)
    state = {"model": model.state_dict()}
    train_checkpoint.dcp_load(state, step_dir, no_dist=True)
    model.load_state_dict(state["model"])
    tokenizer_file = run_dir / record.tokenizer  # relative to the run, or absolute
    tokenizer = Tokenizer.from_file(tokenizer_file) if tokenizer_file.is_file() else None
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
