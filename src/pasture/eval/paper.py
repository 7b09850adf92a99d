"""LLaMA's published scores (Touvron et al. 2023), and the tables that print them beside an
evaluated model's (``TABLES``, laid out by ``pasture.eval.run``).

Scores are keyed by task, then by the metric name the task reports, then by model size.
Percentages as printed in the paper's tables (toxicity scores as printed, 0–1). Only rows the
paper prints for LLaMA are here, except Table 10 (instruction finetuning), keyed by the model
names it prints, for comparing a finetuned model with LLaMA-I and its peers. TruthfulQA's
Table 14 is a GPT-judge generation score, not MC1/MC2, so it is not comparable with what
Pasture computes and is left out.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

SIZES = ("7B", "13B", "33B", "65B")


def _row(*values: float) -> dict[str, float]:
    return dict(zip(SIZES, values, strict=True))


# Table 3: zero-shot common sense reasoning.
COMMON_SENSE = {
    "boolq": _row(76.5, 78.1, 83.1, 85.3),
    "piqa": _row(79.8, 80.1, 82.3, 82.8),
    "siqa": _row(48.9, 50.4, 50.4, 52.3),
    "hellaswag": _row(76.1, 79.2, 82.8, 84.2),
    "winogrande": _row(70.1, 73.0, 76.0, 77.0),
    "arc_easy": _row(72.8, 74.8, 80.0, 78.9),
    "arc_challenge": _row(47.6, 52.7, 57.8, 56.0),
    "openbookqa": _row(57.2, 56.4, 58.6, 60.2),
}

# Tables 4 and 5: exact match by number of shots (NaturalQuestions; TriviaQA filtered dev).
NATURAL_QUESTIONS = {
    0: _row(16.8, 20.1, 24.9, 23.8),
    1: _row(18.7, 23.4, 28.3, 31.0),
    5: _row(22.0, 28.1, 32.9, 35.0),
    64: _row(26.1, 31.9, 36.0, 39.9),
}
TRIVIAQA = {
    0: _row(50.0, 56.6, 65.1, 68.2),
    1: _row(53.4, 60.5, 67.9, 71.6),
    5: _row(56.3, 63.1, 69.9, 72.6),
    64: _row(57.6, 64.0, 70.4, 73.0),
}

# Table 6: zero-shot reading comprehension.
RACE = {"race_middle": _row(61.1, 61.6, 64.1, 67.9), "race_high": _row(46.9, 47.2, 48.3, 51.6)}

# Table 7: maj1@1 and maj1@k (k = 256 for MATH, 100 for GSM8K).
MATH = {
    "math": {"maj1@1": _row(2.9, 3.9, 7.1, 10.6), "maj1@k": _row(6.9, 8.8, 15.2, 20.5)},
    "gsm8k": {"maj1@1": _row(11.0, 17.8, 35.6, 50.9), "maj1@k": _row(18.1, 29.3, 53.1, 69.7)},
}

# Table 8: pass@1 and pass@k (k = 100 for HumanEval, 80 for MBPP).
CODE = {
    "humaneval": {"pass@1": _row(10.5, 15.8, 21.7, 23.7), "pass@k": _row(36.5, 52.5, 70.7, 79.3)},
    "mbpp": {"pass@1": _row(17.7, 22.0, 30.2, 37.7), "pass@k": _row(56.2, 64.0, 73.4, 76.8)},
}

# Table 9: MMLU five-shot, by category.
MMLU = {
    "humanities": _row(34.0, 45.0, 55.8, 61.8),
    "stem": _row(30.5, 35.8, 46.0, 51.7),
    "social_sciences": _row(38.3, 53.8, 66.7, 72.9),
    "other": _row(38.1, 53.3, 63.4, 67.4),
    "average": _row(35.1, 46.9, 57.8, 63.4),
}

# Table 11: RealToxicityPrompts, mean toxicity of greedy continuations (Perspective API).
TOXICITY = {
    "basic": _row(0.106, 0.104, 0.107, 0.128),
    "respectful": _row(0.081, 0.095, 0.087, 0.141),
}

# Table 12: CrowS-Pairs, % of pairs where LLaMA-65B prefers the stereotype (65B only).
CROWS_PAIRS_65B = {
    "gender": 70.6,
    "religion": 79.0,
    "race-color": 57.0,
    "sexual-orientation": 81.0,
    "age": 70.1,
    "nationality": 64.2,
    "disability": 66.7,
    "physical-appearance": 77.8,
    "socioeconomic": 71.5,
    "average": 66.6,
}

# Table 13: WinoGender co-reference accuracy by pronoun; "gotcha": the pronoun does not match
# the occupation's majority gender.
WINOGENDER = {
    "all": _row(66.0, 64.7, 69.0, 77.5),
    "female": _row(65.0, 66.7, 66.7, 78.8),
    "male": _row(60.8, 62.5, 62.1, 72.1),
    "neutral": _row(72.1, 65.0, 78.3, 81.7),
    "female_gotcha": _row(64.2, 65.8, 61.7, 75.0),
    "male_gotcha": _row(55.0, 55.8, 55.8, 63.3),
}

# Table 10: MMLU five-shot of models of moderate size, without and with instruction finetuning
# (the paper's LLaMA-I is LLaMA 65B finetuned on instructions, after Chung et al. 2022).
# Model name and size as printed, in the paper's row order; the instruction-finetuned rows last.
MMLU_INSTRUCTION = {
    "OPT 30B": 26.1,
    "GLM 120B": 44.8,
    "PaLM 62B": 55.1,
    "PaLM-cont 62B": 62.8,
    "Chinchilla 70B": 67.5,
    "LLaMA 65B": 63.4,
    "OPT-IML-Max 30B": 43.2,
    "Flan-T5-XXL 11B": 55.1,
    "Flan-PaLM 62B": 59.6,
    "Flan-PaLM-cont 62B": 66.1,
    "LLaMA-I 65B": 68.9,
}
INSTRUCTION_FINETUNED = (
    "OPT-IML-Max 30B",
    "Flan-T5-XXL 11B",
    "Flan-PaLM 62B",
    "Flan-PaLM-cont 62B",
    "LLaMA-I 65B",
)


# -- the tables of results.md, in the paper's order -------------------------------------------


@dataclass(frozen=True)
class Column:
    """A task's metric beside LLaMA's number for it.

    ``metric`` None is the task's headline metric; ``"NAME@k"`` is the metric ``NAME@k`` with
    the largest k above 1 the task reported (the header gets its name). ``paper_by_shots``
    picks LLaMA's row by the number of shots the task ran with (the header gets it).
    """

    header: str
    task: str
    metric: str | None = None
    paper: Mapping[str, float] | None = None  # by model size
    paper_by_shots: Mapping[int, Mapping[str, float]] | None = None
    percent: bool = True  # False: a 0–1 score, printed as is (toxicity)


@dataclass(frozen=True)
class Table:
    title: str
    columns: tuple[Column, ...]


TABLES = (
    Table(
        "Table 3: common sense reasoning, zero-shot",
        tuple(
            Column(header, task, paper=COMMON_SENSE[task])
            for header, task in [
                ("BoolQ", "boolq"),
                ("PIQA", "piqa"),
                ("SIQA", "siqa"),
                ("HellaSwag", "hellaswag"),
                ("WinoGrande", "winogrande"),
                ("ARC-e", "arc_easy"),
                ("ARC-c", "arc_challenge"),
                ("OBQA", "openbookqa"),
            ]
        ),
    ),
    Table(
        "Tables 4–5: closed-book question answering, exact match",
        (
            Column("NaturalQuestions", "naturalquestions", paper_by_shots=NATURAL_QUESTIONS),
            Column("TriviaQA", "triviaqa", paper_by_shots=TRIVIAQA),
        ),
    ),
    Table(
        "Table 6: reading comprehension, zero-shot (per character; Brown et al. "
        'conditioned RACE on "Answer:")',
        (
            Column("RACE-middle", "race_middle", paper=RACE["race_middle"]),
            Column("RACE-high", "race_high", paper=RACE["race_high"]),
            Column('RACE-middle, "Answer:"', "race_middle", "acc_answer"),
            Column('RACE-high, "Answer:"', "race_high", "acc_answer"),
        ),
    ),
    Table(
        "Table 7: quantitative reasoning (paper's k: 256 MATH, 100 GSM8K)",
        (
            Column("MATH", "math", "maj1@1", MATH["math"]["maj1@1"]),
            Column("MATH", "math", "maj1@k", MATH["math"]["maj1@k"]),
            Column("GSM8k", "gsm8k", "maj1@1", MATH["gsm8k"]["maj1@1"]),
            Column("GSM8k", "gsm8k", "maj1@k", MATH["gsm8k"]["maj1@k"]),
        ),
    ),
    Table(
        "Table 8: code generation (paper's k: 100 HumanEval, 80 MBPP)",
        (
            Column("HumanEval pass@1", "humaneval", "pass@1", CODE["humaneval"]["pass@1"]),
            Column("HumanEval", "humaneval", "pass@k", CODE["humaneval"]["pass@k"]),
            Column("MBPP pass@1", "mbpp", "pass@1", CODE["mbpp"]["pass@1"]),
            Column("MBPP", "mbpp", "pass@k", CODE["mbpp"]["pass@k"]),
        ),
    ),
    Table(
        "Table 9: MMLU, five-shot",
        tuple(
            Column(header, "mmlu", metric, MMLU[metric])
            for header, metric in [
                ("Humanities", "humanities"),
                ("STEM", "stem"),
                ("Social Sciences", "social_sciences"),
                ("Other", "other"),
                ("Average", "average"),
            ]
        ),
    ),
    Table(
        "Table 11: RealToxicityPrompts, mean toxicity",
        (
            Column("Basic", "realtoxicityprompts", "basic", TOXICITY["basic"], percent=False),
            Column(
                "Respectful",
                "realtoxicityprompts",
                "respectful",
                TOXICITY["respectful"],
                percent=False,
            ),
        ),
    ),
    Table(
        "Table 12: CrowS-Pairs, % preferring the stereotype (paper: 65B only)",
        tuple(
            Column(bias.replace("-", " ").capitalize(), "crows_pairs", bias, {"65B": score})
            for bias, score in CROWS_PAIRS_65B.items()
        ),
    ),
    Table(
        "Table 13: WinoGender, co-reference accuracy",
        tuple(
            Column(header, "winogender", metric, WINOGENDER[metric])
            for header, metric in [
                ("All", "all"),
                ("her/her/she", "female"),
                ("his/him/he", "male"),
                ("their/them/someone", "neutral"),
                ("her/her/she (gotcha)", "female_gotcha"),
                ("his/him/he (gotcha)", "male_gotcha"),
            ]
        ),
    ),
)
