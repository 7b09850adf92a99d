"""Mathematical reasoning (paper §3.4, Table 7): GSM8K and MATH, maj1@1 and maj1@k.

    pasture eval --checkpoint out-hf --tasks gsm8k,math --samples 16 --limit 100

The paper evaluates as Minerva (Lewkowycz et al. 2022) does: maj1@1 is the accuracy of one
greedy solution; maj1@k samples k solutions per problem and scores the answer most of them
give (Table 7: k = 100 for GSM8K, 256 for MATH). ``--samples k`` sets k; the default,
``DEFAULT_SAMPLES``, is sized for a CPU, and ``--samples 1`` runs the greedy solution only.
Samples are drawn at temperature ``TEMPERATURE`` = 0.6 (Minerva's), with no top-k/top-p
truncation; each sample's seed depends only on (--seed, task, problem, sample index), so a
result does not depend on the batch size. Both figures are reported; the headline is maj1@1.

Voting (``majority_vote``): over the samples that give an answer (a sample with no
extractable answer does not vote), the most frequent normalized answer; among equally
frequent answers, the one given by the lowest-numbered sample. No answer at all scores wrong.

Tasks:

- ``gsm8k`` (Cobbe et al. 2021; ``gsm8k/test.jsonl``, 1,319 problems), eight-shot with the
  chain-of-thought exemplars of Wei et al. (2022, Table 20), which Minerva uses for GSM8K:
  ``"Q: {question}\\nA: {chain of thought} The answer is {n}.\\n\\n"`` per exemplar, then
  ``"Q: {question}\\nA:"`` (lm-evaluation-harness's ``gsm8k-cot`` layout). Generation stops at
  a blank line or ``"Q:"``. The answer is the number after the first "The answer is" (an
  optional ``$``, thousands commas, a decimal part); the gold is the number after the final
  ``"#### "`` of the ``answer`` field. Both are compared as numbers written canonically
  (``canonical_number``: "1,234.50" → "1234.5").
- ``math`` (Hendrycks et al. 2021; ``math/test.jsonl``, 5,000 problems; the shared copy renames
  ``problem``/``solution`` to ``question``/``answer``, see its MANIFEST), four-shot with
  Minerva's prompt: ``"Problem:\\n{problem}\\n\\nSolution: {solution}\\n\\n"`` per exemplar,
  each solution ending ``"Final Answer: The final answer is ${X}$. I hope it is correct."``,
  then ``"Problem:\\n{problem}\\n\\nSolution:"`` (the exemplars and layout of
  lm-evaluation-harness's ``minerva_math``, a reimplementation of Minerva's appendix D.2).
  Generation stops at ``"Problem:"`` or after "I hope it is correct.". The answer is the text
  after "Final Answer: The final answer is" (up to "I hope it is correct." or the line's end);
  the gold is the last ``\\boxed{...}`` of the solution, braces matched. Both go through
  Minerva's ``normalize_final_answer`` (appendix D.1, kept as published) and are compared as
  strings. Minerva also counts answers that SymPy proves equal; that check needs a LaTeX
  parser and is left out, so a correct answer written differently from the gold can be
  scored wrong (never the reverse).

``--shots n`` takes the first n exemplars (0-8 for GSM8K, 0-4 for MATH).
"""

from __future__ import annotations

import hashlib
import re
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

from ..lm import GenerationRequest, LanguageModel, Sampling
from ..scoring import bootstrap_stderr, mean
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

SECTION = "math"
GSM8K_FILE = "gsm8k/test.jsonl"
MATH_FILE = "math/test.jsonl"
GSM8K_STOP = ("\n\n", "Q:")
MATH_STOP = ("Problem:", "I hope it is correct.")
TEMPERATURE = 0.6
DEFAULT_SAMPLES = 4
# Read at run time: tests lower them.
GSM8K_MAX_NEW_TOKENS = 256
MATH_MAX_NEW_TOKENS = 512

