"""`pasture eval` end to end: the paper's suite on stories260K, and broken inputs."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from pasture.eval.tasks import PAPER, TASKS

REPO = Path(__file__).resolve().parents[2]
SCORER = REPO / "tests" / "eval" / "fixtures" / "toxicity" / "keyword_scorer.py"


def _command(shared_data: Path, *args: str) -> list[str]:
    model = shared_data / "models" / "stories260K"
    return [
        sys.executable,
        "-m",
        "pasture.cli",
        "eval",
        "--checkpoint",
        str(model / "stories260K.bin"),
        "--tokenizer",
        str(model / "tok512.model"),
        *args,
    ]


# A 260K-parameter model: a second thread only adds synchronization.
ONE_THREAD = {**os.environ, "OMP_NUM_THREADS": "1"}


def _eval(shared_data: Path, *args: str) -> subprocess.CompletedProcess:
    cmd = _command(shared_data, *args)
    return subprocess.run(cmd, capture_output=True, text=True, env=ONE_THREAD, timeout=900)


@pytest.mark.slow
def test_paper_suite_on_stories260k_is_the_same_at_batch_sizes_7_and_1(
    shared_data: Path, tmp_path: Path
) -> None:
    """The paper's suite end to end, twice: at --batch-size 7 and 1 every task's JSON (every
    log-likelihood, generation, score and standard error) is the same to the last bit. It was
    not when a cached shared prefix (BoolQ's passages, MMLU's five shots) left a tail of fewer
    than 16 tokens: MKL multiplies so few rows with another kernel. --samples 1 keeps the run
    short; the T 0.1 samples of the code tasks still exercise seeded sampling."""
    runs, procs = {}, {}
    for batch in ("7", "1"):  # both at once, a thread each
        runs[batch] = tmp_path / f"batch-{batch}"
        args = ["--tasks", "paper", "--limit", "8", "--samples", "1", "--batch-size", batch]
        args += ["--data-dir", str(shared_data / "eval"), "--out", str(runs[batch])]
        args += ["--toxicity-command", f"{sys.executable} {SCORER}"]
        with (tmp_path / f"stderr-{batch}").open("w") as stderr:
            procs[batch] = subprocess.Popen(
                _command(shared_data, *args),
                stdout=subprocess.DEVNULL,
                stderr=stderr,
                env=ONE_THREAD,
            )
    try:
        for batch, proc in procs.items():
            proc.wait(timeout=900)
            assert proc.returncode == 0, (tmp_path / f"stderr-{batch}").read_text()[-3000:]
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
    out = runs["7"]
    lines = [json.loads(x) for x in (out / "results.jsonl").read_text().splitlines()]
    status = {line["task"]: line["status"] for line in lines}
    assert set(status) == set(PAPER)
    present = {
        name
        for name, task in TASKS.items()
        if all((shared_data / "eval" / f).exists() for f in task.files)
    }
    assert {n for n, s in status.items() if s == "ok"} == present
    assert {n for n, s in status.items() if s == "skipped"} == set(PAPER) - present
    assert {"hellaswag", "race_middle", "race_high", "triviaqa"} <= set(PAPER) - present
    for name in present:
        result, again = (json.loads((runs[b] / f"{name}.json").read_text()) for b in runs)
        assert result["n"] == (8 * 57 if name == "mmlu" else 8), name
        assert result["main"] in result["metrics"]
        for r in (result, again):
            del r["metrics"]["seconds"]
        assert json.dumps(result) == json.dumps(again), f"{name}: batch size changed a result"
    table = (out / "results.md").read_text()
    for title in ("Table 3", "Table 7", "Table 8", "Table 9", "Table 11", "Table 12", "Table 13"):
        assert f"## {title}" in table
    assert "| LLaMA 65B (paper) | 85.3 | 82.8 | 52.3 |" in table  # Table 3's BoolQ, PIQA, SIQA
    assert "`hellaswag`" in table.split("## Not evaluated")[1]


@pytest.mark.slow
def test_broken_inputs_are_reported_and_the_rest_still_runs(
    shared_data: Path, tmp_path: Path
) -> None:
    data = tmp_path / "eval"
    shutil.copytree(shared_data / "eval" / "siqa", data / "siqa")
    (data / "piqa").mkdir()
    (data / "piqa" / "valid.jsonl").write_text('{"goal": "a", "sol1": "b", "sol2": "c"}\n{oops\n')
    (data / "piqa" / "valid-labels.lst").write_text("0\n1\n")
    out = tmp_path / "out"
    done = _eval(
        shared_data,
        "--tasks",
        "piqa,arc_easy,siqa,no_such_task",
        "--limit",
        "5",
        "--data-dir",
        str(data),
        "--out",
        str(out),
    )
    assert done.returncode == 2
    err = done.stderr
    assert f"piqa: {data / 'piqa' / 'valid.jsonl'}:2: not JSON" in err
    assert f"arc_easy: {data / 'arc' / 'ARC-Easy-Test.jsonl'}: missing" in err
    assert "no_such_task: unknown task" in err
    assert err.strip().splitlines()[-1] == (
        "pasture: error: 3 task(s) failed (no_such_task, piqa, arc_easy); the others ran"
    )
    siqa = json.loads((out / "siqa.json").read_text())
    assert siqa["n"] == 5
    status = {
        line["task"]: line["status"]
        for line in map(json.loads, (out / "results.jsonl").read_text().splitlines())
    }
    assert status == {"siqa": "ok", "piqa": "error", "arc_easy": "error", "no_such_task": "error"}
    assert not list(out.glob("*.tmp"))


def test_results_never_follow_a_planted_temporary_name(tmp_path: Path) -> None:
    """The old writer opened ``results.md.tmp`` and followed a symlink planted there."""
    from pasture.eval.run import Outcome, write_summary

    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    out = tmp_path / "out"
    out.mkdir()
    for name in ("results.md", "results.jsonl"):
        (out / f"{name}.tmp").symlink_to(victim)
    write_summary(out, Outcome(skipped={"piqa": "missing"}))
    assert victim.read_text() == "keep me"
    assert "`piqa`: missing" in (out / "results.md").read_text()
    assert json.loads((out / "results.jsonl").read_text())["status"] == "skipped"
