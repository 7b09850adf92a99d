"""The typed config tree of ``pasture train`` (TOML in ``configs/train/``, ``--set`` overrides)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from ..errors import PastureError
from ..parallel.parallelize import ParallelConfig
from .optim import OptimConfig


def _at_least(owner: object, prefix: str, minimum: int, *names: str) -> None:
    for name in names:
        value = getattr(owner, name)
        if value < minimum:
            raise PastureError(f"{prefix}{name} = {value}: must be {minimum} or more")


def _finite(owner: object, prefix: str, low: float, *names: str, above: bool = False) -> None:
    for name in names:
        value = getattr(owner, name)
        if not (math.isfinite(value) and (value > low if above else value >= low)):
            rule = f"above {low}" if above else f"{low} or more"
            raise PastureError(f"{prefix}{name} = {value!r}: must be a finite number {rule}")


@dataclass
class ModelConfig:
    preset: str = "debug"  # a name in pasture.model.PRESETS
    max_seq_len: int | None = None  # override the preset's context
    # vocab_size comes from the tokenizer


@dataclass
class DataConfig:
    shards: str = ""  # `pasture data build` output folder; empty: the default corpus (stdlib)
    validation: str = ""  # a build of held-out data (the default corpus holds out its own)
    mixture: dict[str, float] = field(default_factory=dict)  # empty: the build's mixture
    tokenizer: str = ""  # SentencePiece model; empty: train one on the default corpus
    vocab_size: int = 2000  # for a tokenizer trained here
    corpus_bytes: int = 4_000_000  # how much of the default corpus to use
    seq_len: int = 256

    def __post_init__(self) -> None:
        _at_least(self, "data.", 1, "seq_len", "corpus_bytes")
        _at_least(self, "data.", 16, "vocab_size")  # SentencePiece needs its specials and bytes
        for source, weight in self.mixture.items():
            if not (math.isfinite(weight) and weight >= 0):
                raise PastureError(f"data.mixture.{source} = {weight!r}: must be finite, >= 0")


@dataclass
class BenchmarkConfig:
    """Benchmarks during training (the paper's Figure 2: accuracy against training tokens)."""

    tasks: list[str] = field(default_factory=list)  # pasture.eval task names; empty: none
    every: int = 0  # steps between evaluations (and after the last step); 0: never
    data_dir: str = ""  # benchmark files; empty: $PASTURE_DATA/eval
    limit: int | None = 200  # items per task, to keep it cheap
    batch_size: int = 8
    seed: int = 1234

    def __post_init__(self) -> None:
        _at_least(self, "benchmarks.", 0, "every")
        _at_least(self, "benchmarks.", 1, "batch_size")
        if self.limit is not None:
            _at_least(self, "benchmarks.", 1, "limit")


@dataclass
class TrainConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    benchmarks: BenchmarkConfig = field(default_factory=BenchmarkConfig)
    run_dir: str = "runs/debug"
    steps: int = 200
    batch_tokens: int = 4_194_304  # global batch in tokens (the paper: 4M); accumulation fills it
    micro_batch: int = 8  # sequences per rank per forward pass
    seed: int = 0
    device: str = ""  # empty: cuda if available, else cpu
    log_every: int = 10
    eval_every: int = 0  # validation loss every N steps on held-out shards (0: never)
    eval_batches: int = 4
    checkpoint_every: int = 100
    keep_checkpoints: int = 2
    # Write checkpoints in a background thread (DCP async_save) while training goes on; the
    # state is first copied to CPU memory (model + optimizer: ~12 bytes per parameter shard).
    checkpoint_async: bool = False
    tensorboard: bool = True  # RUN/tensorboard/: the metrics.jsonl scalars (pasture[train])
    nan_policy: str = "stop"  # stop | skip (drop the batch's update)
    peak_tflops: float = 0.0  # for MFU; 0: the device's bf16 dense peak if known
    # Energy and carbon (paper §6): NVML where a GPU is visible, else hours × devices × power.
    device_power_watts: float = 400.0  # the paper's A100 figure
    pue: float = 1.1
    carbon_intensity: float = 0.385  # tCO2eq per MWh (US average; set your region's)

    def __post_init__(self) -> None:
        _at_least(self, "", 1, "steps", "batch_tokens", "micro_batch", "log_every")
        _at_least(self, "", 1, "checkpoint_every", "eval_batches")
        _at_least(self, "", 0, "eval_every", "keep_checkpoints")
        _finite(self, "", 0.0, "peak_tflops", "carbon_intensity")
        _finite(self, "", 0.0, "device_power_watts", above=True)
        _finite(self, "", 1.0, "pue")
        if self.nan_policy not in ("stop", "skip"):
            raise PastureError(f"nan_policy = {self.nan_policy!r}: use stop or skip")
        if self.device and self.device.split(":")[0] not in ("cpu", "cuda"):
            raise PastureError(f"device = {self.device!r}: use cpu, cuda or cuda:N, or leave empty")