# Wei et al. (2022), "Chain-of-thought prompting elicits reasoning in large language models",
# the eight math word problem exemplars (their Table 20), as lm-evaluation-harness has them.
GSM8K_EXEMPLARS: tuple[tuple[str, str], ...] = (
    (
        "There are 15 trees in the grove. Grove workers will plant trees in the grove today. "
        "After they are done, there will be 21 trees. How many trees did the grove workers "
        "plant today?",
        "There are 15 trees originally. Then there were 21 trees after some more were planted. "
        "So there must have been 21 - 15 = 6. The answer is 6.",
    ),
    (
        "If there are 3 cars in the parking lot and 2 more cars arrive, how many cars are in "
        "the parking lot?",
        "There are originally 3 cars. 2 more cars arrive. 3 + 2 = 5. The answer is 5.",
    ),
    (
        "Leah had 32 chocolates and her sister had 42. If they ate 35, how many pieces do they "
        "have left in total?",
        "Originally, Leah had 32 chocolates. Her sister had 42. So in total they had 32 + 42 = "
        "74. After eating 35, they had 74 - 35 = 39. The answer is 39.",
    ),
    (
        "Jason had 20 lollipops. He gave Denny some lollipops. Now Jason has 12 lollipops. How "
        "many lollipops did Jason give to Denny?",
        "Jason started with 20 lollipops. Then he had 12 after giving some to Denny. So he gave "
        "Denny 20 - 12 = 8. The answer is 8.",
    ),
    (
        "Shawn has five toys. For Christmas, he got two toys each from his mom and dad. How "
        "many toys does he have now?",
        "Shawn started with 5 toys. If he got 2 toys each from his mom and dad, then that is 4 "
        "more toys. 5 + 4 = 9. The answer is 9.",
    ),
    (
        "There were nine computers in the server room. Five more computers were installed each "
        "day, from monday to thursday. How many computers are now in the server room?",
        "There were originally 9 computers. For each of 4 days, 5 more computers were added. "
        "So 5 * 4 = 20 computers were added. 9 + 20 is 29. The answer is 29.",
    ),
    (
        "Michael had 58 golf balls. On tuesday, he lost 23 golf balls. On wednesday, he lost 2 "
        "more. How many golf balls did he have at the end of wednesday?",
        "Michael started with 58 golf balls. After losing 23 on tuesday, he had 58 - 23 = 35. "
        "After losing 2 more, he had 35 - 2 = 33 golf balls. The answer is 33.",
    ),
    (
        "Olivia has $23. She bought five bagels for $3 each. How much money does she have left?",
        "Olivia had 23 dollars. 5 bagels for 3 dollars each will be 5 x 3 = 15 dollars. So she "
        "has 23 - 15 dollars left. 23 - 15 is 8. The answer is 8.",
    ),
)

# Minerva's four MATH exemplars (Lewkowycz et al. 2022, appendix D.2), as in
# lm-evaluation-harness's minerva_math.
MATH_EXEMPLARS: tuple[tuple[str, str], ...] = (
    (
        "Find the domain of the expression  $\\frac{\\sqrt{x-2}}{\\sqrt{5-x}}$.",
        "The expressions inside each square root must be non-negative. Therefore, "
        "$x-2 \\ge 0$, so $x\\ge2$, and $5 - x \\ge 0$, so $x \\le 5$. Also, the denominator "
        "cannot be equal to zero, so $5-x>0$, which gives $x<5$. Therefore, the domain of the "
        "expression is $\\boxed{[2,5)}$.\n"
        "Final Answer: The final answer is $[2,5)$. I hope it is correct.",
    ),
    (
        "If $\\det \\mathbf{A} = 2$ and $\\det \\mathbf{B} = 12,$ then find "
        "$\\det (\\mathbf{A} \\mathbf{B}).$",
        "We have that $\\det (\\mathbf{A} \\mathbf{B}) = (\\det \\mathbf{A})(\\det \\mathbf{B}) "
        "= (2)(12) = \\boxed{24}.$\n"
        "Final Answer: The final answer is $24$. I hope it is correct.",
    ),
    (
        "Terrell usually lifts two 20-pound weights 12 times. If he uses two 15-pound weights "
        "instead, how many times must Terrell lift them in order to lift the same total weight?",
        "If Terrell lifts two 20-pound weights 12 times, he lifts a total of "
        "$2\\cdot 12\\cdot20=480$ pounds of weight.  If he lifts two 15-pound weights instead "
        "for $n$ times, he will lift a total of $2\\cdot15\\cdot n=30n$ pounds of weight.  "
        "Equating this to 480 pounds, we can solve for $n$:\n"
        "\\begin{align*}\n30n&=480\\\\\n\\Rightarrow\\qquad n&=480/30=\\boxed{16}\n"
        "\\end{align*}\n"
        "Final Answer: The final answer is $16$. I hope it is correct.",
    ),
    (
        "If the system of equations\n\n\\begin{align*}\n6x-4y&=a,\\\\\n6y-9x &=b.\n"
        "\\end{align*}has a solution $(x, y)$ where $x$ and $y$ are both nonzero,\n"
        "find $\\frac{a}{b},$ assuming $b$ is nonzero.",
        "If we multiply the first equation by $-\\frac{3}{2}$, we obtain\n\n"
        "$$6y-9x=-\\frac{3}{2}a.$$Since we also know that $6y-9x=b$, we have\n\n"
        "$$-\\frac{3}{2}a=b\\Rightarrow\\frac{a}{b}=\\boxed{-\\frac{2}{3}}.$$\n"
        "Final Answer: The final answer is $-\\frac{2}{3}$. I hope it is correct.",
    ),
)


