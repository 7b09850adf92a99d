"""Finetuning tokens/s on CPU: Pasture's step vs Hugging Face ``LlamaForCausalLM`` + peft, same
model and data (issue 13), and peak memory of LoRA vs full finetuning.

    .venv/bin/python benchmarks/finetune_speed.py            # stories110M shape, random weights
    .venv/bin/python benchmarks/finetune_speed.py --smoke    # a tiny shape, seconds

(Run it under ``LD_PRELOAD=/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4`` where that
exists: both sides and the memory subprocesses then share the allocator.)

Data: ``finetune.synthetic`` instruction records through the default template (Alpaca
headers), answers-only labels (-100 elsewhere), each example one right-padded row of
``--seq-len`` inputs. Model: random weights in the preset's shape; Hugging Face's copy gets the
same weights through Pasture's converter (``permute_to_hf``, ``hf_key``). For each method:

- LoRA: rank 8, alpha 16, dropout 0 on ``wq wv`` (peft: ``q_proj v_proj``, Pasture's A matrices
  copied in, B zero on both sides), everything else frozen;
- full: every parameter trained;

one step is forward, the loss per response token over the batch, backward, clipping at 1.0 and
AdamW (``finetune``'s defaults, the same ``build_optimizer`` for both). Pasture runs
``finetune.loss.finetune_step``; Hugging Face its own loss path (``labels`` with -100, and
``shift_labels`` so both score the very same targets). Both see the same batches padded to
``--seq-len``, so tokens/s counts the same input tokens (padding included). Pasture's step does
less work on them than Hugging Face's: it drops trailing columns with no response token and
projects only response positions onto the vocabulary (``finetune.loss.response_loss_sum``;
exact). Hugging Face users get the first part from their collators' dynamic padding, so a
fourth line, ``hf_longest``, gives Hugging Face the same examples padded to the longest in the
batch: Pasture's padded line over it is the like-for-like ratio (``vs_hf_longest_ratio``).
Pasture's packed step (the same examples packed into fewer rows, block-causal mask) is the
third line. ``example_tok_s`` counts every line in the examples' own tokens (no padding). The
sides alternate within each round; medians over rounds. Before timing, the initial losses must
agree within 1e-4 (the same model and data). ``--profile`` prints where each side's step spends
time.

Wall-clock rates are the headline; rates per CPU second of this process (``*_per_cpu_s``) move
less when other jobs share the machine.

Memory: for each of Pasture and Hugging Face, LoRA and full, a fresh subprocess builds the model
and runs ``--memory-steps`` steps; the resident set before the steps and its peak during them
(``VmHWM`` after ``/proc/self/clear_refs`` resets it; torch has no CPU allocator statistics)
are recorded.

One JSON line per method and one for memory go to ``--out``
(benchmarks/results/finetune_speed.jsonl).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import torch

from pasture.data.tokenizer import Tokenizer
from pasture.finetune.data import detect_format, to_messages
from pasture.finetune.lora import LoRAConfig, apply_lora, lora_modules
from pasture.finetune.loss import finetune_step, logits_of, summed_loss
from pasture.finetune.packing import Batch, TokenSequence, batches, collate, tokenize
from pasture.finetune.synthetic import synthetic_records
from pasture.finetune.template import DEFAULT_TEMPLATE
from pasture.interop.hf import config_from_args, hf_key, permute_to_hf
from pasture.model import ModelArgs, Transformer, preset
from pasture.train.optim import OptimConfig, build_optimizer, clip_grad_norm

RESULTS = Path(__file__).parent / "results" / "finetune_speed.jsonl"
MODELS = Path(os.environ.get("PASTURE_DATA", "/work/shared/data")) / "models"
TCMALLOC = "/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4"
LORA = LoRAConfig(rank=8, alpha=16.0, dropout=0.0, targets=["wq", "wv"])
OPTIM = OptimConfig(lr=1e-4, warmup_steps=10, weight_decay=0.0)  # finetune's defaults
GRAD_CLIP = 1.0


def setup(smoke: bool) -> tuple[str, ModelArgs, Tokenizer]:
    """The model shape and its tokenizer: stories110M with the LLaMA vocab, or a tiny one."""
    if smoke:
        tokenizer = Tokenizer.from_file(MODELS / "stories260K" / "tok512.model")
        args = ModelArgs(dim=64, n_layers=2, n_heads=4, multiple_of=32, max_seq_len=256)
        return "smoke", ModelArgs(**{**vars(args), "vocab_size": tokenizer.vocab_size}), tokenizer
    tokenizer = Tokenizer.from_file(MODELS / "llama-tokenizer" / "tokenizer.model")
    return "stories110M", preset("stories110M", vocab_size=tokenizer.vocab_size), tokenizer


def sequences(tokenizer: Tokenizer, n: int, seq_len: int) -> list[TokenSequence]:
    """``n`` synthetic instruction examples, templated, answers-only labels, at most a row."""
    out = []
    for i, record in enumerate(synthetic_records(n, seed=0)):
        messages = to_messages(record, detect_format(record) or "", f"synthetic:{i}")
        out.append(tokenize(tokenizer, DEFAULT_TEMPLATE, messages, seq_len + 1))
    return out


def step_data(
    seqs: list[TokenSequence], rows: int, seq_len: int
) -> tuple[list[Batch], list[Batch], list[Batch], list[int]]:
    """Per step: a batch of ``rows`` examples padded to ``seq_len``, the same padded to the
    longest of them (Hugging Face's collators' dynamic padding), the same packed, and their
    own input tokens (no padding)."""
    padded, longest, packed, own = [], [], [], []
    for start in range(0, len(seqs) - rows + 1, rows):
        chunk = seqs[start : start + rows]
        padded.append(batches(chunk, seq_len, rows, packed=False)[0])
        longest.append(collate([[s] for s in chunk]))
        packed.append(batches(chunk, seq_len, rows, packed=True)[0])
        own.append(sum(len(s) - 1 for s in chunk))
    return padded, longest, packed, own


def build_pasture(args: ModelArgs, method: str) -> Transformer:
    torch.manual_seed(0)  # LoRA's A matrices
    model = Transformer(args)
    model.init_weights(seed=0)
    model.train()
    model.rotary(torch.device("cpu"))
    if method == "lora":
        apply_lora(model, LORA)
    return model


def build_hf(pasture: Transformer, args: ModelArgs, method: str) -> torch.nn.Module:
    """``LlamaForCausalLM`` (sdpa attention) with Pasture's weights; with peft's LoRA on
    q_proj/v_proj holding Pasture's adapter matrices when ``method`` is lora."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        **config_from_args(args, torch.float32), attn_implementation="sdpa", use_cache=False
    )
    model = LlamaForCausalLM(config)
    state, adapters = {}, {}
    for name, tensor in pasture.state_dict().items():
        if ".lora_a." in name or ".lora_b." in name:
            adapters[name] = tensor
            continue
        name = name.replace(".base.", ".")
        if name.endswith("attention.wq.weight"):
            tensor = permute_to_hf(tensor, args.n_heads)
        elif name.endswith("attention.wk.weight"):
            tensor = permute_to_hf(tensor, args.kv_heads)
        state[hf_key(name)] = tensor
    model.load_state_dict(state, strict=True)
    model.train()
    if method == "full":
        return model
    from peft import LoraConfig, get_peft_model

    peft_config = LoraConfig(
        r=LORA.rank,
        lora_alpha=LORA.alpha,
        lora_dropout=LORA.dropout,
        target_modules=["q_proj", "v_proj"],
        bias="none",
        task_type="CAUSAL_LM",
    )
    model = get_peft_model(model, peft_config)
    with torch.no_grad():
        for name in lora_modules(pasture):  # layers.3.attention.wq
            hf_name = hf_key(f"{name}.weight").removesuffix(".weight")
            target = model.base_model.model.get_submodule(hf_name)
            # A acts on the input side (no head permutation); B is zero on both sides.
            target.lora_A["default"].weight.copy_(adapters[f"{name}.lora_a.weight"])
            target.lora_B["default"].weight.zero_()
    model.train()
    return model


