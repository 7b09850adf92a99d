"""``pasture finetune``: instruction tuning (LLaMA-I, paper §4) of a checkpoint in any format
Pasture reads, LoRA or full, into a checkpoint in any format with its chat template beside it.

    pasture finetune --config configs/finetune/demo.toml --checkpoint runs/demo/hf
    pasture finetune --config configs/finetune/demo.toml --checkpoint model.gguf \\
        --set method=full --set optim.lr=2e-5

One process (CPU or one GPU), or under torchrun with FSDP2 (``parallel.tp`` must be 1):

    torchrun --nproc-per-node 8 -m pasture.cli finetune --config configs/finetune/demo.toml \\
        --checkpoint runs/demo/hf

Each step takes ``grad_accum`` micro-batches per rank of ``rows`` rows of ``seq_len`` inputs
(examples packed several per row unless ``packed = false``), a loss per response token over
the whole step and every rank (``finetune.loss``), clipping, and AdamW at the
warmup + cosine rate of ``train.optim``. ``RUN/metrics.jsonl`` gets a line per logged step;
``RUN/summary.json`` the held-out response loss before and after; ``[benchmarks]`` scores
pasture.eval tasks every N steps into ``RUN/benchmarks.jsonl``, as in pretraining.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

from .. import files, interop
from ..config import to_dict
from ..data.tokenizer import Tokenizer
from ..errors import PastureError
from ..generate import generate_tokens
from ..interop import Checkpoint
from ..model import Transformer
from ..parallel.mesh import build_mesh, init_distributed, shutdown_distributed
from ..parallel.parallelize import parallelize_model
from ..train import checkpoint as train_checkpoint
from ..train.benchmarks import benchmark_settings, run_benchmarks
from ..train.optim import build_optimizer, lr_at
from .config import FinetuneConfig
from .data import Example, read_examples
from .lora import apply_lora, merge_weights
from .loss import finetune_step, response_loss, trained_tokens
from .packing import Batch, TokenSequence, batches, collate, pack, tokenize
from .template import encode_chat, load_template, save_template


def read_all(paths: Sequence[str | Path]) -> list[Example]:
    """Every example of every file, in order (a bad line fails here, before any model work)."""
    return [example for path in paths for example in read_examples(path)]


def to_sequences(
    examples: Sequence[Example], tokenizer: Tokenizer, template: str, cfg: FinetuneConfig
) -> list[TokenSequence]:
    """The examples tokenized and truncated to a row; examples left with no response token
    (a prompt longer than ``seq_len``) are dropped."""
    sequences = [
        tokenize(tokenizer, template, ex.messages, cfg.seq_len + 1, cfg.train_on_prompt)
        for ex in examples
    ]
    kept = [s for s in sequences if s.trained > 0]
    if examples and not kept:
        raise PastureError(
            f"{examples[0].where}: no example has a response within seq_len {cfg.seq_len}"
        )
    return kept


def training_batches(
    sequences: Sequence[TokenSequence],
    cfg: FinetuneConfig,
    skip: int = 0,
    rank: int = 0,
    world: int = 1,
) -> Iterator[Batch]:
    """Micro-batches forever: each epoch a fresh order (seeded by ``cfg.seed`` and the epoch),
    packed into rows, ``cfg.rows`` rows per micro-batch (an epoch's last partial one dropped,
    unless it is the only one). The first ``skip`` are passed over without being built: the
    stream's whole state is how many micro-batches were taken, so a resumed run continues
    exactly where the checkpoint left it. Of ``world`` ranks, rank r takes micro-batches
    r, r + world, … of the one global stream (``skip`` counts global micro-batches)."""
    epoch, index = 0, -1
    while True:
        order = list(range(len(sequences)))
        random.Random(cfg.seed * 1_000_003 + epoch).shuffle(order)
        shuffled = [sequences[i] for i in order]
        rows = pack(shuffled, cfg.seq_len) if cfg.packed else [[i] for i in range(len(order))]
        starts = range(0, max(len(rows) - cfg.rows + 1, 1), cfg.rows)
        for start in starts:
            index += 1
            if index < skip or index % world != rank:
                continue
            chunk = rows[start : start + cfg.rows]
            yield collate([[shuffled[i] for i in row] for row in chunk], cfg.seq_len)
        epoch += 1


def prepare_model(ckpt: Checkpoint, cfg: FinetuneConfig, device: torch.device) -> Transformer:
    """The checkpoint's model in float32 on ``device``, in training mode, with LoRA adapters
    when ``cfg.method`` is lora (only they train)."""
    model = ckpt.to_model(device, torch.float32).train()
    # The whole rotary table now: grown later under evaluation's inference_mode, it would be an
    # inference tensor that training cannot save for backward.
    model.rotary(device)
    if cfg.method == "lora":
        apply_lora(model, cfg.lora)
    return model


@torch.no_grad()
def answer(
    model: Transformer,
    tokenizer: Tokenizer,
    template: str,
    messages: Sequence[dict[str, str]],
    max_new_tokens: int = 64,
) -> str:
    """The model's greedy answer to a chat, through the template (stops at EOS)."""
    prompt, _ = encode_chat(tokenizer, template, messages, add_generation_prompt=True)
    was_training = model.training
    model.eval()
    (new,) = generate_tokens(
        model, [prompt], max_new_tokens, stop_ids=(tokenizer.eos_id,), decode_layout=False
    )
    model.train(was_training)
    return tokenizer.decode(new)


