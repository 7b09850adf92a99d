"""The typed config tree of ``pasture train`` (TOML in ``configs/train/``, ``--set`` overrides),
composed of the configs its modules own, and the record of a run (``RUN/config.json``).

    cfg = load_train_config("configs/train/debug.toml", ["steps=50", "checkpoint.every=25"])
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .. import files
from ..carbon.footprint import CarbonConfig
from ..config import build, load_toml, to_dict
from ..data.prepare import DataConfig
from ..errors import PastureError
from ..model import PRESETS, ModelArgs, preset
from ..parallel.parallelize import ParallelConfig
from .benchmarks import BenchmarkConfig
from .checkpoint import CheckpointConfig
from .metrics import MetricsConfig
from .optim import OptimConfig


@dataclass
class ModelConfig:
    preset: str = "debug"  # a name in pasture.model.PRESETS
    max_seq_len: int | None = None  # override the preset's context
    # vocab_size comes from the tokenizer

    def __post_init__(self) -> None:
        if self.preset not in PRESETS:
            raise PastureError(
                f"model.preset: unknown preset {self.preset!r} (known: {', '.join(PRESETS)})"
            )

    def args(self, vocab_size: int | None = None) -> ModelArgs:
        """The model's shape: the preset, this context, and the tokenizer's vocabulary."""
        overrides: dict[str, Any] = {"max_seq_len": self.max_seq_len} if self.max_seq_len else {}
        if vocab_size is not None:
            overrides["vocab_size"] = vocab_size
        return preset(self.preset, **overrides)


@dataclass
class TrainConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    benchmarks: BenchmarkConfig = field(default_factory=BenchmarkConfig)
    carbon: CarbonConfig = field(default_factory=CarbonConfig)
    run_dir: str = "runs/debug"
    steps: int = 200
    batch_tokens: int = 4_194_304  # global batch in tokens (the paper: 4M); accumulation fills it
    micro_batch: int = 8  # sequences per rank per forward pass
    seed: int = 0
    device: str = ""  # empty: cuda if available, else cpu
    eval_every: int = 0  # validation loss every N steps on held-out shards (0: never)
    eval_batches: int = 4
    nan_policy: str = "stop"  # stop | skip (drop the batch's update)

    def __post_init__(self) -> None:
        for name, low in (("steps", 1), ("batch_tokens", 1), ("micro_batch", 1)):
            _at_least(self, name, low)
        _at_least(self, "eval_batches", 1)
        _at_least(self, "eval_every", 0)
        if self.nan_policy not in ("stop", "skip"):
            raise PastureError(f"nan_policy = {self.nan_policy!r}: use stop or skip")
        if self.device and self.device.split(":")[0] not in ("cpu", "cuda"):
            raise PastureError(f"device = {self.device!r}: use cpu, cuda or cuda:N, or leave empty")


def _at_least(cfg: TrainConfig, name: str, low: int) -> None:
    if getattr(cfg, name) < low:
        raise PastureError(f"{name} = {getattr(cfg, name)}: must be {low} or more")


# Keys that moved into their module's table; configs that still spell them the old way load.
MOVED = {
    "log_every": ("metrics", "log_every"),
    "tensorboard": ("metrics", "tensorboard"),
    "peak_tflops": ("metrics", "peak_tflops"),
    "checkpoint_every": ("checkpoint", "every"),
    "keep_checkpoints": ("checkpoint", "keep"),
    "checkpoint_async": ("checkpoint", "async_save"),
    "device_power_watts": ("carbon", "power_watts"),
    "pue": ("carbon", "pue"),
    "carbon_intensity": ("carbon", "carbon_intensity"),
}


def load_train_config(path: str | Path | None, overrides: list[str] | None = None) -> TrainConfig:
    """A TrainConfig from a TOML file (None: all defaults) and ``key.sub=value`` overrides."""
    data = _moved(load_toml(path), str(path))
    moved = []  # an override in an old spelling sets the new key
    for item in overrides or []:
        key, sep, value = item.partition("=")
        new = MOVED.get(key)
        moved.append(f"{new[0]}.{new[1]}{sep}{value}" if new else item)
    _merge(data, load_toml(None, moved))
    return build(TrainConfig, data, "config" if path is None else str(path))


def _moved(data: dict[str, Any], where: str) -> dict[str, Any]:
    for old, (table, key) in MOVED.items():
        if old in data:
            section = data.setdefault(table, {})
            if not isinstance(section, dict) or key in section:
                raise PastureError(f"{where}: {old} and {table}.{key} are one setting: keep one")
            section[key] = data.pop(old)
    return data


def _merge(base: dict[str, Any], overrides: dict[str, Any]) -> None:
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            _merge(base[key], value)
        else:
            base[key] = value


RECORD = "config.json"


@dataclass
class RunRecord:
    """``RUN/config.json``: the config a run resolved, written (atomically) before its first
    step. Paths inside the run folder are relative to it, so the folder can move."""

    train: TrainConfig  # every default filled in
    model: ModelArgs  # the model's shape, vocabulary included
    tokenizer: str  # the SentencePiece model of the tokens
    data_dir: str  # the token shards: data.shards, or data/ (the default corpus)


def _relative(path: Path, run_dir: Path) -> str:
    path, run_dir = path.resolve(), run_dir.resolve()
    return str(path.relative_to(run_dir) if path.is_relative_to(run_dir) else path)


def write_record(
    run_dir: Path, cfg: TrainConfig, args: ModelArgs, tokenizer: Path, data_dir: Path
) -> RunRecord:
    record = RunRecord(cfg, args, _relative(tokenizer, run_dir), _relative(data_dir, run_dir))
    files.write_text(run_dir / RECORD, json.dumps(to_dict(record), indent=2) + "\n")
    return record


def read_record(run_dir: Path) -> RunRecord:
    """A run's record; one line if it is missing or not one."""
    path = run_dir / RECORD
    if not path.is_file():
        raise PastureError(f"{run_dir}: not a training run (no {RECORD})")
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError, RecursionError) as e:
        raise PastureError(f"{path}: unreadable ({e})") from None
    if isinstance(data, dict) and "train" not in data:
        raise PastureError(f"{path}: written by an older pasture (no model record); train again")
    return build(RunRecord, data, str(path))
