"""Code generation (paper §3.5, Table 8): HumanEval and MBPP, scored by pass@k.

    pasture eval --checkpoint out-hf --tasks humaneval,mbpp --samples 10 --limit 20

Tasks:

- ``humaneval`` (Chen et al. 2021; ``humaneval/HumanEval.jsonl.gz``, 164 problems), zero-shot.
  The prompt is the problem's ``prompt`` field (signature and docstring); the completion is cut
  at the first of Codex's stop sequences ``\\nclass \\ndef \\n# \\nif \\nprint``; the program run
  is ``prompt + completion + "\\n" + test + "\\n" + f"check({entry_point})"``, as in
  human-eval's ``execution.py``.
- ``mbpp`` (Austin et al. 2021; ``mbpp/mbpp.jsonl``), the 500 test problems (task_id 11-510),
  three-shot with task_ids 2, 3 and 4 as the examples, as in the MBPP paper and
  lm-evaluation-harness: each example is ``"You are an expert Python programmer, and here is
  your task: {text} Your code should pass these tests:\\n\\n{tests}\\n[BEGIN]\\n{code}\\n[DONE]"``
  (tests one per line, code as published, with its CRLF line ends), examples joined by a blank
  line, and the problem's own block ends after ``[BEGIN]\\n``. The completion is cut at
  ``[DONE]``; the program run is ``completion + "\\n" + test_setup_code + "\\n" + tests`` (the
  setup code uses names the solution defines). ``--shots`` 0-3 takes the first examples.

Sampling (paper §3.5, after Chen et al. 2021): pass@1 from samples drawn at temperature 0.1,
pass@k for larger k (Table 8: pass@100 for HumanEval, pass@80 for MBPP) from samples at
temperature 0.8, nucleus top-p 0.95 in both, each estimated without bias from n samples per
problem (``pass_at_k``). ``--samples n`` sets n for both temperatures; the default,
``DEFAULT_SAMPLES``, is sized for a CPU. pass@k is reported for k = 10 and the paper's k where
k <= n, and for k = n; the paper's pass@100 needs ``--samples 100`` or more (Chen et al. used
200). Each sample's seed depends only on (--seed, problem, temperature, sample index).

Every program runs in ``pasture.eval.sandbox`` (one process each, own uid, no network, a
read-only view of the filesystem, CPU/wall/memory/process limits); a program passes when it
exits with status 0. The result's notes say which containment held and how the programs ended.
"""

from __future__ import annotations

import hashlib
import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ...errors import PastureError
from ..lm import GenerationRequest, LanguageModel, Sampling
from ..sandbox import Limits, SandboxResult, containment, run_programs, uncontained
from ..scoring import bootstrap_stderr, mean
from ..task import (
    EvalSettings,
    Task,
    TaskDataError,
    TaskResult,
    TaskUnavailable,
    field_of,
    limited,
    read_jsonl,
    task_file,
)

SECTION = "code"
HUMANEVAL_FILE = "humaneval/HumanEval.jsonl.gz"
MBPP_FILE = "mbpp/mbpp.jsonl"
HUMANEVAL_STOP = ("\nclass", "\ndef", "\n#", "\nif", "\nprint")
MBPP_STOP = ("[DONE]",)
MBPP_SHOT_IDS = (2, 3, 4)
MBPP_TEST_IDS = range(11, 511)
PASS1_TEMPERATURE, PASSK_TEMPERATURE, TOP_P = 0.1, 0.8, 0.95
DEFAULT_SAMPLES = 2
MAX_NEW_TOKENS = 512
LIMITS = Limits(timeout_s=10.0)


@dataclass(frozen=True)
class Problem:
    """What the model is shown (``prompt``) and how its completion becomes a program."""

    id: str
    prompt: str
    prefix: str  # the program is prefix + completion + suffix
    suffix: str
    reference: str  # a completion known to pass (canonical solution, reference code)

    def program(self, completion: str) -> str:
        return self.prefix + completion + self.suffix


def pass_at_k(n: int, c: int, k: int) -> float:
    """Chen et al. (2021)'s unbiased pass@k from n samples of which c pass:
    1 - C(n-c, k) / C(n, k), computed as a product so that no binomial overflows."""
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"pass@k needs 0 <= c <= n and 1 <= k <= n, got n={n} c={c} k={k}")
    if n - c < k:  # every draw of k samples holds a passing one
        return 1.0
    return 1.0 - math.prod(1.0 - k / i for i in range(n - c + 1, n + 1))


# -- HumanEval --------------------------------------------------------------------------------


