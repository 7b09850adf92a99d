"""Decode speed on one GPU: memory-bandwidth utilisation of batch-1 decoding, 7B/13B/65B.

    .venv/bin/python benchmarks/gpu_decode_speed.py            # one H100 / H200, ≤ 8 min
    .venv/bin/python benchmarks/gpu_decode_speed.py --smoke    # a tiny model on CPU, seconds

The paper's claim is that LLaMA-13B "runs on a single GPU"; decoding one sequence is bound by
memory bandwidth (every weight is read once per token), so the figure of merit is the fraction
of the GPU's bandwidth a decode step uses.

1. The copy bandwidth of this GPU, measured: ``dst.copy_(src)`` of a 4 GiB buffer, CUDA events,
   best of several (bytes read + bytes written per second).
2. For each model (random weights, bf16, built on the meta device and initialized on the GPU):
   a ``generate.StaticCache`` of ``--cache-len`` positions, and one decode step — the model's
   ``hidden`` on (B, 1) tokens at per-row positions, ``logits`` of them, greedy next token —
   compiled with ``torch.compile(mode="reduce-overhead", fullgraph=True)`` (CUDA graphs),
   as gpt-fast runs it. Timed over ``--steps`` steps after a warm-up (which compiles).
3. Reported per configuration: tokens/s (batch × steps/s); bytes a step reads (the weights,
   in their stored dtype, plus the whole KV cache, which the masked attention reads); bandwidth
   utilisation = bytes/step × steps/s ÷ the measured copy bandwidth; and gpt-fast's figure,
   weight bytes × steps/s (GB/s). Configurations: 7B, 13B, 65B bf16 at batch 1 (65B needs
   121.6 GiB: one 141 GB GPU), 7B int8 and int4 (weight-only, ``model.quant``), and 7B bf16 at
   batch 8 and 32 (aggregate tokens/s).

One JSON line per measurement goes to benchmarks/results/gpu_decode_speed.jsonl (``--out``);
a markdown table is printed at the end. ``--budget-s`` stops starting new configurations.
``--smoke`` runs the same code on a tiny model on CPU with the ``eager`` compile backend, so a
graph break or host sync in the decode step fails the test suite (``fullgraph=True``).
"""

from __future__ import annotations

import argparse
import gc
import json
import platform
import sys
import time
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path

import torch

from pasture.generate.cache import StaticCache
from pasture.model import ModelArgs, Transformer, count_parameters, preset
from pasture.model.quant import QuantConfig, quantize

RESULTS = Path(__file__).parent / "results"


@dataclass(frozen=True)
class Config:
    model: str
    weights: str  # bf16 | int8 | int4
    batch: int


