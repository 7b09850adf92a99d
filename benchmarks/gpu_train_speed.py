"""Training tokens/s on one GPU: Pasture's step vs Hugging Face ``LlamaForCausalLM``, 1.26B model.

    .venv/bin/python benchmarks/gpu_train_speed.py            # one H100 / H200, est. 5-8 min
    .venv/bin/python benchmarks/gpu_train_speed.py --smoke    # a tiny model on CPU, seconds

1. The bf16 dense matmul peak of this GPU, measured: ``torch.mm`` of two 8192 × 8192 bf16
   matrices, CUDA events, best of several timed groups after a warm-up.
2. Pasture's training step as ``pasture train`` runs it on one GPU: the model built on the meta
   device, ``parallelize_model`` (no mesh: compile per block when compiled), initialized;
   float32 weights and AdamW state (the paper's settings, fused), bf16 autocast forward
   (``parallel.mixed_precision = "bf16"``), float32 cross-entropy, backward, clip at 1.0, step.
3. The same step for Hugging Face transformers' ``LlamaForCausalLM`` with the same config and
   the same initial weights (Pasture's, converted in memory as ``pasture convert`` does), SDPA
   attention, ``use_cache=False``, the same optimizer, autocast and loss; compiled the same way
   (``torch.compile`` of each decoder layer).

Model: dim 2048, 22 layers, 32 heads, SwiGLU hidden 5632, vocab 32000 (1,261,529,088
parameters), sequence 2048, micro-batch 8, no activation checkpointing. By estimate an eager
step needs close to 80 GB; where it does not fit, the micro-batch is halved for both sides (the
output says which was used). One model is on the GPU at a time: the other, with its optimizer
state, waits in host memory, and they swap between rounds, so Pasture and HF alternate (eager
and compiled each round). Reported: median tokens/s over rounds, model TFLOP/s
(``flops_per_token``: 6N plus attention) and that as a % of the measured matmul peak, peak
memory, the first step's time (compiling, for compiled modes). One JSON line per measurement
and a summary per variant go to benchmarks/results/gpu_train_speed.jsonl; a markdown table is
printed at the end. ``--rounds``, ``--steps``, ``--modes``, ``--micro-batch`` and
``--budget-s`` (no new round after it) bound the run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path

import torch
import transformers
from torch import nn
from transformers import LlamaConfig, LlamaForCausalLM

from pasture.interop.hf import config_from_args, hf_key, permute_to_hf
from pasture.model import ModelArgs, Transformer, count_parameters, flops_per_token
from pasture.parallel.parallelize import ParallelConfig, parallelize_model
from pasture.train.loop import micro_batch_loss, train_step
from pasture.train.optim import OptimConfig, build_optimizer

RESULTS = Path(__file__).parent / "results"
MODES = ("eager", "compiled")


@dataclass
class Setup:
    args: ModelArgs
    seq_len: int
    micro_batch: int
    matmul_n: int
    peak_dtype: torch.dtype


FULL = Setup(
    ModelArgs(dim=2048, n_layers=22, n_heads=32, vocab_size=32000, max_seq_len=2048),
    seq_len=2048,
    micro_batch=8,
    matmul_n=8192,
    peak_dtype=torch.bfloat16,
)
assert FULL.args.ffn_hidden_dim == 5632 and count_parameters(FULL.args) == 1_261_529_088
SMOKE = Setup(
    ModelArgs(dim=64, n_layers=2, n_heads=4, vocab_size=256, max_seq_len=32),
    seq_len=32,
    micro_batch=2,
    matmul_n=256,
    peak_dtype=torch.float32,
)


def elapsed_s(fn: Callable[[], object], calls: int, device: torch.device) -> float:
    """Seconds for ``calls`` calls of ``fn``: CUDA events on a GPU, the wall clock on CPU."""
    if device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(calls):
            fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1000
    begin = time.perf_counter()
    for _ in range(calls):
        fn()
    return time.perf_counter() - begin


def matmul_peak(device: torch.device, n: int, dtype: torch.dtype, groups: int) -> float:
    """Best FLOP/s of an n × n × n matmul (2n³ FLOPs) over ``groups`` timed groups of 10."""
    generator = torch.Generator(device=device).manual_seed(0)
    a, b = (torch.randn(n, n, device=device, dtype=dtype, generator=generator) for _ in "ab")
    out = torch.empty(n, n, device=device, dtype=dtype)
    elapsed_s(lambda: torch.mm(a, b, out=out), 20, device)  # warm-up: clocks, cuBLAS heuristics
    best = min(elapsed_s(lambda: torch.mm(a, b, out=out), 10, device) for _ in range(groups))
    return 2 * n**3 * 10 / best


@dataclass
class Side:
    """One implementation: its model, optimizer, and the eager and compiled decoder layers,
    which share parameters; ``use`` puts one set in the model's layer list."""

    name: str
    model: nn.Module
    logits_of: Callable[[torch.Tensor], torch.Tensor]
    layers: nn.ModuleList
    eager: list[nn.Module]
    compiled: list[nn.Module]
    optimizer: torch.optim.Optimizer | None = None
    compile_s: dict[str, float] = field(default_factory=dict)

    def use(self, mode: str) -> None:
        for i, layer in enumerate(self.compiled if mode == "compiled" else self.eager):
            self.layers[i] = layer

    def move(self, device: torch.device) -> None:
        """Model and optimizer state to ``device`` (in place: the optimizer keeps its params)."""
        self.model.to(device)
        for state in self.optimizer.state.values():
            for key, value in state.items():
                if isinstance(value, torch.Tensor) and value.dim() > 0:  # not the step count
                    state[key] = value.to(device)
        if device.type == "cpu" and torch.cuda.is_available():
            torch.cuda.empty_cache()


