"""``pasture plot RUN_DIR [RUN_DIR …]``: training loss against tokens seen, like Figure 1 of
the paper, from each run's ``metrics.jsonl``; written to ``RUN_DIR/loss.png`` (or ``--out``)."""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import PastureError


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


def plot_loss(run_dirs: list[Path], out: Path) -> Path:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise PastureError("plotting needs matplotlib: pip install 'pasture[plot]'") from None
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
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    tmp.replace(out)
    return out
