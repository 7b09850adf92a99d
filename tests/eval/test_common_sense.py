"""Common sense tasks: real files through a real model, the paper's scoring rules checked by
hand with a fake model, lm-eval's prompts on known items, malformed records, batch invariance."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import pytest

from pasture import load_model
from pasture.eval import EvalSettings, PastureLM
from pasture.eval.task import TaskDataError
from pasture.eval.tasks import TASKS
from pasture.eval.tasks import common_sense as cs

FIXTURES = Path(__file__).parent / "fixtures"
NAMES = ["boolq", "piqa", "siqa", "hellaswag", "winogrande", "arc_easy", "arc_challenge"]
NAMES += ["openbookqa"]


@pytest.fixture(scope="module")
def lm(shared_data):
    d = shared_data / "models" / "stories260K"
    model, tok = load_model(d / "stories260K.bin", tokenizer=d / "tok512.model")
    return PastureLM(model, tok, batch_size=8, progress=False)


def data_dir(shared_data: Path, name: str) -> Path:
    """HellaSwag is not in the shared data: its reader runs on hand-written records."""
    return FIXTURES if name == "hellaswag" else shared_data / "eval"


class FakeLM:
    """Returns chosen log-likelihoods: ``conditional[continuation]`` after a task's context,
    ``unconditional[continuation]`` after "Answer:"; remembers every request."""

    def __init__(
        self, conditional: dict[str, float], unconditional: dict[str, float] | None = None
    ):
        self.conditional, self.unconditional = conditional, unconditional or {}
        self.requests: list[tuple[str, str]] = []

    def loglikelihood(self, requests: Sequence[tuple[str, str]]) -> list[tuple[float, bool]]:
        self.requests += requests
        table = lambda c: self.unconditional if c == "Answer:" else self.conditional  # noqa: E731
        return [(table(c)[x], False) for c, x in requests]


def test_the_papers_tasks_and_sections():
    assert [n for n, t in TASKS.items() if t.section == "common_sense"] == NAMES


@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
def test_each_task_runs_on_its_file(lm, shared_data, name):
    task = TASKS[name]
    settings = EvalSettings(data_dir(shared_data, name), limit=10)
    result = task.run(lm, settings)
    assert len(result.records) == (5 if name == "hellaswag" else 10)
    for record in result.records:
        n = len(record["choices"])
        assert n == len(record["loglikelihoods"]) >= 2
        assert all(ll < 0 for ll in record["loglikelihoods"])
        assert 0 <= record["prediction"] < n and 0 <= record["gold"] < n
    assert {"acc", "acc_char"} <= set(result.metrics)
    main = {"boolq": "acc_answer", "openbookqa": "acc_answer", "winogrande": "acc"}
    assert result.main == main.get(name, "acc_char")
    assert 0 <= result.metrics[result.main] <= 1


def test_char_normalization_picks_per_character(shared_data):
    """ARC-Easy's first item: continuations " " + choice, choices of 59/54/50/43 characters
    (the separating space is not the completion's), chosen log-likelihoods: the raw sum
    prefers the shortest choice (3); per character, choice 0 (-27/59 = -0.458 beats
    -26/54 = -0.481, -27/50 = -0.540, -25/43 = -0.581), which is the gold."""
    (item,) = cs.arc_items(shared_data / "eval" / "arc" / "ARC-Easy-Test.jsonl")[:1]
    assert [len(c) for c in item.continuations] == [60, 55, 51, 44] and item.gold == 0
    assert all(c.startswith(" ") and not c.startswith("  ") for c in item.continuations)
    fake = FakeLM(
        dict(zip(item.continuations, [-27.0, -26.0, -27.0, -25.0], strict=True)),
        dict(zip(item.continuations, [-20.0, -20.0, -28.0, -20.0], strict=True)),
    )
    result = TASKS["arc_easy"].run(fake, EvalSettings(shared_data / "eval", limit=1))
    assert result.records[0]["prediction"] == 0
    # every record keeps all three scores; "Answer:" conditioning picks choice 2 (+1)
    assert result.records[0]["answer_normalized"] == [-7.0, -6.0, 1.0, -5.0]
    assert result.metrics == {"acc": 0.0, "acc_char": 1.0, "acc_answer": 0.0}
    assert result.records[0]["char_normalized"] == pytest.approx(
        [-27 / 59, -26 / 54, -27 / 50, -25 / 43]
    )


def test_answer_conditioning_on_boolq(shared_data):
    """BoolQ's first item (gold "no"): P(yes) beats P(no) raw (-1.5 > -2.0) and per character;
    divided by P(. | "Answer:"), "no" wins: -2.0 - (-3.0) = 1.0 > -1.5 - (-1.0) = -0.5."""
    fake = FakeLM({" no": -2.0, " yes": -1.5}, {" no": -3.0, " yes": -1.0})
    result = TASKS["boolq"].run(fake, EvalSettings(shared_data / "eval", limit=1))
    record = result.records[0]
    assert record["gold"] == 0 and record["prediction"] == 0
    assert record["answer_normalized"] == [1.0, -0.5]
    assert result.metrics == {"acc": 0.0, "acc_char": 0.0, "acc_answer": 1.0}
    assert ("Answer:", " no") in fake.requests and ("Answer:", " yes") in fake.requests
    context = fake.requests[-1][0]
    assert context.startswith("Ethanol fuel -- All biomass goes through")
    assert context.endswith(
        "\nQuestion: does ethanol take more energy make that produces?\nAnswer:"
    )


def test_answer_conditioning_on_openbookqa(shared_data):
    """First test item, gold B: the raw sum prefers A, conditioning on "Answer:" picks B."""
    choices = [" make more phone calls", " quit eating lunch out"]
    choices += [" buy less with monopoly money", " have lunch with friends"]
    fake = FakeLM(
        dict(zip(choices, [-10.0, -12.0, -20.0, -15.0], strict=True)),
        dict(zip(choices, [-11.0, -16.0, -22.0, -17.0], strict=True)),
    )
    result = TASKS["openbookqa"].run(fake, EvalSettings(shared_data / "eval", limit=1))
    record = result.records[0]
    assert record["answer_normalized"] == [1.0, 4.0, 2.0, 2.0]
    assert (record["prediction"], record["gold"]) == (1, 1)
    assert result.metrics["acc"] == 0.0 and result.metrics["acc_answer"] == 1.0
    stem = fake.requests[-1][0]
    assert stem.startswith("A person wants to start saving money") and stem.endswith("money is to")


def test_winogrande_partial_scoring_pairs(shared_data):
    """dev.jsonl line 1: "Sarah was a much better surgeon than Maria so _ always got the
    easier cases." (answer 2)."""
    item = cs.winogrande_items(shared_data / "eval" / "winogrande" / "dev.jsonl")[0]
    assert item.contexts == (
        "Sarah was a much better surgeon than Maria so Sarah",
        "Sarah was a much better surgeon than Maria so Maria",
    )
    assert item.continuations == (" always got the easier cases.",) * 2
    assert item.gold == 1
    fake = FakeLM({" always got the easier cases.": -4.0})
    fake.loglikelihood = lambda requests: [  # the option in the context decides
        (-4.0 if c.endswith("Maria") else -5.0, False) for c, _ in requests
    ]
    result = TASKS["winogrande"].run(fake, EvalSettings(shared_data / "eval", limit=1))
    assert result.records[0]["prediction"] == 1
    assert result.metrics["acc"] == result.metrics["acc_char"] == 1.0


def test_hellaswag_preprocessing_as_lm_eval():
    items = cs.hellaswag_items(FIXTURES / "hellaswag" / "hellaswag_val.jsonl")
    assert [it.id for it in items] == ["4", "17", "29", "42", "56"]
    assert [it.gold for it in items] == [0, 1, 0, 1, 1]
    first, wikihow = items[0], items[2]
    assert first.contexts == (
        "Washing dishes: A woman stands at a kitchen sink full of dirty plates. She",
    )
    assert first.continuations[0] == " turns on the tap and scrubs a plate with a sponge."
    # " [title]" becomes ". ", other brackets go, one pass turns double spaces into one.
    assert wikihow.contexts == (
        "Home and Garden: How to water a cactus. Check the soil first. "
        "Push a finger into the soil up to the first knuckle.",
    )
    assert wikihow.continuations[0] == (
        "  If the soil feels dry, it is time to water.. Water slowly at the base of the plant."
    )


def test_prompts_of_known_items(shared_data):
    eval_dir = shared_data / "eval"
    arc = cs.arc_items(eval_dir / "arc" / "ARC-Challenge-Test.jsonl")[0]
    assert arc.contexts == (
        "Question: An astronomer observes that a planet rotates faster after a meteorite "
        "impact. Which is the most likely effect of this increase in rotation?\nAnswer:",
    )
    assert arc.continuations[2] == " Planetary days will become shorter." and arc.gold == 2
    piqa = cs.piqa_items(eval_dir / "piqa" / "valid.jsonl", eval_dir / "piqa" / "valid-labels.lst")
    assert piqa[0].contexts == (
        "Question: How do I ready a guinea pig cage for it's new occupants?\nAnswer:",
    )
    assert [it.gold for it in piqa[:3]] == [0, 1, 1]
    siqa = cs.siqa_items(eval_dir / "siqa" / "dev.jsonl", eval_dir / "siqa" / "dev-labels.lst")
    assert siqa[0].contexts == (
        "Q: Tracy didn't go home that evening and resisted Riley's attacks. "
        "What does Tracy need to do before this?\nA:",
    )
    assert siqa[0].continuations == (
        " make a new plan",
        " Go home and see Riley",
        " Find somewhere to go",
    )
    assert [it.gold for it in siqa[:3]] == [2, 0, 1]  # labels 3, 1, 2 are 1-based


def write_lines(path: Path, lines: list[str]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


ARC_OK = {
    "id": "x1",
    "question": {
        "stem": "Why?",
        "choices": [{"text": "a", "label": "A"}, {"text": "b", "label": "B"}],
    },
    "answerKey": "A",
}


def test_malformed_records_name_file_line_and_field(tmp_path):
    no_key = {k: v for k, v in ARC_OK.items() if k != "answerKey"}
    bad = write_lines(tmp_path / "arc.jsonl", [json.dumps(ARC_OK), json.dumps(no_key)])
    with pytest.raises(TaskDataError, match=rf"{bad}:2: .*'answerKey'"):
        cs.arc_items(bad)
    wrong_key = dict(ARC_OK, answerKey="E")
    bad = write_lines(tmp_path / "arc2.jsonl", [json.dumps(ARC_OK), "", json.dumps(wrong_key)])
    with pytest.raises(TaskDataError, match=rf"{bad}:3: field 'answerKey' is 'E'"):
        cs.arc_items(bad)
    bad = write_lines(tmp_path / "boolq.jsonl", ['{"question": "q", "title": "t"', "{}"])
    with pytest.raises(TaskDataError, match=rf"{bad}:1: not JSON"):
        cs.boolq_items(bad)
    record = {"question": "q", "title": "t", "passage": "p", "answer": "yes"}
    bad = write_lines(tmp_path / "boolq2.jsonl", [json.dumps(record)])
    with pytest.raises(TaskDataError, match=rf"{bad}:1: field 'answer' is str"):
        cs.boolq_items(bad)
    record = {
        "qID": "q",
        "sentence": "no blank here",
        "option1": "a",
        "option2": "b",
        "answer": "1",
    }
    bad = write_lines(tmp_path / "wino.jsonl", [json.dumps(record)])
    with pytest.raises(TaskDataError, match=rf"{bad}:1: field 'sentence'"):
        cs.winogrande_items(bad)
    goal = write_lines(tmp_path / "piqa.jsonl", ['{"goal": "g", "sol1": "a", "sol2": "b"}'] * 2)
    labels = write_lines(tmp_path / "piqa-labels.lst", ["0", "2"])
    with pytest.raises(TaskDataError, match=rf"{labels}:2: label '2'"):
        cs.piqa_items(goal, labels)
    labels = write_lines(tmp_path / "piqa-labels1.lst", ["0"])
    with pytest.raises(TaskDataError, match=rf"{labels}: 1 labels for 2 records"):
        cs.piqa_items(goal, labels)
    swag = json.loads((FIXTURES / "hellaswag" / "hellaswag_val.jsonl").read_text().splitlines()[0])
    bad = write_lines(tmp_path / "hellaswag_val.jsonl", [json.dumps(dict(swag, label=4))])
    with pytest.raises(TaskDataError, match=rf"{bad}:1: field 'label' is 4"):
        cs.hellaswag_items(bad)


def test_missing_file_is_named(tmp_path, lm):
    with pytest.raises(TaskDataError, match="hellaswag_val.jsonl: missing"):
        TASKS["hellaswag"].run(lm, EvalSettings(tmp_path))


@pytest.mark.slow
def test_batch_size_changes_nothing(lm, shared_data):
    settings = EvalSettings(shared_data / "eval", limit=10)
    runs = {}
    for batch_size in (1, 3, 16):
        other = PastureLM(lm.model, lm.tokenizer, batch_size=batch_size, progress=False)
        runs[batch_size] = [TASKS[n].run(other, settings).records for n in ("arc_easy", "piqa")]
    for batch_size in (3, 16):
        for one, many in zip(runs[1], runs[batch_size], strict=True):
            for a, b in zip(one, many, strict=True):
                assert a["prediction"] == b["prediction"]
                assert a["loglikelihoods"] == pytest.approx(b["loglikelihoods"], abs=1e-6, rel=0)
