"""Batch-1 greedy decode tokens/s on CPU: Pasture (float32, int8, int4 weights) vs Hugging Face
``generate()`` and vs llama.cpp (llama-cpp-python) on the same weights.

    .venv/bin/python benchmarks/decode_speed.py                      # both sizes, CPU
    .venv/bin/python benchmarks/decode_speed.py --threads 2 --rounds 7
    LD_PRELOAD=/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4 \
        .venv/bin/python benchmarks/decode_speed.py                  # under tcmalloc
    .venv/bin/python benchmarks/decode_speed.py --smoke --out /tmp/d.jsonl   # seconds, tiny

Random float32 weights in llama2.c's 15M and 110M shapes with the LLaMA vocab size. The same
weights go to HF (Pasture's HF converter) and to llama.cpp (Pasture's GGUF writer, F32, with a
synthetic SentencePiece vocabulary of the right size: only ids are fed, so which pieces they
name does not matter). int8/int4 are ``pasture.model.quant`` applied to a copy of the float32
model (weight-only; int4 group 128 where every layer's width allows it, else the largest that
fits). Every variant runs in one process (same allocator, same threads), in an order rotated
each round, so machine noise hits all alike. Each timing is 8 prompt tokens + ``--new-tokens``
greedy tokens on every side, prefill included; tok/s = new tokens / wall seconds.

The llama.cpp part needs ``pip install llama-cpp-python`` (a benchmark extra, built from source);
without it the script measures the rest and says so. Writes one JSON line per size to
benchmarks/results/decode_speed.jsonl (or ``--out``).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import torch
from transformers import LlamaForCausalLM

from pasture import interop
from pasture.data.tokenizer import Tokenizer
from pasture.generate import generate_tokens, use_decode_layout
from pasture.interop import Checkpoint
from pasture.model import ModelArgs, Transformer, preset
from pasture.model.quant import INT4_GROUP_SIZES, QuantConfig, quantize

try:
    import llama_cpp
except ImportError:  # a benchmark extra
    llama_cpp = None

RESULTS = Path(__file__).parent / "results" / "decode_speed.jsonl"
AGREE_TOKENS = 16  # greedy tokens compared between implementations before timing


def allocator() -> str:
    preload = os.environ.get("LD_PRELOAD", "")
    return "tcmalloc" if "tcmalloc" in preload else "glibc malloc"


def machine() -> str:
    name = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{name}, {os.cpu_count()} cores"


def int4_group_size(args: ModelArgs) -> int:
    """128 (torchao's and gpt-fast's default) when every layer's input width allows it, else the
    largest group that fits both widths (e.g. 32 for the 15M model's 288)."""
    widths = (args.dim, args.ffn_hidden_dim)
    fitting = [g for g in INT4_GROUP_SIZES if all(w % g == 0 for w in widths)]
    if not fitting:
        raise SystemExit(f"no int4 group size in {INT4_GROUP_SIZES} divides {widths}")
    return 128 if 128 in fitting else max(fitting)


def synthetic_tokenizer(vocab_size: int) -> Tokenizer:
    """A valid LLaMA-style vocabulary of ``vocab_size`` pieces (unk, bos, eos, 256 bytes, rest
    normal), so llama.cpp accepts the GGUF; the benchmark feeds token ids only."""
    n_normal = vocab_size - 3 - 256
    pieces = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)]
    pieces += [f"\u2581t{i}" for i in range(n_normal)]
    scores = [0.0] * 259 + [-float(i) for i in range(n_normal)]
    types = [2, 3, 3] + [6] * 256 + [1] * n_normal
    return Tokenizer.from_vocab(pieces, scores, types, source="synthetic")


def time_pasture(model: Transformer, prompt: list[int], n: int) -> float:
    start = time.perf_counter()
    out = generate_tokens(model, [prompt], n)[0]
    elapsed = time.perf_counter() - start
    assert len(out) == n
    return n / elapsed


def hf_generate(model: LlamaForCausalLM, prompt: list[int], n: int) -> list[int]:
    with torch.inference_mode():
        out = model.generate(
            torch.tensor([prompt]),
            max_new_tokens=n,
            min_new_tokens=n,
            do_sample=False,
            eos_token_id=None,
            pad_token_id=0,
        )
    return out[0, len(prompt) :].tolist()


