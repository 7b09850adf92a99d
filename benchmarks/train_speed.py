"""Training tokens/s on CPU: Pasture's step vs Hugging Face ``LlamaForCausalLM``, same weights.

    LD_PRELOAD=/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4 \\
        .venv/bin/python benchmarks/train_speed.py

One step = forward, cross-entropy, backward, clip at 1.0, AdamW (the paper's settings), in
float32, for llama2.c's 15M and 110M shapes with the LLaMA vocab. Both models start from the
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
import torch.nn.functional as F
from transformers import LlamaForCausalLM

from pasture import interop
from pasture.interop import Checkpoint
from pasture.model import Transformer, preset
from pasture.train.optim import OptimConfig, build_optimizer, clip_grad_norm

RESULTS = Path(__file__).parent / "results" / "train_speed.jsonl"


def steps_per_s(step, batches: list[torch.Tensor]) -> float:
    start = time.perf_counter()
    for tokens in batches:
        step(tokens)
    return len(batches) / (time.perf_counter() - start)


def make_step(model, optimizer, logits_of, grad_clip: float):
    def step(tokens: torch.Tensor) -> None:
        logits = logits_of(tokens[:, :-1])
        F.cross_entropy(logits.flatten(0, 1), tokens[:, 1:].flatten()).backward()
        clip_grad_norm(model, grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", nargs="+", default=["stories15M", "stories110M"])
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=3, help="steps per round and side")
    args = parser.parse_args()
    RESULTS.parent.mkdir(exist_ok=True)
    run = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        "allocator": "tcmalloc" if "tcmalloc" in os.environ.get("LD_PRELOAD", "") else "glibc",
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
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
        step_ours = make_step(ours, opt_ours, ours, cfg.grad_clip)
        step_theirs_plain = make_step(
            theirs, opt_theirs, lambda x, hf=theirs: hf(x).logits, cfg.grad_clip
        )
        step_ours(batches[0]), step_theirs_plain(batches[0])  # warm-up
        speeds: dict[str, list[float]] = {"pasture": [], "hf": []}
        tokens_per_step = args.batch * args.seq_len
        for _ in range(args.rounds):
            speeds["pasture"].append(steps_per_s(step_ours, batches) * tokens_per_step)
            speeds["hf"].append(steps_per_s(step_theirs_plain, batches) * tokens_per_step)
        ours_s, theirs_s = statistics.median(speeds["pasture"]), statistics.median(speeds["hf"])
        record = {
            **run,
            "size": size,
            "batch": args.batch,
            "seq_len": args.seq_len,
            "pasture_tok_s": round(ours_s),
            "hf_tok_s": round(theirs_s),
            "ratio": round(ours_s / theirs_s, 2),
            "samples": speeds,
        }
        with RESULTS.open("a") as f:
            f.write(json.dumps(record) + "\n")
        print(
            f"{size:12s} pasture {ours_s:8.0f} tok/s   hf {theirs_s:8.0f} tok/s   "
            f"ratio {ours_s / theirs_s:.2f}x   ({run['allocator']}, {run['threads']} threads)"
        )


if __name__ == "__main__":
    main()
