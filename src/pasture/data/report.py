"""The build report: per source and stage, documents and bytes in/out and drops by reason;
tokens; and the paper's Table 1 (sampling proportion, epochs at the token budget, disk size)
for the data actually built. Written as ``report.json`` and ``report.md``."""

from __future__ import annotations

import json
import logging
from collections import Counter
from pathlib import Path
from typing import Any

from ..errors import PastureError
from ..files import write_text
from .document import StageStats
from .loader import mixture_report

log = logging.getLogger("pasture.data")


def build_report(
    cfg: Any,
    jobs: list,
    shard_stats: list[dict],
    token_stats: list[dict],
    out: Path,
    skipped_inputs: dict[str, Counter] | None = None,
) -> dict[str, Any]:
    sources: dict[str, dict[str, Any]] = {}
    # Inputs never read (links out of the input root, loops): a stage of their own, first.
    for name, reasons in (skipped_inputs or {}).items():
        entry = sources.setdefault(name, {"shards": 0, "documents": 0, "stages": {}})
        entry["stages"]["inputs"] = StageStats(dropped=Counter(reasons))
    for stats in shard_stats:
        entry = sources.setdefault(stats["source"], {"shards": 0, "documents": 0, "stages": {}})
        entry["shards"] += 1
        entry["documents"] += stats["documents"]
        for stage, numbers in stats["stages"].items():
            entry["stages"].setdefault(stage, StageStats()).merge(numbers)
    for stats in token_stats:
        entry = sources[stats["source"]]
        entry["tokens"] = entry.get("tokens", 0) + stats["num_tokens"]
    order = list(cfg.mixture) + sorted(set(sources) - set(cfg.mixture))
    sources = {name: sources[name] for name in order if name in sources}
    for entry in sources.values():
        entry.setdefault("tokens", 0)
    for name, entry in sources.items():
        entry["stages"] = {stage: s.to_dict() for stage, s in entry["stages"].items()}
        shard_files = sorted((out / "tokens" / name).glob("*.bin"))
        entry["token_shard_bytes"] = sum(p.stat().st_size for p in shard_files)
        entry["text_bytes"] = _final_bytes(entry["stages"])
    # A source whose filters kept nothing cannot be sampled: it leaves the table, named.
    built = {n: w for n, w in cfg.mixture.items() if sources.get(n, {}).get("tokens", 0) > 0}
    empty = [n for n, w in cfg.mixture.items() if w > 0 and n not in built]
    if not built:
        raise PastureError(f"{out}: no source produced any tokens; nothing to mix")
    for name in empty:
        log.warning(
            "%s: no documents left (%s); it is sampled at 0%% and the other sources' "
            "proportions grow to fill its %.1f%% (report.md, Table 1)",
            name,
            _why_empty(sources.get(name)),
            100 * cfg.mixture[name] / sum(w for w in cfg.mixture.values() if w > 0),
        )
    tokens = {name: sources[name]["tokens"] for name in built}
    disk = {name: sources[name]["text_bytes"] for name in built}
    rows, _ = mixture_report(tokens, built, cfg.token_budget, disk)
    by_name = {row["source"]: row for row in rows}
    configured = sum(w for w in cfg.mixture.values() if w > 0)
    table = []
    # Every source the mixture asks for has a row, an empty one too: the proportions the
    # loader will use next to the ones configured, so that a renormalisation is visible.
    for name, weight in cfg.mixture.items():
        if weight <= 0:
            continue
        row = by_name.get(name) or {
            "source": name,
            "sampling_proportion": 0.0,
            "epochs": None,
            "tokens": 0,
            "disk_bytes": 0,
            "empty": _why_empty(sources.get(name)),
        }
        row["configured_proportion"] = weight / configured
        row["token_shard_bytes"] = sources.get(name, {}).get("token_shard_bytes", 0)
        table.append(row)
    return {
        "token_budget": cfg.token_budget,
        "sources": sources,
        "table1": table,
        "empty_sources": empty,
    }


def _why_empty(entry: dict[str, Any] | None) -> str:
    if not entry or not entry["shards"]:
        return "no input files"
    drops: Counter = Counter()
    for stage in entry["stages"].values():
        drops.update(stage["dropped"])
    top = ", ".join(f"{reason} {n:,}" for reason, n in drops.most_common(3))
    return f"dropped: {top}" if top else "its inputs held no documents"


def _final_bytes(stages: dict[str, dict]) -> int:
    ran = [s for name, s in stages.items() if name != "inputs"]
    last = ran[-1] if ran else {"bytes_out": 0}
    return last["bytes_out"]


def _size(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1000:
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1000
    return f"{n:.1f} PB"


def to_markdown(report: dict[str, Any]) -> str:
    lines = [
        f"# Data build report\n\nTable 1 for the data built here, at a budget of "
        f"{report['token_budget']:.3g} tokens. *Configured* is the mixture asked for; "
        "*Sampling prop.* is what training samples, renormalized over the sources that have "
        "tokens.\n",
        "| Dataset | Sampling prop. | Configured | Epochs | Disk size (text) | Tokens | "
        "Token shards |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for row in report["table1"]:
        empty = "empty" in row
        sampled = f"{100 * row['sampling_proportion']:.1f}%" + (" **(empty)**" if empty else "")
        epochs = "–" if row["epochs"] is None else f"{row['epochs']:,.2f}"
        lines.append(
            f"| {row['source']} | {sampled} | {100 * row['configured_proportion']:.1f}% | "
            f"{epochs} | {_size(row['disk_bytes'])} | {row['tokens']:,} | "
            f"{_size(row['token_shard_bytes'])} |"
        )
    for name in report.get("empty_sources", []):
        why = _why_empty(report["sources"].get(name))
        lines.append(
            f"\n**Warning: {name} is empty** ({why}): it is sampled at 0%, and the other "
            "sources' proportions are scaled up to fill its share (compare the two columns)."
        )
    lines.append("\n## Stages\n")
    lines.append("| source | stage | docs in | docs out | bytes in | bytes out | dropped |")
    lines.append("|---|---|---|---|---|---|---|")
    for name, entry in report["sources"].items():
        for stage, s in entry["stages"].items():
            dropped = ", ".join(f"{reason} {n}" for reason, n in s["dropped"].items()) or "–"
            lines.append(
                f"| {name} | {stage} | {s['docs_in']:,} | {s['docs_out']:,} | "
                f"{_size(s['bytes_in'])} | {_size(s['bytes_out'])} | {dropped} |"
            )
    return "\n".join(lines) + "\n"


def write_report(report: dict[str, Any], out: Path) -> None:
    write_text(out / "report.json", json.dumps(report, indent=2))
    write_text(out / "report.md", to_markdown(report))
