"""``pasture train``: the paper's recipe (§2.3–2.4) on one CPU process or under torchrun.

    pasture train --config configs/train/debug.toml                      # one process
    torchrun --nproc-per-node 8 -m pasture.cli train --config configs/train/llama-7b.toml \\
        --set data.shards=runs/data --set parallel.tp=2                  # FSDP2 × TP
    pasture train --config configs/train/debug.toml --resume             # continue the latest

The model is built on the meta device, parallelized (``pasture.parallel``: TP → activation
checkpointing → compile → FSDP), then initialized. Each step accumulates micro-batches until the
global batch (``batch_tokens``) is reached, clips the gradient norm, and steps AdamW at the
step's warmup/cosine learning rate. ``RUN/metrics.jsonl`` gets one line per logged step, and
``RUN/tensorboard/`` the same scalars (``tensorboard --logdir RUN``); ``RUN/config.json`` is the
resolved config; checkpoints are in ``RUN/checkpoints`` (``checkpoint_async``: written in the
background). ``[benchmarks]`` scores pasture.eval tasks every N steps into
``RUN/benchmarks.jsonl`` (the paper's Figure 2; ``pasture plot`` draws it). Several nodes: one
torchrun per node with the same c10d rendezvous (docs/training.md).
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.distributed.device_mesh import DeviceMesh
from tqdm import tqdm

from .. import files
from ..carbon.footprint import PAPER_TABLE15, EnergyMeter, to_markdown
from ..config import to_dict
from ..data.corpus import default_corpus_files, iter_documents
from ..data.loader import MixtureLoader
from ..data.shards import Shard, list_shards, tokenize_documents
from ..data.tokenizer import Tokenizer, train_tokenizer
from ..errors import PastureError
from ..eval import EvalSettings, PastureLM
from ..eval.run import evaluate, missing_files, resolve_tasks
from ..eval.tasks import TASKS
from ..model import PRESETS, Transformer, count_parameters, flops_per_token, preset
from ..parallel.mesh import build_mesh, init_distributed
from ..parallel.parallelize import parallelize_model
from . import checkpoint
from .config import TrainConfig
from .optim import build_optimizer, clip_grad_norm, lr_at

# Dense bf16 peak FLOP/s per device, for MFU when peak_tflops is not set.
PEAK_BF16 = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "L40S": 362e12, "A10G": 125e12}


def _barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def peak_flops(device: torch.device, configured_tflops: float) -> float | None:
    if configured_tflops > 0:
        return configured_tflops * 1e12
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        for key, flops in PEAK_BF16.items():
            if key in name:
                return flops
    return None


Sources = dict[str, list[Path]]


def _built_shards(folder: Path, mixture: dict[str, float]) -> tuple[Sources, dict[str, float]]:
    root = folder / "tokens"
    if not root.is_dir():
        raise PastureError(f"{root}: no token shards (run `pasture data build` first)")
    sources = {d.name: list_shards(d) for d in sorted(root.iterdir()) if d.is_dir()}
    sources = {name: shards for name, shards in sources.items() if shards}
    if not sources:
        raise PastureError(f"{root}: no finished shards")
    weights = mixture or json.loads((folder / "config.json").read_text())["mixture"]
    return sources, {name: w for name, w in weights.items() if name in sources}


def prepare_data(
    cfg: TrainConfig, run_dir: Path, rank: int
) -> tuple[Sources, dict[str, float], int, tuple[Sources, dict[str, float]] | None]:
    """Training shards and weights, the vocabulary size, and the held-out shards (or None)."""
    if cfg.data.shards:
        sources, weights = _built_shards(Path(cfg.data.shards), cfg.data.mixture)
        held_out = None
        if cfg.data.validation:
            held_out = _built_shards(Path(cfg.data.validation), cfg.data.mixture)
        return sources, weights, Shard(next(iter(sources.values()))[0]).vocab_size, held_out
    # The default corpus: Python's standard library, tokenized once into the run folder;
    # every 50th file is held out for the validation loss.
    data_dir = run_dir / "data"
    prefix, val_prefix = data_dir / "stdlib", data_dir / "stdlib-val"
    tokenizer_path = data_dir / "tokenizer.model"
    if cfg.data.tokenizer:
        tokenizer_path = Path(cfg.data.tokenizer)
    if rank == 0 and not prefix.with_suffix(".idx").exists():
        data_dir.mkdir(parents=True, exist_ok=True)
        files = default_corpus_files(max_bytes=cfg.data.corpus_bytes)
        held, kept = files[::50], [f for i, f in enumerate(files) if i % 50]
        if not tokenizer_path.exists():
            train_tokenizer(kept, tokenizer_path, vocab_size=cfg.data.vocab_size)
        tokenizer = Tokenizer.from_file(tokenizer_path)
        tokenize_documents(iter_documents(held), tokenizer, val_prefix)
        tokenize_documents(iter_documents(kept), tokenizer, prefix)  # its .idx marks "done"
    _barrier()
    held_out = ({"stdlib": [val_prefix]}, {"stdlib": 1.0})
    return {"stdlib": [prefix]}, {"stdlib": 1.0}, Shard(prefix).vocab_size, held_out


def tokenizer_path(cfg: TrainConfig, run_dir: Path) -> Path:
    """The SentencePiece model the run's tokens were made with."""
    if cfg.data.tokenizer:
        return Path(cfg.data.tokenizer)
    if cfg.data.shards:
        return Path(cfg.data.shards) / "tokenizer.model"  # `pasture data build` copies it there
    return run_dir / "data" / "tokenizer.model"


