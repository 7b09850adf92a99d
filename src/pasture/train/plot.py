"""``pasture plot RUN_DIR [RUN_DIR …]``: training loss against tokens seen, like Figure 1 of
the paper, from each run's ``metrics.jsonl``; written to ``RUN_DIR/loss.png`` (or ``--out``).
Runs that scored benchmarks while training (``benchmarks.jsonl``) also get Figure 2, each
task's score against tokens seen, in ``benchmarks.png`` beside it."""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import PastureError
from ..files import atomic_file


def read_metrics(run_dir: Path) -> list[dict]:
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        raise PastureError(f"{path}: no metrics (has this run logged a step?)")
    by_step: dict[int, dict] = {}
    for number, line in enumerate(path.read_text().splitlines(), 1):
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            raise PastureError(f"{path}:{number}: not a JSON line") from None
        by_step[record["step"]] = record  # a resumed run rewrites steps; the last one wins
    return [by_step[s] for s in sorted(by_step)]


def read_benchmarks(run_dir: Path) -> list[dict]:
    path = run_dir / "benchmarks.jsonl"
    if not path.is_file():
        return []
    by_key: dict[tuple[int, str], dict] = {}
    for number, line in enumerate(path.read_text().splitlines(), 1):
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            raise PastureError(f"{path}:{number}: not a JSON line") from None
        by_key[record["step"], record["task"]] = record  # a resumed run: the last one wins
    return [by_key[k] for k in sorted(by_key)]


def _pyplot():
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise PastureError("plotting needs matplotlib: pip install 'pasture[plot]'") from None
    return plt


def _save(fig, out: Path) -> Path:
    with atomic_file(out) as tmp:
        fig.savefig(tmp, format="png")
    return out


def plot_benchmarks(run_dirs: list[Path], out: Path) -> Path | None:
    """One panel per task: its headline metric against training tokens (None: no data)."""
    runs = {run_dir: read_benchmarks(run_dir) for run_dir in run_dirs}
    tasks = sorted({r["task"] for records in runs.values() for r in records})
    if not tasks:
        return None
    plt = _pyplot()
    from matplotlib.ticker import EngFormatter, MaxNLocator

    cols = min(len(tasks), 4)
    rows = -(-len(tasks) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.8 * rows), dpi=120, squeeze=False)
    for ax, task in zip(axes.flat, tasks, strict=False):
        for run_dir, records in runs.items():
            points = [r for r in records if r["task"] == task]
            if points:
                ax.plot(
                    [r["tokens"] for r in points],
                    [100 * r["value"] for r in points],
                    "o-",
                    label=run_dir.name,
                )
                metric = points[-1]["metric"]
        ax.xaxis.set_major_locator(MaxNLocator(4))
        ax.xaxis.set_major_formatter(EngFormatter())  # 50k, 1M, 1G tokens
        ax.set_title(f"{task} ({metric})", fontsize=9)
        ax.set_xlabel("tokens seen", fontsize=8)
        ax.set_ylabel("score (%)", fontsize=8)
        ax.grid(True, alpha=0.3)
    for ax in list(axes.flat)[len(tasks) :]:
        ax.axis("off")
    if len(run_dirs) > 1:
        axes.flat[0].legend(fontsize=7)
    fig.tight_layout()
    _save(fig, out)
    plt.close(fig)
    return out


def plot_loss(run_dirs: list[Path], out: Path) -> Path:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    for run_dir in run_dirs:
        records = read_metrics(run_dir)
        ax.plot([r["tokens"] for r in records], [r["loss"] for r in records], label=run_dir.name)
        held = [r for r in records if r.get("val_loss") is not None]
        if held:
            ax.plot(
                [r["tokens"] for r in held],
                [r["val_loss"] for r in held],
                "o--",
                label=f"{run_dir.name} (held out)",
            )
    ax.set_xlabel("tokens seen")
    ax.set_ylabel("training loss")
    ax.set_xscale("log")
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    _save(fig, out)
    plt.close(fig)
    return out
