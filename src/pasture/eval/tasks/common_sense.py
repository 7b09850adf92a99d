"""Common sense reasoning (paper §3.1, Table 3): eight multiple-choice benchmarks, zero-shot.

    pasture eval --checkpoint out-hf --tasks arc_easy,piqa --limit 100

Tasks: boolq, piqa, siqa, hellaswag, winogrande, arc_easy, arc_challenge, openbookqa.

Scoring (paper §3): the completion with the highest log-likelihood divided by its number of
characters (rule "char"), except OpenBookQA and BoolQ, scored by
log P(completion | context) - log P(completion | "Answer:") (rule "answer"). WinoGrande uses
partial scoring (below). Every result also reports the raw-sum accuracy ``acc`` and the
char-normalized ``acc_char``.

Prompts are lm-evaluation-harness 0.4's (its task YAMLs and utils), so that per-item
log-likelihoods can be cross-checked against it; a continuation is the choice with one
leading space (lm-eval's target delimiter):

- ARC-Easy/Challenge: ``"Question: {stem}\\nAnswer:"`` → ``" {choice text}"``.
- PIQA: ``"Question: {goal}\\nAnswer:"`` → ``" {sol1}"``, ``" {sol2}"``.
- HellaSwag: lm-eval's preprocessing (strip, ``" [title]"`` → ``". "``, drop ``[...]``,
  one pass of double space → space) of ``"{activity_label}: {ctx_a} {ctx_b.capitalize()}"``
  → ``" {preprocessed ending}"``.
- BoolQ: ``"{title} -- {passage}\\nQuestion: {question}?\\nAnswer:"`` → ``" no"``, ``" yes"``.
  lm-eval reads SuperGLUE's BoolQ, whose passage is the original ``title -- passage``.
- SIQA: ``"Q: {context} {question}\\nA:"`` → ``" {answerA}"`` … (lm-eval's social_iqa).
- OpenBookQA: ``"{question stem}"`` → ``" {choice text}"``.
- WinoGrande (lm-eval's partial evaluation): for each option the context is the sentence up
  to the blank with the option filled in, the continuation is ``" "`` + the rest of the
  sentence after ``_`` (stripped). The continuation is the same for both options, so the
  char-normalized and raw-sum rules always agree; the headline is lm-eval's ``acc`` (rule
  "sum").

Files (MANIFEST.md of the data folder): ``arc/ARC-{Easy,Challenge}-Test.jsonl``,
``piqa/valid.jsonl`` + ``valid-labels.lst``, ``siqa/dev.jsonl`` + ``dev-labels.lst`` (1-based),
``boolq/dev.jsonl`` (original BoolQ format), ``winogrande/dev.jsonl``,
``openbookqa/test.jsonl``, and ``hellaswag/hellaswag_val.jsonl``: the official HellaSwag
validation file (fields ``ind, activity_label, ctx_a, ctx_b, ctx, endings, label, split,
split_type, source_id``). HellaSwag is not in the shared data (see its MANIFEST); the reader
is tested on hand-written records in that format under ``tests/eval/fixtures/hellaswag/``.

``--limit N`` scores the first N items in file order. These tasks are zero-shot as in the
paper; ``--shots`` does not apply to them.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..lm import LanguageModel
from ..scoring import ChoiceItem, Rule, choice_result
from ..task import (
    EvalSettings,
    Task,
    TaskDataError,
    TaskResult,
    field_of,
    limited,
    read_jsonl,
    task_file,
)

SECTION = "common_sense"


# -- shared readers ---------------------------------------------------------------------------


def read_labels(path: Path, allowed: tuple[str, ...]) -> list[tuple[int, str]]:
    """(line number, label) for each non-empty line of a ``*-labels.lst`` file."""
    labels = []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            label = line.strip()
            if not label:
                continue
            if label not in allowed:
                raise TaskDataError(f"{path}:{number}: label {label!r} is not one of {allowed}")
            labels.append((number, label))
    return labels


def with_labels(
    records: list[tuple[int, dict[str, Any]]], data: Path, labels: Path, allowed: tuple[str, ...]
) -> list[tuple[str, dict[str, Any], str]]:
    """(where, record, label): the records of ``data`` paired line by line with ``labels``."""
    gold = read_labels(labels, allowed)
    if len(gold) != len(records):
        raise TaskDataError(
            f"{labels}: {len(gold)} labels for {len(records)} records in {data}; "
            "the two files must come from the same release"
        )
    return [(f"{data}:{n}", r, label) for (n, r), (_, label) in zip(records, gold, strict=True)]


def choice_list(record: dict[str, Any], where: str) -> tuple[list[str], list[str]]:
    """(texts, labels) of an ARC/OpenBookQA ``question.choices`` list."""
    question = field_of(record, "question", where, dict)
    choices = field_of(question, "choices", f"{where}: question", list)
    if len(choices) < 2:
        raise TaskDataError(f"{where}: field 'question.choices' has {len(choices)} choices")
    texts, labels = [], []
    for j, choice in enumerate(choices):
        if not isinstance(choice, dict):
            raise TaskDataError(f"{where}: field 'question.choices[{j}]' is not an object")
        texts.append(field_of(choice, "text", f"{where}: question.choices[{j}]"))
        labels.append(field_of(choice, "label", f"{where}: question.choices[{j}]"))
    return texts, labels


def gold_label(record: dict[str, Any], labels: list[str], where: str) -> int:
    key = field_of(record, "answerKey", where).strip()
    if key not in labels:
        raise TaskDataError(f"{where}: field 'answerKey' is {key!r}, not one of {labels}")
    return labels.index(key)


# -- one reader per benchmark -----------------------------------------------------------------


def arc_items(path: Path, prompt: str = "Question: {stem}\nAnswer:") -> list[ChoiceItem]:
    """ARC's question/choices/answerKey records (OpenBookQA uses the same format)."""
    items = []
    for number, record in read_jsonl(path):
        where = f"{path}:{number}"
        stem = field_of(field_of(record, "question", where, dict), "stem", f"{where}: question")
        texts, labels = choice_list(record, where)
        items.append(
            ChoiceItem(
                id=field_of(record, "id", where),
                contexts=(prompt.format(stem=stem),),
                continuations=tuple(f" {t}" for t in texts),
                gold=gold_label(record, labels, where),
            )
        )
    return items


