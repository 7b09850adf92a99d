"""The config of ``pasture finetune`` (TOML in ``configs/finetune/``, ``--set`` overrides;
unknown keys are errors).

    cfg = load_finetune_config("configs/finetune/demo.toml", ["steps=50", "method=full"])
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..config import build, load_toml
from ..errors import PastureError
from ..parallel.parallelize import ParallelConfig
from ..train.benchmarks import BenchmarkConfig
from ..train.checkpoint import CheckpointConfig
from ..train.optim import OptimConfig
from .lora import LoRAConfig

METHODS = ("lora", "full")


def _optim_default() -> OptimConfig:
    # Short runs: a LoRA-sized peak, a short warmup, cosine to 10%, the paper's AdamW otherwise.
    return OptimConfig(lr=1e-4, warmup_steps=10, weight_decay=0.0)


@dataclass
class FinetuneConfig:
    data: list[str] = field(default_factory=list)  # JSONL files (alpaca, chat, completion)
    eval_data: list[str] = field(default_factory=list)  # held-out JSONL files
    template: str = ""  # a .jinja file or tokenizer_config.json; empty: DEFAULT_TEMPLATE
    tokenizer: str = ""  # SentencePiece .model, when the checkpoint holds none
    method: str = "lora"  # lora | full
    lora: LoRAConfig = field(default_factory=LoRAConfig)
    optim: OptimConfig = field(default_factory=_optim_default)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)  # RUN/checkpoints
    benchmarks: BenchmarkConfig = field(default_factory=BenchmarkConfig)  # RUN/benchmarks.jsonl
    parallel: ParallelConfig = field(default_factory=ParallelConfig)  # FSDP2 under torchrun
    steps: int = 100
    seq_len: int = 512  # inputs per row; longer examples are truncated
    rows: int = 8  # rows per micro-batch
    grad_accum: int = 1  # micro-batches per optimizer step
    packed: bool = True  # several examples per row (block-causal mask)
    train_on_prompt: bool = False  # False: loss on response tokens only
    seed: int = 0
    device: str = ""  # empty: cuda if available, else cpu
    autocast: bool = False  # bf16 autocast for the forward (GPU)
    log_every: int = 10
    eval_every: int = 0  # held-out response loss every N steps (0: before and after only)
    run_dir: str = "runs/finetune"
    out: str = ""  # where the finetuned checkpoint goes; empty: RUN/model
    out_format: str = "hf"  # meta | hf | llama2c | gguf

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise PastureError(f"method = {self.method!r}: use {' or '.join(METHODS)}")
        for name in ("steps", "seq_len", "rows", "grad_accum", "log_every"):
            if getattr(self, name) < 1:
                raise PastureError(f"{name} = {getattr(self, name)}: must be 1 or more")
        if self.eval_every < 0:
            raise PastureError(f"eval_every = {self.eval_every}: must be 0 or more")
        if self.device and self.device.split(":")[0] not in ("cpu", "cuda"):
            raise PastureError(f"device = {self.device!r}: use cpu, cuda or cuda:N, or leave empty")
        if self.out_format not in ("meta", "hf", "llama2c", "gguf"):
            raise PastureError(f"out_format = {self.out_format!r}: use meta, hf, llama2c or gguf")


def load_finetune_config(
    path: str | Path | None, overrides: list[str] | None = None
) -> FinetuneConfig:
    """A FinetuneConfig from a TOML file (None: defaults) and ``key.sub=value`` overrides."""
    data = load_toml(path, overrides)
    optim = data.setdefault("optim", {})
    # A partial [optim] keeps the finetuning defaults below, not pretraining's.
    if isinstance(optim, dict):
        defaults = _optim_default()
        for key in ("lr", "warmup_steps", "weight_decay"):
            optim.setdefault(key, getattr(defaults, key))
    cfg = build(FinetuneConfig, data, "config" if path is None else str(path))
    if not cfg.data:
        raise PastureError(f"{path or 'config'}: data: name at least one JSONL file")
    return cfg


__all__ = ["METHODS", "FinetuneConfig", "load_finetune_config"]
