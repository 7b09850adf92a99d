"""Every task, keyed by its exact name; ``PAPER`` lists the paper's suite in its tables' order.

Each module reads one family of benchmarks from their published files and defines ``TASKS``.
"""

from __future__ import annotations

from ..task import Task
from . import code, common_sense, math, mmlu, qa, reading, safety

TASKS: dict[str, Task] = {
    t.name: t
    for module in (common_sense, qa, reading, math, code, mmlu, safety)
    for t in module.TASKS
}
PAPER: tuple[str, ...] = tuple(TASKS)

__all__ = ["PAPER", "TASKS"]