def read_humaneval(path: Path) -> list[Problem]:
    problems = []
    for number, record in read_jsonl(path):
        where = f"{path}:{number}"
        prompt = field_of(record, "prompt", where)
        entry_point = field_of(record, "entry_point", where)
        test = field_of(record, "test", where)
        problems.append(
            Problem(
                id=field_of(record, "task_id", where),
                prompt=prompt,
                prefix=prompt,
                suffix="\n" + test + "\n" + f"check({entry_point})",
                reference=field_of(record, "canonical_solution", where),
            )
        )
    return problems


# -- MBPP -------------------------------------------------------------------------------------


def read_mbpp(path: Path) -> dict[int, dict[str, Any]]:
    """Records by task_id, each checked for the fields the task uses."""
    records = {}
    for number, record in read_jsonl(path):
        where = f"{path}:{number}"
        for key in ("text", "code", "test_setup_code"):
            field_of(record, key, where)
        tests = field_of(record, "test_list", where, list)
        if not tests or not all(isinstance(t, str) for t in tests):
            raise TaskDataError(f"{where}: field 'test_list' must be a non-empty list of strings")
        records[field_of(record, "task_id", where, int)] = record
    return records


def mbpp_block(record: dict[str, Any], with_code: bool) -> str:
    """One example (with its code and [DONE]) or the problem itself (up to [BEGIN])."""
    tests = "\n".join(record["test_list"])
    block = (
        f"You are an expert Python programmer, and here is your task: {record['text']} "
        f"Your code should pass these tests:\n\n{tests}\n[BEGIN]\n"
    )
    return block + f"{record['code']}\n[DONE]" if with_code else block


def mbpp_problems(
    records: dict[int, dict[str, Any]], shots: int = len(MBPP_SHOT_IDS)
) -> list[Problem]:
    if not 0 <= shots <= len(MBPP_SHOT_IDS):
        raise TaskDataError(f"mbpp takes 0 to {len(MBPP_SHOT_IDS)} shots, not {shots}")
    missing = [i for i in (*MBPP_SHOT_IDS, *MBPP_TEST_IDS) if i not in records]
    if missing:
        raise TaskDataError(f"mbpp: task_ids {missing[:5]} missing (expected 974 problems)")
    examples = [mbpp_block(records[i], with_code=True) for i in MBPP_SHOT_IDS[:shots]]
    problems = []
    for task_id in MBPP_TEST_IDS:
        record = records[task_id]
        tests = "\n".join(record["test_list"])
        problems.append(
            Problem(
                id=f"mbpp/{task_id}",
                prompt="\n\n".join([*examples, mbpp_block(record, with_code=False)]),
                prefix="",
                suffix="\n" + record["test_setup_code"] + "\n" + tests + "\n",
                reference=record["code"],
            )
        )
    return problems


# -- generation and scoring -------------------------------------------------------------------


def sample_seed(seed: int, problem_id: str, temperature: float, index: int) -> int:
    digest = hashlib.sha256(f"{seed}:{problem_id}:{temperature}:{index}".encode()).digest()
    return int.from_bytes(digest[:4], "little")


def generate(
    lm: LanguageModel,
    problems: Sequence[Problem],
    stop: tuple[str, ...],
    temperature: float,
    n: int,
    seed: int,
) -> list[list[str]]:
    """n completions of each problem."""
    requests = [
        GenerationRequest(
            p.prompt,
            stop,
            Sampling(
                max_new_tokens=MAX_NEW_TOKENS,
                temperature=temperature,
                top_p=TOP_P,
                seed=sample_seed(seed, p.id, temperature, j),
            ),
        )
        for p in problems
        for j in range(n)
    ]
    flat = lm.generate_until(requests)
    return [flat[i * n : (i + 1) * n] for i in range(len(problems))]


def execute(
    problems: Sequence[Problem],
    completions: Sequence[Sequence[str]],
    limits: Limits = LIMITS,
    workers: int | None = None,
) -> list[list[SandboxResult]]:
    """Run every completion's program in the sandbox; results shaped as ``completions``."""
    programs = [p.program(c) for p, cs in zip(problems, completions, strict=True) for c in cs]
    flat = run_programs(programs, limits, workers)
    retry = [i for i, r in enumerate(flat) if r.status == "error"]  # the sandbox's, once more
    retried = run_programs([programs[i] for i in retry], limits, workers)
    for i, r in zip(retry, retried, strict=True):
        flat[i] = r
    errors = [r for r in flat if r.status == "error"]
    if errors:
        raise PastureError(
            f"the sandbox could not run {len(errors)} program(s): {errors[0].stderr}"
        )
    out, at = [], 0
    for cs in completions:
        out.append(flat[at : at + len(cs)])
        at += len(cs)
    return out