GPU_CONFIGS = [
    Config("7B", "bf16", 1),
    Config("7B", "int8", 1),
    Config("7B", "int4", 1),
    Config("7B", "bf16", 8),
    Config("7B", "bf16", 32),
    Config("13B", "bf16", 1),
    Config("65B", "bf16", 1),
]
SMOKE_CONFIGS = [
    Config("smoke", "bf16", 1),
    Config("smoke", "int8", 1),
    Config("smoke", "int4", 1),
    Config("smoke", "bf16", 4),
]
SMOKE_ARGS = ModelArgs(dim=256, n_heads=4, n_layers=2, vocab_size=512, multiple_of=64)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def copy_bandwidth(device: torch.device, nbytes: int, repeats: int = 10) -> float:
    """Bytes/s of ``dst.copy_(src)`` (read + write), best of ``repeats``."""
    src = torch.empty(nbytes, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    best = float("inf")
    for _ in range(repeats + 2):
        synchronize(device)
        start = time.perf_counter()
        dst.copy_(src)
        synchronize(device)
        best = min(best, time.perf_counter() - start)
    del src, dst
    return 2 * nbytes / best


def build(args: ModelArgs, device: torch.device, weights: str) -> Transformer:
    with torch.device("meta"):
        model = Transformer(args)
    model.to_empty(device=device)
    model.init_weights(std=0.02, seed=0)
    model.to(torch.bfloat16).eval().requires_grad_(False)
    if weights != "bf16":
        group = 128 if args.dim % 128 == 0 else 32
        quantize(model, QuantConfig(weights, group))
    return model


def weight_bytes(model: Transformer) -> int:
    tensors = {id(t): t for t in [*model.parameters(), *model.buffers()]}
    return sum(t.numel() * t.element_size() for t in tensors.values())


def measure(
    model: Transformer,
    batch: int,
    cache_len: int,
    steps: int,
    device: torch.device,
    backend: str | None,
) -> dict:
    cache = StaticCache(model, batch, cache_len)
    cache.select(None)

    def step(tokens: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        h = model.hidden(tokens, positions=positions)  # (B, 1, dim)
        return model.logits(h[:, -1]).argmax(dim=-1, keepdim=True)  # (B, 1)

    if backend == "inductor":
        compiled = torch.compile(step, mode="reduce-overhead", fullgraph=True)
    else:
        compiled = torch.compile(step, backend="eager", fullgraph=True)
    tokens = torch.randint(0, model.args.vocab_size, (batch, 1), device=device)
    positions = torch.full((batch, 1), cache_len // 2, device=device, dtype=torch.long)
    start = time.perf_counter()
    for _ in range(3):  # compile, record the graph, replay
        tokens = compiled(tokens, positions).clone()
        positions = positions + 1
    synchronize(device)
    warmup_s = time.perf_counter() - start
    start = time.perf_counter()
    for _ in range(steps):
        tokens = compiled(tokens, positions).clone()
        positions = positions + 1
    synchronize(device)
    elapsed = time.perf_counter() - start
    kv_bytes = sum(c.k.numel() * c.k.element_size() * 2 for c in cache.layers)
    cache.close()
    return {"steps_per_s": steps / elapsed, "kv_bytes": kv_bytes, "warmup_s": warmup_s}


def run(cfg: Config, args: argparse.Namespace, device: torch.device, bandwidth: float) -> dict:
    model_args = SMOKE_ARGS if cfg.model == "smoke" else preset(cfg.model)
    model_args = replace(model_args, max_seq_len=max(model_args.max_seq_len, args.cache_len))
    model = build(model_args, device, cfg.weights)
    wbytes = weight_bytes(model)
    result = measure(model, cfg.batch, args.cache_len, args.steps, device, args.backend)
    del model
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    step_bytes = wbytes + result["kv_bytes"]
    return {
        "kind": "decode",
        **cfg.__dict__,
        "parameters": count_parameters(model_args),
        "weight_bytes": wbytes,
        "kv_bytes": result["kv_bytes"],
        "tokens_per_s": cfg.batch * result["steps_per_s"],
        "steps_per_s": result["steps_per_s"],
        "bandwidth_util": step_bytes * result["steps_per_s"] / bandwidth,
        "weights_gb_per_s": wbytes * result["steps_per_s"] / 1e9,  # gpt-fast's figure
        "warmup_s": result["warmup_s"],
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true", help="tiny model on CPU, eager backend")
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--cache-len", type=int, default=512)
    parser.add_argument("--budget-s", type=float, default=420.0)
    parser.add_argument("--only", nargs="*", help="model:weights:batch, e.g. 7B:bf16:1")
    parser.add_argument("--out", type=Path, default=RESULTS / "gpu_decode_speed.jsonl")
    args = parser.parse_args(argv)
    if args.smoke:
        device, configs, args.backend = torch.device("cpu"), SMOKE_CONFIGS, "eager"
        args.steps, args.cache_len = min(args.steps, 5), min(args.cache_len, 64)
    else:
        if not torch.cuda.is_available():
            sys.exit("gpu_decode_speed.py: no CUDA device (use --smoke on CPU)")
        device, configs, args.backend = torch.device("cuda"), GPU_CONFIGS, "inductor"
    if args.only:
        wanted = {tuple(s.split(":")) for s in args.only}
        configs = [c for c in configs if (c.model, c.weights, str(c.batch)) in wanted]
    run_id = datetime.now(UTC).isoformat(timespec="seconds")
    env = {
        "run": run_id,
        "smoke": args.smoke,
        "device": torch.cuda.get_device_name() if device.type == "cuda" else platform.processor(),
        "torch": torch.__version__,
    }
    bandwidth = copy_bandwidth(device, 2**22 if args.smoke else 4 * 2**30)
    lines = [{**env, "kind": "copy_bandwidth", "bytes_per_s": bandwidth}]
    print(f"copy bandwidth: {bandwidth / 1e9:.0f} GB/s", flush=True)
    started = time.perf_counter()
    for cfg in configs:
        if time.perf_counter() - started > args.budget_s:
            lines.append({**env, "kind": "skipped", **cfg.__dict__, "why": "budget"})
            continue
        try:
            line = {**env, **run(cfg, args, device, bandwidth)}
        except torch.OutOfMemoryError as e:  # say so, go on with the next
            line = {**env, "kind": "error", **cfg.__dict__, "error": str(e).splitlines()[0]}
            gc.collect()
            torch.cuda.empty_cache()
        lines.append(line)
        print(json.dumps(line), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with args.out.open("a") as f:
        for line in lines:
            f.write(json.dumps(line) + "\n")
    print(
        "\n| model | weights | batch | tok/s | bytes/step (GB) | bandwidth util | GB/s (gpt-fast) |"
    )
    print("|---|---|---|---|---|---|---|")
    for line in lines:
        if line["kind"] == "decode":
            gb = (line["weight_bytes"] + line["kv_bytes"]) / 1e9
            print(
                f"| {line['model']} | {line['weights']} | {line['batch']} | "
                f"{line['tokens_per_s']:.1f} | {gb:.2f} | {100 * line['bandwidth_util']:.1f}% | "
                f"{line['weights_gb_per_s']:.0f} |"
            )


if __name__ == "__main__":
    main()