def export_model(
    model: Transformer,
    tokenizer: Tokenizer,
    template: str,
    out: Path,
    fmt: str,
    lora_scale: float | None = None,
) -> Path:
    """Gather the whole weights (from every rank, under FSDP), merge LoRA adapters (scale
    ``alpha / rank``) into them, and on rank 0 write ``out`` in ``fmt`` with the chat template
    beside it (``chat_template.jinja``: in the folder, or beside a single file)."""
    options = StateDictOptions(full_state_dict=True, cpu_offload=dist.is_initialized())
    state = get_model_state_dict(model, options=options)  # a collective under FSDP
    if not dist.is_initialized() or dist.get_rank() == 0:
        if lora_scale is not None:
            state = merge_weights(state, lora_scale)
        state = {k: v.detach().contiguous() for k, v in state.items()}
        interop.save(Checkpoint(model.args, state, tokenizer), out, fmt, force=False)
        save_template(out if out.is_dir() else out.parent, template)
    if dist.is_initialized():
        dist.barrier()
    return out


def _device(cfg: FinetuneConfig, device: torch.device, world: int) -> torch.device:
    """``cfg.device`` in one process; under torchrun each rank's own (``init_distributed``)."""
    if not cfg.device:
        return device
    if world > 1:
        raise PastureError(f"device = {cfg.device!r}: leave it empty under torchrun")
    if cfg.device.startswith("cuda") and not torch.cuda.is_available():
        raise PastureError(f"device = {cfg.device!r}: no CUDA device here")
    return torch.device(cfg.device)


def finetune(
    cfg: FinetuneConfig, checkpoint: str | Path, resume: str | bool = False
) -> dict[str, Any]:
    """Finetune ``checkpoint`` as ``cfg`` says; returns the run's summary (also in
    ``RUN/summary.json``). ``resume``: True continues from the latest checkpoint in
    ``RUN/checkpoints`` (bit-identical to a run never stopped), a path from that one."""
    rank, world, device = init_distributed()
    try:
        with train_checkpoint.run_lock(Path(cfg.run_dir)):
            return _finetune(cfg, checkpoint, resume, rank, world, device)
    finally:
        if world > 1:
            shutdown_distributed()


def _resume(
    cfg: FinetuneConfig,
    resume: str | bool,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    rank: int,
    held_out_loss: Any,
) -> tuple[int, int, float | None]:
    """(first step, tokens trained before, held-out loss before finetuning): from the
    checkpoint every rank agrees to resume from, or a fresh start (old logs removed)."""
    run_dir = Path(cfg.run_dir)
    path = train_checkpoint.resume_point(run_dir, resume)
    if path is None:
        if rank == 0:
            (run_dir / "metrics.jsonl").unlink(missing_ok=True)
            (run_dir / "benchmarks.jsonl").unlink(missing_ok=True)
        return 0, 0, held_out_loss()
    state = train_checkpoint.load(path, model, optimizer)
    first = state["step"]
    if first > cfg.steps:
        raise PastureError(f"{path}: step {first} is past steps = {cfg.steps}; raise steps")
    return first, state["loader"].get("trained_tokens", 0), state.get("loss_before")


def _log(path: Path, record: dict[str, Any], cfg: FinetuneConfig, rate: float) -> None:
    """Append ``record`` to metrics.jsonl every ``log_every`` steps, at the last step and
    whenever it holds a held-out loss (an appended log, like pretraining's)."""
    step = record["step"]
    if step % cfg.log_every and step != cfg.steps and "held_out_loss" not in record:
        return
    record |= {"lr": lr_at(step - 1, cfg.steps, cfg.optim), "trained_tokens_per_s": rate}
    with path.open("a") as f:
        f.write(json.dumps(record) + "\n")


def _read_inputs(
    cfg: FinetuneConfig, checkpoint: str | Path, out: Path
) -> tuple[interop.Checkpoint, str, list, list, int]:
    """Everything a run reads, checked before any work: (the checkpoint, the chat template,
    training and held-out sequences, how many training examples had no response token within
    ``seq_len``). A destination that cannot be written is refused first."""
    if cfg.parallel.tp != 1:
        raise PastureError(f"parallel.tp = {cfg.parallel.tp}: finetuning shards with FSDP only")
    interop.check_destination(out, cfg.out_format)
    template = load_template(cfg.template or None)
    train_examples, held_out_examples = read_all(cfg.data), read_all(cfg.eval_data)
    ckpt = interop.load(checkpoint, cfg.tokenizer or None)
    if ckpt.tokenizer is None:
        raise PastureError(f"{checkpoint}: no tokenizer in the checkpoint: set tokenizer = PATH")
    train = to_sequences(train_examples, ckpt.tokenizer, template, cfg)
    held_out = to_sequences(held_out_examples, ckpt.tokenizer, template, cfg)
    return ckpt, template, train, held_out, len(train_examples) - len(train)