def hf_loss(model: torch.nn.Module, batch: Batch) -> torch.Tensor:
    """Hugging Face's own loss: mean cross-entropy over the targets that are not -100."""
    out = model(
        input_ids=batch.inputs,
        labels=batch.targets,
        shift_labels=batch.targets,
        use_cache=False,
    )
    return out.loss


def pasture_step(model: Transformer, optimizer: torch.optim.Optimizer) -> Callable[[Batch], None]:
    def step(batch: Batch) -> None:
        finetune_step(model, optimizer, [batch], GRAD_CLIP)

    return step


def hf_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> Callable[[Batch], None]:
    """The usual HF + peft loop body: loss, backward, clip, AdamW, zero_grad."""

    def step(batch: Batch) -> None:
        hf_loss(model, batch).backward()
        clip_grad_norm(model, GRAD_CLIP)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


@torch.no_grad()
def pasture_loss(model: Transformer, batch_list: list[Batch]) -> float:
    total = sum(float(summed_loss(logits_of(model, b), b.targets)) for b in batch_list)
    return total / sum(b.trained_tokens for b in batch_list)


@torch.no_grad()
def hf_mean_loss(model: torch.nn.Module, batch_list: list[Batch]) -> float:
    total = sum(float(hf_loss(model, b)) * b.trained_tokens for b in batch_list)
    return total / sum(b.trained_tokens for b in batch_list)


