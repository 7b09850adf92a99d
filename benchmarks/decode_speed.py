"""Batch-1 greedy decode tokens/s: Pasture vs Hugging Face ``generate()`` on the same weights.

    .venv/bin/python benchmarks/decode_speed.py                      # both sizes, CPU
    LD_PRELOAD=/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4 \
        .venv/bin/python benchmarks/decode_speed.py --rounds 5      # under tcmalloc

Random float32 weights in llama2.c's 15M and 110M shapes with the LLaMA vocab. Both run in one
process (same allocator, same threads), alternating, so machine noise hits both alike. Writes
one JSON line per measurement to benchmarks/results/decode_speed.jsonl.
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
from pasture.generate import generate_tokens, use_decode_layout
from pasture.interop import Checkpoint
from pasture.model import Transformer, preset

RESULTS = Path(__file__).parent / "results" / "decode_speed.jsonl"


def allocator() -> str:
    preload = os.environ.get("LD_PRELOAD", "")
    return "tcmalloc" if "tcmalloc" in preload else "glibc malloc"


def time_pasture(model: Transformer, prompt: list[int], n: int) -> float:
    start = time.perf_counter()
    out = generate_tokens(model, [prompt], n)[0]
    elapsed = time.perf_counter() - start
    assert len(out) == n
    return n / elapsed


def time_hf(model: LlamaForCausalLM, prompt: list[int], n: int) -> float:
    ids = torch.tensor([prompt])
    start = time.perf_counter()
    with torch.inference_mode():
        out = model.generate(
            ids,
            max_new_tokens=n,
            min_new_tokens=n,
            do_sample=False,
            eos_token_id=None,
            pad_token_id=0,
        )
    elapsed = time.perf_counter() - start
    assert out.shape[1] == len(prompt) + n
    return n / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", nargs="+", default=["stories15M", "stories110M"])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    RESULTS.parent.mkdir(exist_ok=True)
    run = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        "allocator": allocator(),
        "threads": args.threads,
        "torch": torch.__version__,
    }
    for size in args.sizes:
        model = Transformer(preset(size))
        model.init_weights(seed=0)
        model.eval()
        with tempfile.TemporaryDirectory() as tmp:
            interop.save(Checkpoint.from_model(model), Path(tmp) / "hf", "hf")
            hf = LlamaForCausalLM.from_pretrained(Path(tmp) / "hf", torch_dtype=torch.float32)
        hf.eval()
        prompt = [1] + torch.randint(
            3, 32000, (7,), generator=torch.Generator().manual_seed(0)
        ).tolist()
        # Same greedy tokens from both, so both do the same work.
        ours_tokens = generate_tokens(model, [prompt], 16)[0]
        with torch.inference_mode():
            hf_tokens = hf.generate(
                torch.tensor([prompt]),
                max_new_tokens=16,
                do_sample=False,
                eos_token_id=None,
                pad_token_id=0,
            )[0, len(prompt) :].tolist()
        assert ours_tokens == hf_tokens, "Pasture and HF disagree on greedy tokens"
        time_pasture(model, prompt, 8), time_hf(hf, prompt, 8)  # warm-up
        speeds: dict[str, list[float]] = {"pasture": [], "hf": [], "hf_column_major": []}
        for _ in range(args.rounds):
            speeds["pasture"].append(time_pasture(model, prompt, args.new_tokens))
            speeds["hf"].append(time_hf(hf, prompt, args.new_tokens))
        # For the record, not the ratio: HF given the weight layout Pasture decodes with.
        use_decode_layout(hf)
        for _ in range(args.rounds):
            speeds["hf_column_major"].append(time_hf(hf, prompt, args.new_tokens))
        pasture, theirs = statistics.median(speeds["pasture"]), statistics.median(speeds["hf"])
        theirs_cm = statistics.median(speeds["hf_column_major"])
        record = {
            **run,
            "size": size,
            "new_tokens": args.new_tokens,
            "rounds": args.rounds,
            "pasture_tok_s": round(pasture, 1),
            "hf_tok_s": round(theirs, 1),
            "ratio": round(pasture / theirs, 2),
            "hf_column_major_tok_s": round(theirs_cm, 1),
            "samples": speeds,
        }
        with RESULTS.open("a") as f:
            f.write(json.dumps(record) + "\n")
        print(
            f"{size:12s} pasture {pasture:7.1f} tok/s   hf {theirs:7.1f} tok/s   "
            f"ratio {pasture / theirs:.2f}x   (hf, column-major weights: {theirs_cm:.1f} tok/s; "
            f"{run['allocator']}, {args.threads} threads)"
        )


if __name__ == "__main__":
    main()
