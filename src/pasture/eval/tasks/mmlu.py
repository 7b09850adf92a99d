"""Massive Multitask Language Understanding (paper §3.6, Table 9): 57 subjects, five-shot.

    pasture eval --checkpoint out-hf --tasks mmlu --limit 10      # 10 test items per subject

Prompt: lm-evaluation-harness 0.4's ``mmlu`` default template (the one of Hendrycks et al.'s
``evaluate.py``), so that per-item log-likelihoods can be cross-checked against it::

    The following are multiple choice questions (with answers) about {subject, _ as space}.

    {dev question 1, stripped}
    A. {A}
    B. {B}
    C. {C}
    D. {D}
    Answer: {letter}

    … (the subject's 5 dev examples, in file order) …
    {test question, stripped}
    A. …
    D. {D}
    Answer:

with continuations ``" A"``, ``" B"``, ``" C"``, ``" D"``. The shots are the first k examples
of ``mmlu/dev/<subject>_dev.csv`` in file order (lm-eval's ``first_n`` sampler on the dev
split), the same for every test item of the subject; ``--shots k`` takes k ≤ 5 of them.

Headline: accuracy of the most likely letter (rule "sum", lm-eval's mmlu ``acc``; every
continuation is two characters, so the char rule picks the same). Metrics: ``subject/<name>``
per subject, ``humanities``, ``stem``, ``social_sciences``, ``other`` (the paper's four
categories) and ``average``, each the accuracy over all items it covers (weighted by items,
as Hendrycks et al.'s ``evaluate.py`` and lm-eval's group score).

Data: ``mmlu/{dev,test}/<subject>_{dev,test}.csv`` (the "data.tar" layout: no header; columns
question, A, B, C, D, answer letter). Evaluated on test; ``--limit N`` scores the first N test
items of each subject.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

from ..lm import LanguageModel
from ..scoring import ChoiceItem, bootstrap_stderr, multiple_choice
from ..task import EvalSettings, Task, TaskDataError, TaskResult, limited, task_file

LETTERS = "ABCD"
SHOTS = 5

# Subject → category (lm-eval's mmlu subject YAMLs and Hendrycks et al.'s categories.py).
CATEGORIES: dict[str, str] = {
    "abstract_algebra": "stem",
    "anatomy": "stem",
    "astronomy": "stem",
    "business_ethics": "other",
    "clinical_knowledge": "other",
    "college_biology": "stem",
    "college_chemistry": "stem",
    "college_computer_science": "stem",
    "college_mathematics": "stem",
    "college_medicine": "other",
    "college_physics": "stem",
    "computer_security": "stem",
    "conceptual_physics": "stem",
    "econometrics": "social_sciences",
    "electrical_engineering": "stem",
    "elementary_mathematics": "stem",
    "formal_logic": "humanities",
    "global_facts": "other",
    "high_school_biology": "stem",
    "high_school_chemistry": "stem",
    "high_school_computer_science": "stem",
    "high_school_european_history": "humanities",
    "high_school_geography": "social_sciences",
    "high_school_government_and_politics": "social_sciences",
    "high_school_macroeconomics": "social_sciences",
    "high_school_mathematics": "stem",
    "high_school_microeconomics": "social_sciences",
    "high_school_physics": "stem",
    "high_school_psychology": "social_sciences",
    "high_school_statistics": "stem",
    "high_school_us_history": "humanities",
    "high_school_world_history": "humanities",
    "human_aging": "other",
    "human_sexuality": "social_sciences",
    "international_law": "humanities",
    "jurisprudence": "humanities",
    "logical_fallacies": "humanities",
    "machine_learning": "stem",
    "management": "other",
    "marketing": "other",
    "medical_genetics": "other",
    "miscellaneous": "other",
    "moral_disputes": "humanities",
    "moral_scenarios": "humanities",
    "nutrition": "other",
    "philosophy": "humanities",
    "prehistory": "humanities",
    "professional_accounting": "other",
    "professional_law": "humanities",
    "professional_medicine": "other",
    "professional_psychology": "social_sciences",
    "public_relations": "social_sciences",
    "security_studies": "social_sciences",
    "sociology": "social_sciences",
    "us_foreign_policy": "social_sciences",
    "virology": "other",
    "world_religions": "humanities",
}
CATEGORY_ORDER = ("humanities", "stem", "social_sciences", "other")  # Table 9's columns


@dataclass(frozen=True)
class Question:
    question: str
    choices: tuple[str, str, str, str]
    answer: int  # index into LETTERS


def read_csv(path: Path) -> list[Question]:
    """The rows of one subject's CSV; a bad row names the file and the line it starts on."""
    questions = []
    with open(path, encoding="utf-8", newline="") as f:
        reader = csv.reader(f)
        start = 1
        for row in reader:
            where = f"{path}:{start}"
            start = reader.line_num + 1
            if not row:
                continue
            if len(row) != 6:
                raise TaskDataError(
                    f"{where}: {len(row)} columns, expected 6 (question, A, B, C, D, answer)"
                )
            answer = row[5].strip()
            if answer not in tuple(LETTERS):
                raise TaskDataError(f"{where}: field 'answer' (column 6) is {answer!r}, not A–D")
            questions.append(
                Question(row[0], (row[1], row[2], row[3], row[4]), LETTERS.index(answer))
            )
    return questions