@dataclass(frozen=True)
class Problem:
    id: str
    question: str
    gold: str  # normalized, compared with a normalized answer
    info: dict[str, Any]  # kept in the records (MATH's level and type)


# -- GSM8K answers ----------------------------------------------------------------------------

_GSM8K_ANSWER = re.compile(r"The answer is\s*\$?\s*(-?[0-9][0-9,]*(?:\.[0-9]+)?)")


def canonical_number(text: str) -> str | None:
    """A number written one way: no thousands commas, no trailing zeros, no exponent."""
    try:
        value = Decimal(text.replace(",", "").strip())
    except InvalidOperation:
        return None
    if not value.is_finite():
        return None
    return "0" if value == 0 else format(value.normalize(), "f")


def gsm8k_answer(generation: str) -> str | None:
    """The number after the first "The answer is", written canonically; None if none."""
    match = _GSM8K_ANSWER.search(generation)
    return canonical_number(match.group(1)) if match else None


def gsm8k_prompt(question: str, shots: int = len(GSM8K_EXEMPLARS)) -> str:
    examples = "".join(f"Q: {q}\nA: {a}\n\n" for q, a in GSM8K_EXEMPLARS[:shots])
    return f"{examples}Q: {question}\nA:"


def read_gsm8k(path: Path) -> list[Problem]:
    problems = []
    for number, record in read_jsonl(path):
        where = f"{path}:{number}"
        question = field_of(record, "question", where)
        solution = field_of(record, "answer", where)
        if "#### " not in solution:
            raise TaskDataError(f"{where}: field 'answer' has no final '#### <number>'")
        gold = canonical_number(solution.rsplit("#### ", 1)[1])
        if gold is None:
            raise TaskDataError(f"{where}: field 'answer' does not end in '#### <number>'")
        problems.append(Problem(f"gsm8k/{number}", question, gold, {}))
    return problems


# -- MATH answers (Minerva's rules) -----------------------------------------------------------

_FINAL_ANSWER = re.compile(r"Final Answer: The final answer is(.*?)(?:I hope it is correct\.|\n|$)")


def last_boxed(text: str) -> str | None:
    """The content of the last ``\\boxed{...}`` (or ``\\fbox{...}``), braces matched; of
    ``\\boxed x`` it is the text up to the next ``$``. None if there is none, or unclosed."""
    start = max(text.rfind("\\boxed"), text.rfind("\\fbox"))
    if start < 0:
        return None
    rest = text[start + len("\\boxed" if text.startswith("\\boxed", start) else "\\fbox") :]
    if rest.startswith(" "):
        return rest[1:].split("$")[0].strip()
    if not rest.startswith("{"):
        return None
    depth = 0
    for i, ch in enumerate(rest):
        depth += {"{": 1, "}": -1}.get(ch, 0)
        if depth == 0:
            return rest[1:i]
    return None


