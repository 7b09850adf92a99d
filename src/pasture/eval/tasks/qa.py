"""Closed-book question answering (paper §3.2, Tables 4-5, Appendix A): NaturalQuestions and
TriviaQA, exact match of a greedy generation.

    pasture eval --checkpoint out-hf --tasks naturalquestions,triviaqa --shots 5 --limit 200

Tasks:

- ``naturalquestions``: NQ-open (Lee et al. 2019), ``nq_open/NQ-open.dev.jsonl``, the 3,610
  questions the paper calls "the test split used for open-domain question answering". Records
  are ``{"question": str, "answer": [str, ...]}``; any listed answer counts.
- ``triviaqa``: the paper evaluates "on the dev set of the filtered set" (the reading
  comprehension release, ``triviaqa-rc``; not the unfiltered set GPT-3 and PaLM used). The
  default files are that release's two dev files as it unpacks them,
  ``triviaqa/qa/wikipedia-dev.json`` and ``triviaqa/qa/web-dev.json``, read as one set of
  questions (a QuestionId in both is evaluated once, from the first file). **The real split is
  not in the shared data** (its MANIFEST: only the one-question format sample
  ``triviaqa/triviaqa_sample.json``); ``triviaqa_task(files)`` makes the same task over other
  files in the official JSON format (``{"Data": [{"Question", "QuestionId", "Answer":
  {"Value", "Aliases", "NormalizedAliases", ...}}, ...]}``), e.g.
  ``triviaqa/triviaqa-unfiltered/unfiltered-web-dev.json``. The gold answers of a question are
  ``Aliases``, ``Value``, ``NormalizedAliases`` and, where present, ``HumanAnswers``.

Prompt (Appendix A and Figure 3): ``"Answer these questions:\\n"``, then one
``"Q: {question}\\nA: {answer}\\n"`` per example, then ``"Q: {question}\\nA:"``. An example's
answer is its first gold answer (NQ's first ``answer``, TriviaQA's ``Value``). Figure 3 shows
the NQ-open question "who wrote the book the origin of species" as "Who wrote the book the
origin of species?", so NQ questions (all lower case, none ending in "?") get a capital first
letter and a question mark; TriviaQA questions are used as published.

Shots: ``--shots`` (the paper reports 0, 1, 5 and 64; default ``DEFAULT_SHOTS`` = 1, the
setting of Figure 3). Examples are drawn per item with ``draw_shots`` (depends only on --seed
and the question) from the training split when it is in the data folder
(``nq_open/NQ-open.train.jsonl``; ``triviaqa/qa/{wikipedia,web}-train.json``), otherwise from
the other evaluated questions. The shared data ships no training split, so there the examples
are other dev questions; a question is never among its own examples (nor is a duplicate of it).

Answer: greedy decoding, and, as Appendix A says, "we extract an answer from the generation by
stopping at the first line break, final dot or comma" (``extract_answer``): the text before the
first line break, the first comma (but not one between two digits, "1,000") or the first dot
that no letter or digit follows (a dot that ends a word, not "3.5"), whichever comes first. So
"St. Louis" gives "St", as the rule says, and "U.S.A." gives "U.S.A".

Scoring: "a generated answer is considered correct if it matches any answer of the list of
answers after normalization ... we lowercase generated answers and remove articles,
punctuation and duplicate whitespaces" (``normalize_answer``: SQuAD's ``normalize_answer`` as
DPR applies it, after Unicode NFD). An empty answer is never correct. Metric ``em``.
"""

from __future__ import annotations

import json
import re
import string
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..lm import GenerationRequest, LanguageModel, Sampling
from ..scoring import bootstrap_stderr, mean
from ..task import (
    EvalSettings,
    Task,
    TaskDataError,
    TaskResult,
    draw_shots,
    field_of,
    limited,
    read_jsonl,
    task_file,
)

SECTION = "closed_book_qa"
NQ_FILE = "nq_open/NQ-open.dev.jsonl"
NQ_TRAIN_FILE = "nq_open/NQ-open.train.jsonl"
TRIVIAQA_FILES = ("triviaqa/qa/wikipedia-dev.json", "triviaqa/qa/web-dev.json")
TRIVIAQA_TRAIN_FILES = ("triviaqa/qa/wikipedia-train.json", "triviaqa/qa/web-train.json")
INSTRUCTION = "Answer these questions:\n"
# Generation stops where ``extract_answer`` would cut anyway (it still applies to the rest).
STOP = ("\n", ". ", ", ")
DEFAULT_SHOTS = 1
MAX_NEW_TOKENS = 32  # read at run time: tests lower it


