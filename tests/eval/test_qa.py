"""Closed-book QA: exact-match normalization and answer extraction checked by hand, prompts,
the NQ-open file and TriviaQA's official format (sample + hand-written records), shots never
holding the item, malformed records, and both tasks end to end on stories260K."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import pytest

from pasture import load_model
from pasture.eval import EvalSettings, PastureLM
from pasture.eval.lm import GenerationRequest
from pasture.eval.task import TaskDataError
from pasture.eval.tasks import TASKS, qa
from pasture.eval.tasks.qa import (
    QAItem,
    exact_match,
    extract_answer,
    normalize_answer,
    prompt,
    read_nq,
    read_triviaqa,
    read_triviaqa_files,
)

FIXTURES = Path(__file__).parent / "fixtures"


@pytest.fixture(scope="module")
def eval_data(shared_data: Path) -> Path:
    return shared_data / "eval"


@pytest.fixture(scope="module")
def lm(shared_data: Path) -> PastureLM:
    d = shared_data / "models" / "stories260K"
    model, tok = load_model(d / "stories260K.bin", tokenizer=d / "tok512.model")
    return PastureLM(model, tok, batch_size=4, progress=False)


class FakeLM:
    """Answers every request with ``answer(request)``; remembers the requests."""

    def __init__(self, answer=lambda r: "") -> None:
        self.answer = answer
        self.requests: list[GenerationRequest] = []

    def generate_until(self, requests: Sequence[GenerationRequest]) -> list[str]:
        self.requests += requests
        return [self.answer(r) for r in requests]


def test_tasks_are_listed() -> None:
    names = [n for n, t in TASKS.items() if t.section == "closed_book_qa"]
    assert names == ["naturalquestions", "triviaqa"]
    assert TASKS["triviaqa"].files == qa.TRIVIAQA_FILES


# -- normalization, matching, extraction --------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("The Beatles", "beatles"),
        ("a Tale of Two Cities", "tale of two cities"),
        ("An apple", "apple"),
        ("theatre", "theatre"),  # an article only as a whole word
        ("Another  Day\tin\nParis", "another day in paris"),
        ("Washington, D.C.", "washington dc"),
        ("O'Neill", "oneill"),
        ("  1,000  ", "1000"),
        ("the the a", ""),
        ("Björk", "bjo\u0308rk"),  # NFD: the accent is a separate mark, on both sides alike
    ],
)
def test_normalize_answer(text: str, expected: str) -> None:
    assert normalize_answer(text) == expected


def test_exact_match_against_any_alias() -> None:
    aliases = ["Sunset Boulevard", "Sunset Blvd.", "West Sunset Boulevard"]
    assert exact_match("sunset blvd", aliases)
    assert exact_match("The Sunset Boulevard!", aliases)
    assert exact_match("west  SUNSET boulevard", aliases)
    assert not exact_match("Sunset", aliases)
    assert not exact_match("Sunset Boulevard musical", aliases)  # exact, not contained
    assert exact_match("Björk", ["Björk"]) and not exact_match("Bjork", ["Björk"])
    assert not exact_match("", ["The"])  # an empty answer never matches
    assert not exact_match("the", ["The"])


@pytest.mark.parametrize(
    ("generation", "answer"),
    [
        (" Charles Darwin\nQ: Who wrote", "Charles Darwin"),
        (" Paris.", "Paris"),
        (" Paris. It is the capital", "Paris"),
        (" Turkey, in Anatolia", "Turkey"),
        (" 3.5 million", "3.5 million"),  # a decimal point is not a final dot
        (" 1,000 people", "1,000 people"),  # nor is a thousands comma a stop
        (' Daisy," she said', "Daisy"),
        (" Paris,France", "Paris"),
        (' "Hamlet".', '"Hamlet"'),
        (" 2,5", "2,5"),
        (" St. Louis", "St"),  # the paper's rule, literally
        (" U.S.A.", "U.S.A"),
        (" Frank Sinatra", "Frank Sinatra"),
        ("\nFrank Sinatra", ""),
        ("", ""),
    ],
)
def test_extract_answer_stops_at_line_break_final_dot_or_comma(
    generation: str, answer: str
) -> None:
    assert extract_answer(generation) == answer


# -- prompts and shots --------------------------------------------------------------------------


def test_prompt_zero_and_one_shot() -> None:
    item = QAItem("x", "Who wrote the book the origin of species?", ("Charles Darwin",))
    shot = QAItem(
        "y", "Who sang who wants to be a millionaire in high society?", ("Frank Sinatra",)
    )
    assert prompt(item, []) == (
        "Answer these questions:\nQ: Who wrote the book the origin of species?\nA:"
    )
    assert prompt(item, [shot]) == (  # Figure 3, left
        "Answer these questions:\n"
        "Q: Who sang who wants to be a millionaire in high society?\nA: Frank Sinatra\n"
        "Q: Who wrote the book the origin of species?\nA:"
    )


def test_nq_file(eval_data: Path) -> None:
    items = read_nq(eval_data / qa.NQ_FILE)
    assert len(items) == 3610
    assert items[0] == QAItem(
        "NQ-open.dev.jsonl:1",
        "When was the last time anyone was on the moon?",
        ("14 December 1972 UTC", "December 1972"),
    )
    darwin = next(i for i in items if "origin of species" in i.question)
    assert darwin.question == "Who wrote the book the origin of species?"  # as in Figure 3


@pytest.mark.parametrize("shots", [0, 1, 5, 64])
def test_shots_never_hold_the_item(eval_data: Path, shots: int) -> None:
    fake = FakeLM()
    settings = EvalSettings(eval_data, shots=shots, limit=12)
    result = TASKS["naturalquestions"].run(fake, settings)
    assert result.shots == shots and len(result.records) == 12
    for record, request in zip(result.records, fake.requests, strict=True):
        assert len(record["shots"]) == shots == len(set(record["shots"]))
        assert record["id"] not in record["shots"]
        asked = request.context.split("\n")
        assert asked[0] == "Answer these questions:"
        assert asked[-2:] == [f"Q: {record['question']}", "A:"]
        assert sum(line.startswith("Q: ") for line in asked) == shots + 1
        assert f"Q: {record['question']}" not in asked[:-2]
        assert request.sampling.temperature == 0.0 and "\n" in request.stop
    # the draw depends on the item, not on --limit
    again = TASKS["naturalquestions"].run(FakeLM(), EvalSettings(eval_data, shots=shots, limit=3))
    assert [r["shots"] for r in again.records] == [r["shots"] for r in result.records[:3]]


def test_default_is_one_shot(eval_data: Path) -> None:
    result = TASKS["naturalquestions"].run(FakeLM(), EvalSettings(eval_data, limit=2))
    assert result.shots == 1 and all(len(r["shots"]) == 1 for r in result.records)
    assert "other dev questions" in result.notes


def test_scoring_with_known_generations(eval_data: Path) -> None:
    canned = {
        "When was the last time anyone was on the moon?": " December 1972, on Apollo 17\nQ:",
        "Who wrote he ain't heavy he's my brother lyrics?": " Bob Russell.",
        "How many seasons of the bastard executioner are there?": " Two",
    }
    fake = FakeLM(lambda r: canned[r.context.rsplit("Q: ", 1)[1][: -len("\nA:")]])
    result = TASKS["naturalquestions"].run(fake, EvalSettings(eval_data, shots=0, limit=3))
    assert [r["prediction"] for r in result.records] == ["December 1972", "Bob Russell", "Two"]
    assert [r["correct"] for r in result.records] == [True, True, False]
    assert result.main == "em" and result.metrics["em"] == pytest.approx(2 / 3)


def test_shots_come_from_the_train_split_when_present(tmp_path: Path) -> None:
    (tmp_path / "nq_open").mkdir()
    lines = lambda qs: "".join(json.dumps({"question": q, "answer": ["x"]}) + "\n" for q in qs)  # noqa: E731
    (tmp_path / qa.NQ_FILE).write_text(lines(["who is a", "who is b"]))
    (tmp_path / qa.NQ_TRAIN_FILE).write_text(lines(["who is c", "who is a", "who is d"]))
    result = TASKS["naturalquestions"].run(FakeLM(), EvalSettings(tmp_path, shots=2))
    assert "NQ-open.train.jsonl" in result.notes
    # the train copy of "who is a" is the item too: never its example
    assert sorted(result.records[0]["shots"]) == ["NQ-open.train.jsonl:1", "NQ-open.train.jsonl:3"]
    assert all(s.startswith("NQ-open.train.jsonl:") for r in result.records for s in r["shots"])
    with pytest.raises(TaskDataError, match="3-shot needs 3 examples"):
        TASKS["naturalquestions"].run(FakeLM(), EvalSettings(tmp_path, shots=3))

    task = qa.triviaqa_task(files=(qa.TRIVIAQA_FILES[1],), train_files=(qa.TRIVIAQA_FILES[0],))
    result = task.run(FakeLM(), EvalSettings(FIXTURES, shots=3))
    assert [r["id"] for r in result.records] == ["tc_9004", "odql_9005", "wh_9006"]
    assert sorted(result.records[0]["shots"]) == ["bt_9003", "qz_9001", "sfq_9002"]


# -- TriviaQA ----------------------------------------------------------------------------------


def test_triviaqa_official_sample(eval_data: Path) -> None:
    (item,) = read_triviaqa(eval_data / "triviaqa" / "triviaqa_sample.json")
    assert item.id == "tc_33"
    assert item.question == "Which Lloyd Webber musical premiered in the US on 10th December 1993?"
    assert item.answers[0] == "Sunset Boulevard"  # Value first: the answer an example shows
    assert {"Sunset Blvd", "West Sunset Boulevard", "Sunset Bulevard"} <= set(item.answers)
    assert exact_match("Sunset Blvd.", item.answers)


def test_triviaqa_dev_files_are_one_set_of_questions() -> None:
    paths = [FIXTURES / f for f in qa.TRIVIAQA_FILES]
    items = read_triviaqa_files(paths)
    ids = [i.id for i in items]
    assert ids == ["qz_9001", "sfq_9002", "bt_9003", "tc_9004", "odql_9005", "wh_9006"]
    heptagon = items[2]
    assert heptagon.answers == ("7", "seven") and exact_match("Seven.", heptagon.answers)
    gold = items[4]
    assert gold.answers[0] == "Au" and "au" in gold.answers  # HumanAnswers count too


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_malformed_nq_record_names_file_and_line(tmp_path: Path) -> None:
    good = json.dumps({"question": "who", "answer": ["me"]})
    cases = {
        "no answer": (json.dumps({"question": "who"}), "'answer'"),
        "answer not a list": (json.dumps({"question": "who", "answer": "me"}), "'answer'"),
        "empty answer list": (json.dumps({"question": "who", "answer": []}), "'answer'"),
        "no question": (json.dumps({"answer": ["me"]}), "'question'"),
        "not JSON": ('{"question": "who", ', "not JSON"),
    }
    for name, (bad, field) in cases.items():
        path = write(tmp_path / "nq.jsonl", f"{good}\n\n{bad}\n")
        with pytest.raises(TaskDataError, match=field) as e:
            read_nq(path)
        assert f"{path}:3" in str(e.value), name


def test_malformed_triviaqa_record_names_file_and_line(tmp_path: Path) -> None:
    document = json.loads((FIXTURES / qa.TRIVIAQA_FILES[0]).read_text())
    del document["Data"][2]["Answer"]["Aliases"]
    path = write(tmp_path / "dev.json", json.dumps(document, indent=2))
    starts = [n for n, t in enumerate(path.read_text().splitlines(), 1) if t == "    {"]
    with pytest.raises(TaskDataError, match="Aliases") as e:
        read_triviaqa(path)
    assert f"{path}:{starts[2]}: Data[2] (QuestionId bt_9003)" in str(e.value)

    document["Data"][2] = {"Question": "?", "QuestionId": 7, "Answer": {}}
    path = write(tmp_path / "dev.json", json.dumps(document))  # one line
    with pytest.raises(TaskDataError, match=rf"{path}:1: Data\[2\]: field 'QuestionId'"):
        read_triviaqa(path)

    path = write(tmp_path / "dev.json", '{\n  "Data": [\n    {"Question": }\n]}')
    with pytest.raises(TaskDataError, match=rf"{path}:3:\d+: not JSON"):
        read_triviaqa(path)
    with pytest.raises(TaskDataError, match="'Data'"):
        read_triviaqa(write(tmp_path / "dev.json", json.dumps({"data": []})))


def test_missing_triviaqa_split_is_reported(eval_data: Path) -> None:
    with pytest.raises(TaskDataError, match="triviaqa/qa/wikipedia-dev.json: missing"):
        TASKS["triviaqa"].run(FakeLM(), EvalSettings(eval_data))


# -- end to end on a real model ----------------------------------------------------------------


def test_both_tasks_run_on_stories260k(
    lm: PastureLM, eval_data: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(qa, "MAX_NEW_TOKENS", 6)
    for name, data in (("naturalquestions", eval_data), ("triviaqa", FIXTURES)):
        result = TASKS[name].run(lm, EvalSettings(data, shots=1, limit=3))
        assert result.task == name and result.main == "em" and result.shots == 1
        assert len(result.records) == 3
        assert 0.0 <= result.metrics["em"] <= 1.0
        for r in result.records:
            assert r["prediction"] == extract_answer(r["generation"])
            assert "\n" not in r["generation"]
        assert result.to_dict()["n"] == 3
