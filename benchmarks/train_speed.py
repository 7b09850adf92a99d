"""Training tokens/s on CPU: Pasture's step vs Hugging Face ``LlamaForCausalLM``, same weights.

    LD_PRELOAD=/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4 \\
        .venv/bin/python benchmarks/train_speed.py

One step = forward, cross-entropy, backward, clip at 1.0, AdamW (the paper's settings), in
float32 (``--dtype bf16``: the forward under ``torch.autocast("cpu", torch.bfloat16)`` on both
sides, float32 weights, optimizer and loss, as ``pasture train`` does with bf16 on one GPU),
for llama2.c's 15M and 110M shapes with the LLaMA vocab. Both models start from the
same weights (Pasture's, written through its HF converter) and see the same batches; the two
alternate, a few steps each round, and the median tokens/s is reported. One JSON line per size
goes to benchmarks/results/train_speed.jsonl.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import torch
from transformers import LlamaForCausalLM

from pasture import interop
from pasture.interop import Checkpoint
from pasture.model import Transformer, preset
from pasture.train.loop import train_step
from pasture.train.optim import OptimConfig, build_optimizer

RESULTS = Path(__file__).parent / "results" / "train_speed.jsonl"


def steps_per_s(step, batches: list[torch.Tensor]) -> tuple[float, float]:
    """Steps per wall-clock second and per CPU second of this process (the latter moves less
    when other jobs share the machine)."""
    start, start_cpu = time.perf_counter(), time.process_time()
    for tokens in batches:
        step(tokens)
    wall, cpu = time.perf_counter() - start, time.process_time() - start_cpu
    return len(batches) / wall, len(batches) / cpu


def make_step(model, optimizer, logits_of, grad_clip: float, autocast: bool):
    """pasture train's own step (``train_step``), for either side's forward."""

    def step(tokens: torch.Tensor) -> None:
        micro_batches = [(tokens[:, :-1], tokens[:, 1:])]
        train_step(model, optimizer, micro_batches, grad_clip, autocast, logits_of)

    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", nargs="+", default=["stories15M", "stories110M"])
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=3, help="steps per round and side")
    parser.add_argument(
        "--dtype", choices=["fp32", "bf16"], default="fp32", help="bf16: autocast on both sides"
    )
    args = parser.parse_args()
    RESULTS.parent.mkdir(exist_ok=True)
    run = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        "allocator": "tcmalloc" if "tcmalloc" in os.environ.get("LD_PRELOAD", "") else "glibc",
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "dtype": args.dtype,
        "load_avg_1min": os.getloadavg()[0],
    }
    cfg = OptimConfig()
    for size in args.sizes:
        ours = Transformer(preset(size, max_seq_len=args.seq_len))
        ours.init_weights(seed=0)
        with tempfile.TemporaryDirectory() as tmp:
            interop.save(Checkpoint.from_model(ours), Path(tmp) / "hf", "hf")
            theirs = LlamaForCausalLM.from_pretrained(Path(tmp) / "hf", torch_dtype=torch.float32)
        ours.train(), theirs.train()
        opt_ours, opt_theirs = build_optimizer(ours, cfg), build_optimizer(theirs, cfg)
        generator = torch.Generator().manual_seed(0)
        batches = [
            torch.randint(0, 32000, (args.batch, args.seq_len + 1), generator=generator)
            for _ in range(args.steps)
        ]

        # Same work on both sides: logits, then the same cross-entropy (not HF's loss path).
        autocast = args.dtype == "bf16"
        step_ours = make_step(ours, opt_ours, ours, cfg.grad_clip, autocast)
        step_theirs_plain = make_step(
            theirs, opt_theirs, lambda x, hf=theirs: hf(x).logits, cfg.grad_clip, autocast
        )
        step_ours(batches[0]), step_theirs_plain(batches[0])  # warm-up
        speeds: dict[str, list[float]] = {"pasture": [], "hf": []}
        per_cpu_s: dict[str, list[float]] = {"pasture": [], "hf": []}
        tokens_per_step = args.batch * args.seq_len
        for _ in range(args.rounds):
            for name, step in (("pasture", step_ours), ("hf", step_theirs_plain)):
                wall, cpu = steps_per_s(step, batches)
                speeds[name].append(wall * tokens_per_step)
                per_cpu_s[name].append(cpu * tokens_per_step)
        ours_s, theirs_s = statistics.median(speeds["pasture"]), statistics.median(speeds["hf"])
        ours_cpu, theirs_cpu = (statistics.median(per_cpu_s[k]) for k in ("pasture", "hf"))
        record = {
            **run,
            "size": size,
            "batch": args.batch,
            "seq_len": args.seq_len,
            "pasture_tok_s": round(ours_s),
            "hf_tok_s": round(theirs_s),
            "ratio": round(ours_s / theirs_s, 2),
            "samples": speeds,
            "pasture_tok_per_cpu_s": round(ours_cpu),
            "hf_tok_per_cpu_s": round(theirs_cpu),
            "ratio_per_cpu_s": round(ours_cpu / theirs_cpu, 2),
            "samples_per_cpu_s": per_cpu_s,
        }
        with RESULTS.open("a") as f:
            f.write(json.dumps(record) + "\n")
        print(
            f"{size:12s} pasture {ours_s:8.0f} tok/s   hf {theirs_s:8.0f} tok/s   "
            f"ratio {ours_s / theirs_s:.2f}x   per CPU-second {ours_cpu / theirs_cpu:.2f}x   "
            f"({args.dtype}, {run['allocator']}, "
            f"{run['threads']} threads, load {run['load_avg_1min']:.1f})"
        )


if __name__ == "__main__":
    main()