def pass_at_ks(results: Sequence[Sequence[SandboxResult]], ks: Sequence[int]) -> dict[int, float]:
    """Mean over problems of each unbiased pass@k."""
    counts = [(len(rs), sum(r.passed for r in rs)) for rs in results]
    return {k: mean([pass_at_k(n, c, k) for n, c in counts]) for k in ks}


def code_task_result(
    name: str,
    lm: LanguageModel,
    settings: EvalSettings,
    problems: Sequence[Problem],
    stop: tuple[str, ...],
    paper_k: int,
    shots: int,
) -> TaskResult:
    try:
        layers = containment()  # fail here, before generating, rather than score every program 0
    except RuntimeError as e:
        raise PastureError(f"{name}: {e}") from None
    reach = uncontained(layers)
    if reach and not settings.allow_uncontained_code:
        raise TaskUnavailable(
            f"{name}: refused: the sandbox here cannot keep model-written programs from "
            f"{' or '.join(reach)} (it holds: {', '.join(layers)}; containing them needs root "
            "with CAP_SYS_ADMIN, unprivileged user namespaces, or Landlock and seccomp); "
            "--allow-uncontained-code runs them anyway, with that access to this machine"
        )
    n = settings.samples or DEFAULT_SAMPLES
    problems = limited(problems, settings)
    runs = {PASS1_TEMPERATURE: [1]}
    if n > 1:
        runs[PASSK_TEMPERATURE] = sorted({k for k in (10, paper_k) if k < n} | {n})
    metrics: dict[str, float] = {}
    stderr: dict[str, float] = {}
    records: list[dict[str, Any]] = [{"id": p.id} for p in problems]
    statuses: Counter[str] = Counter()
    for temperature, ks in runs.items():
        completions = generate(lm, problems, stop, temperature, n, settings.seed)
        results = execute(problems, completions)
        for k, value in pass_at_ks(results, ks).items():
            metrics[f"pass@{k}"] = value
        if temperature == PASS1_TEMPERATURE:
            per_problem = [pass_at_k(len(rs), sum(r.passed for r in rs), 1) for rs in results]
            stderr["pass@1"] = bootstrap_stderr(per_problem)
        for record, cs, rs in zip(records, completions, results, strict=True):
            record[f"t{temperature}"] = [
                {"completion": c, "status": r.status, "stderr": r.stderr[-500:]}
                for c, r in zip(cs, rs, strict=True)
            ]
            record[f"passed_t{temperature}"] = sum(r.passed for r in rs)
            statuses.update(r.status for r in rs)
    notes = (
        f"n={n} samples per problem at temperature {PASS1_TEMPERATURE} (pass@1)"
        + (f" and {PASSK_TEMPERATURE} (pass@k)" if n > 1 else "")
        + f", top-p {TOP_P}; programs: {dict(sorted(statuses.items()))};"
        + f" sandbox: {', '.join(layers)}"
        + (f"; NOT CONTAINED: {', '.join(reach)} (--allow-uncontained-code)" if reach else "")
    )
    return TaskResult(name, "pass@1", metrics, stderr, records, shots, notes)


def run_humaneval(lm: LanguageModel, settings: EvalSettings) -> TaskResult:
    problems = read_humaneval(task_file(settings, HUMANEVAL_FILE))
    return code_task_result("humaneval", lm, settings, problems, HUMANEVAL_STOP, 100, 0)


def run_mbpp(lm: LanguageModel, settings: EvalSettings) -> TaskResult:
    shots = len(MBPP_SHOT_IDS) if settings.shots is None else settings.shots
    problems = mbpp_problems(read_mbpp(task_file(settings, MBPP_FILE)), shots)
    return code_task_result("mbpp", lm, settings, problems, MBPP_STOP, 80, shots)


TASKS: list[Task] = [
    Task(
        "humaneval",
        SECTION,
        (HUMANEVAL_FILE,),
        run_humaneval,
        "HumanEval, 164 Python problems, zero-shot, pass@1 (T 0.1) and pass@k (T 0.8)",
    ),
    Task(
        "mbpp",
        SECTION,
        (MBPP_FILE,),
        run_mbpp,
        "MBPP test (task_id 11-510), three-shot, pass@1 (T 0.1) and pass@k (T 0.8)",
    ),
]