def openbookqa_items(path: Path) -> list[ChoiceItem]:
    """OpenBookQA: ARC's format; the context is the question stem alone (as lm-eval)."""
    return arc_items(path, prompt="{stem}")


def piqa_items(path: Path, labels: Path) -> list[ChoiceItem]:
    items = []
    for i, (where, record, label) in enumerate(
        with_labels(list(read_jsonl(path)), path, labels, ("0", "1"))
    ):
        goal = field_of(record, "goal", where)
        solutions = (field_of(record, "sol1", where), field_of(record, "sol2", where))
        items.append(
            ChoiceItem(
                id=str(i),
                contexts=(f"Question: {goal}\nAnswer:",),
                continuations=tuple(f" {s}" for s in solutions),
                gold=int(label),
            )
        )
    return items


def siqa_items(path: Path, labels: Path) -> list[ChoiceItem]:
    items = []
    for i, (where, record, label) in enumerate(
        with_labels(list(read_jsonl(path)), path, labels, ("1", "2", "3"))
    ):
        context = field_of(record, "context", where)
        question = field_of(record, "question", where)
        answers = [field_of(record, f"answer{c}", where) for c in "ABC"]
        items.append(
            ChoiceItem(
                id=str(i),
                contexts=(f"Q: {context} {question}\nA:",),
                continuations=tuple(f" {a}" for a in answers),
                gold=int(label) - 1,  # the labels file is 1-based
            )
        )
    return items


def boolq_items(path: Path) -> list[ChoiceItem]:
    items = []
    for i, (number, record) in enumerate(read_jsonl(path)):
        where = f"{path}:{number}"
        title = field_of(record, "title", where)
        passage = field_of(record, "passage", where)
        question = field_of(record, "question", where)
        answer = field_of(record, "answer", where, bool)
        items.append(
            ChoiceItem(
                id=str(i),
                contexts=(f"{title} -- {passage}\nQuestion: {question}?\nAnswer:",),
                continuations=(" no", " yes"),
                gold=int(answer),
            )
        )
    return items


def winogrande_pairs(sentence: str, options: tuple[str, str]) -> tuple[tuple[str, ...], str]:
    """Partial scoring: one context per option (the sentence up to ``_``, option filled in)
    and the continuation shared by both (the rest of the sentence)."""
    blank = sentence.index("_")
    contexts = tuple(sentence[:blank] + option for option in options)
    return contexts, " " + sentence[blank + 1 :].strip()


