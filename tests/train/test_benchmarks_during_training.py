"""Benchmarks scored while training (the paper's Figure 2), and the figure itself."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pasture.cli import main
from pasture.errors import PastureError
from pasture.train.config import TrainConfig, load_train_config
from pasture.train.loop import train

REPO = Path(__file__).resolve().parents[2]
SMALL = [
    "data.corpus_bytes=400000",
    "data.vocab_size=600",
    "metrics.log_every=1",
    "optim.warmup_steps=2",
    "eval_every=0",
    "metrics.tensorboard=false",
]


def _config(run_dir: Path, overrides: list[str], *settings: str) -> TrainConfig:
    settings = (*SMALL, *overrides, f"run_dir={run_dir}", "checkpoint.every=1000", *settings)
    return load_train_config(REPO / "configs" / "train" / "debug.toml", list(settings))


@pytest.mark.slow
def test_benchmarks_every_n_steps_leave_training_unchanged(tmp_path: Path, shared_data) -> None:
    bench = [
        'benchmarks.tasks=["arc_easy", "piqa"]',
        "benchmarks.every=3",
        "benchmarks.limit=6",
        f"benchmarks.data_dir={shared_data / 'eval'}",
    ]
    plain, scored = tmp_path / "plain", tmp_path / "scored"
    train(_config(plain, [], "steps=7"))
    train(_config(scored, bench, "steps=7"))

    def losses(run: Path) -> list[float]:
        return [json.loads(x)["loss"] for x in (run / "metrics.jsonl").read_text().splitlines()]

    assert losses(plain) == losses(scored)  # scoring neither trains nor draws random numbers
    rows = [json.loads(x) for x in (scored / "benchmarks.jsonl").read_text().splitlines()]
    assert [(r["step"], r["task"]) for r in rows] == [
        (s, t) for s in (3, 6, 7) for t in ("arc_easy", "piqa")
    ]
    assert all(r["n"] == 6 and 0.0 <= r["value"] <= 1.0 for r in rows)
    assert {r["metric"] for r in rows} == {"acc_char"}
    assert rows[-1]["tokens"] == 7 * 4096

    assert main(["plot", str(scored)]) == 0
    png = scored / "benchmarks.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and (scored / "loss.png").is_file()


def test_unknown_benchmark_or_missing_file_fails_before_training(tmp_path: Path) -> None:
    cfg = _config(tmp_path / "a", ['benchmarks.tasks=["nope"]', "benchmarks.every=1"], "steps=5")
    with pytest.raises(PastureError, match="unknown task.*nope"):
        train(cfg)
    cfg = _config(
        tmp_path / "b",
        ['benchmarks.tasks=["piqa"]', "benchmarks.every=1", f"benchmarks.data_dir={tmp_path}"],
        "steps=5",
    )
    with pytest.raises(PastureError, match="piqa.*valid.jsonl: missing"):
        train(cfg)
    assert not (tmp_path / "a" / "metrics.jsonl").exists()
