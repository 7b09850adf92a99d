"""PIQA keeps its labels in a separate file, one per line; lm-eval's copy has them inline.

Read when lm-eval builds the task, from the working directory (the evaluation data folder).
"""

from pathlib import Path

import datasets


def load(**_: object) -> datasets.DatasetDict:
    docs = datasets.load_dataset("json", data_files={"validation": "piqa/valid.jsonl"})
    labels = [int(x) for x in Path("piqa/valid-labels.lst").read_text().split()]
    if len(labels) != len(docs["validation"]):
        raise ValueError("piqa/valid-labels.lst and piqa/valid.jsonl differ in length")
    return datasets.DatasetDict(validation=docs["validation"].add_column("label", labels))
