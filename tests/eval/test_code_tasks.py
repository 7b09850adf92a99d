"""HumanEval and MBPP: the pass@k estimator, the published files, prompts, programs run in the
sandbox (reference solutions pass, wrong ones fail) and the task wired to the model contract."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import pytest

from pasture.eval.lm import GenerationRequest
from pasture.eval.task import EvalSettings, TaskDataError
from pasture.eval.tasks import code
from pasture.eval.tasks.code import (
    HUMANEVAL_FILE,
    HUMANEVAL_STOP,
    MBPP_FILE,
    Problem,
    execute,
    mbpp_problems,
    pass_at_k,
    read_humaneval,
    read_mbpp,
)


@pytest.fixture(scope="module")
def eval_data(shared_data: Path) -> Path:
    return shared_data / "eval"


@pytest.fixture(scope="module")
def humaneval(eval_data: Path) -> list[Problem]:
    return read_humaneval(eval_data / HUMANEVAL_FILE)


@pytest.fixture(scope="module")
def mbpp_records(eval_data: Path) -> dict:
    return read_mbpp(eval_data / MBPP_FILE)


# -- pass@k -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("n", "c", "k", "expected"),
    [
        (5, 1, 1, 0.2),
        (10, 0, 1, 0.0),
        (10, 0, 5, 0.0),
        (7, 7, 1, 1.0),
        (7, 7, 7, 1.0),
        (4, 2, 2, 1 - 1 / 6),  # C(2,2)/C(4,2) = 1/6
        (10, 3, 1, 0.3),  # pass@1 is the fraction that passes
        (6, 4, 3, 1.0),  # n - c < k: every draw of 3 holds a passing sample
        (5, 2, 2, 1 - 3 / 10),  # C(3,2)/C(5,2)
    ],
)
def test_pass_at_k_hand_checked(n: int, c: int, k: int, expected: float) -> None:
    assert pass_at_k(n, c, k) == pytest.approx(expected, abs=1e-12)


def test_pass_at_k_equals_the_binomial_form() -> None:
    for n in range(1, 30):
        for c in range(n + 1):
            for k in range(1, n + 1):
                exact = 1 - math.comb(n - c, k) / math.comb(n, k)
                assert pass_at_k(n, c, k) == pytest.approx(exact, abs=1e-12)
    # large n, where the binomials themselves would overflow a float
    assert pass_at_k(2000, 1, 100) == pytest.approx(100 / 2000)
    assert 0 < pass_at_k(2000, 3, 1000) < 1


def test_pass_at_k_rejects_impossible_counts() -> None:
    for n, c, k in [(5, 6, 1), (5, -1, 1), (5, 1, 0), (5, 1, 6)]:
        with pytest.raises(ValueError):
            pass_at_k(n, c, k)


# -- HumanEval --------------------------------------------------------------------------------


def test_humaneval_reads_the_published_file(humaneval: list[Problem]) -> None:
    assert len(humaneval) == 164
    assert [p.id for p in humaneval[:2]] == ["HumanEval/0", "HumanEval/1"]
    first = humaneval[0]
    assert first.prompt.startswith("from typing import List\n\n\ndef has_close_elements(")
    program = first.program("    return False\n")
    assert program.startswith(first.prompt + "    return False\n\n")
    assert program.endswith("\ncheck(has_close_elements)")
    assert "def check(candidate):" in program


@pytest.mark.slow
def test_humaneval_canonical_solutions_pass_and_wrong_ones_fail(
    humaneval: list[Problem],
) -> None:
    sample = humaneval[::10]
    wrong = ["    return None\n", "    raise NotImplementedError\n"]
    results = execute(sample, [[p.reference, *wrong] for p in sample])
    for problem, (reference, *failures) in zip(sample, results, strict=True):
        assert reference.passed, (problem.id, reference.stderr)
        assert not any(r.passed for r in failures), problem.id


# -- MBPP -------------------------------------------------------------------------------------


def test_mbpp_test_split_and_prompt(mbpp_records: dict) -> None:
    problems = mbpp_problems(mbpp_records)
    assert len(problems) == 500
    assert problems[0].id == "mbpp/11" and problems[-1].id == "mbpp/510"
    prompt = problems[0].prompt
    assert prompt.count("You are an expert Python programmer, and here is your task: ") == 4
    assert prompt.count("\n[DONE]\n\nYou are an expert Python programmer") == 3
    shot = mbpp_records[2]
    assert prompt.startswith(
        f"You are an expert Python programmer, and here is your task: {shot['text']} "
        "Your code should pass these tests:\n\n"
        + "\n".join(shot["test_list"])
        + f"\n[BEGIN]\n{shot['code']}\n[DONE]\n\n"
    )
    own = mbpp_records[11]
    assert prompt.endswith(
        f"here is your task: {own['text']} Your code should pass these tests:\n\n"
        + "\n".join(own["test_list"])
        + "\n[BEGIN]\n"
    )
    assert mbpp_problems(mbpp_records, shots=0)[0].prompt.count("[BEGIN]") == 1
    with pytest.raises(TaskDataError):
        mbpp_problems(mbpp_records, shots=4)


@pytest.mark.slow
def test_mbpp_reference_code_passes_and_wrong_code_fails(mbpp_records: dict) -> None:
    problems = mbpp_problems(mbpp_records)
    # every 25th problem, and the one whose test setup code uses the solution's class
    sample = problems[::25] + [
        p for p in problems if mbpp_records[int(p.id[5:])]["test_setup_code"]
    ]
    assert len(sample) == 21
    results = execute(sample, [[p.reference, "def f():\n    pass\n"] for p in sample])
    for problem, (reference, wrong) in zip(sample, results, strict=True):
        assert reference.passed, (problem.id, reference.stderr)
        assert not wrong.passed and wrong.status == "failed", problem.id


# -- the task on the model contract -----------------------------------------------------------


class ScriptedModel:
    """Answers every request with the reference solution for even-numbered problems and a
    wrong one for the others; records what it was asked."""

    def __init__(self, problems: Sequence[Problem]) -> None:
        self.by_prompt = {p.prompt: (i, p.reference) for i, p in enumerate(problems)}
        self.requests: list[GenerationRequest] = []

    def loglikelihood(self, requests):  # pragma: no cover - not used by code tasks
        raise AssertionError("code tasks only generate")

    def loglikelihood_rolling(self, texts):  # pragma: no cover
        raise AssertionError("code tasks only generate")

    def generate_until(self, requests: Sequence[GenerationRequest]) -> list[str]:
        self.requests += requests
        out = []
        for r in requests:
            index, reference = self.by_prompt[r.context]
            out.append(reference if index % 2 == 0 else "    return 0\n")
        return out


@pytest.mark.slow
def test_humaneval_task_on_the_contract(humaneval: list[Problem], eval_data: Path) -> None:
    model = ScriptedModel(humaneval)
    settings = EvalSettings(data_dir=eval_data, limit=4, samples=3, seed=7)
    result = code.run_humaneval(model, settings)
    assert result.main == "pass@1" and result.shots == 0
    assert result.metrics == {"pass@1": 0.5, "pass@3": 0.5}
    assert len(result.records) == 4 and result.records[0]["passed_t0.1"] == 3
    assert "own-uid" in result.notes or "rlimits" in result.notes
    requests = model.requests
    assert len(requests) == 4 * 3 * 2
    assert {r.stop for r in requests} == {HUMANEVAL_STOP}
    assert {r.sampling.temperature for r in requests} == {0.1, 0.8}
    assert {r.sampling.top_p for r in requests} == {0.95}
    seeds = [r.sampling.seed for r in requests]
    assert len(set(seeds)) == len(seeds)  # every sample draws differently
    again = ScriptedModel(humaneval)
    code.generate(again, humaneval[1:2], HUMANEVAL_STOP, 0.1, 3, seed=7)
    assert [r.sampling.seed for r in again.requests] == seeds[3:6]  # not tied to --limit


def test_mbpp_task_on_the_contract(mbpp_records: dict, eval_data: Path) -> None:
    model = ScriptedModel(mbpp_problems(mbpp_records))
    result = code.run_mbpp(model, EvalSettings(data_dir=eval_data, limit=4, samples=1))
    assert result.shots == 3
    assert result.metrics == {"pass@1": 0.5}  # one sample: no temperature-0.8 run
    assert {r.stop for r in model.requests} == {("[DONE]",)}
    assert len(model.requests) == 4


NO_LANDLOCK = """\
import json, sys
from pathlib import Path
from pasture.eval import sandbox
from pasture.eval.task import EvalSettings, TaskUnavailable
from pasture.eval.tasks import code

