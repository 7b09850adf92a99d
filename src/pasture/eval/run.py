"""Run tasks, write per-task JSON and the paper-style tables, keep going past a broken task.

    >>> from pasture.eval.run import evaluate
    >>> outcome = evaluate(lm, ["arc_easy", "piqa"], EvalSettings(data_dir=Path("eval")), "out")

Writes ``out/<task>.json`` (per-item records, aggregate, bootstrap standard error),
``out/results.jsonl`` (one line per task) and ``out/results.md`` (Tables 3–12 laid out like
the paper, LLaMA's published numbers beside this model's). Every file is written atomically
through ``pasture.files`` (a fresh random name beside it, then renamed).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from ..errors import PastureError
from ..files import write_text
from . import paper
from .lm import LanguageModel
from .paper import Column
from .task import EvalSettings, Task, TaskResult, TaskUnavailable
from .tasks import PAPER, TASKS


@dataclass
class Outcome:
    """Results by task, and one line per task that could not run (missing file, bad record)."""

    results: dict[str, TaskResult] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)  # --tasks paper: data not present


def resolve_tasks(spec: str | Sequence[str]) -> tuple[list[str], list[str]]:
    """Task names from "paper", a comma-separated list or a sequence: (known, unknown)."""
    names = spec.split(",") if isinstance(spec, str) else list(spec)
    known: list[str] = []
    unknown: list[str] = []
    for name in (n.strip() for n in names):
        if not name:
            continue
        if name == "paper":
            known += [n for n in PAPER if n not in known]
        elif name in TASKS:
            known += [name] if name not in known else []
        else:
            unknown.append(name)
    return known, unknown


def missing_files(task: Task, settings: EvalSettings) -> list[str]:
    return [f for f in task.files if not (settings.data_dir / f).exists()]


def evaluate(
    lm: LanguageModel,
    tasks: str | Sequence[str],
    settings: EvalSettings,
    out_dir: str | Path | None = None,
    log=print,
) -> Outcome:
    """Run each task; a task that fails is reported and the others still run.

    With "paper" in ``tasks``, a paper task whose data files are absent is skipped (and listed);
    a task named explicitly whose files are absent is an error.
    """
    names, unknown = resolve_tasks(tasks)
    explicit = set(tasks.split(",") if isinstance(tasks, str) else tasks)
    outcome = Outcome()
    for name in unknown:
        outcome.errors[name] = f"unknown task {name!r} (known: paper, {', '.join(TASKS)})"
        log(f"pasture eval: {name}: {outcome.errors[name]}")
    out = Path(out_dir) if out_dir is not None else None
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
    for name in names:
        task = TASKS[name]
        missing = missing_files(task, settings)
        if missing:
            message = ", ".join(str(settings.data_dir / m) for m in missing) + ": missing"
            if name in explicit:
                outcome.errors[name] = message
                log(f"pasture eval: {name}: {message}")
            else:
                outcome.skipped[name] = message
                log(f"pasture eval: {name}: skipped, {message}")
            continue
        started = time.perf_counter()
        try:
            result = task.run(lm, settings)
        except TaskUnavailable as e:  # as for missing data: skipped under "paper"
            if name in explicit:
                outcome.errors[name] = str(e)
                log(f"pasture eval: {name}: {e}")
            else:
                outcome.skipped[name] = str(e)
                log(f"pasture eval: {name}: skipped, {e}")
            continue
        except PastureError as e:
            outcome.errors[name] = str(e)
            log(f"pasture eval: {name}: {e}")
            continue
        except Exception as e:  # a bug in one task must not lose the others' results
            outcome.errors[name] = f"{type(e).__name__}: {e}"
            log(f"pasture eval: {name}: failed: {outcome.errors[name]}")
            continue
        result.metrics.setdefault("seconds", round(time.perf_counter() - started, 3))
        outcome.results[name] = result
        log(f"pasture eval: {name}: {result.main} = {result.metrics[result.main]:.4f}")
        if out is not None:
            write_json(out / f"{name}.json", result.to_dict())
    if out is not None:
        write_summary(out, outcome)
    return outcome


def write_json(path: Path, data: object) -> None:
    write_text(path, json.dumps(data, indent=1, ensure_ascii=False, default=float) + "\n")


def write_summary(out: Path, outcome: Outcome) -> None:
    lines = []
    for result in outcome.results.values():
        summary = result.to_dict()
        summary.pop("records")
        lines.append(json.dumps({**summary, "status": "ok"}, default=float))
    for name, message in outcome.errors.items():
        lines.append(json.dumps({"task": name, "status": "error", "error": message}))
    for name, message in outcome.skipped.items():
        lines.append(json.dumps({"task": name, "status": "skipped", "reason": message}))
    write_text(out / "results.jsonl", "\n".join(lines) + "\n")
    write_text(out / "results.md", to_markdown(outcome))


# -- the paper's tables -----------------------------------------------------------------------


def _tables(results: dict[str, TaskResult]) -> list[tuple[str, list[Column]]]:
    """``paper.TABLES`` as this run fills them, then a table of the tasks they do not show."""
    tables = [
        (table.title, [_filled(column, results.get(column.task)) for column in table.columns])
        for table in paper.TABLES
    ]
    covered = {c.task for _, columns in tables for c in columns}
    others = [t for t in results if t not in covered]
    if others:
        title = "Other tasks (no comparable LLaMA number in the paper)"
        tables.append((title, [Column(t, t) for t in others]))
    return tables


def _filled(column: Column, result: TaskResult | None) -> Column:
    """The column for this run: LLaMA's row for the shots the task ran with, and ``NAME@k``
    as the largest k above 1 the task reported (none: the cell stays empty)."""
    if column.paper_by_shots is not None and result is not None:
        header = f"{column.header} {result.shots}-shot"
        return replace(column, header=header, paper=column.paper_by_shots.get(result.shots))
    if column.metric is not None and column.metric.endswith("@k"):
        prefix = column.metric.removesuffix("k")
        ks = [m[len(prefix) :] for m in (result.metrics if result else ()) if m.startswith(prefix)]
        largest = max((int(k) for k in ks if k.isdigit() and int(k) > 1), default=None)
        metric = column.metric if largest is None else f"{prefix}{largest}"
        return replace(column, header=f"{column.header} {metric}", metric=metric)
    return column


def _cell(result: TaskResult | None, column: Column) -> str:
    if result is None or (column.metric is not None and column.metric not in result.metrics):
        return "–"
    metric = column.metric or result.main
    value = result.metrics[metric]
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    scale = 100.0 if column.percent else 1.0
    text = f"{value * scale:.1f}" if column.percent else f"{value:.3f}"
    err = result.stderr.get(metric)
    if err is not None and not math.isnan(err):
        text += f" ± {err * scale:.1f}" if column.percent else f" ± {err:.3f}"
    return text


def _instruction_table(mmlu: TaskResult, model_name: str) -> list[str]:
    """Table 10: MMLU five-shot of models without and with instruction finetuning (LLaMA-I),
    the user's model last: how a ``pasture finetune`` run compares."""
    column = paper.Column("MMLU (5-shot)", "mmlu", "average", None)
    lines = ["## Table 10: instruction finetuning, MMLU five-shot\n"]
    lines += ["| model | instruction-finetuned | MMLU |", "|---|---|---:|"]
    for name, value in paper.MMLU_INSTRUCTION.items():
        tuned = "yes" if name in paper.INSTRUCTION_FINETUNED else "no"
        lines.append(f"| {name} (paper) | {tuned} | {value:.1f} |")
    lines.append(f"| {model_name} ({mmlu.shots}-shot) | | {_cell(mmlu, column)} |\n")
    return lines