def format_question(q: Question) -> str:
    options = "".join(f"\n{letter}. {c}" for letter, c in zip(LETTERS, q.choices, strict=True))
    return f"{q.question.strip()}{options}\nAnswer:"


def prompt(subject: str, shots: list[Question], q: Question) -> str:
    """lm-eval's context: description, then each shot with its letter, then the question."""
    description = (
        "The following are multiple choice questions (with answers) about "
        f"{subject.replace('_', ' ')}.\n\n"
    )
    examples = "".join(f"{format_question(s)} {LETTERS[s.answer]}\n\n" for s in shots)
    return description + examples + format_question(q)


def files(subject: str) -> tuple[str, str]:
    return f"mmlu/dev/{subject}_dev.csv", f"mmlu/test/{subject}_test.csv"


def subject_items(settings: EvalSettings, subject: str, shots: int) -> list[ChoiceItem]:
    dev_file, test_file = (task_file(settings, f) for f in files(subject))
    dev = read_csv(dev_file)
    if len(dev) < shots:
        raise TaskDataError(f"{dev_file}: {len(dev)} dev examples, {shots}-shot needs {shots}")
    examples = dev[:shots]
    return [
        ChoiceItem(
            id=f"{subject}/{i}",
            contexts=(prompt(subject, examples, q),),
            continuations=tuple(f" {letter}" for letter in LETTERS),
            gold=q.answer,
        )
        for i, q in enumerate(limited(read_csv(test_file), settings))
    ]


def category_scores(per_subject: dict[str, tuple[int, int]]) -> dict[str, float]:
    """Accuracy per subject, per category and overall, from (correct, total) per subject;
    a category's accuracy is over all its items (subjects weighted by their size)."""
    metrics = {f"subject/{s}": c / n for s, (c, n) in per_subject.items() if n}
    for category in CATEGORY_ORDER:
        members = [v for s, v in per_subject.items() if CATEGORIES[s] == category]
        total = sum(n for _, n in members)
        if total:
            metrics[category] = sum(c for c, _ in members) / total
    total = sum(n for _, n in per_subject.values())
    if total:
        metrics["average"] = sum(c for c, _ in per_subject.values()) / total
    return metrics


def run_mmlu(lm: LanguageModel, settings: EvalSettings) -> TaskResult:
    shots = SHOTS if settings.shots is None else settings.shots
    if not 0 <= shots <= SHOTS:
        raise TaskDataError(f"mmlu: --shots {shots}: the dev split has {SHOTS} per subject")
    items = [it for subject in CATEGORIES for it in subject_items(settings, subject, shots)]
    metrics, records = multiple_choice(lm, items, "sum")
    per_subject: dict[str, tuple[int, int]] = {}
    for record in records:
        subject = record["subject"] = record["id"].split("/")[0]
        correct, total = per_subject.get(subject, (0, 0))
        per_subject[subject] = (correct + record["correct"], total + 1)
    metrics.update(category_scores(per_subject))
    stderr = {"average": bootstrap_stderr([r["correct"] for r in records])}
    notes = f"{shots}-shot (first {shots} dev examples per subject), rule 'sum'"
    return TaskResult("mmlu", "average", metrics, stderr, records, shots, notes)


TASKS: list[Task] = [
    Task(
        "mmlu",
        "mmlu",
        tuple(f for subject in CATEGORIES for f in files(subject)),
        run_mmlu,
        "MMLU test, 57 subjects in four categories, five-shot",
    )
]