def timed(step: Callable[[Batch], None], batch_list: list[Batch]) -> tuple[float, float]:
    """Wall-clock seconds and CPU seconds of this process (the latter moves less when other
    jobs share the machine) for one pass over ``batch_list``."""
    start, start_cpu = time.perf_counter(), time.process_time()
    for batch in batch_list:
        step(batch)
    return time.perf_counter() - start, time.process_time() - start_cpu


def profile(name: str, step: Callable[[Batch], None], batch: Batch) -> str:
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
        step(batch)
    table = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15)
    return f"--- {name}: top operators by self CPU time ---\n{table}"


def speed(ns: argparse.Namespace, args: ModelArgs, size: str, tokenizer: Tokenizer, method: str):
    seqs = sequences(tokenizer, ns.rows * ns.steps, ns.seq_len)
    padded, longest, packed, own = step_data(seqs, ns.rows, ns.seq_len)
    ours = build_pasture(args, method)
    theirs = build_hf(ours, args, method)
    losses = {
        "pasture": pasture_loss(ours, padded),
        "pasture_packed": pasture_loss(ours, packed),
        "hf": hf_mean_loss(theirs, padded),
        "hf_longest": hf_mean_loss(theirs, longest),
    }
    gap = max(losses.values()) - min(losses.values())
    if gap > 1e-4:
        raise SystemExit(f"initial losses differ by {gap:.2e}: {losses}")
    trainable = {
        "pasture": sum(p.numel() for p in ours.parameters() if p.requires_grad),
        "hf": sum(p.numel() for p in theirs.parameters() if p.requires_grad),
    }
    # The packed and dynamically padded lines train models of their own from the same start.
    ours_packed = build_pasture(args, method)
    theirs_longest = build_hf(build_pasture(args, method), args, method)
    steps = {
        "pasture": (pasture_step(ours, build_optimizer(ours, OPTIM)), padded),
        "hf": (hf_step(theirs, build_optimizer(theirs, OPTIM)), padded),
        "pasture_packed": (pasture_step(ours_packed, build_optimizer(ours_packed, OPTIM)), packed),
        "hf_longest": (
            hf_step(theirs_longest, build_optimizer(theirs_longest, OPTIM)),
            longest,
        ),
    }
    for step, batch_list in steps.values():
        step(batch_list[0])  # warm-up
    padded_tokens = sum(b.inputs.numel() for b in padded)
    own_tokens = sum(own)
    seconds: dict[str, list[float]] = {name: [] for name in steps}
    cpu_seconds: dict[str, list[float]] = {name: [] for name in steps}
    for r in range(ns.rounds):
        order = list(steps) if r % 2 == 0 else list(reversed(steps))
        for name in order:
            step, batch_list = steps[name]
            wall, cpu = timed(step, batch_list)
            seconds[name].append(wall)
            cpu_seconds[name].append(cpu)
    median = {name: statistics.median(s) for name, s in seconds.items()}
    median_cpu = {name: statistics.median(s) for name, s in cpu_seconds.items()}
    tok_s = {name: padded_tokens / median[name] for name in ("pasture", "hf")}
    tok_cpu_s = {name: padded_tokens / median_cpu[name] for name in ("pasture", "hf")}
    example_tok_s = {name: own_tokens / median[name] for name in steps}
    example_tok_cpu_s = {name: own_tokens / median_cpu[name] for name in steps}
    record = {
        "kind": "speed",
        "size": size,
        "method": method,
        "rows": ns.rows,
        "seq_len": ns.seq_len,
        "steps_per_round": len(padded),
        "rounds": ns.rounds,
        "padded_tokens_per_step": padded_tokens // len(padded),
        "example_tokens_per_step": round(own_tokens / len(padded), 1),
        "packed_rows_per_step": round(sum(b.inputs.shape[0] for b in packed) / len(packed), 2),
        "trainable_params": trainable,
        "initial_loss": {k: round(v, 6) for k, v in losses.items()},
        "initial_loss_gap": gap,
        "pasture_tok_s": round(tok_s["pasture"], 1),
        "hf_tok_s": round(tok_s["hf"], 1),
        "ratio": round(tok_s["pasture"] / tok_s["hf"], 3),
        "example_tok_s": {k: round(v, 1) for k, v in example_tok_s.items()},
        "packed_vs_hf_ratio": round(example_tok_s["pasture_packed"] / example_tok_s["hf"], 3),
        "vs_hf_longest_ratio": round(example_tok_s["pasture"] / example_tok_s["hf_longest"], 3),
        "vs_hf_longest_ratio_per_cpu_s": round(
            example_tok_cpu_s["pasture"] / example_tok_cpu_s["hf_longest"], 3
        ),
        "seconds_per_round": {k: [round(x, 4) for x in v] for k, v in seconds.items()},
        "pasture_tok_per_cpu_s": round(tok_cpu_s["pasture"], 1),
        "hf_tok_per_cpu_s": round(tok_cpu_s["hf"], 1),
        "ratio_per_cpu_s": round(tok_cpu_s["pasture"] / tok_cpu_s["hf"], 3),
        "packed_vs_hf_ratio_per_cpu_s": round(
            example_tok_cpu_s["pasture_packed"] / example_tok_cpu_s["hf"], 3
        ),
        "cpu_seconds_per_round": {k: [round(x, 4) for x in v] for k, v in cpu_seconds.items()},
    }
    print(
        f"{size} {method:4s}: pasture {tok_s['pasture']:8.1f} tok/s  hf+peft {tok_s['hf']:8.1f} "
        f"tok/s  ratio {record['ratio']:.2f}x  | packed {example_tok_s['pasture_packed']:.1f} "
        f"example tok/s vs hf {example_tok_s['hf']:.1f}: {record['packed_vs_hf_ratio']:.2f}x  "
        f"per CPU-second {record['ratio_per_cpu_s']:.2f}x, packed "
        f"{record['packed_vs_hf_ratio_per_cpu_s']:.2f}x  | vs hf padded to the longest "
        f"{record['vs_hf_longest_ratio']:.2f}x  "
        f"(initial loss {losses['pasture']:.5f}, gap {gap:.1e})",
        flush=True,
    )
    if ns.profile:
        for name in ("pasture", "hf"):
            step, batch_list = steps[name]
            print(profile(f"{size} {method} {name}", step, batch_list[0]), flush=True)
    return record