def to_markdown(outcome: Outcome, model_name: str = "this model") -> str:
    results = outcome.results
    parts = ["# Evaluation results\n"]
    for title, columns in _tables(results):
        if not any(c.task in results for c in columns):
            continue
        n = {c.task: len(results[c.task].records) for c in columns if c.task in results}
        parts.append(f"## {title}\n")
        parts.append("| model | " + " | ".join(c.header for c in columns) + " |")
        parts.append("|---|" + "---:|" * len(columns))
        for size in paper.SIZES:
            if not any(c.paper and size in c.paper for c in columns):
                continue
            cells = []
            for c in columns:
                v = (c.paper or {}).get(size)
                cells.append("–" if v is None else (f"{v:.1f}" if c.percent else f"{v:.3f}"))
            parts.append(f"| LLaMA {size} (paper) | " + " | ".join(cells) + " |")
        cells = [_cell(results.get(c.task), c) for c in columns]
        counts = ", ".join(f"{t} n={k}" for t, k in n.items())
        parts.append(f"| {model_name} | " + " | ".join(cells) + " |")
        parts.append(f"\n{counts}\n")
    if "mmlu" in results:
        parts += _instruction_table(results["mmlu"], model_name)
    if outcome.errors or outcome.skipped:
        parts.append("## Not evaluated\n")
        for name, message in {**outcome.errors, **outcome.skipped}.items():
            parts.append(f"- `{name}`: {message}")
        parts.append("")
    parts.append("± is the bootstrap standard error (1,000 resamples).\n")
    return "\n".join(parts)
