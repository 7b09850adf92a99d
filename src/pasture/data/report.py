"""The build report: per source and stage, documents and bytes in/out and drops by reason;
tokens; and the paper's Table 1 (sampling proportion, epochs at the token budget, disk size)
for the data actually built. Written as ``report.json`` and ``report.md``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..errors import PastureError
from .document import StageStats
from .loader import mixture_report


def build_report(
    cfg: Any, jobs: list, shard_stats: list[dict], token_stats: list[dict], out: Path
) -> dict[str, Any]:
    sources: dict[str, dict[str, Any]] = {}
    for stats in shard_stats:
        entry = sources.setdefault(stats["source"], {"shards": 0, "documents": 0, "stages": {}})
        entry["shards"] += 1
        entry["documents"] += stats["documents"]
        for stage, numbers in stats["stages"].items():
            entry["stages"].setdefault(stage, StageStats()).merge(numbers)
    for stats in token_stats:
        entry = sources[stats["source"]]
        entry["tokens"] = entry.get("tokens", 0) + stats["num_tokens"]
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
    tokens = {name: sources[name]["tokens"] for name in built}
    disk = {name: sources[name]["text_bytes"] for name in built}
    table, _ = mixture_report(tokens, built, cfg.token_budget, disk)
    for row in table:
        row["token_shard_bytes"] = sources[row["source"]]["token_shard_bytes"]
    return {
        "token_budget": cfg.token_budget,
        "sources": sources,
        "table1": table,
        "empty_sources": empty,
    }


def _final_bytes(stages: dict[str, dict]) -> int:
    last = list(stages.values())[-1] if stages else {"bytes_out": 0}
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
        f"{report['token_budget']:.3g} tokens.\n",
        "| Dataset | Sampling prop. | Epochs | Disk size (text) | Tokens | Token shards |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for row in report["table1"]:
        lines.append(
            f"| {row['source']} | {100 * row['sampling_proportion']:.1f}% | "
            f"{row['epochs']:,.2f} | {_size(row['disk_bytes'])} | {row['tokens']:,} | "
            f"{_size(row['token_shard_bytes'])} |"
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
    for name, text in (
        ("report.json", json.dumps(report, indent=2)),
        ("report.md", to_markdown(report)),
    ):
        tmp = out / f".{name}.tmp"
        tmp.write_text(text)
        tmp.replace(out / name)