@dataclass(frozen=True)
class QAItem:
    id: str
    question: str  # as shown in the prompt
    answers: tuple[str, ...]  # the first is the one an example shows


# -- normalization and extraction -------------------------------------------------------------

_PUNCTUATION = frozenset(string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b")
_ANSWER_END = re.compile(r"\n|(?<!\d),|,(?!\d)|\.(?!\w)")


def normalize_answer(text: str) -> str:
    """Lower case, no punctuation, no articles (a, an, the), single spaces (SQuAD/DPR)."""
    text = unicodedata.normalize("NFD", text).lower()
    text = "".join(ch for ch in text if ch not in _PUNCTUATION)
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def exact_match(prediction: str, answers: Sequence[str]) -> bool:
    """Whether the normalized prediction equals any normalized answer (never when empty)."""
    predicted = normalize_answer(prediction)
    return bool(predicted) and any(predicted == normalize_answer(a) for a in answers)


def extract_answer(generation: str) -> str:
    """The generation up to its first line break, comma (not in "1,000") or dot ending a word."""
    end = _ANSWER_END.search(generation)
    return (generation[: end.start()] if end else generation).strip()


# -- prompts ----------------------------------------------------------------------------------


def nq_question(question: str) -> str:
    """As Figure 3 prints NQ-open questions: capitalized, with a question mark."""
    question = question.strip()
    question = question[:1].upper() + question[1:]
    return question if question.endswith("?") else question + "?"


def prompt(item: QAItem, shots: Sequence[QAItem]) -> str:
    examples = "".join(f"Q: {s.question}\nA: {s.answers[0]}\n" for s in shots)
    return f"{INSTRUCTION}{examples}Q: {item.question}\nA:"


# -- readers ----------------------------------------------------------------------------------


def read_nq(path: Path) -> list[QAItem]:
    items = []
    for number, record in read_jsonl(path):
        where = f"{path}:{number}"
        question = field_of(record, "question", where)
        answers = field_of(record, "answer", where, list)
        if not answers or not all(isinstance(a, str) and a.strip() for a in answers):
            raise TaskDataError(f"{where}: field 'answer' must be a non-empty list of strings")
        items.append(QAItem(f"{path.name}:{number}", nq_question(question), tuple(answers)))
    return items


def _record_line(text: str, index: int) -> int | None:
    """The line on which record ``Data[index]`` of a TriviaQA file starts, if it can be found
    (``json`` keeps no positions, so the array is walked again, on errors only)."""
    match = re.match(r'\s*\{\s*"Data"\s*:\s*\[', text)
    if match is None:
        return None
    decoder, at = json.JSONDecoder(), match.end()
    for i in range(index + 1):
        at = re.compile(r"[\s,]*").match(text, at).end()
        if i == index:
            return text.count("\n", 0, at) + 1
        _, at = decoder.raw_decode(text, at)
    return None


def triviaqa_item(record: Any, where: str) -> QAItem:
    """One question of the official format; the gold answers are Value first, then the
    aliases (``Aliases``, ``NormalizedAliases``, ``HumanAnswers`` where present)."""
    if not isinstance(record, dict):
        raise TaskDataError(f"{where}: expected a JSON object")
    question = field_of(record, "Question", where)
    question_id = field_of(record, "QuestionId", where)
    answer: dict[str, Any] = field_of(record, "Answer", where, dict)
    where = f"{where} (QuestionId {question_id}): Answer"
    value = field_of(answer, "Value", where)
    if not value.strip():
        raise TaskDataError(f"{where}: field 'Value' is empty")
    golds = [value]
    for key in ("Aliases", "NormalizedAliases", "HumanAnswers"):
        if key == "Aliases" or key in answer:
            names = field_of(answer, key, where, list)
            if not all(isinstance(n, str) for n in names):
                raise TaskDataError(f"{where}: field {key!r} must be a list of strings")
            golds += names
    return QAItem(question_id, question.strip(), tuple(dict.fromkeys(golds)))


def read_triviaqa(path: Path) -> list[QAItem]:
    """Questions of a TriviaQA file in the official JSON format (rc or unfiltered); a bad
    record is named by the line it starts on and its index in ``Data``."""
    text = path.read_text(encoding="utf-8")
    try:
        document = json.loads(text)
    except json.JSONDecodeError as e:
        raise TaskDataError(f"{path}:{e.lineno}:{e.colno}: not JSON ({e.msg})") from None
    if not isinstance(document, dict):
        raise TaskDataError(f"{path}: expected the official format, an object with 'Data'")
    items = []
    for index, record in enumerate(field_of(document, "Data", str(path), list)):
        try:
            items.append(triviaqa_item(record, f"Data[{index}]"))
        except TaskDataError as e:
            raise TaskDataError(f"{path}:{_record_line(text, index) or '?'}: {e}") from None
    return items


def read_triviaqa_files(paths: Sequence[Path]) -> list[QAItem]:
    """The questions of several files as one set: a QuestionId is kept where it first appears."""
    seen: dict[str, QAItem] = {}
    for path in paths:
        for item in read_triviaqa(path):
            seen.setdefault(item.id, item)
    return list(seen.values())


# -- the tasks --------------------------------------------------------------------------------


def closed_book_result(
    name: str,
    lm: LanguageModel,
    settings: EvalSettings,
    items: Sequence[QAItem],
    pool: Sequence[QAItem],
    pool_source: str,
) -> TaskResult:
    """Greedy answers to ``items`` (the first --limit), each prompted with examples from
    ``pool``; exact match against every gold answer."""
    k = DEFAULT_SHOTS if settings.shots is None else settings.shots
    if k < 0:
        raise TaskDataError(f"{name}: --shots must be 0 or more, not {k}")
    evaluated = limited(items, settings)
    # Keyed by the normalized question, so that a duplicate of the item is excluded too.
    keys = {x.id: normalize_answer(x.question) for x in pool}
    shots = [
        draw_shots(pool, k, settings.seed, normalize_answer(it.question), key=lambda x: keys[x.id])
        for it in evaluated
    ]
    sampling = Sampling(max_new_tokens=MAX_NEW_TOKENS, temperature=0.0)
    requests = [
        GenerationRequest(prompt(it, s), STOP, sampling)
        for it, s in zip(evaluated, shots, strict=True)
    ]
    generations = lm.generate_until(requests)
    records = []
    for it, s, generation in zip(evaluated, shots, generations, strict=True):
        prediction = extract_answer(generation)
        records.append(
            {
                "id": it.id,
                "question": it.question,
                "shots": [x.id for x in s],
                "generation": generation,
                "prediction": prediction,
                "answers": list(it.answers),
                "correct": exact_match(prediction, it.answers),
            }
        )
    hits = [r["correct"] for r in records]
    notes = f"{k}-shot, examples from {pool_source}; greedy, at most {MAX_NEW_TOKENS} tokens"
    return TaskResult(
        name, "em", {"em": mean(hits)}, {"em": bootstrap_stderr(hits)}, records, k, notes
    )


def run_naturalquestions(lm: LanguageModel, settings: EvalSettings) -> TaskResult:
    items = read_nq(task_file(settings, NQ_FILE))
    train = settings.data_dir / NQ_TRAIN_FILE
    if train.is_file():
        return closed_book_result(
            "naturalquestions", lm, settings, items, read_nq(train), str(train)
        )
    return closed_book_result(
        "naturalquestions", lm, settings, items, items, "the other dev questions (no train split)"
    )


def triviaqa_task(
    files: tuple[str, ...] = TRIVIAQA_FILES, train_files: tuple[str, ...] = TRIVIAQA_TRAIN_FILES
) -> Task:
    """The ``triviaqa`` task over ``files`` (relative to the data folder, official format);
    examples come from ``train_files`` when they are all there, else from ``files``."""

    def run(lm: LanguageModel, settings: EvalSettings) -> TaskResult:
        items = read_triviaqa_files([task_file(settings, f) for f in files])
        train = [settings.data_dir / f for f in train_files]
        if train and all(p.is_file() for p in train):
            pool, source = read_triviaqa_files(train), ", ".join(map(str, train))
        else:
            pool, source = items, "the other evaluated questions (no train split)"
        return closed_book_result("triviaqa", lm, settings, items, pool, source)

    return Task(
        "triviaqa",
        SECTION,
        files,
        run,
        f"TriviaQA ({', '.join(files)}), closed book, exact match of a greedy answer",
    )


TASKS: list[Task] = [
    Task(
        "naturalquestions",
        SECTION,
        (NQ_FILE,),
        run_naturalquestions,
        "NaturalQuestions-open (3,610 questions), closed book, exact match of a greedy answer",
    ),
    triviaqa_task(),
]