def benchmark_settings(cfg: TrainConfig) -> EvalSettings | None:
    """The benchmarks to run during training, checked before any work: names and files."""
    bench = cfg.benchmarks
    if not bench.tasks or bench.every <= 0:
        return None
    if cfg.parallel.tp > 1:
        raise PastureError("benchmarks.tasks: evaluation during training needs parallel.tp = 1")
    names, unknown = resolve_tasks(bench.tasks)
    if unknown:
        raise PastureError(f"benchmarks.tasks: unknown task(s) {', '.join(unknown)}")
    root = bench.data_dir or os.environ.get("PASTURE_DATA", "")
    if not root:
        raise PastureError("benchmarks.data_dir: empty and $PASTURE_DATA is not set")
    data_dir = Path(root) if bench.data_dir else Path(root) / "eval"
    settings = EvalSettings(
        data_dir=data_dir, limit=bench.limit, seed=bench.seed, batch_size=bench.batch_size
    )
    for name in names:
        missing = missing_files(TASKS[name], settings)
        if missing:
            raise PastureError(f"benchmarks.tasks: {name}: {data_dir / missing[0]}: missing")
    return settings


def run_benchmarks(
    model: torch.nn.Module,
    tokenizer: Tokenizer,
    cfg: TrainConfig,
    settings: EvalSettings,
    step: int,
) -> list[dict[str, Any]]:
    """Score the benchmarks on the model as it is now; one row per task. Every rank runs the
    same requests, so the forward passes of a sharded (FSDP) model stay in step."""
    lm = PastureLM(model, tokenizer, batch_size=settings.batch_size, progress=False)
    try:
        outcome = evaluate(lm, cfg.benchmarks.tasks, settings, log=lambda _: None)
    finally:
        model.train()
    if outcome.errors:
        name, message = next(iter(outcome.errors.items()))
        raise PastureError(f"benchmarks.tasks: {name}: {message}")
    return [
        {
            "step": step,
            "tokens": step * cfg.batch_tokens,
            "task": name,
            "metric": result.main,
            "value": result.metrics[result.main],
            "stderr": result.stderr.get(result.main),
            "n": len(result.records),
        }
        for name, result in outcome.results.items()
    ]


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
    micro_batches: list[tuple[torch.Tensor, torch.Tensor]],
    grad_clip: float,
    autocast: bool,
    logits_of: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> tuple[float, float, bool]:
    """One optimizer step of the paper's recipe: each micro-batch's loss (scaled by 1 / their
    number) backward, gradients clipped to ``grad_clip``, AdamW's step, gradients cleared.

    Returns (loss averaged over the micro-batches and all ranks, gradient norm, stepped). When
    the loss or the norm is not finite nothing is updated (``stepped`` is False): the caller's
    ``nan_policy`` decides. ``logits_of`` defaults to ``model`` (the GPU benchmark passes HF's
    forward). Used by ``train``, the speed benchmarks and the parallel-equivalence tests, so
    those measure and check this very step.
    """
    logits_of = logits_of or model
    device = micro_batches[0][0].device
    loss_sum = torch.zeros((), device=device)
    for inputs, targets in micro_batches:
        loss = micro_batch_loss(logits_of, inputs, targets, autocast)
        (loss / len(micro_batches)).backward()
        loss_sum += loss.detach() / len(micro_batches)
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


