"""What a task is: a name, the files it reads, and one function from a model to a result.

A task module defines plain functions and lists them as ``Task`` values; ``pasture.eval.tasks``
collects those lists into one dict keyed by exact name. No class hierarchy, no registry magic.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from ..errors import PastureError

if TYPE_CHECKING:
    from .lm import LanguageModel
    from .toxicity import ToxicityScorer

T = TypeVar("T")
# Requests per forward pass of the model the tasks run on (``PastureLM``): pasture eval's
# --batch-size, benchmarks during training and lm-eval's ``--model pasture`` default to it.
# Results do not depend on it (tests/eval/test_run.py).
DEFAULT_BATCH_SIZE = 8


@dataclass(frozen=True)
class EvalSettings:
    """What the user chose for this run; each task reads what applies to it."""

    data_dir: Path
    shots: int | None = None  # None: the paper's setting for the task
    limit: int | None = None  # evaluate the first N items only
    seed: int = 1234  # few-shot draws and sampling
    samples: int | None = None  # k of maj1@k / n of pass@k; None: the task's CPU-sized default
    # for whoever builds the model from these settings (no task reads it): DEFAULT_BATCH_SIZE
    batch_size: int = DEFAULT_BATCH_SIZE
    # RealToxicityPrompts' scorer; None: the environment's (PASTURE_PERSPECTIVE_KEY or
    # PASTURE_TOXICITY_COMMAND), see pasture.eval.toxicity
    toxicity_scorer: ToxicityScorer | None = None
    # run model-written programs even where the sandbox cannot keep them from the network or
    # from writing outside their working directory (see pasture.eval.sandbox)
    allow_uncontained_code: bool = False


@dataclass
class TaskResult:
    """One task's outcome. ``metrics`` holds every figure; ``main`` names the headline one."""

    task: str
    main: str
    metrics: dict[str, float]
    stderr: dict[str, float] = field(default_factory=dict)
    records: list[dict[str, Any]] = field(default_factory=list)
    shots: int = 0
    notes: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "task": self.task,
            "main": self.main,
            "metrics": self.metrics,
            "stderr": self.stderr,
            "shots": self.shots,
            "n": len(self.records),
            "notes": self.notes,
            "records": self.records,
        }


@dataclass(frozen=True)
class Task:
    name: str
    section: str  # the paper's table: "common_sense", "closed_book_qa", "mmlu", ...
    files: tuple[str, ...]  # relative to the data directory; checked before the task runs
    run: Callable[[LanguageModel, EvalSettings], TaskResult]
    description: str = ""


class TaskDataError(PastureError):
    """A task's file is missing or one of its records is malformed."""


class TaskUnavailable(PastureError):
    """A task cannot run here for a reason outside its data (no toxicity scorer configured, a
    sandbox that cannot contain code): skipped under ``--tasks paper``, an error when named."""


def task_file(settings: EvalSettings, relative: str) -> Path:
    path = settings.data_dir / relative
    if not path.is_file():
        raise TaskDataError(f"{path}: missing (expected the benchmark's published file)")
    return path


def read_jsonl(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, record) for each non-empty line; a bad line names the file and line."""
    import gzip

    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise TaskDataError(f"{path}:{number}: not JSON ({e.msg})") from None
            if not isinstance(record, dict):
                raise TaskDataError(f"{path}:{number}: expected a JSON object")
            yield number, record


def field_of(record: dict[str, Any], key: str, where: str, kind: type | tuple[type, ...] = str):
    """``record[key]``, or a TaskDataError naming the file/line and the field."""
    if key not in record:
        raise TaskDataError(f"{where}: record has no field {key!r}")
    value = record[key]
    if not isinstance(value, kind):
        raise TaskDataError(f"{where}: field {key!r} is {type(value).__name__}, not {kind}")
    return value


def limited(items: Sequence[T], settings: EvalSettings) -> list[T]:
    return list(items[: settings.limit] if settings.limit is not None else items)


def draw_shots(pool: Sequence[T], k: int, seed: int, item_id: str, key=None) -> list[T]:
    """k few-shot examples from ``pool`` for the item ``item_id``, never the item itself.

    The draw depends only on (seed, item id), not on the order items are evaluated in nor on
    --limit, so a result can be reproduced item by item.
    """
    if k <= 0:
        return []
    key = key or (lambda x: str(x))
    digest = hashlib.sha256(f"{seed}:{item_id}".encode()).digest()
    rng = random.Random(int.from_bytes(digest[:8], "little"))
    candidates = [x for x in pool if key(x) != item_id]
    if len(candidates) < k:
        raise TaskDataError(
            f"{k}-shot needs {k} examples besides the item; the pool has {len(candidates)}"
        )
    return rng.sample(candidates, k)