# Lewkowycz et al. (2022), appendix D.1, as published.
SUBSTITUTIONS = [
    ("an ", ""),
    ("a ", ""),
    (".$", "$"),
    ("\\$", ""),
    (r"\ ", ""),
    (" ", ""),
    ("mbox", "text"),
    (",\\text{and}", ","),
    ("\\text{and}", ","),
    ("\\text{m}", "\\text{}"),
]
REMOVED_EXPRESSIONS = [
    "square",
    "ways",
    "integers",
    "dollars",
    "mph",
    "inches",
    "ft",
    "hours",
    "km",
    "units",
    "\\ldots",
    "sue",
    "points",
    "feet",
    "minutes",
    "digits",
    "cents",
    "degrees",
    "cm",
    "gm",
    "pounds",
    "meters",
    "meals",
    "edges",
    "students",
    "childrentickets",
    "multiples",
    "\\text{s}",
    "\\text{.}",
    "\\text{\ns}",
    "\\text{}^2",
    "\\text{}^3",
    "\\text{\n}",
    "\\text{}",
    r"\mathrm{th}",
    r"^\circ",
    r"^{\circ}",
    r"\;",
    r",\!",
    "{,}",
    '"',
    "\\dots",
]


def normalize_final_answer(final_answer: str) -> str:
    """Minerva's normalization of a final answer (appendix D.1), unchanged: the last ``=``
    side, units and spacing removed, the content of ``$...$``, ``\\text{}``, ``\\textbf{}``,
    ``\\overline{}``, ``\\boxed{}``, shorthand ``\\fracab``/``\\sqrta`` braced, "100,000" →
    "100000". Its quirks are kept (removing "ft" also turns ``\\left`` into ``\\le``); they
    apply to the gold and to the answer alike."""
    final_answer = final_answer.split("=")[-1]
    for before, after in SUBSTITUTIONS:
        final_answer = final_answer.replace(before, after)
    for expr in REMOVED_EXPRESSIONS:
        final_answer = final_answer.replace(expr, "")
    final_answer = re.sub(r"(.*?)(\$)(.*?)(\$)(.*)", "$\\3$", final_answer)
    final_answer = re.sub(r"(\\text\{)(.*?)(\})", "\\2", final_answer)
    final_answer = re.sub(r"(\\textbf\{)(.*?)(\})", "\\2", final_answer)
    final_answer = re.sub(r"(\\overline\{)(.*?)(\})", "\\2", final_answer)
    final_answer = re.sub(r"(\\boxed\{)(.*)(\})", "\\2", final_answer)
    final_answer = re.sub(r"(frac)([^{])(.)", "frac{\\2}{\\3}", final_answer)
    final_answer = re.sub(r"(sqrt)([^{])", "sqrt{\\2}", final_answer)
    final_answer = final_answer.replace("$", "")
    if final_answer.replace(",", "").isdigit():
        final_answer = final_answer.replace(",", "")
    return final_answer


def math_answer(generation: str) -> str | None:
    """The normalized text after "Final Answer: The final answer is"; None if there is none."""
    match = _FINAL_ANSWER.search(generation)
    if match is None:
        return None
    answer = match.group(1).strip()
    answer = answer[:-1].rstrip() if answer.endswith(".") else answer
    return normalize_final_answer(answer) if answer else None


def math_prompt(problem: str, shots: int = len(MATH_EXEMPLARS)) -> str:
    examples = "".join(f"Problem:\n{p}\n\nSolution: {s}\n\n" for p, s in MATH_EXEMPLARS[:shots])
    return f"{examples}Problem:\n{problem}\n\nSolution:"


def read_math(path: Path) -> list[Problem]:
    """Problems of the shared JSONL copy (``question``, ``answer`` = the full solution,
    ``level``, ``type``); the gold is the solution's last boxed expression, normalized."""
    problems = []
    for number, record in read_jsonl(path):
        where = f"{path}:{number}"
        question = field_of(record, "question", where)
        solution = field_of(record, "answer", where)
        boxed = last_boxed(solution)
        if boxed is None:
            raise TaskDataError(f"{where}: field 'answer' has no closed \\boxed{{...}} answer")
        info = {k: record[k] for k in ("level", "type") if k in record}
        problems.append(Problem(f"math/{number}", question, normalize_final_answer(boxed), info))
    return problems


# -- sampling and voting ----------------------------------------------------------------------


def majority_vote(answers: Sequence[str | None]) -> str | None:
    """The most frequent answer (None does not vote); a tie goes to the earliest sample's."""
    counts = Counter(a for a in answers if a is not None)
    if not counts:
        return None
    most = max(counts.values())
    return next(a for a in answers if a is not None and counts[a] == most)


def sample_seed(seed: int, task: str, problem_id: str, index: int) -> int:
    digest = hashlib.sha256(f"{seed}:{task}:{problem_id}:{index}".encode()).digest()
    return int.from_bytes(digest[:4], "little")


