"""A synthetic instruction set (nothing downloaded): four task families whose answers follow
from the input by a rule, so learning is measurable by exact match.

    copy       "Repeat the words."        "tin cup map"  -> "tin cup map"
    reverse    "Reverse the letters."     "cup"          -> "puc"
    uppercase  "Write it in capitals."    "tin cup"      -> "TIN CUP"
    add        "Add the numbers."         "23 + 58"      -> "81"

Deterministic from a seed (Python's ``random.Random``); records are Alpaca-shaped with a
``task`` key, so ``write_jsonl`` gives a file ``finetune.data.read_examples`` reads.

    records = synthetic_records(200, seed=0)
    write_jsonl("train.jsonl", records)
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Sequence
from pathlib import Path

from ..files import write_text

_THREE_LETTER = (
    "ant bag bed box bus cap car cat cow cup dog egg fan fox hat hen jam jar key kit leg "
    "map mat mop mug net nut owl pan pen pig pin pot rat red rug sun tin toy van web wig"
)
WORDS = tuple(_THREE_LETTER.split())


def _words(rng: random.Random) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(2, 4)))


def _copy(rng: random.Random) -> tuple[str, str, str]:
    text = _words(rng)
    return "Repeat the words.", text, text


def _reverse(rng: random.Random) -> tuple[str, str, str]:
    word = rng.choice(WORDS)
    return "Reverse the letters.", word, word[::-1]


def _uppercase(rng: random.Random) -> tuple[str, str, str]:
    text = _words(rng)
    return "Write it in capitals.", text, text.upper()


def _add(rng: random.Random) -> tuple[str, str, str]:
    a, b = rng.randint(0, 49), rng.randint(0, 49)
    return "Add the numbers.", f"{a} + {b}", str(a + b)


TASKS: dict[str, Callable[[random.Random], tuple[str, str, str]]] = {
    "copy": _copy,
    "reverse": _reverse,
    "uppercase": _uppercase,
    "add": _add,
}


def synthetic_records(
    n: int, seed: int = 0, tasks: Sequence[str] = tuple(TASKS)
) -> list[dict[str, str]]:
    """``n`` records cycling through ``tasks``: {"instruction", "input", "output", "task"}."""
    unknown = [t for t in tasks if t not in TASKS]
    if unknown or not tasks:
        raise ValueError(f"unknown task {unknown[:1]}; known: {', '.join(TASKS)}")
    rng = random.Random(seed)
    records = []
    for i in range(n):
        task = tasks[i % len(tasks)]
        instruction, text, answer = TASKS[task](rng)
        records.append({"instruction": instruction, "input": text, "output": answer, "task": task})
    return records


def write_jsonl(path: str | Path, records: Sequence[dict]) -> Path:
    """One JSON object per line, written atomically."""
    write_text(path, "".join(json.dumps(r) + "\n" for r in records))
    return Path(path)


__all__ = ["TASKS", "WORDS", "synthetic_records", "write_jsonl"]
