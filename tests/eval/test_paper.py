"""LLaMA's published numbers (eval/paper.py) as printed in the paper, and consistent with each
other where two tables print the same figure."""

from __future__ import annotations

from pasture.eval import paper


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
