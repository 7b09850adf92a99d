"""Benchmarks during training (the paper's Figure 2: accuracy against training tokens):
``[benchmarks]`` scores pasture.eval tasks every N steps into ``RUN/benchmarks.jsonl``;
``pasture plot RUN`` draws them."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..config import data_root
from ..data.tokenizer import Tokenizer
from ..errors import PastureError
from ..eval import EvalSettings, PastureLM
from ..eval.run import evaluate, missing_files, resolve_tasks
from ..eval.tasks import TASKS


@dataclass
class BenchmarkConfig:
    """``[benchmarks]`` of a training config."""

    tasks: list[str] = field(default_factory=list)  # pasture.eval task names; empty: none
    every: int = 0  # steps between evaluations (and after the last step); 0: never
    data_dir: str = ""  # benchmark files; empty: $PASTURE_DATA/eval
    limit: int | None = 200  # items per task, to keep it cheap
    batch_size: int = EvalSettings.batch_size  # pasture eval's default
    seed: int = 1234

    def __post_init__(self) -> None:
        for name, value, low in (
            ("every", self.every, 0),
            ("batch_size", self.batch_size, 1),
            ("limit", 1 if self.limit is None else self.limit, 1),
        ):
            if value < low:
                raise PastureError(f"benchmarks.{name} = {value}: must be {low} or more")

    def due(self, done: int, steps: int) -> bool:
        return bool(self.tasks) and self.every > 0 and (done % self.every == 0 or done == steps)


def benchmark_settings(cfg: BenchmarkConfig, tp: int) -> EvalSettings | None:
    """The benchmarks to run during training, checked before any work: names and files."""
    if not cfg.tasks or cfg.every <= 0:
        return None
    if tp > 1:
        raise PastureError("benchmarks.tasks: evaluation during training needs parallel.tp = 1")
    names, unknown = resolve_tasks(cfg.tasks)
    if unknown:
        raise PastureError(f"benchmarks.tasks: unknown task(s) {', '.join(unknown)}")
    root = data_root()
    if not cfg.data_dir and root is None:
        raise PastureError("benchmarks.data_dir: empty and $PASTURE_DATA is not set")
    data_dir = Path(cfg.data_dir) if cfg.data_dir else root / "eval"
    settings = EvalSettings(
        data_dir=data_dir, limit=cfg.limit, seed=cfg.seed, batch_size=cfg.batch_size
    )
    for name in names:
        missing = missing_files(TASKS[name], settings)
        if missing:
            raise PastureError(f"benchmarks.tasks: {name}: {data_dir / missing[0]}: missing")
    return settings


def run_benchmarks(
    model: torch.nn.Module,
    tokenizer: Tokenizer,
    tasks: list[str],
    settings: EvalSettings,
    step: int,
    tokens: int,
) -> list[dict[str, Any]]:
    """Score the benchmarks on the model as it is now; one row per task. Every rank runs the
    same requests, so the forward passes of a sharded (FSDP) model stay in step."""
    lm = PastureLM(model, tokenizer, batch_size=settings.batch_size, progress=False)
    try:
        outcome = evaluate(lm, tasks, settings, log=lambda _: None)
    finally:
        model.train()
    if outcome.errors:
        name, message = next(iter(outcome.errors.items()))
        raise PastureError(f"benchmarks.tasks: {name}: {message}")
    return [
        {
            "step": step,
            "tokens": tokens,
            "task": name,
            "metric": result.main,
            "value": result.metrics[result.main],
            "stderr": result.stderr.get(result.main),
            "n": len(result.records),
        }
        for name, result in outcome.results.items()
    ]
