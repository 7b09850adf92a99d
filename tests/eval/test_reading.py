"""RACE on hand-written articles in the published format (RACE is not in the shared data)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pasture import load_model
from pasture.eval import EvalSettings, PastureLM
from pasture.eval.run import Outcome, to_markdown
from pasture.eval.scoring import argmax
from pasture.eval.task import TaskDataError
from pasture.eval.tasks import TASKS, reading

FIXTURES = Path(__file__).parent / "fixtures"


@pytest.fixture(scope="module")
def lm(shared_data):
    d = shared_data / "models" / "stories260K"
    model, tok = load_model(d / "stories260K.bin", tokenizer=d / "tok512.model")
    return PastureLM(model, tok, batch_size=4, progress=False)


def test_tasks_and_sections():
    assert [n for n, t in TASKS.items() if t.section == "reading"] == ["race_middle", "race_high"]
    assert TASKS["race_middle"].files == ("race/test/middle",)


@pytest.mark.parametrize(
    ("name", "ids"),
    [
        ("race_middle", ["middle1.txt", "middle2.txt", "middle10.txt"]),
        ("race_high", ["high1.txt", "high2.txt"]),
    ],
)
def test_runs_on_published_layout(lm, name, ids):
    result = TASKS[name].run(lm, EvalSettings(FIXTURES))
    assert [r["id"] for r in result.records] == ids  # numeric file order: 1, 2, 10
    for record in result.records:
        assert len(record["choices"]) == len(record["loglikelihoods"]) == 4
        assert all(ll < 0 for ll in record["loglikelihoods"])
        assert 0 <= record["prediction"] < 4 and 0 <= record["gold"] < 4
    assert result.main == "acc_char" and {"acc", "acc_char"} <= set(result.metrics)
    # Brown et al.'s RACE rule (conditioned on "Answer:") is reported beside the paper's
    answer = [argmax(r["answer_normalized"]) == r["gold"] for r in result.records]
    assert result.metrics["acc_answer"] == sum(answer) / len(answer)
    table = to_markdown(Outcome(results={name: result}))
    assert "Answer:" in table.split("## Table 6")[1].split("\n")[2]  # the header row
    limited = TASKS[name].run(lm, EvalSettings(FIXTURES, limit=1))
    assert [r["id"] for r in limited.records] == ids[:1]
    assert limited.records[0]["loglikelihoods"] == result.records[0]["loglikelihoods"]


def test_prompt_as_brown_et_al_and_lm_eval():
    """One item per article: earlier questions answered in the context (a cloze question
    "  _  ." gets its answer in the blank), the last question asked."""
    (item,) = reading.race_items([FIXTURES / "race" / "test" / "middle" / "1.txt"])
    article = json.loads((FIXTURES / "race" / "test" / "middle" / "1.txt").read_text())["article"]
    assert item.contexts == (
        f"Article: {article}\n\n"
        "Question: What is the name of Tom's dog?\nAnswer: Max\n"
        "Tom goes to school by bike\n"
        "Where does Tom live?",
    )
    assert item.continuations == (
        " In a big city.",
        " In a small town near the sea.",
        " On a farm.",
        " In the mountains.",
    )
    assert item.gold == 1
    (cloze_last,) = reading.race_items([FIXTURES / "race" / "test" / "middle" / "2.txt"])
    assert cloze_last.contexts[0].endswith(
        "Question: When did Lucy's class plant trees?\nAnswer: On Sunday.\nThe students felt  _  ."
    )
    assert cloze_last.continuations[0] == " tired but happy" and cloze_last.gold == 0


def write_article(folder: Path, name: str, record: object) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(record if isinstance(record, str) else json.dumps(record), encoding="utf-8")
    return path


GOOD = {
    "answers": ["A", "B"],
    "options": [["a", "b", "c", "d"], ["e", "f", "g", "h"]],
    "questions": ["Q1?", "Q2?"],
    "article": "Text.",
    "id": "middle1.txt",
}


def test_malformed_articles_name_the_file_and_field(tmp_path, lm):
    folder = tmp_path / "race" / "test" / "middle"
    write_article(folder, "1.txt", GOOD)
    bad = write_article(folder, "2.txt", dict(GOOD, options=[["a", "b", "c", "d"], ["e", "f"]]))
    with pytest.raises(TaskDataError, match=rf"{bad}:1: field 'options\[1\]'"):
        TASKS["race_middle"].run(lm, EvalSettings(tmp_path))
    bad = write_article(folder, "2.txt", dict(GOOD, answers=["A", "E"]))
    with pytest.raises(TaskDataError, match=rf"{bad}:1: field 'answers\[1\]' is 'E'"):
        TASKS["race_middle"].run(lm, EvalSettings(tmp_path))
    bad = write_article(folder, "2.txt", dict(GOOD, answers=["A"]))
    with pytest.raises(TaskDataError, match=rf"{bad}:1: .*one length \(got 2, 2, 1\)"):
        TASKS["race_middle"].run(lm, EvalSettings(tmp_path))
    bad = write_article(folder, "2.txt", '{"answers": ["A"],\n "options": }')
    with pytest.raises(TaskDataError, match=rf"{bad}:2: not JSON"):
        TASKS["race_middle"].run(lm, EvalSettings(tmp_path))
    no_article = {k: v for k, v in GOOD.items() if k != "article"}
    bad = write_article(folder, "2.txt", no_article)
    with pytest.raises(TaskDataError, match=rf"{bad}:1: record has no field 'article'"):
        TASKS["race_middle"].run(lm, EvalSettings(tmp_path))
    with pytest.raises(TaskDataError, match=r"race/test/high: missing"):
        TASKS["race_high"].run(lm, EvalSettings(tmp_path))