def _benchmark(
    model: torch.nn.Module,
    tokenizer: Tokenizer,
    cfg: FinetuneConfig,
    settings: Any,  # train.benchmarks.benchmark_settings(...)
    step: int,
    tokens: int,
    rank: int,
) -> None:
    """``[benchmarks]`` during finetuning, appended to RUN/benchmarks.jsonl as pretraining's."""
    model.eval()  # run_benchmarks puts it back in training mode
    rows = run_benchmarks(model, tokenizer, cfg.benchmarks.tasks, settings, step, tokens)
    if rank == 0:
        with (Path(cfg.run_dir) / "benchmarks.jsonl").open("a") as f:
            f.writelines(json.dumps(row) + "\n" for row in rows)


def _finetune(
    cfg: FinetuneConfig,
    checkpoint: str | Path,
    resume: str | bool,
    rank: int,
    world: int,
    device: torch.device,
) -> dict[str, Any]:
    run_dir = Path(cfg.run_dir)
    out = Path(cfg.out) if cfg.out else run_dir / "model"
    bench = benchmark_settings(cfg.benchmarks, tp=1)  # names and files checked before any work
    ckpt, template, train, held_out, dropped = _read_inputs(cfg, checkpoint, out)
    tokenizer = ckpt.tokenizer
    if rank == 0:
        files.write_text(run_dir / "config.json", json.dumps(to_dict(cfg), indent=2) + "\n")

    torch.manual_seed(cfg.seed)
    device = _device(cfg, device, world)
    model = prepare_model(ckpt, cfg, device)
    model = parallelize_model(model, build_mesh(world, 1, device.type), cfg.parallel)
    optimizer = build_optimizer(model, cfg.optim)
    eval_batches = [b.to(device) for b in batches(held_out, cfg.seq_len, cfg.rows)]

    def held_out_loss() -> float | None:
        if not eval_batches:
            return None
        model.eval()
        loss = response_loss(model, eval_batches)
        model.train()
        return loss

    summary: dict[str, Any] = {
        "examples": len(train),
        "held_out": len(held_out),
        "dropped": dropped,  # no response token within seq_len
    }
    metrics = run_dir / "metrics.jsonl"
    first, trained_before, summary["loss_before"] = _resume(
        cfg, resume, model, optimizer, rank, held_out_loss
    )
    checkpointer = train_checkpoint.Checkpointer(
        run_dir, cfg.checkpoint.keep, cfg.checkpoint.async_save
    )
    per_step = cfg.grad_accum * world  # global micro-batches per step
    stream = training_batches(train, cfg, first * per_step, rank, world)
    trained, start = 0, time.perf_counter()
    for step in range(first, cfg.steps):
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, cfg.steps, cfg.optim)
        micro = [next(stream).to(device) for _ in range(cfg.grad_accum)]
        loss, grad_norm, stepped = finetune_step(
            model, optimizer, micro, cfg.optim.grad_clip, cfg.autocast
        )
        if not stepped:
            raise PastureError(f"step {step + 1}: loss or gradient not finite; lower optim.lr")
        trained += trained_tokens(micro)  # over every rank
        record: dict[str, Any] = {"step": step + 1, "loss": loss, "grad_norm": grad_norm}
        if cfg.eval_every and ((step + 1) % cfg.eval_every == 0 or step + 1 == cfg.steps):
            record["held_out_loss"] = held_out_loss()
        if rank == 0:
            _log(metrics, record, cfg, trained / (time.perf_counter() - start))
        if bench is not None and cfg.benchmarks.due(step + 1, cfg.steps):
            _benchmark(model, tokenizer, cfg, bench, step + 1, trained_before + trained, rank)
        if cfg.checkpoint.due(step + 1, cfg.steps):
            loader = {
                "micro_batches": (step + 1) * per_step,
                "trained_tokens": trained_before + trained,
            }
            train_state = {"loader": loader, "loss_before": summary["loss_before"]}
            checkpointer.save(step + 1, model, optimizer, train_state)
    checkpointer.wait()
    summary["seconds"] = time.perf_counter() - start
    summary["trained_tokens"] = trained_before + trained
    summary["loss_after"] = held_out_loss()
    scale = cfg.lora.alpha / cfg.lora.rank if cfg.method == "lora" else None
    summary["out"] = str(export_model(model, tokenizer, template, out, cfg.out_format, scale))
    if rank == 0:
        files.write_text(run_dir / "summary.json", json.dumps(summary, indent=2) + "\n")
    return summary


__all__ = [
    "answer",
    "export_model",
    "finetune",
    "read_all",
    "to_sequences",
    "prepare_model",
    "training_batches",
]
