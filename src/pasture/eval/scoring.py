"""Scoring rules shared by tasks: the paper's multiple-choice rules and bootstrap errors.

Multiple choice (paper §3): "we select the completion with the highest likelihood normalized by
the number of characters in the completion, except for certain datasets (OpenBookQA, BoolQ),
for which we follow Brown et al. (2020), and select a completion based on the likelihood
normalized by the likelihood of the completion given 'Answer:' as context":
``log P(completion | context) - log P(completion | "Answer:")``.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from .lm import LanguageModel
from .task import TaskResult

Rule = Literal["char", "answer", "sum"]
UNCONDITIONAL_CONTEXT = "Answer:"


@dataclass(frozen=True)
class ChoiceItem:
    """One multiple-choice question. ``contexts`` has one context shared by every choice, or
    one per choice (WinoGrande's partial scoring: the option fills the blank in the context
    and the rest of the sentence is the continuation, the same for every option)."""

    id: str
    contexts: tuple[str, ...]
    continuations: tuple[str, ...]
    gold: int

    def context(self, choice: int) -> str:
        return self.contexts[0] if len(self.contexts) == 1 else self.contexts[choice]


def argmax(values: Sequence[float]) -> int:
    """Index of the largest value; the first one on ties (as numpy's argmax)."""
    return max(range(len(values)), key=lambda i: (values[i], -i))


def char_normalized(loglikelihood: float, continuation: str) -> float:
    """Log-likelihood per character of the completion. The one space that separates the
    completion from the context (" Paris" after "Answer:") is not the completion's: it is not
    counted, as lm-evaluation-harness does not count it for ``acc_norm``."""
    chars = len(continuation) - 1 if continuation.startswith(" ") else len(continuation)
    return loglikelihood / max(chars, 1)


def multiple_choice(
    lm: LanguageModel, items: Sequence[ChoiceItem], rule: Rule
) -> tuple[dict[str, float], list[dict[str, Any]]]:
    """The accuracy of every rule, raw (``acc``), per character (``acc_char``) and conditioned
    on "Answer:" (``acc_answer``), and one record per item with all three scores of every
    choice, so any rule can be recomputed from the records; ``rule`` picks the prediction.
    The "Answer:" term costs one short request per distinct continuation."""
    requests = [(it.context(j), c) for it in items for j, c in enumerate(it.continuations)]
    distinct = sorted({c for it in items for c in it.continuations})
    scores = lm.loglikelihood([(UNCONDITIONAL_CONTEXT, c) for c in distinct])
    unconditional = {c: s for c, (s, _) in zip(distinct, scores, strict=True)}
    results = iter(lm.loglikelihood(requests))
    records, hits = [], {"acc": [], "acc_char": [], "acc_answer": []}
    for it in items:
        lls = [next(results)[0] for _ in it.continuations]
        chars = [char_normalized(ll, c) for ll, c in zip(lls, it.continuations, strict=True)]
        uncond = [unconditional[c] for c in it.continuations]
        conditioned = [ll - u for ll, u in zip(lls, uncond, strict=True)]
        picks = {"sum": argmax(lls), "char": argmax(chars), "answer": argmax(conditioned)}
        records.append(
            {
                "id": it.id,
                "context": list(it.contexts),
                "choices": list(it.continuations),
                "loglikelihoods": lls,
                "char_normalized": chars,
                "unconditional_loglikelihoods": uncond,
                "answer_normalized": conditioned,
                "gold": it.gold,
                "prediction": picks[rule],
                "correct": picks[rule] == it.gold,
            }
        )
        hits["acc"].append(picks["sum"] == it.gold)
        hits["acc_char"].append(picks["char"] == it.gold)
        hits["acc_answer"].append(picks["answer"] == it.gold)
    metrics = {k: mean(v) for k, v in hits.items() if v}
    return metrics, records


def mean(values: Sequence[float | bool]) -> float:
    return sum(float(v) for v in values) / len(values) if values else float("nan")


def bootstrap_stderr(
    values: Sequence[float | bool], iterations: int = 1000, seed: int = 0
) -> float:
    """Standard deviation of the mean over ``iterations`` resamples with replacement."""
    n = len(values)
    if n < 2:
        return float("nan")
    rng = random.Random(seed)
    data = [float(v) for v in values]
    means = [sum(rng.choices(data, k=n)) / n for _ in range(iterations)]
    centre = sum(means) / iterations
    return math.sqrt(sum((m - centre) ** 2 for m in means) / (iterations - 1))


def choice_result(
    task: str, lm: LanguageModel, items: Sequence[ChoiceItem], rule: Rule, shots: int = 0
) -> TaskResult:
    """A multiple-choice task's result: the rule's accuracy as the headline, with its error."""
    metrics, records = multiple_choice(lm, items, rule)
    main = {"char": "acc_char", "answer": "acc_answer", "sum": "acc"}[rule]
    stderr = {main: bootstrap_stderr([r["correct"] for r in records])}
    return TaskResult(task, main, metrics, stderr, records, shots)
