"""GSM8K and MATH: answer extraction and Minerva's normalization on known strings, gold answers
from the published files, prompts, majority voting, seeds, malformed records, and both tasks end
to end on stories260K (sampled maj1@k the same at every batch size)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import pytest

from pasture import load_model
from pasture.eval import EvalSettings, PastureLM
from pasture.eval.lm import GenerationRequest
from pasture.eval.task import TaskDataError
from pasture.eval.tasks import TASKS
from pasture.eval.tasks import math as m
from pasture.eval.tasks.math import (
    canonical_number,
    gsm8k_answer,
    gsm8k_prompt,
    last_boxed,
    majority_vote,
    math_answer,
    math_prompt,
    normalize_final_answer,
    read_gsm8k,
    read_math,
)


@pytest.fixture(scope="module")
def eval_data(shared_data: Path) -> Path:
    return shared_data / "eval"


@pytest.fixture(scope="module")
def model(shared_data: Path):
    d = shared_data / "models" / "stories260K"
    return load_model(d / "stories260K.bin", tokenizer=d / "tok512.model")


class FakeLM:
    """Answers each request with ``answer(request)``; remembers the requests."""

    def __init__(self, answer) -> None:
        self.answer = answer
        self.requests: list[GenerationRequest] = []

    def generate_until(self, requests: Sequence[GenerationRequest]) -> list[str]:
        self.requests += requests
        return [self.answer(r) for r in requests]


def test_tasks_are_listed() -> None:
    assert [n for n, t in TASKS.items() if t.section == "math"] == ["math", "gsm8k"]


# -- GSM8K answers ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("generation", "answer"),
    [
        ("So 16 - 3 - 4 = 9, and 9 * 2 = 18. The answer is 18.", "18"),
        ("The answer is 1,234.", "1234"),
        ("The answer is $18.00.", "18"),
        ("The answer is $ 7", "7"),
        ("The answer is -3.", "-3"),
        ("The answer is 0.50 dollars.", "0.5"),
        ("The answer is 5. The answer is 6.", "5"),  # the first one
        ("So she has 8 dollars left.", None),
        ("The answer is five.", None),
        ("the answer is 5.", None),  # the exemplars' words exactly
    ],
)
def test_gsm8k_answer(generation: str, answer: str | None) -> None:
    assert gsm8k_answer(generation) == answer


def test_canonical_number() -> None:
    assert canonical_number("70,000") == "70000"
    assert canonical_number("100") == "100"  # no exponent
    assert canonical_number("-0.0") == "0"
    assert canonical_number("3.1400") == "3.14"
    assert canonical_number("1e3") == "1000"
    assert canonical_number("") is None and canonical_number("12x") is None
    assert canonical_number("nan") is None


def test_gsm8k_gold_answers(eval_data: Path) -> None:
    problems = read_gsm8k(eval_data / m.GSM8K_FILE)
    assert len(problems) == 1319
    assert [p.gold for p in problems[:3]] == ["18", "3", "70000"]  # "#### 70000"
    assert problems[0].question.startswith("Janet\u2019s ducks lay 16 eggs per day.")
    raw = (eval_data / m.GSM8K_FILE).read_text().splitlines()[146]
    assert raw.endswith('#### 2,125"}') and problems[146].gold == "2125"
    assert problems[146].id == "gsm8k/147"  # ids are line numbers
    assert all(canonical_number(p.gold) == p.gold for p in problems)


def test_every_gsm8k_exemplar_gives_its_answer() -> None:
    assert [gsm8k_answer(a) for _, a in m.GSM8K_EXEMPLARS] == [
        "6", "5", "39", "8", "9", "29", "33", "8",
    ]  # fmt: skip


def test_gsm8k_prompt() -> None:
    assert gsm8k_prompt("How many?", 0) == "Q: How many?\nA:"
    one = gsm8k_prompt("How many?", 1)
    assert one == (
        "Q: There are 15 trees in the grove. Grove workers will plant trees in the grove today. "
        "After they are done, there will be 21 trees. How many trees did the grove workers plant "
        "today?\nA: There are 15 trees originally. Then there were 21 trees after some more were "
        "planted. So there must have been 21 - 15 = 6. The answer is 6.\n\n"
        "Q: How many?\nA:"
    )
    eight = gsm8k_prompt("How many?")
    assert eight.count("Q: ") == 9 and eight.count("The answer is") == 8
    assert eight.endswith("The answer is 8.\n\nQ: How many?\nA:")


# -- MATH answers -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "boxed"),
    [
        ("so $x = \\boxed{\\frac{1}{2}}$.", "\\frac{1}{2}"),
        ("\\boxed{2} or rather \\boxed{\\{1, 2\\}}", "\\{1, 2\\}"),  # the last one
        ("\\boxed{\\left( 3, \\frac{\\pi}{2} \\right)}", "\\left( 3, \\frac{\\pi}{2} \\right)"),
        ("$\\fbox{7}$", "7"),
        ("is $\\boxed 5$.", "5"),
        ("\\boxed{\\frac{1}{2}", None),  # unclosed
        ("no box here", None),
    ],
)
def test_last_boxed(text: str, boxed: str | None) -> None:
    assert last_boxed(text) == boxed


@pytest.mark.parametrize(
    ("answer", "normalized"),
    [
        ("\\frac{1}{2}", "\\frac{1}{2}"),
        ("\\frac12", "\\frac{1}{2}"),
        ("\\frac1{72}", "\\frac{1}{{}72}"),  # Minerva's shorthand rule, as published
        ("\\sqrt2", "\\sqrt{2}"),
        ("$x = 5$", "5"),
        ("10\\text{ inches}", "10"),
        ("100,000", "100000"),
        ("1,2", "12"),  # Minerva's comma rule does not know tuples
        ("(1, 2)", "(1,2)"),
        ("90^\\circ", "90"),
        ("\\$18.90", "18.90"),
        ("\\text{(C)}", "(C)"),
        ("\\textbf{odd}", "odd"),
        ("5.", "5."),
        ("$5.$", "5"),
        ("\\boxed{24}", "24"),
        ("x^2 + 3x - 4", "x^2+3x-4"),
        ("a 3", "3"),
        ("\\left( 3, \\frac{\\pi}{2} \\right)", "\\le(3,\\frac{\\pi}{2}\\right)"),  # "ft" removed
    ],
)
def test_normalize_final_answer(answer: str, normalized: str) -> None:
    assert normalize_final_answer(answer) == normalized


@pytest.mark.parametrize(
    ("generation", "answer"),
    [
        (
            "Thus $\\boxed{\\frac{1}{2}}$.\nFinal Answer: The final answer is $\\frac{1}{2}$. "
            "I hope it is correct.",
            "\\frac{1}{2}",
        ),
        # generate_until cuts before the stop string "I hope it is correct."
        ("Final Answer: The final answer is $24$. ", "24"),
        ("Final Answer: The final answer is $1,234$.\n\nMore", "1234"),
        ("Final Answer: The final answer is 10 inches.", "10"),
        ("The answer is $\\boxed{3}$.", None),  # Minerva's format only
        ("Final Answer: The final answer is ", None),
    ],
)
def test_math_answer(generation: str, answer: str | None) -> None:
    assert math_answer(generation) == answer


def test_math_exemplars_answer_their_boxed_answer() -> None:
    for _, solution in m.MATH_EXEMPLARS:
        assert math_answer(solution) == normalize_final_answer(last_boxed(solution))
    assert [math_answer(s) for _, s in m.MATH_EXEMPLARS] == ["[2,5)", "24", "16", "-\\frac{2}{3}"]


def test_math_prompt() -> None:
    assert math_prompt("What is $1+1$?", 0) == "Problem:\nWhat is $1+1$?\n\nSolution:"
    four = math_prompt("What is $1+1$?")
    assert four.startswith(
        "Problem:\nFind the domain of the expression  $\\frac{\\sqrt{x-2}}{\\sqrt{5-x}}$."
        "\n\nSolution: The expressions inside each square root must be non-negative."
    )
    assert four.count("Problem:\n") == 5 and four.count("I hope it is correct.") == 4
    assert four.endswith(
        "Final Answer: The final answer is $-\\frac{2}{3}$. I hope it is correct.\n\n"
        "Problem:\nWhat is $1+1$?\n\nSolution:"
    )


def test_math_gold_answers(eval_data: Path) -> None:
    problems = read_math(eval_data / m.MATH_FILE)
    assert len(problems) == 5000
    assert [p.gold for p in problems[:3]] == ["2", "10", "\\dfrac{9}{7}"]
    assert problems[0].info == {"level": "Level 3", "type": "Algebra"}
    assert all(p.gold for p in problems)


# -- voting -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("answers", "vote"),
    [
        (["3", "5", "3"], "3"),
        (["5", "3", "3", "5"], "5"),  # a tie goes to the answer of the earliest sample
        (["3", "5", "5", "3"], "3"),
        ([None, None, "2"], "2"),  # no answer does not vote
        ([None, "7", None, "2", "2"], "2"),
        (["2", None, None, None, "3"], "2"),
        ([None, None], None),
        ([], None),
    ],
)
def test_majority_vote(answers: list[str | None], vote: str | None) -> None:
    assert majority_vote(answers) == vote


def test_maj_at_k_on_known_samples(eval_data: Path) -> None:
    """Problem 1 (gold 18): greedy right, samples 18/17/17 -> vote 17, wrong.
    Problem 2 (gold 3): greedy wrong, samples 3/None/3 -> right."""
    seeds: dict[tuple[str, int], int] = {}
    said = "The answer is {}.".format
    script = {  # the greedy solution, then the samples in order
        "Janet": [said(18), said(18), said(17), "17 eggs. " + said(17)],
        "A robe": [said(2), said(3), "no idea", said("$3")],
    }

    def answer(request: GenerationRequest) -> str:
        question = request.context.rsplit("Q: ", 1)[1]
        lines = next(v for k, v in script.items() if question.startswith(k))
        if request.sampling.temperature == 0:
            return lines[0]
        assert request.sampling.temperature == m.TEMPERATURE
        key = (question[:6], len([k for k in seeds if k[0] == question[:6]]))
        seeds[key] = request.sampling.seed
        return lines[1 + key[1]]

    fake = FakeLM(answer)
    result = TASKS["gsm8k"].run(fake, EvalSettings(eval_data, limit=2, samples=3))
    assert result.main == "maj1@1" and result.shots == 8
    assert result.metrics == {"maj1@1": 0.5, "maj1@3": 0.5}
    first, second = result.records
    assert (first["answer"], first["vote"], first["correct"], first["correct_at_k"]) == (
        "18", "17", True, False,
    )  # fmt: skip
    assert (second["answer"], second["vote"], second["correct"], second["correct_at_k"]) == (
        "2", "3", False, True,
    )  # fmt: skip
    assert [s["answer"] for s in second["samples"]] == ["3", None, "3"]
    assert len(set(seeds.values())) == 6  # every sample of every problem its own seed
    assert all(r.stop == m.GSM8K_STOP for r in fake.requests)


def test_samples_one_is_greedy_only_and_seeds_do_not_depend_on_limit(eval_data: Path) -> None:
    greedy = FakeLM(lambda r: "The answer is 18.")
    result = TASKS["gsm8k"].run(greedy, EvalSettings(eval_data, limit=2, samples=1))
    assert list(result.metrics) == ["maj1@1"] and len(greedy.requests) == 2

    def seeds(limit: int, seed: int = 1234) -> list[int]:
        fake = FakeLM(lambda r: "")
        TASKS["math"].run(fake, EvalSettings(eval_data, limit=limit, samples=2, seed=seed))
        return [r.sampling.seed for r in fake.requests if r.sampling.temperature > 0]

    assert seeds(3)[:4] == seeds(2)
    assert seeds(2) != seeds(2, seed=1)


def test_shots_setting(eval_data: Path) -> None:
    fake = FakeLM(lambda r: "")
    result = TASKS["math"].run(fake, EvalSettings(eval_data, shots=0, limit=1, samples=1))
    assert result.shots == 0 and fake.requests[0].context.startswith("Problem:\nHow many")
    for name, too_many in (("math", 5), ("gsm8k", 9)):
        with pytest.raises(TaskDataError, match=f"{name} takes 0 to {too_many - 1} shots"):
            TASKS[name].run(fake, EvalSettings(eval_data, shots=too_many))


# -- malformed records ------------------------------------------------------------------------


def test_malformed_records_name_file_and_line(tmp_path: Path) -> None:
    good_gsm8k = json.dumps({"question": "q", "answer": "1 + 1 = 2\n#### 2"})
    good_math = json.dumps({"question": "q", "answer": "so $\\boxed{2}$", "level": "Level 1"})
    cases = [
        (read_gsm8k, good_gsm8k, {"question": "q", "answer": "It is 2."}, "####"),
        (read_gsm8k, good_gsm8k, {"question": "q", "answer": "#### two"}, "####"),
        (read_gsm8k, good_gsm8k, {"answer": "#### 2"}, "'question'"),
        (read_gsm8k, good_gsm8k, {"question": "q", "answer": 2}, "'answer'"),
        (read_math, good_math, {"question": "q", "answer": "It is 2."}, "boxed"),
        (read_math, good_math, {"question": "q", "answer": "\\boxed{2"}, "boxed"),
        (read_math, good_math, {"problem": "q", "solution": "\\boxed{2}"}, "'question'"),
    ]
    for reader, good, bad, field in cases:
        path = tmp_path / "test.jsonl"
        path.write_text(f"{good}\n{good}\n{json.dumps(bad)}\n")
        with pytest.raises(TaskDataError, match=field) as e:
            reader(path)
        assert f"{path}:3" in str(e.value), (bad, str(e.value))


# -- end to end on a real model ---------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("name", ["gsm8k", "math"])
def test_task_runs_on_stories260k_and_sampling_ignores_batch_size(
    model, eval_data: Path, monkeypatch: pytest.MonkeyPatch, name: str
) -> None:
    monkeypatch.setattr(m, "GSM8K_MAX_NEW_TOKENS", 8)
    monkeypatch.setattr(m, "MATH_MAX_NEW_TOKENS", 8)
    settings = EvalSettings(eval_data, limit=2, samples=3)
    results = [
        TASKS[name].run(PastureLM(*model, batch_size=b, progress=False), settings) for b in (1, 3)
    ]
    result = results[0]
    assert result.task == name and result.main == "maj1@1"
    assert set(result.metrics) == {"maj1@1", "maj1@3"} and len(result.records) == 2
    for record in result.records:
        assert len(record["samples"]) == 3
        assert record["vote"] == majority_vote([s["answer"] for s in record["samples"]])
    samples = [[s["generation"] for s in r["samples"]] for r in result.records]
    assert any(len(set(s)) > 1 for s in samples)  # samples differ from one another
    assert results[1].records == result.records and results[1].metrics == result.metrics