def build_pasture(setup: Setup, device: torch.device) -> Side:
    """As ``pasture train`` builds it on one device (see pasture.train.loop.train)."""
    with torch.device("meta"):
        model = Transformer(setup.args)
    eager = list(model.layers)
    model = parallelize_model(model, None, ParallelConfig(compile=True, mixed_precision="bf16"))
    compiled = list(model.layers)
    model.to_empty(device=device)
    model.init_weights(seed=0)
    model.train()
    side = Side("pasture", model, model, model.layers, eager, compiled)
    side.use("eager")
    return side


def build_hf(pasture: Side, setup: Setup, device: torch.device) -> Side:
    """Hugging Face's model with the same config and Pasture's initial weights."""
    args = setup.args
    config = LlamaConfig(
        **config_from_args(args, torch.float32), attn_implementation="sdpa", use_cache=False
    )
    with torch.device(device):
        model = LlamaForCausalLM(config)
    state = {}
    for name, tensor in pasture.model.state_dict().items():
        name = name.replace("_orig_mod.", "")  # the compiled blocks' wrapper
        if name.endswith("attention.wq.weight"):
            tensor = permute_to_hf(tensor, args.n_heads)
        elif name.endswith("attention.wk.weight"):
            tensor = permute_to_hf(tensor, args.kv_heads)
        state[hf_key(name)] = tensor
    model.load_state_dict(state)
    del state
    model.train()
    layers = model.model.layers
    eager = list(layers)
    compiled = [torch.compile(layer) for layer in eager]
    return Side(
        "hf", model, lambda x: model(input_ids=x, use_cache=False).logits, layers, eager, compiled
    )


def make_step(side: Side, tokens: torch.Tensor, autocast: bool) -> Callable[[], float]:
    """``pasture train``'s own step (``train_step``) at accumulation 1, for either side's
    forward (a host sync per step for the logged loss, as there)."""
    grad_clip = OptimConfig().grad_clip
    micro_batches = [(tokens[:, :-1], tokens[:, 1:])]

    def step() -> float:
        loss, _, _ = train_step(
            side.model, side.optimizer, micro_batches, grad_clip, autocast, side.logits_of
        )
        return loss

    return step


