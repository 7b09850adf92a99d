"""Reading comprehension (paper §3.3, Table 6): RACE-middle and RACE-high, zero-shot.

    pasture eval --checkpoint out-hf --tasks race_middle,race_high --data-dir ../shared/data/eval

The paper "follow[s] the evaluation setup from Brown et al. (2020)", which lm-evaluation-harness
reproduces (its ``race`` task, ``preprocess_race.py``): one item per article. The context is
``"Article: {article}\\n\\n"``, then every question of the article but the last with its gold
answer (``"Question: {q}\\nAnswer: {answer}\\n"``, or for a cloze question ending in
``"  _  ."`` the question with the answer in the blank and a newline), then the last question;
the four continuations are ``" {option}"``.

The rule: the headline is the highest log-likelihood per character (``acc_char``). The LLaMA
paper (§3) normalizes by characters everywhere except OpenBookQA and BoolQ, which it names as
the two datasets where it follows Brown et al.; RACE is not among them. Brown et al. themselves
scored RACE (with ARC and OpenBookQA) by ``log P(completion | context) - log P(completion |
"Answer:")``, and the paper's "follow[s] the evaluation setup from Brown et al." could mean
that too, so that rule is reported beside it (``acc_answer``, and its own columns in
results.md's Table 6), as is the raw sum (``acc``).

Data: the published RACE release, ``race/test/{middle,high}/*.txt`` under the data folder,
one JSON object per file with ``article``, ``questions``, ``options`` (a list of four
options per question), ``answers`` (a letter A–D per question) and ``id``. Files are read in
numeric order of their names (1.txt, 2.txt, …, 10.txt); ``--limit N`` scores the first N
articles. RACE is not in the shared data (see its MANIFEST); the reader is tested on
hand-written articles in the published format under ``tests/eval/fixtures/race/``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..lm import LanguageModel
from ..scoring import ChoiceItem, choice_result
from ..task import EvalSettings, Task, TaskDataError, TaskResult, field_of, limited

LETTERS = "ABCD"


def article_files(folder: Path) -> list[Path]:
    """The ``*.txt`` files of a RACE split folder, in numeric order of their names."""
    if not folder.is_dir():
        raise TaskDataError(f"{folder}: missing (expected RACE's test/{{middle,high}} folders)")

    def order(path: Path) -> tuple[int, int | str]:
        return (0, int(path.stem)) if path.stem.isdigit() else (1, path.stem)

    files = sorted(folder.glob("*.txt"), key=order)
    if not files:
        raise TaskDataError(f"{folder}: no *.txt article files")
    return files


def read_article(path: Path) -> dict[str, Any]:
    """One RACE file, checked: as many questions, option lists and answers, 4 options each."""
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise TaskDataError(f"{path}:{e.lineno}: not JSON ({e.msg})") from None
    where = f"{path}:1"
    if not isinstance(record, dict):
        raise TaskDataError(f"{where}: expected a JSON object")
    field_of(record, "article", where)
    questions = field_of(record, "questions", where, list)
    options = field_of(record, "options", where, list)
    answers = field_of(record, "answers", where, list)
    if not questions or not len(questions) == len(options) == len(answers):
        raise TaskDataError(
            f"{where}: fields 'questions', 'options', 'answers' must be non-empty lists of one "
            f"length (got {len(questions)}, {len(options)}, {len(answers)})"
        )
    for i, (q, opts, answer) in enumerate(zip(questions, options, answers, strict=True)):
        if not isinstance(q, str):
            raise TaskDataError(f"{where}: field 'questions[{i}]' is not a string")
        if not (
            isinstance(opts, list) and len(opts) == 4 and all(isinstance(o, str) for o in opts)
        ):
            raise TaskDataError(f"{where}: field 'options[{i}]' must be a list of 4 strings")
        if answer not in tuple(LETTERS):
            raise TaskDataError(f"{where}: field 'answers[{i}]' is {answer!r}, not A–D")
    return record


def race_item(record: dict[str, Any], item_id: str) -> ChoiceItem:
    """lm-eval's ``doc_to_text``/``doc_to_choice``/``doc_to_target`` on one article."""
    questions, options, answers = record["questions"], record["options"], record["answers"]
    text = "Article: " + record["article"] + "\n\n"
    for question, opts, answer in zip(questions[:-1], options[:-1], answers[:-1], strict=True):
        gold = opts[LETTERS.index(answer)]
        if question[-6:] == "  _  .":
            text += question[:-5] + gold + "\n"
        else:
            text += "Question: " + question + "\n" + "Answer: " + gold + "\n"
    text += questions[-1]
    return ChoiceItem(
        id=item_id,
        contexts=(text,),
        continuations=tuple(f" {o}" for o in options[-1]),
        gold=LETTERS.index(answers[-1]),
    )


def race_items(files: Sequence[Path]) -> list[ChoiceItem]:
    items = []
    for path in files:
        record = read_article(path)
        item_id = record["id"] if isinstance(record.get("id"), str) else path.name
        items.append(race_item(record, item_id))
    return items


def race_task(name: str, level: str) -> Task:
    folder = f"race/test/{level}"

    def run(lm: LanguageModel, settings: EvalSettings) -> TaskResult:
        items = race_items(limited(article_files(settings.data_dir / folder), settings))
        result = choice_result(name, lm, items, "char")
        result.notes = "zero-shot, one item per article (Brown et al. 2020), rule 'char'"
        return result

    return Task(name, "reading", (folder,), run, f"RACE-{level} test, English exams")


TASKS: list[Task] = [race_task("race_middle", "middle"), race_task("race_high", "high")]