def status_mib(field: str) -> float:
    """A ``/proc/self/status`` memory line (VmRSS, VmHWM) in MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 1024  # kB
    raise SystemExit(f"no {field} in /proc/self/status")


def memory_child(ns: argparse.Namespace) -> None:
    """In a fresh process: build one side's model for one method, reset the kernel's peak-RSS
    mark (``/proc/self/clear_refs``), run a few steps; print the resident set before the steps
    and its peak during them as one JSON line. (``getrusage``'s ``ru_maxrss`` would not do: it
    carries the parent's peak across ``exec``, and the model build's temporaries.)"""
    _, args, tokenizer = setup(ns.smoke)
    side, method = ns.memory_child
    seqs = sequences(tokenizer, ns.rows * ns.memory_steps, ns.seq_len)
    padded, _, _, _ = step_data(seqs, ns.rows, ns.seq_len)
    ours = build_pasture(args, method)
    if side == "pasture":
        step = pasture_step(ours, build_optimizer(ours, OPTIM))
    else:
        model = build_hf(ours, args, method)
        del ours
        step = hf_step(model, build_optimizer(model, OPTIM))
    gc.collect()
    Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS now
    before = status_mib("VmRSS")
    for batch in padded:
        step(batch)
    peak = status_mib("VmHWM")
    print(json.dumps({"side": side, "method": method, "before": before, "peak": peak}))


def memory(ns: argparse.Namespace, size: str) -> dict:
    out: dict[str, dict[str, float]] = {}
    for side in ("pasture", "hf"):
        for method in ("lora", "full"):
            cmd = [sys.executable, __file__, "--memory-child", side, method]
            cmd += ["--rows", str(ns.rows), "--seq-len", str(ns.seq_len)]
            cmd += ["--memory-steps", str(ns.memory_steps)] + (["--smoke"] if ns.smoke else [])
            done = subprocess.run(cmd, capture_output=True, text=True, check=False)
            if done.returncode != 0:
                raise SystemExit(f"memory subprocess {side} {method} failed:\n{done.stderr}")
            line = json.loads(done.stdout.strip().splitlines()[-1])
            out[f"{side}_{method}"] = {
                "rss_before_steps_mib": round(line["before"], 1),
                "peak_rss_steps_mib": round(line["peak"], 1),
                "step_growth_mib": round(line["peak"] - line["before"], 1),
            }
            print(f"{size} memory {side:7s} {method:4s}: {out[f'{side}_{method}']}", flush=True)
    return {
        "kind": "memory",
        "size": size,
        "rows": ns.rows,
        "seq_len": ns.seq_len,
        "steps": ns.memory_steps,
        "measure": "RSS before the steps and peak RSS (VmHWM, reset by clear_refs) during them, "
        "one fresh process per side and method",
        **out,
        "full_over_lora_peak": {
            side: round(
                out[f"{side}_full"]["peak_rss_steps_mib"]
                / out[f"{side}_lora"]["peak_rss_steps_mib"],
                2,
            )
            for side in ("pasture", "hf")
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--smoke", action="store_true", help="a tiny shape, seconds")
    parser.add_argument("--methods", nargs="*", default=["lora", "full"])
    parser.add_argument("--rows", type=int, default=8, help="examples (padded rows) per step")
    parser.add_argument("--seq-len", type=int, default=64)
    parser.add_argument("--steps", type=int, default=2, help="steps per round and side")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--memory-steps", type=int, default=2)
    parser.add_argument("--no-memory", action="store_true")
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument(
        "--memory-child", nargs=2, metavar=("SIDE", "METHOD"), help=argparse.SUPPRESS
    )
    ns = parser.parse_args()
    if ns.memory_child:
        memory_child(ns)
        return
    import peft
    import transformers

    size, args, tokenizer = setup(ns.smoke)
    preload = os.environ.get("LD_PRELOAD", "")
    run = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "peft": peft.__version__,
        "threads": torch.get_num_threads(),
        "allocator": "tcmalloc" if "tcmalloc" in preload else "glibc malloc",
        "tcmalloc_available": Path(TCMALLOC).exists(),
        "load_avg_1min_start": round(os.getloadavg()[0], 2),
    }
    records = [speed(ns, args, size, tokenizer, method) for method in ns.methods]
    if not ns.no_memory:
        records.append(memory(ns, size))
    run["load_avg_1min_end"] = round(os.getloadavg()[0], 2)
    ns.out.parent.mkdir(parents=True, exist_ok=True)
    with ns.out.open("a") as f:
        for record in records:
            f.write(json.dumps({**run, **record}) + "\n")


if __name__ == "__main__":
    main()