def maj_result(
    name: str,
    lm: LanguageModel,
    settings: EvalSettings,
    problems: Sequence[Problem],
    prompt: Callable[[str], str],
    answer: Callable[[str], str | None],
    stop: tuple[str, ...],
    max_new_tokens: int,
    shots: int,
) -> TaskResult:
    """maj1@1 from one greedy solution per problem and, for k > 1, maj1@k from k samples."""
    k = DEFAULT_SAMPLES if settings.samples is None else settings.samples
    if k < 1:
        raise TaskDataError(f"{name}: --samples must be 1 or more, not {k}")
    problems = limited(problems, settings)
    greedy = Sampling(max_new_tokens=max_new_tokens, temperature=0.0)
    requests = [GenerationRequest(prompt(p.question), stop, greedy) for p in problems]
    if k > 1:
        requests += [
            GenerationRequest(
                prompt(p.question),
                stop,
                Sampling(
                    max_new_tokens=max_new_tokens,
                    temperature=TEMPERATURE,
                    seed=sample_seed(settings.seed, name, p.id, j),
                ),
            )
            for p in problems
            for j in range(k)
        ]
    generations = lm.generate_until(requests)
    n = len(problems)
    records: list[dict[str, Any]] = []
    for i, p in enumerate(problems):
        first = answer(generations[i])
        record = {
            "id": p.id,
            **p.info,
            "gold": p.gold,
            "generation": generations[i],
            "answer": first,
            "correct": first == p.gold,
        }
        if k > 1:
            sampled = generations[n + i * k : n + (i + 1) * k]
            answers = [answer(g) for g in sampled]
            vote = majority_vote(answers)
            record["samples"] = [
                {"generation": g, "answer": a} for g, a in zip(sampled, answers, strict=True)
            ]
            record.update(vote=vote, correct_at_k=vote == p.gold)
        records.append(record)
    greedy_hits = [r["correct"] for r in records]
    metrics = {"maj1@1": mean(greedy_hits)}
    stderr = {"maj1@1": bootstrap_stderr(greedy_hits)}
    notes = f"{shots}-shot; maj1@1 greedy"
    if k > 1:
        voted = [r["correct_at_k"] for r in records]
        metrics[f"maj1@{k}"], stderr[f"maj1@{k}"] = mean(voted), bootstrap_stderr(voted)
        notes += f", maj1@{k} from {k} samples at temperature {TEMPERATURE}"
    notes += f"; at most {max_new_tokens} new tokens"
    return TaskResult(name, "maj1@1", metrics, stderr, records, shots, notes)


def _shots(name: str, settings: EvalSettings, available: int) -> int:
    shots = available if settings.shots is None else settings.shots
    if not 0 <= shots <= available:
        raise TaskDataError(f"{name} takes 0 to {available} shots, not {shots}")
    return shots


def run_gsm8k(lm: LanguageModel, settings: EvalSettings) -> TaskResult:
    shots = _shots("gsm8k", settings, len(GSM8K_EXEMPLARS))
    problems = read_gsm8k(task_file(settings, GSM8K_FILE))
    return maj_result(
        "gsm8k",
        lm,
        settings,
        problems,
        lambda q: gsm8k_prompt(q, shots),
        gsm8k_answer,
        GSM8K_STOP,
        GSM8K_MAX_NEW_TOKENS,
        shots,
    )


def run_math(lm: LanguageModel, settings: EvalSettings) -> TaskResult:
    shots = _shots("math", settings, len(MATH_EXEMPLARS))
    problems = read_math(task_file(settings, MATH_FILE))
    return maj_result(
        "math",
        lm,
        settings,
        problems,
        lambda q: math_prompt(q, shots),
        math_answer,
        MATH_STOP,
        MATH_MAX_NEW_TOKENS,
        shots,
    )


TASKS: list[Task] = [
    Task(
        "math",
        SECTION,
        (MATH_FILE,),
        run_math,
        "MATH test (5,000 problems), Minerva's four-shot prompt, maj1@1 and maj1@k",
    ),
    Task(
        "gsm8k",
        SECTION,
        (GSM8K_FILE,),
        run_gsm8k,
        "GSM8K test (1,319 problems), eight-shot chain of thought, maj1@1 and maj1@k",
    ),
]
