"""The instruction-tuning step of ``pasture demo``: the synthetic instruction set, a finetuning
run on a checkpoint (any format), and one held-out instruction answered by the exported model
through the chat template saved beside it.

    summary = instruction_demo(Path("runs/demo"), Path("runs/demo/hf"))
    print(summary["question"], "->", summary["answer"])
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import torch

from .. import interop
from .config import load_finetune_config
from .run import answer, finetune
from .synthetic import synthetic_records, write_jsonl
from .template import find_template


def instruction_demo(
    workdir: Path, checkpoint: Path, steps: int = 150, tasks: tuple[str, ...] = ("reverse",)
) -> dict[str, Any]:
    """Finetune ``checkpoint`` (full, as ``configs/finetune/demo.toml`` but for ``steps``) on
    600 synthetic examples of ``tasks``; returns the run's summary with one held-out
    ``question``, the model's ``answer`` and the ``expected`` one."""
    folder = workdir / "finetune"
    shutil.rmtree(folder, ignore_errors=True)
    train = write_jsonl(folder / "train.jsonl", synthetic_records(600, 0, tasks))
    held_records = synthetic_records(20, 1, tasks)
    held = write_jsonl(folder / "held.jsonl", held_records)
    cfg = load_finetune_config(
        None,
        [
            f"data=['{train}']",
            f"eval_data=['{held}']",
            "method=full",
            f"steps={steps}",
            "seq_len=256",
            "rows=4",
            "log_every=10",
            "optim.lr=3e-3",
            "optim.warmup_steps=5",
            f"checkpoint.every={steps}",
            f"run_dir='{folder / 'run'}'",
            f"out='{folder / 'hf'}'",
            "out_format=hf",
        ],
    )
    summary = finetune(cfg, checkpoint)
    tuned = interop.load(summary["out"])
    template = find_template(summary["out"])  # the one saved beside the weights
    record = held_records[0]
    question = f"{record['instruction']}\n\n{record['input']}"
    chat = [{"role": "user", "content": question}]
    model = tuned.to_model(dtype=torch.float32)
    reply = answer(model, tuned.tokenizer, template, chat, max_new_tokens=16).strip()
    return {**summary, "question": question, "answer": reply, "expected": record["output"]}


__all__ = ["instruction_demo"]
