"""MMLU: lm-eval's five-shot prompt on a known item, the category map and averages, the CSV
reader's errors, and a run over every subject on a real model."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from pasture import load_model
from pasture.eval import EvalSettings, PastureLM
from pasture.eval.task import TaskDataError
from pasture.eval.tasks import TASKS, mmlu

ABSTRACT_ALGEBRA_0 = """\
The following are multiple choice questions (with answers) about abstract algebra.

Find all c in Z_3 such that Z_3[x]/(x^2 + c) is a field.
A. 0
B. 1
C. 2
D. 3
Answer: B

Statement 1 | If aH is an element of a factor group, then |aH| divides |a|. \
Statement 2 | If H and K are subgroups of G then HK is a subgroup of G.
A. True, True
B. False, False
C. True, False
D. False, True
Answer: B

Statement 1 | Every element of a group generates a cyclic subgroup of the group. \
Statement 2 | The symmetric group S_10 has 10 elements.
A. True, True
B. False, False
C. True, False
D. False, True
Answer: C

Statement 1| Every function from a finite set onto itself must be one to one. \
Statement 2 | Every subgroup of an abelian group is abelian.
A. True, True
B. False, False
C. True, False
D. False, True
Answer: A

Find the characteristic of the ring 2Z.
A. 0
B. 3
C. 12
D. 30
Answer: A

Find the degree for the given field extension Q(sqrt(2), sqrt(3), sqrt(18)) over Q.
A. 0
B. 4
C. 2
D. 6
Answer:"""


@pytest.fixture(scope="module")
def eval_dir(shared_data) -> Path:
    return shared_data / "eval"


def test_five_dev_shots_in_file_order(eval_dir):
    items = mmlu.subject_items(EvalSettings(eval_dir, limit=2), "abstract_algebra", 5)
    assert len(items) == 2
    assert items[0].contexts == (ABSTRACT_ALGEBRA_0,)
    assert items[0].continuations == (" A", " B", " C", " D") and items[0].gold == 1
    assert items[1].contexts[0].startswith(ABSTRACT_ALGEBRA_0.rsplit("\n\n", 1)[0])
    assert (
        items[1]
        .contexts[0]
        .endswith("Find the index of <p> in S_5.\nA. 8\nB. 2\nC. 24\nD. 120\nAnswer:")
    )
    zero_shot = mmlu.subject_items(EvalSettings(eval_dir, limit=1), "high_school_us_history", 0)
    assert (
        zero_shot[0]
        .contexts[0]
        .startswith(
            "The following are multiple choice questions (with answers) about high school us "
            "history.\n\nThis question refers to the following information."
        )
    )
    assert "Answer:" not in zero_shot[0].contexts[0][:-7]


def test_category_map_covers_the_57_subjects(eval_dir):
    on_disk = {p.name.removesuffix("_test.csv") for p in (eval_dir / "mmlu" / "test").glob("*.csv")}
    assert set(mmlu.CATEGORIES) == on_disk
    assert Counter(mmlu.CATEGORIES.values()) == {
        "stem": 19,
        "humanities": 13,
        "other": 13,
        "social_sciences": 12,
    }
    assert len(TASKS["mmlu"].files) == 2 * 57


def test_category_scores_weight_subjects_by_items():
    per_subject = {
        "abstract_algebra": (3, 4),  # stem
        "anatomy": (1, 1),  # stem
        "philosophy": (2, 5),  # humanities
        "marketing": (0, 2),  # other
    }
    assert mmlu.category_scores(per_subject) == {
        "subject/abstract_algebra": 0.75,
        "subject/anatomy": 1.0,
        "subject/philosophy": 0.4,
        "subject/marketing": 0.0,
        "humanities": 0.4,
        "stem": 0.8,  # (3 + 1) / (4 + 1), not the mean of 0.75 and 1.0
        "other": 0.0,
        "average": 0.5,  # 6 / 12
    }


@pytest.mark.slow
def test_runs_every_subject_and_reports_categories(shared_data, eval_dir):
    d = shared_data / "models" / "stories260K"
    model, tok = load_model(d / "stories260K.bin", tokenizer=d / "tok512.model")
    lm = PastureLM(model, tok, batch_size=16, progress=False)
    # Zero-shot keeps this quick on a shared CPU: five-shot prompts fill stories260K's
    # 512-token window four times per item (the prompt itself is checked above).
    result = TASKS["mmlu"].run(lm, EvalSettings(eval_dir, limit=1, shots=0))
    assert result.shots == 0 and result.main == "average"
    assert len(result.records) == 57
    assert {r["subject"] for r in result.records} == set(mmlu.CATEGORIES)
    for record in result.records:
        assert record["choices"] == [" A", " B", " C", " D"]
        assert len(record["loglikelihoods"]) == 4 and all(x < 0 for x in record["loglikelihoods"])
        assert record["prediction"] == max(range(4), key=lambda j: record["loglikelihoods"][j])
    for category in mmlu.CATEGORY_ORDER:
        hits = [r["correct"] for r in result.records if mmlu.CATEGORIES[r["subject"]] == category]
        assert result.metrics[category] == pytest.approx(sum(hits) / len(hits))
    assert result.metrics["average"] == pytest.approx(result.metrics["acc"])
    assert sum(k.startswith("subject/") for k in result.metrics) == 57


def test_shots_beyond_the_dev_split(eval_dir):
    assert mmlu.SHOTS == 5  # the paper's setting, used when --shots is not given
    with pytest.raises(TaskDataError, match="--shots 6"):
        TASKS["mmlu"].run(None, EvalSettings(eval_dir, shots=6))  # type: ignore[arg-type]


def test_malformed_rows_name_file_and_line(tmp_path):
    path = tmp_path / "x_test.csv"
    path.write_text('"A question\nover two lines",1,2,3,4,A\nQ2,1,2,3,4,E\n', encoding="utf-8")
    with pytest.raises(TaskDataError, match=rf"{path}:3: field 'answer' \(column 6\) is 'E'"):
        mmlu.read_csv(path)
    path.write_text("Q1,1,2,3,4,A\nQ2,1,2,3,A\n", encoding="utf-8")
    with pytest.raises(TaskDataError, match=rf"{path}:2: 5 columns, expected 6"):
        mmlu.read_csv(path)
    with pytest.raises(TaskDataError, match="abstract_algebra_dev.csv: missing"):
        mmlu.subject_items(EvalSettings(tmp_path), "abstract_algebra", 5)