def write_carbon_report(run_dir: Path, cfg: TrainConfig, device: torch.device) -> Path:
    """``RUN/carbon.md``: the paper's Table 15 with this run's row (all sessions) added."""
    sessions = [json.loads(line) for line in (run_dir / "carbon.jsonl").read_text().splitlines()]
    hardware = torch.cuda.get_device_name(device) if device.type == "cuda" else device.type
    row = {
        "model": f"{cfg.model.preset} ({run_dir.name}, this run)",
        "gpu": hardware,
        "power_watts": cfg.device_power_watts,
        "gpu_hours": round(sum(s["gpu_hours"] for s in sessions), 4),
        "mwh": round(sum(s["energy_mwh"] for s in sessions), 6),
        "tco2eq": round(sum(s["tco2eq"] for s in sessions), 6),
    }
    rows = [paper._asdict() for paper in PAPER_TABLE15] + [row]
    path = run_dir / "carbon.md"
    method = sessions[-1]["method"]
    files.write_text(
        path,
        f"# Carbon footprint (paper §6, Table 15 form)\n\nPUE {cfg.pue}, "
        f"{cfg.carbon_intensity} tCO2eq/MWh; this run's energy: {method}.\n\n"
        + to_markdown(rows)
        + "\n",
    )
    return path


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
    args = preset(cfg.model.preset, **_model_overrides(cfg))
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


def _model_overrides(cfg: TrainConfig) -> dict[str, Any]:
    return {"max_seq_len": cfg.model.max_seq_len} if cfg.model.max_seq_len else {}


def _check_tensorboard(cfg: TrainConfig) -> None:
    if not cfg.tensorboard:
        return
    try:
        import tensorboard  # noqa: F401  (what torch.utils.tensorboard needs)
    except ImportError:
        raise PastureError(
            "tensorboard = true needs the tensorboard package: pip install 'pasture[train]', "
            "or set tensorboard = false"
        ) from None


def _summary_writer(run_dir: Path, start: int) -> Any:
    """``RUN/tensorboard/``'s writer. Events at steps after ``start`` from an earlier session
    (a run killed past its last checkpoint) are dropped by TensorBoard, as later lines win in
    metrics.jsonl."""
    from torch.utils.tensorboard import SummaryWriter

    return SummaryWriter(str(run_dir / "tensorboard"), purge_step=start + 1)