def measure(
    side: Side, mode: str, tokens: torch.Tensor, autocast: bool, warmup: int, steps: int
) -> dict:
    """tokens/s of ``steps`` steps after ``warmup`` untimed ones (the first compiled ones
    compile; that time is recorded once per side)."""
    device = tokens.device
    side.use(mode)
    step = make_step(side, tokens, autocast)
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats(device)
    try:
        for i in range(warmup):
            begin = time.perf_counter()
            step()
            if i == 0 and mode not in side.compile_s:
                side.compile_s[mode] = time.perf_counter() - begin
        seconds = elapsed_s(step, steps, device)
    except torch.cuda.OutOfMemoryError as e:
        side.optimizer.zero_grad(set_to_none=True)
        torch.cuda.empty_cache()
        return {"error": f"out of memory: {str(e).splitlines()[0][:200]}"}
    except Exception as e:  # a compile failure must not cost the other measurements
        side.optimizer.zero_grad(set_to_none=True)
        return {"error": f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"}
    memory = torch.cuda.max_memory_allocated(device) / 1e9 if device.type == "cuda" else None
    return {"tokens_per_s": steps * tokens[:, :-1].numel() / seconds, "memory_gb": memory}


def markdown(summaries: list[dict]) -> str:
    lines = [
        "| implementation | mode | tokens/s | model TFLOP/s | % of measured peak | "
        "peak memory GB | first-call s |",
        "|---|---|---|---|---|---|---|",
    ]
    for s in summaries:
        if s["tokens_per_s"] is None:
            lines.append(f"| {s['impl']} | {s['mode']} | {s['error']} | | | | |")
            continue
        memory = "–" if s["memory_gb"] is None else f"{s['memory_gb']:.1f}"
        lines.append(
            f"| {s['impl']} | {s['mode']} | {s['tokens_per_s']:,.0f} | {s['tflops']:.3g} | "
            f"{s['pct_of_peak']:.1f}% | {memory} | {s['compile_s']:.1f} |"
        )
    return "\n".join(lines)


def random_tokens(setup: Setup, micro_batch: int, device: torch.device) -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    shape = (micro_batch, setup.seq_len + 1)
    return torch.randint(0, setup.args.vocab_size, shape, generator=generator).to(device)


def initial_losses(sides: list[Side], tokens: torch.Tensor, autocast: bool) -> dict[str, float]:
    """Same model, same weights: the first losses must agree (to bf16 rounding on a GPU)."""
    with torch.no_grad():
        losses = {
            side.name: micro_batch_loss(side.logits_of, tokens[:, :-1], tokens[:, 1:], autocast)
            for side in sides
        }
    losses = {name: loss.item() for name, loss in losses.items()}
    low, high = min(losses.values()), max(losses.values())
    if high - low > (2e-2 if autocast else 1e-4) * abs(high):
        raise SystemExit(f"gpu_train_speed: the two models disagree before training: {losses}")
    return losses


def fitting_micro_batch(side: Side, setup: Setup, device: torch.device, autocast: bool) -> int:
    """The configured micro-batch, halved until an eager training step fits in GPU memory
    (1.26B at 8 × 2048 without activation checkpointing is close to an H100's 80 GB)."""
    micro_batch = setup.micro_batch
    while True:
        try:
            make_step(side, random_tokens(setup, micro_batch, device), autocast)()
            return micro_batch
        except torch.cuda.OutOfMemoryError:
            if micro_batch == 1:
                raise
        side.optimizer.zero_grad(set_to_none=True)
        torch.cuda.empty_cache()
        print(f"micro-batch {micro_batch}: out of memory; trying {micro_batch // 2}")
        micro_batch //= 2


def summarize(
    samples: dict[tuple[str, str], list[dict]], sides: dict[str, Side], flops: float, peak: float
) -> list[dict]:
    summaries = []
    for (name, mode), results in samples.items():
        speeds = [r["tokens_per_s"] for r in results if "tokens_per_s" in r]
        if not speeds:
            error = next((r["error"] for r in results), "not measured")
            summaries.append({"impl": name, "mode": mode, "tokens_per_s": None, "error": error})
            continue
        tokens_per_s = statistics.median(speeds)
        memory = [r["memory_gb"] for r in results if r.get("memory_gb") is not None]
        summaries.append(
            {
                "impl": name,
                "mode": mode,
                "tokens_per_s": tokens_per_s,
                "samples": speeds,
                "tflops": tokens_per_s * flops / 1e12,
                "pct_of_peak": 100 * tokens_per_s * flops / peak,
                "memory_gb": max(memory) if memory else None,
                "compile_s": sides[name].compile_s.get(mode, 0.0),
            }
        )
    return summaries


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--smoke", action="store_true", help="tiny model on CPU, float32")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=10, help="timed steps per measurement")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps per measurement")
    parser.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    parser.add_argument("--micro-batch", type=int, help="default: 8 (smoke: 2); halved on OOM")
    parser.add_argument("--budget-s", type=float, default=420, help="no new round after this")
    parser.add_argument("--out", type=Path, help="JSONL (default: benchmarks/results/...)")
    opts = parser.parse_args()
    begin = time.perf_counter()
    sys.stdout.reconfigure(line_buffering=True)  # progress shows even if the run is cut short
    setup = SMOKE if opts.smoke else FULL
    if opts.micro_batch:
        setup = replace(setup, micro_batch=opts.micro_batch)
    if opts.smoke:
        device = torch.device("cpu")
        # Tiny ops on a busy machine: OpenMP threads waiting on each other cost 100x.
        torch.set_num_threads(1)
    elif torch.cuda.is_available():
        # Less fragmentation as the two models swap in and out (before CUDA's first allocation).
        os.environ.setdefault("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")
        device = torch.device("cuda", 0)
        torch.cuda.set_device(device)
    else:
        raise SystemExit("gpu_train_speed: no CUDA device (run with --smoke to check the script)")
    autocast = device.type == "cuda"  # bf16 mixed precision on the GPU; float32 in the smoke run
    name = "gpu_train_speed-smoke.jsonl" if opts.smoke else "gpu_train_speed.jsonl"
    out = opts.out or RESULTS / name
    out.parent.mkdir(parents=True, exist_ok=True)
    args = setup.args
    on_gpu = device.type == "cuda"
    run = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "device": torch.cuda.get_device_name(device) if on_gpu else platform.machine(),
        "host": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "transformers": transformers.__version__,
        "smoke": opts.smoke,
        "params": count_parameters(args),
        "shape": f"{args.dim}/{args.n_layers}/{args.n_heads}, ffn {args.ffn_hidden_dim}, "
        f"vocab {args.vocab_size}",
        "seq_len": setup.seq_len,
        "precision": "bf16 autocast, fp32 weights + AdamW" if autocast else "fp32",
    }

    def record(line: dict) -> None:
        with out.open("a") as f:
            f.write(json.dumps({**run, **line}) + "\n")

    peak = matmul_peak(device, setup.matmul_n, setup.peak_dtype, groups=5 if opts.smoke else 10)
    dtype = str(setup.peak_dtype).removeprefix("torch.")
    print(f"matmul peak ({setup.matmul_n}³ {dtype}): {peak / 1e12:.3g} TFLOP/s")
    record({"kind": "matmul_peak", "n": setup.matmul_n, "dtype": dtype, "tflops": peak / 1e12})

    pasture = build_pasture(setup, device)
    hf = build_hf(pasture, setup, device)
    sides = {side.name: side for side in (pasture, hf)}
    losses = initial_losses([pasture, hf], random_tokens(setup, 1, device), autocast)
    print(f"initial loss: pasture {losses['pasture']:.5f}, hf {losses['hf']:.5f}")
    record({"kind": "initial_loss", **losses})
    for side in (pasture, hf):
        side.optimizer = build_optimizer(side.model, OptimConfig())  # fused on a GPU
    if on_gpu:
        hf.move(torch.device("cpu"))  # one model on the GPU at a time
    run["micro_batch"] = fitting_micro_batch(pasture, setup, device, autocast)
    tokens = random_tokens(setup, run["micro_batch"], device)

    samples: dict[tuple[str, str], list[dict]] = {
        (side, mode): [] for side in sides for mode in opts.modes
    }
    order, on_device, round_s = [pasture, hf], pasture, 0.0
    for round_index in range(opts.rounds):
        if round_index and time.perf_counter() - begin + round_s > opts.budget_s:
            print(f"budget of {opts.budget_s:.0f} s reached after {round_index} round(s)")
            break
        round_begin = time.perf_counter()
        first_calls = sum(sum(side.compile_s.values()) for side in sides.values())
        for side in order:
            if side is not on_device and on_gpu:
                on_device.move(torch.device("cpu"))
                side.move(device)
            on_device = side
            modes = opts.modes if round_index % 2 == 0 else opts.modes[::-1]
            for mode in modes:
                result = measure(side, mode, tokens, autocast, opts.warmup, opts.steps)
                samples[side.name, mode].append(result)
                line = {"impl": side.name, "mode": mode, "round": round_index, **result}
                record({"kind": "sample", **line})
                shown = result.get("error") or f"{result['tokens_per_s']:,.0f} tokens/s"
                print(f"round {round_index}: {side.name:7s} {mode:8s} {shown}")
        order.reverse()  # the side on the device goes first next round: one swap per round
        # What the next round will take: this one's, less the compiling it did (once only).
        compiled_s = sum(sum(side.compile_s.values()) for side in sides.values()) - first_calls
        round_s = time.perf_counter() - round_begin - compiled_s

    summaries = summarize(samples, sides, flops_per_token(args, setup.seq_len), peak)
    for summary in summaries:
        record({"kind": "summary", "peak_tflops": peak / 1e12, **summary})
    print(
        f"\n{run['device']}, micro-batch {run['micro_batch']} × {setup.seq_len}, {run['precision']}"
    )
    print(markdown(summaries))
    speed = {(s["impl"], s["mode"]): s["tokens_per_s"] for s in summaries}
    for mode in opts.modes:
        if speed["pasture", mode] and speed["hf", mode]:
            print(f"pasture / hf ({mode}): {speed['pasture', mode] / speed['hf', mode]:.2f}x")
    print(f"\n{time.perf_counter() - begin:.0f} s; results in {out}")


if __name__ == "__main__":
    main()