def time_hf(model: LlamaForCausalLM, prompt: list[int], n: int) -> float:
    start = time.perf_counter()
    out = hf_generate(model, prompt, n)
    elapsed = time.perf_counter() - start
    assert len(out) == n
    return n / elapsed


def llama_cpp_generate(llm, prompt: list[int], n: int) -> list[int]:
    """Greedy: evaluate the prompt, then argmax of the last logits and evaluate that token, n
    times (no sampler chain, no detokenization, no EOS stop: exactly n tokens)."""
    llm.reset()  # n_tokens = 0; eval drops the KV cache past it
    llm.eval(prompt)
    n_vocab = llm.n_vocab()
    out: list[int] = []
    while True:  # the last evaluated position's logits (llm.scores is only kept with logits_all)
        token = int(np.argmax(np.ctypeslib.as_array(llm._ctx.get_logits(), shape=(n_vocab,))))
        out.append(token)
        if len(out) == n:
            return out
        llm.eval([token])


def time_llama_cpp(llm, prompt: list[int], n: int) -> float:
    start = time.perf_counter()
    out = llama_cpp_generate(llm, prompt, n)
    elapsed = time.perf_counter() - start
    assert len(out) == n
    return n / elapsed


def agreeing_prefix(a: list[int], b: list[int]) -> int:
    return next((i for i, (x, y) in enumerate(zip(a, b, strict=True)) if x != y), len(a))


