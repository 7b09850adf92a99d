"""``pasture train``: the paper's recipe (§2.3–2.4) on one CPU process or under torchrun.

    pasture train --config configs/train/debug.toml                      # one process
    torchrun --nproc-per-node 8 -m pasture.cli train --config configs/train/llama-7b.toml \\
        --set data.shards=runs/data --set parallel.tp=2                  # FSDP2 × TP
    pasture train --config configs/train/debug.toml --resume             # continue the latest

The model is built on the meta device, parallelized (``pasture.parallel``: TP → activation
checkpointing → compile → FSDP), then initialized. Each step (``train_step``) accumulates
micro-batches until the global batch (``batch_tokens``) is reached, clips the gradient norm, and
steps AdamW at the step's warmup/cosine learning rate. The run folder gets ``config.json`` (the
resolved config: ``train.config.RunRecord``), the metrics (``train.metrics``), checkpoints
(``train.checkpoint``), benchmark scores (``train.benchmarks``) and the carbon footprint
(``pasture.carbon``). Several nodes: one torchrun per node with the same c10d rendezvous
(docs/training.md).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.distributed.device_mesh import DeviceMesh
from tqdm import tqdm

from ..carbon.footprint import Footprint, record_session, write_run_report
from ..data.loader import MixtureLoader
from ..data.prepare import Prepared, Sources, prepare_data
from ..data.tokenizer import Tokenizer
from ..errors import PastureError
from ..eval import EvalSettings
from ..model import ModelArgs, Transformer, count_parameters, flops_per_token
from ..parallel.mesh import build_mesh, init_distributed
from ..parallel.parallelize import parallelize_model
from . import checkpoint
from .benchmarks import benchmark_settings, run_benchmarks
from .config import TrainConfig, write_record
from .metrics import Metrics
from .optim import build_optimizer, clip_grad_norm, lr_at


def _barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def micro_batch_loss(
    logits_of: Callable[[torch.Tensor], torch.Tensor],
    inputs: torch.Tensor,
    targets: torch.Tensor,
    autocast: bool,
) -> torch.Tensor:
    """Cross-entropy of one micro-batch: the forward in bf16 autocast if ``autocast``, the loss in
    float32. ``logits_of`` maps (B, T) tokens to (B, T, vocab) logits (a Pasture model; the GPU
    benchmark also passes Hugging Face's)."""
    with torch.autocast(inputs.device.type, dtype=torch.bfloat16, enabled=autocast):
        logits = logits_of(inputs)
    return F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten())


def train_step(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    micro_batches: Sequence[Any],
    grad_clip: float,
    autocast: bool,
    logits_of: Callable[[torch.Tensor], torch.Tensor] | None = None,
    share: Callable[[Any], torch.Tensor] | None = None,
) -> tuple[float, float, bool]:
    """One optimizer step of the paper's recipe: each micro-batch's share of the step's loss
    backward, gradients clipped to ``grad_clip``, AdamW's step, gradients cleared.

    Returns (the step's loss: the shares summed, averaged over ranks; gradient norm; stepped).
    When the loss or the norm is not finite nothing is updated (``stepped`` is False): the
    caller's ``nan_policy`` decides. By default a micro-batch is (inputs, targets) and its share
    is its mean cross-entropy over the number of micro-batches (``logits_of`` defaults to
    ``model``; the GPU benchmark passes HF's forward). Finetuning passes ``share``: a packed
    batch's summed response-token loss over the step's response tokens (``finetune.loss``).
    Used by ``train``, ``finetune``, the speed benchmarks and the parallel-equivalence tests,
    so those measure and check this very step.
    """
    if share is None:
        forward = logits_of or model

        def share(batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
            return micro_batch_loss(forward, *batch, autocast) / len(micro_batches)

    loss_sum: torch.Tensor | None = None
    for batch in micro_batches:
        loss = share(batch)
        loss.backward()
        loss_sum = loss.detach() if loss_sum is None else loss_sum + loss.detach()
    grad_norm = float(clip_grad_norm(model, grad_clip))
    loss_value = mean_over_ranks(loss_sum)
    stepped = math.isfinite(loss_value) and math.isfinite(grad_norm)
    if stepped:
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return loss_value, grad_norm, stepped


@torch.no_grad()
def validation_loss(
    model: torch.nn.Module, loader: MixtureLoader, batches: int, device: torch.device
) -> float:
    """Mean loss over the first ``batches`` held-out batches (the same ones every time)."""
    total = torch.zeros((), device=device)
    stream = iter(loader)
    for _ in range(batches):
        inputs, targets = (t.to(device) for t in next(stream))
        logits = model(inputs)
        total += F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten()) / batches
    return mean_over_ranks(total)