def train(cfg: TrainConfig, resume: str | bool = False) -> dict[str, Any]:
    """Run (or continue) training; returns the last logged metrics."""
    if cfg.model.preset not in PRESETS:
        raise PastureError(f"model.preset: unknown preset {cfg.model.preset!r}")
    lr_at(0, cfg.steps, cfg.optim)  # schedule errors (steps ≤ warmup) before any work
    _check_tensorboard(cfg)
    bench_settings = benchmark_settings(cfg)
    rank, world, device = init_distributed()
    device = _device(cfg, device)
    mesh = build_mesh(world, cfg.parallel.tp, device.type)
    dp_world = world if mesh is None else mesh["dp_shard"].size()
    check_shapes(cfg, world, dp_world, device)
    run_dir = Path(cfg.run_dir)
    with checkpoint.run_lock(run_dir):  # one training process group per run folder
        return _train(cfg, resume, bench_settings, rank, world, device, mesh)


def _train(
    cfg: TrainConfig,
    resume: str | bool,
    bench_settings: EvalSettings | None,
    rank: int,
    world: int,
    device: torch.device,
    mesh: DeviceMesh | None,
) -> dict[str, Any]:
    dp_rank, dp_world = rank, world
    if mesh is not None:
        dp_rank, dp_world = mesh["dp_shard"].get_local_rank(), mesh["dp_shard"].size()
    run_dir = Path(cfg.run_dir)
    if rank == 0:
        run_dir.mkdir(parents=True, exist_ok=True)
        files.write_text(run_dir / "config.json", json.dumps(to_dict(cfg), indent=2))
    sources, weights, vocab, held_out = prepare_data(cfg, run_dir, rank)

    seq_len = cfg.data.seq_len
    args = preset(cfg.model.preset, vocab_size=vocab, **_model_overrides(cfg))
    accumulation = cfg.batch_tokens // (cfg.micro_batch * seq_len * dp_world)

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
    optimizer = build_optimizer(model, cfg.optim)
    loader = MixtureLoader(
        sources,
        weights,
        seq_len=seq_len,
        batch_size=cfg.micro_batch,
        seed=cfg.seed,
        rank=dp_rank,
        world_size=dp_world,
    )
    checkpointer = checkpoint.Checkpointer(run_dir, cfg.keep_checkpoints, cfg.checkpoint_async)
    start = 0
    path = checkpoint.resume_point(run_dir, resume)  # decided once, for every rank
    if resume is True and path is None and rank == 0:
        tqdm.write(f"pasture: no checkpoint in {run_dir / 'checkpoints'}; starting from step 0")
    if path is not None:
        state = checkpoint.load(path, model, optimizer)
        loader.load_state_dict(state["loader"])
        start = state["step"]
        checkpoint.agree_on_progress(start, cfg.steps, state["loader"])
        if start > cfg.steps:  # every rank, as they agree
            raise PastureError(f"{path}: step {start} is past steps = {cfg.steps}; raise steps")

    autocast = cfg.parallel.mixed_precision == "bf16" and mesh is None and device.type == "cuda"
    peak = peak_flops(device, cfg.peak_tflops)
    flops = flops_per_token(args, seq_len)
    metrics_path = run_dir / "metrics.jsonl"
    writer = _summary_writer(run_dir, start) if cfg.tensorboard and rank == 0 else None
    batches = iter(loader)
    last: dict[str, Any] = {}
    window_tokens, window_start = 0, time.perf_counter()
    progress = tqdm(
        range(start, cfg.steps), initial=start, total=cfg.steps, desc="train", disable=rank != 0
    )
    if rank == 0:
        tqdm.write(
            f"pasture: {cfg.model.preset} {count_parameters(args):,} parameters, "
            f"{world} rank(s), accumulation {accumulation}, {device}"
        )
    meter = EnergyMeter(
        power_watts=cfg.device_power_watts,
        devices=None if device.type == "cuda" else world,
        pue=cfg.pue,
        carbon_intensity=cfg.carbon_intensity,
    )
    meter.start()
    for step in progress:
        lr = lr_at(step, cfg.steps, cfg.optim)
        for group in optimizer.param_groups:
            group["lr"] = lr
        micro_batches = [
            (inputs.to(device), targets.to(device))
            for inputs, targets in (next(batches) for _ in range(accumulation))
        ]
        loss_value, grad_norm, stepped = train_step(
            model, optimizer, micro_batches, cfg.optim.grad_clip, autocast
        )
        if not stepped:
            if cfg.nan_policy == "stop":
                checkpointer.wait()  # a save in flight holds a good (earlier) state
                good = checkpoint.latest(run_dir)
                raise PastureError(
                    f"step {step}: loss {loss_value}, grad norm {grad_norm}; stopped. "
                    f"Last good checkpoint: {good or 'none'}"
                )
            if rank == 0:
                tqdm.write(f"pasture: step {step}: non-finite loss, batch skipped")
            continue
        checkpointer.poll()
        window_tokens += cfg.batch_tokens
        done = step + 1
        evaluate = held_out is not None and cfg.eval_every and done % cfg.eval_every == 0
        if done % cfg.log_every == 0 or done == cfg.steps or evaluate:
            elapsed = time.perf_counter() - window_start
            tokens_per_s = window_tokens / elapsed
            last = {
                "step": done,
                "loss": loss_value,
                "lr": lr,
                "grad_norm": grad_norm,
                "tokens": done * cfg.batch_tokens,
                "tokens_per_s": tokens_per_s,
                "mfu": None if peak is None else flops * tokens_per_s / (peak * world),
                "val_loss": None,
                "memory_gb": (
                    torch.cuda.max_memory_allocated(device) / 1e9 if device.type == "cuda" else None
                ),
            }
            if evaluate:
                val_loader = MixtureLoader(
                    *held_out,
                    seq_len=seq_len,
                    batch_size=cfg.micro_batch,
                    seed=cfg.seed,
                    rank=dp_rank,
                    world_size=dp_world,
                )
                last["val_loss"] = validation_loss(model, val_loader, cfg.eval_batches, device)
            if rank == 0:
                with metrics_path.open("a") as f:
                    f.write(json.dumps(last) + "\n")
                if writer is not None:
                    for key, value in last.items():
                        if key != "step" and value is not None:
                            writer.add_scalar(key, value, done)
                    writer.flush()
                progress.set_postfix(loss=f"{loss_value:.4f}", lr=f"{lr:.2e}")
            window_tokens, window_start = 0, time.perf_counter()
        if bench_settings is not None and (done % cfg.benchmarks.every == 0 or done == cfg.steps):
            tokenizer = Tokenizer.from_file(tokenizer_path(cfg, run_dir))
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
                rows = run_benchmarks(model, tokenizer, cfg, bench_settings, done)
            if rank == 0:
                with (run_dir / "benchmarks.jsonl").open("a") as f:
                    f.writelines(json.dumps(row) + "\n" for row in rows)
                if writer is not None:
                    for row in rows:
                        writer.add_scalar(f"benchmarks/{row['task']}", row["value"], done)
                    writer.flush()
        if done % cfg.checkpoint_every == 0 or done == cfg.steps:
            checkpointer.save(done, model, optimizer, {"loader": loader.state_dict()})
    checkpointer.wait()
    _barrier()  # every rank returns with the last checkpoint complete
    if writer is not None:
        writer.close()
    footprint = meter.stop()
    if rank == 0:
        carbon = {"steps": [start, cfg.steps], **footprint.to_dict()}
        with (run_dir / "carbon.jsonl").open("a") as f:  # one line per (resumed) session
            f.write(json.dumps(carbon) + "\n")
        write_carbon_report(run_dir, cfg, device)
        tqdm.write(
            f"pasture: {footprint.gpu_hours:.4f} device-hours, {footprint.energy_mwh * 1000:.3f} "
            f"kWh, {footprint.tco2eq * 1000:.3f} kgCO2eq ({footprint.method}); "
            f"metrics in {metrics_path}"
        )
    return last