def measure_size(size: str, cli: argparse.Namespace, run: dict) -> dict:
    overrides = {"vocab_size": 512} if cli.smoke else {}
    model_args = preset(size, **overrides)
    model = Transformer(model_args)
    model.init_weights(seed=0)
    model.eval()
    group_size = int4_group_size(model_args)
    prompt = [1] + torch.randint(
        3, model_args.vocab_size, (7,), generator=torch.Generator().manual_seed(0)
    ).tolist()
    record: dict = {**run, "size": size, "vocab_size": model_args.vocab_size}
    record["load_avg_start"] = [round(x, 2) for x in os.getloadavg()]

    quantized = {}
    for name, cfg in (("int8", QuantConfig("int8")), ("int4", QuantConfig("int4", group_size))):
        q = copy.deepcopy(model)
        info = quantize(q, cfg)
        assert info["kept_float"] == 0, f"{name}: {info['kept_float']} layers kept float"
        quantized[name] = q
    record["int4_group_size"] = group_size

    with tempfile.TemporaryDirectory() as tmp:
        ckpt = Checkpoint.from_model(model)
        interop.save(ckpt, Path(tmp) / "hf", "hf")
        hf = LlamaForCausalLM.from_pretrained(Path(tmp) / "hf", torch_dtype=torch.float32)
        llm = None
        if llama_cpp is not None:
            ckpt.tokenizer = synthetic_tokenizer(model_args.vocab_size)
            gguf_path = Path(tmp) / "model-f32.gguf"
            interop.save(ckpt, gguf_path, "gguf", dtype="f32")
            llm = llama_cpp.Llama(  # mmaps the file: read it fully before the directory goes
                model_path=str(gguf_path),
                n_ctx=len(prompt) + cli.new_tokens,
                n_threads=cli.threads,
                n_threads_batch=cli.threads,
                use_mmap=False,
                verbose=False,
            )
    hf.eval()

    # Greedy agreement on the same weights before timing (so all do the same work).
    ours = generate_tokens(model, [prompt], AGREE_TOKENS)[0]
    assert ours == hf_generate(hf, prompt, AGREE_TOKENS), "Pasture and HF disagree"
    agree = {"hf": AGREE_TOKENS}
    for name, q in quantized.items():
        agree[name] = agreeing_prefix(ours, generate_tokens(q, [prompt], AGREE_TOKENS)[0])
    if llm is not None:
        agree["llama_cpp"] = agreeing_prefix(ours, llama_cpp_generate(llm, prompt, AGREE_TOKENS))
    record["agree_with_pasture_fp32"] = agree
    record["agree_tokens"] = AGREE_TOKENS

    timers: dict[str, Callable[[int], float]] = {
        "pasture": lambda n: time_pasture(model, prompt, n),
        "pasture_int8": lambda n: time_pasture(quantized["int8"], prompt, n),
        "pasture_int4": lambda n: time_pasture(quantized["int4"], prompt, n),
        "hf": lambda n: time_hf(hf, prompt, n),
    }
    if llm is not None:
        timers["llama_cpp"] = lambda n: time_llama_cpp(llm, prompt, n)
    if cli.hf_column_major:  # for the record: HF given the weight layout Pasture decodes with
        hf_cm = copy.deepcopy(hf)
        use_decode_layout(hf_cm)
        timers["hf_column_major"] = lambda n: time_hf(hf_cm, prompt, n)
    for timer in timers.values():
        timer(min(8, cli.new_tokens))  # warm-up
    names = list(timers)
    speeds: dict[str, list[float]] = {name: [] for name in names}
    for r in range(cli.rounds):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            speeds[name].append(timers[name](cli.new_tokens))
    record["load_avg_end"] = [round(x, 2) for x in os.getloadavg()]

    med = {name: statistics.median(s) for name, s in speeds.items()}
    record.update(new_tokens=cli.new_tokens, prompt_tokens=len(prompt), rounds=cli.rounds)
    record["tok_s"] = {name: round(v, 1) for name, v in med.items()}
    ratios = {
        "pasture_vs_hf": med["pasture"] / med["hf"],
        "int8_vs_fp32": med["pasture_int8"] / med["pasture"],
        "int4_vs_fp32": med["pasture_int4"] / med["pasture"],
        "int8_vs_hf": med["pasture_int8"] / med["hf"],
    }
    if "llama_cpp" in med:
        ratios["pasture_vs_llama_cpp"] = med["pasture"] / med["llama_cpp"]
        ratios["int8_vs_llama_cpp"] = med["pasture_int8"] / med["llama_cpp"]
        ratios["int4_vs_llama_cpp"] = med["pasture_int4"] / med["llama_cpp"]
        ratios["hf_vs_llama_cpp"] = med["hf"] / med["llama_cpp"]
    record["ratios"] = {k: round(v, 2) for k, v in ratios.items()}
    record["samples"] = speeds
    return record


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", nargs="+", default=["stories15M", "stories110M"])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument(
        "--hf-column-major",
        action="store_true",
        help="also time HF with Pasture's decode weight layout",
    )
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument(
        "--smoke",
        action="store_true",
        help="debug-size model (vocab 512), "
        "1 round, 8 tokens: checks the script runs, measures nothing",
    )
    cli = parser.parse_args()
    if cli.smoke:
        cli.sizes, cli.rounds, cli.new_tokens = ["debug"], 1, 8
    torch.set_num_threads(cli.threads)
    run = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "allocator": allocator(),
        "threads": cli.threads,
        "torch": torch.__version__,
        "llama_cpp_python": getattr(llama_cpp, "__version__", None),
        "smoke": cli.smoke,
    }
    if llama_cpp is None:
        print("llama-cpp-python not installed: llama.cpp not measured")
    cli.out.parent.mkdir(parents=True, exist_ok=True)
    for size in cli.sizes:
        record = measure_size(size, cli, run)
        with cli.out.open("a") as f:
            f.write(json.dumps(record) + "\n")
        tok_s = "  ".join(f"{k} {v:.1f}" for k, v in record["tok_s"].items())
        ratios = "  ".join(f"{k} {v:.2f}x" for k, v in record["ratios"].items())
        print(f"{size}: tok/s  {tok_s}")
        print(f"{size}: ratios {ratios}")
        print(
            f"{size}: greedy agreement with Pasture fp32 (of {AGREE_TOKENS}): "
            f"{record['agree_with_pasture_fp32']}; {run['allocator']}, {cli.threads} threads, "
            f"load avg {record['load_avg_start'][0]} -> {record['load_avg_end'][0]}"
        )


if __name__ == "__main__":
    main()