def mean_over_ranks(value: torch.Tensor) -> float:
    """The mean of a scalar over all ranks (SUM then divide: gloo has no AVG)."""
    if dist.is_initialized():
        dist.all_reduce(value)
        value = value / dist.get_world_size()
    return value.item()


def _device(cfg: TrainConfig, device: torch.device) -> torch.device:
    if not cfg.device:
        return device
    chosen = torch.device(cfg.device)
    if chosen.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise PastureError(f"device = {cfg.device!r}: CUDA is not available here")
        if chosen.index is not None and chosen.index >= count:
            raise PastureError(f"device = {cfg.device!r}: there are {count} CUDA device(s)")
    return chosen


def _available_bytes(device: torch.device) -> int | None:
    """Free memory for training state on ``device`` (None: unknown)."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


TRAIN_STATE_BYTES = 16  # per parameter: fp32 weights, gradients and AdamW's two moments


def check_shapes(cfg: TrainConfig, world: int, dp_world: int, device: torch.device) -> None:
    """What can be known wrong before any work: context, divisibility, memory for the state."""
    args = cfg.model.args()
    seq_len = cfg.data.seq_len
    if seq_len > args.max_seq_len:
        raise PastureError(f"data.seq_len {seq_len} exceeds the model's context {args.max_seq_len}")
    if seq_len % cfg.parallel.tp:
        raise PastureError(
            f"data.seq_len {seq_len} is not a multiple of parallel.tp {cfg.parallel.tp} "
            "(sequence parallelism splits each sequence across the tensor-parallel ranks)"
        )
    per_micro = cfg.micro_batch * seq_len * dp_world
    if cfg.batch_tokens % per_micro:
        raise PastureError(
            f"batch_tokens {cfg.batch_tokens} is not a multiple of micro_batch × seq_len × "
            f"data-parallel ranks = {cfg.micro_batch} × {seq_len} × {dp_world} = {per_micro}"
        )
    needed = count_parameters(args) * TRAIN_STATE_BYTES // world  # sharded over every rank
    available = _available_bytes(device)
    if available is not None and needed > available:
        raise PastureError(
            f"model.preset {cfg.model.preset}: its weights, gradients and AdamW state need about "
            f"{needed / 2**30:,.1f} GiB per rank ({TRAIN_STATE_BYTES} bytes per parameter over "
            f"{world} rank(s)), but {device} has {available / 2**30:,.1f} GiB free; "
            "use more ranks or a smaller preset"
        )


def train(cfg: TrainConfig, resume: str | bool = False) -> dict[str, Any]:
    """Run (or continue) training; returns the last logged metrics."""
    lr_at(0, cfg.steps, cfg.optim)  # schedule errors (steps ≤ warmup) before any work
    cfg.metrics.check()
    bench = benchmark_settings(cfg.benchmarks, cfg.parallel.tp)
    rank, world, device = init_distributed()
    device = _device(cfg, device)
    mesh = build_mesh(world, cfg.parallel.tp, device.type)
    dp_world = world if mesh is None else mesh["dp_shard"].size()
    check_shapes(cfg, world, dp_world, device)
    with checkpoint.run_lock(Path(cfg.run_dir)):  # one training process group per run folder
        session = _start(cfg, resume, bench, rank, world, device, mesh)
        return _run(session, cfg, bench)


@dataclass
class Session:
    """What one (possibly resumed) training session holds."""

    rank: int
    world: int
    device: torch.device
    dp_rank: int
    dp_world: int
    run_dir: Path
    data: Prepared
    args: ModelArgs
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    loader: MixtureLoader
    checkpointer: checkpoint.Checkpointer
    start: int
    accumulation: int
    autocast: bool
    metrics: Metrics


def _start(
    cfg: TrainConfig,
    resume: str | bool,
    bench: EvalSettings | None,
    rank: int,
    world: int,
    device: torch.device,
    mesh: DeviceMesh | None,
) -> Session:
    """Data, the record of the run, the model (fresh or from a checkpoint), the optimizer."""
    dp_rank, dp_world = rank, world
    if mesh is not None:
        dp_rank, dp_world = mesh["dp_shard"].get_local_rank(), mesh["dp_shard"].size()
    run_dir = Path(cfg.run_dir)
    data = prepare_data(cfg.data, run_dir, rank)
    args = cfg.model.args(vocab_size=data.vocab_size)
    if rank == 0:
        resolved = cfg
        if bench is not None:  # where the benchmark files were found
            benchmarks = replace(cfg.benchmarks, data_dir=str(bench.data_dir.resolve()))
            resolved = replace(cfg, benchmarks=benchmarks)
        write_record(run_dir, resolved, args, data.tokenizer, data.data_dir)
    model = _build_model(args, mesh, cfg, device)
    optimizer = build_optimizer(model, cfg.optim)
    loader = _loader(cfg, data.sources, data.weights, dp_rank, dp_world)
    checkpointer = checkpoint.Checkpointer(run_dir, cfg.checkpoint.keep, cfg.checkpoint.async_save)
    start = _restore(cfg, run_dir, resume, model, optimizer, loader, rank)
    metrics = Metrics(
        run_dir,
        cfg.metrics,
        rank=rank,
        start=start,
        world=world,
        device=device,
        flops_per_token=flops_per_token(args, cfg.data.seq_len),
    )
    return Session(
        rank,
        world,
        device,
        dp_rank,
        dp_world,
        run_dir,
        data,
        args,
        model,
        optimizer,
        loader,
        checkpointer,
        start,
        accumulation=cfg.batch_tokens // (cfg.micro_batch * cfg.data.seq_len * dp_world),
        autocast=cfg.parallel.mixed_precision == "bf16" and mesh is None and device.type == "cuda",
        metrics=metrics,
    )


def _build_model(
    args: ModelArgs, mesh: DeviceMesh | None, cfg: TrainConfig, device: torch.device
) -> torch.nn.Module:
    """Built on the meta device, parallelized, then initialized (seeded) on ``device``."""
    torch.manual_seed(cfg.seed)
    with torch.device("meta"):
        model = Transformer(args)
    model = parallelize_model(model, mesh, cfg.parallel)
    model.to_empty(device=device)
    if mesh is None:
        model.init_weights(seed=cfg.seed)
    else:  # sharded (DTensor) parameters draw from the seeded global RNG, mesh-aware
        torch.manual_seed(cfg.seed)
        model.init_weights()
    model.train()
    return model


def _loader(
    cfg: TrainConfig, sources: Sources, weights: dict[str, float], dp_rank: int, dp_world: int
) -> MixtureLoader:
    return MixtureLoader(
        sources,
        weights,
        seq_len=cfg.data.seq_len,
        batch_size=cfg.micro_batch,
        seed=cfg.seed,
        rank=dp_rank,
        world_size=dp_world,
    )


def _restore(
    cfg: TrainConfig,
    run_dir: Path,
    resume: str | bool,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    loader: MixtureLoader,
    rank: int,
) -> int:
    """The step to start from: 0, or the resumed checkpoint's (loaded into model, optimizer and
    loader)."""
    path = checkpoint.resume_point(run_dir, resume)  # decided once, for every rank
    if resume is True and path is None and rank == 0:
        tqdm.write(f"pasture: no checkpoint in {run_dir / 'checkpoints'}; starting from step 0")
    if path is None:
        return 0
    state = checkpoint.load(path, model, optimizer)
    loader.load_state_dict(state["loader"])
    start = state["step"]
    checkpoint.agree_on_progress(start, cfg.steps, state["loader"])
    if start > cfg.steps:  # every rank, as they agree
        raise PastureError(f"{path}: step {start} is past steps = {cfg.steps}; raise steps")
    return start


def _run(s: Session, cfg: TrainConfig, bench: EvalSettings | None) -> dict[str, Any]:
    """Steps from ``s.start`` to ``cfg.steps``: train, log, validate, benchmark, checkpoint."""
    batches = iter(s.loader)
    last: dict[str, Any] = {}
    progress = tqdm(
        range(s.start, cfg.steps),
        initial=s.start,
        total=cfg.steps,
        desc="train",
        disable=s.rank != 0,
    )
    if s.rank == 0:
        tqdm.write(
            f"pasture: {cfg.model.preset} {count_parameters(s.args):,} parameters, "
            f"{s.world} rank(s), accumulation {s.accumulation}, {s.device}"
        )
    meter = cfg.carbon.meter(None if s.device.type == "cuda" else s.world).start()
    for step in progress:
        lr = lr_at(step, cfg.steps, cfg.optim)
        for group in s.optimizer.param_groups:
            group["lr"] = lr
        loss, grad_norm, stepped = train_step(
            s.model, s.optimizer, _micro_batches(s, batches), cfg.optim.grad_clip, s.autocast
        )
        if not stepped:
            _not_finite(s, cfg, step, loss, grad_norm)
            continue
        s.checkpointer.poll()
        s.metrics.count(cfg.batch_tokens)
        done = step + 1
        validate = s.data.held_out is not None and cfg.eval_every and done % cfg.eval_every == 0
        if s.metrics.due(done, cfg.steps) or validate:
            tokens = done * cfg.batch_tokens
            last = s.metrics.record(done, tokens, loss=loss, lr=lr, grad_norm=grad_norm)
            if validate:
                last["val_loss"] = _validation_loss(s, cfg)
            s.metrics.write(last)
            progress.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}")
        if bench is not None and cfg.benchmarks.due(done, cfg.steps):
            _benchmarks(s, cfg, bench, done)
        if cfg.checkpoint.due(done, cfg.steps):
            s.checkpointer.save(done, s.model, s.optimizer, {"loader": s.loader.state_dict()})
    s.checkpointer.wait()
    _barrier()  # every rank returns with the last checkpoint complete
    s.metrics.close()
    _finish(s, cfg, meter.stop())
    return last


def _micro_batches(
    s: Session, batches: Iterator[tuple[torch.Tensor, torch.Tensor]]
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [
        (inputs.to(s.device), targets.to(s.device))
        for inputs, targets in (next(batches) for _ in range(s.accumulation))
    ]


def _not_finite(s: Session, cfg: TrainConfig, step: int, loss: float, grad_norm: float) -> None:
    """``nan_policy``: stop naming the last good checkpoint, or skip the batch."""
    if cfg.nan_policy == "stop":
        s.checkpointer.wait()  # a save in flight holds a good (earlier) state
        good = checkpoint.latest(s.run_dir)
        raise PastureError(
            f"step {step}: loss {loss}, grad norm {grad_norm}; stopped. "
            f"Last good checkpoint: {good or 'none'}"
        )
    if s.rank == 0:
        tqdm.write(f"pasture: step {step}: non-finite loss, batch skipped")


def _validation_loss(s: Session, cfg: TrainConfig) -> float:
    assert s.data.held_out is not None
    loader = _loader(cfg, *s.data.held_out, s.dp_rank, s.dp_world)
    return validation_loss(s.model, loader, cfg.eval_batches, s.device)


def _benchmarks(s: Session, cfg: TrainConfig, bench: EvalSettings, done: int) -> None:
    tokenizer = Tokenizer.from_file(s.data.tokenizer)
    with torch.autocast(s.device.type, dtype=torch.bfloat16, enabled=s.autocast):
        rows = run_benchmarks(
            s.model, tokenizer, cfg.benchmarks.tasks, bench, done, done * cfg.batch_tokens
        )
    s.metrics.write_benchmarks(rows, done)


def _finish(s: Session, cfg: TrainConfig, footprint: Footprint) -> None:
    """Rank 0: the session's energy and carbon into ``RUN/carbon.jsonl`` and ``carbon.md``."""
    if s.rank != 0:
        return
    record_session(s.run_dir, (s.start, cfg.steps), footprint)
    cuda = s.device.type == "cuda"
    hardware = torch.cuda.get_device_name(s.device) if cuda else s.device.type
    write_run_report(s.run_dir, cfg.model.preset, hardware, cfg.carbon)
    tqdm.write(
        f"pasture: {footprint.gpu_hours:.4f} device-hours, {footprint.energy_mwh * 1000:.3f} "
        f"kWh, {footprint.tco2eq * 1000:.3f} kgCO2eq ({footprint.method}); "
        f"metrics in {s.metrics.path}"
    )
