"""LLaMA's published numbers (eval/paper.py) as printed in the paper, consistent with each
other where two tables print the same figure, and the results tables that print them."""

from __future__ import annotations

from pasture.eval import paper
from pasture.eval.run import Outcome, to_markdown
from pasture.eval.task import TaskResult
from pasture.eval.tasks import TASKS


def test_table_10_instruction_finetuning():
    table = paper.MMLU_INSTRUCTION
    assert table["LLaMA-I 65B"] == 68.9
    assert list(table)[:6] == [
        "OPT 30B",
        "GLM 120B",
        "PaLM 62B",
        "PaLM-cont 62B",
        "Chinchilla 70B",
        "LLaMA 65B",
    ]
    assert set(paper.INSTRUCTION_FINETUNED) <= set(table)
    assert list(table)[-len(paper.INSTRUCTION_FINETUNED) :] == list(paper.INSTRUCTION_FINETUNED)
    # the base model's row is Table 9's five-shot average for 65B
    assert table["LLaMA 65B"] == paper.MMLU["average"]["65B"]
    assert max(table, key=table.get) == "LLaMA-I 65B"


def test_every_table_column_names_a_task_and_the_papers_sizes():
    for table in paper.TABLES:
        for column in table.columns:
            assert column.task in TASKS, (table.title, column.task)
            by_shots = column.paper_by_shots
            rows = [column.paper] if by_shots is None else list(by_shots.values())
            assert all(set(row) <= set(paper.SIZES) for row in rows if row), column


def _result(task: str, metrics: dict[str, float], shots: int = 0) -> TaskResult:
    return TaskResult(task, next(iter(metrics)), metrics, {}, [{}] * 4, shots)


def _row(markdown: str, table: str, first_cell: str) -> list[str]:
    section = markdown.split(f"## {table}")[1].split("\n## ")[0]
    lines = [line for line in section.splitlines() if line.startswith(f"| {first_cell} |")]
    assert len(lines) == 1, section
    return [cell.strip() for cell in lines[0].strip("|").split("|")][1:]


def test_tables_follow_the_shots_and_the_largest_k_each_task_ran_with():
    results = {
        "naturalquestions": _result("naturalquestions", {"em": 0.25}, shots=5),
        "triviaqa": _result("triviaqa", {"em": 0.5}, shots=64),
        "math": _result("math", {"maj1@1": 0.125, "maj1@2": 0.25, "maj1@16": 0.5}),
        "gsm8k": _result("gsm8k", {"maj1@1": 0.75}),  # one sample: no maj1@k to show
    }
    table = to_markdown(Outcome(results=results))
    assert _row(table, "Tables 4–5", "model") == ["NaturalQuestions 5-shot", "TriviaQA 64-shot"]
    nq, tq = paper.NATURAL_QUESTIONS[5]["65B"], paper.TRIVIAQA[64]["65B"]
    assert _row(table, "Tables 4–5", "LLaMA 65B (paper)") == [f"{nq:.1f}", f"{tq:.1f}"]
    assert _row(table, "Tables 4–5", "this model") == ["25.0", "50.0"]
    header = _row(table, "Table 7", "model")
    assert header == ["MATH", "MATH maj1@16", "GSM8k", "GSM8k maj1@k"]
    assert _row(table, "Table 7", "this model") == ["12.5", "50.0", "75.0", "–"]
    assert "## Table 3" not in table  # no task of it ran


def test_table_10_puts_the_model_beside_llama_i():
    results = {"mmlu": _result("mmlu", {"average": 0.3125, "stem": 0.25}, shots=5)}
    table = to_markdown(Outcome(results=results), model_name="my-tuned")
    assert _row(table, "Table 10", "LLaMA-I 65B (paper)") == ["yes", "68.9"]
    assert _row(table, "Table 10", "LLaMA 65B (paper)") == ["no", "63.4"]
    assert _row(table, "Table 10", "my-tuned (5-shot)") == ["", "31.2"]
    section = table.split("## Table 10")[1]
    names = [line.split("|")[1].strip() for line in section.splitlines() if line.startswith("| ")]
    assert names[1:-1] == [f"{n} (paper)" for n in paper.MMLU_INSTRUCTION]  # the paper's order
    assert "## Table 10" not in to_markdown(Outcome(results={}))