def winogrande_items(path: Path) -> list[ChoiceItem]:
    items = []
    for number, record in read_jsonl(path):
        where = f"{path}:{number}"
        sentence = field_of(record, "sentence", where)
        if sentence.count("_") != 1:
            raise TaskDataError(f"{where}: field 'sentence' must hold exactly one blank '_'")
        options = (field_of(record, "option1", where), field_of(record, "option2", where))
        answer = field_of(record, "answer", where)
        if answer not in ("1", "2"):
            raise TaskDataError(f"{where}: field 'answer' is {answer!r}, not '1' or '2'")
        contexts, continuation = winogrande_pairs(sentence, options)
        items.append(
            ChoiceItem(
                id=field_of(record, "qID", where),
                contexts=contexts,
                continuations=(continuation, continuation),
                gold=int(answer) - 1,
            )
        )
    return items


def hellaswag_preprocess(text: str) -> str:
    """lm-eval's cleanup; the brackets are artifacts of HellaSwag's WikiHow part."""
    text = text.strip()
    text = text.replace(" [title]", ". ")
    text = re.sub("\\[.*?\\]", "", text)
    return text.replace("  ", " ")


def hellaswag_items(path: Path) -> list[ChoiceItem]:
    items = []
    for number, record in read_jsonl(path):
        where = f"{path}:{number}"
        ctx = field_of(record, "ctx_a", where) + " " + field_of(record, "ctx_b", where).capitalize()
        query = hellaswag_preprocess(field_of(record, "activity_label", where) + ": " + ctx)
        endings = field_of(record, "endings", where, list)
        if len(endings) < 2 or not all(isinstance(e, str) for e in endings):
            raise TaskDataError(f"{where}: field 'endings' must be a list of at least 2 strings")
        label = field_of(record, "label", where, (int, str))
        if str(label) not in {str(j) for j in range(len(endings))}:
            raise TaskDataError(f"{where}: field 'label' is {label!r}, not an index of endings")
        items.append(
            ChoiceItem(
                id=str(field_of(record, "ind", where, (int, str))),
                contexts=(query,),
                continuations=tuple(" " + hellaswag_preprocess(e) for e in endings),
                gold=int(label),
            )
        )
    return items


# -- the tasks --------------------------------------------------------------------------------


def zero_shot_task(
    name: str,
    files: tuple[str, ...],
    read: Callable[..., list[ChoiceItem]],
    rule: Rule,
    description: str,
) -> Task:
    """A zero-shot multiple-choice task: ``read(*files)`` gives the items, ``rule`` picks."""

    def run(lm: LanguageModel, settings: EvalSettings) -> TaskResult:
        items = read(*(task_file(settings, f) for f in files))
        result = choice_result(name, lm, limited(items, settings), rule)
        result.notes = f"zero-shot, rule {rule!r}"
        if settings.shots:
            result.notes += f"; --shots {settings.shots} ignored (zero-shot in the paper)"
        return result

    return Task(name, SECTION, files, run, description)


TASKS: list[Task] = [
    zero_shot_task(
        "boolq", ("boolq/dev.jsonl",), boolq_items, "answer", "BoolQ dev, yes/no questions"
    ),
    zero_shot_task(
        "piqa",
        ("piqa/valid.jsonl", "piqa/valid-labels.lst"),
        piqa_items,
        "char",
        "PIQA validation, physical commonsense",
    ),
    zero_shot_task(
        "siqa",
        ("siqa/dev.jsonl", "siqa/dev-labels.lst"),
        siqa_items,
        "char",
        "Social IQa dev, social commonsense",
    ),
    zero_shot_task(
        "hellaswag",
        ("hellaswag/hellaswag_val.jsonl",),
        hellaswag_items,
        "char",
        "HellaSwag validation, sentence completion",
    ),
    zero_shot_task(
        "winogrande",
        ("winogrande/dev.jsonl",),
        winogrande_items,
        "sum",
        "WinoGrande v1.1 dev (XL), partial scoring",
    ),
    zero_shot_task(
        "arc_easy",
        ("arc/ARC-Easy-Test.jsonl",),
        arc_items,
        "char",
        "ARC-Easy test, grade-school science",
    ),
    zero_shot_task(
        "arc_challenge",
        ("arc/ARC-Challenge-Test.jsonl",),
        arc_items,
        "char",
        "ARC-Challenge test, grade-school science",
    ),
    zero_shot_task(
        "openbookqa",
        ("openbookqa/test.jsonl",),
        openbookqa_items,
        "answer",
        "OpenBookQA test, science with an open book of facts (not given)",
    ),
]