# A kernel or container without Landlock: its system calls fail with ENOSYS, for real.
libc = sandbox._libc()
assert libc.prctl(38, 1, 0, 0, 0) == 0  # no_new_privs, which seccomp needs
assert sandbox._seccomp(libc, ["landlock_create_ruleset"], errno=38)


class Solver:
    def generate_until(self, requests):
        return ["    return 0\\n" for _ in requests]


report = {}
settings = EvalSettings(data_dir=Path(sys.argv[1]), limit=1, samples=1)
try:
    code.run_humaneval(Solver(), settings)
except TaskUnavailable as e:
    report["refused"] = str(e)
allowed = EvalSettings(data_dir=Path(sys.argv[1]), limit=1, samples=1, allow_uncontained_code=True)
report["notes"] = code.run_humaneval(Solver(), allowed).notes
print(json.dumps(report))
"""


@pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("setpriv") is None,
    reason="dropping CAP_SYS_ADMIN needs root and setpriv (util-linux)",
)
@pytest.mark.slow
def test_code_tasks_refuse_a_sandbox_that_cannot_contain_writes(eval_data: Path) -> None:
    """Root without CAP_SYS_ADMIN and without Landlock: generated code could write anywhere
    world-writable, so code tasks refuse unless the user opts in by name."""
    done = subprocess.run(
        ["setpriv", "--bounding-set", "-sys_admin", sys.executable, "-c", NO_LANDLOCK]
        + [str(eval_data)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout)
    refused = report["refused"]
    assert refused.startswith("humaneval: refused: ") and "\n" not in refused
    assert "writes outside its working directory" in refused and "the network" not in refused
    assert "--allow-uncontained-code" in refused
    assert "NOT CONTAINED: writes outside" in report["notes"]


def test_tasks_are_listed() -> None:
    names = {t.name: t for t in code.TASKS}
    assert set(names) == {"humaneval", "mbpp"}
    assert names["humaneval"].files == (HUMANEVAL_FILE,)
    assert names["mbpp"].files == (MBPP_FILE,)
