"""``pasture data build``: raw public dumps → filtered documents → packed token shards + report.

    pasture data build --config configs/data/llama.toml --input-root ../shared/data/pretrain \\
        --out runs/data --tokenizer tokenizer.model [--executor ray] [--workers 8]

Work is split into shards (a group of raw files a source processes together: its dedup scope).
Each shard runs read → the source's steps → ``documents/SOURCE/SHARD.jsonl.gz``, then
tokenize → ``tokens/SOURCE/SHARD.{bin,idx}``. Every output is written under a temporary name
and renamed; a shard counts as done only when its marker ``done/SHARD.*.json`` (its statistics)
exists, so a rerun after a crash or kill skips finished shards and redoes the rest, giving the
same bytes as an uninterrupted build. Shards run in parallel processes (``local``) or as Ray
tasks (``ray``) through the same function, so both executors write identical files.
"""

from __future__ import annotations

import gzip
import io
import json
import logging
import os
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm import tqdm

from ..config import build, load_toml, to_dict
from ..errors import PastureError
from .document import Context, Document, run_steps
from .loader import LLAMA_MIXTURE
from .shards import tokenize_documents
from .sources import SOURCES
from .tokenizer import Tokenizer, train_tokenizer

log = logging.getLogger("pasture.data")


@dataclass
class BuildConfig:
    seed: int = 0
    seq_len: int = 2048
    tokenizer: str = ""  # a SentencePiece model; empty: train one on the built documents
    vocab_size: int = 32000  # for a tokenizer trained here
    token_budget: float = 1.4e12  # the paper's 1.4T tokens, for the epochs column of Table 1
    workers: int = 0  # 0: one per CPU core
    write_dropped: bool = False  # write dropped documents with their reason, for audit
    mixture: dict[str, float] = field(default_factory=lambda: dict(LLAMA_MIXTURE))
    sources: dict[str, dict[str, Any]] = field(default_factory=dict)  # per-source options


@dataclass(frozen=True)
class ShardJob:
    source: str
    index: int
    files: tuple[str, ...]

    @property
    def name(self) -> str:
        return f"{self.source}-{self.index:05d}"


def load_config(path: str | Path, overrides: Sequence[str] = ()) -> BuildConfig:
    cfg = build(BuildConfig, load_toml(path, list(overrides)), str(path))
    validate(cfg, str(path))
    return cfg


def validate(cfg: BuildConfig, where: str = "config") -> None:
    """Everything that can be checked before any work starts."""
    for table in ("mixture", "sources"):
        unknown = sorted(set(getattr(cfg, table)) - set(SOURCES))
        if unknown:
            raise PastureError(
                f"{where}: unknown source {unknown[0]!r} in [{table}] (known: {', '.join(SOURCES)})"
            )
    if not any(w > 0 for w in cfg.mixture.values()):
        raise PastureError(f"{where}: [mixture] needs at least one positive weight")
    for name in cfg.mixture:
        source_options(cfg, name, where)


def source_options(cfg: BuildConfig, name: str, where: str = "config") -> Any:
    return build(SOURCES[name].Options, cfg.sources.get(name, {}), f"{where}: sources.{name}")


def plan(cfg: BuildConfig, input_root: Path) -> list[ShardJob]:
    jobs = []
    for name, weight in cfg.mixture.items():
        if weight <= 0:
            continue
        module, opts = SOURCES[name], source_options(cfg, name)
        inputs = module.find_inputs(input_root, opts)
        if not inputs:
            log.warning("%s: no input files for source %s", input_root / name, name)
        for index, files in enumerate(module.shards(inputs, opts)):
            jobs.append(ShardJob(name, index, tuple(str(f) for f in files)))
    return jobs


# --- writing ----------------------------------------------------------------------------------


def _write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _gzip_jsonl(records: Iterator[dict[str, Any]]) -> tuple[bytes, int]:
    """Deterministic gzip (no timestamp, no file name) of JSON lines."""
    buffer = io.BytesIO()
    n = 0
    with gzip.GzipFile(filename="", mode="wb", fileobj=buffer, mtime=0) as f:
        for record in records:
            f.write(json.dumps(record, ensure_ascii=False, sort_keys=True).encode() + b"\n")
            n += 1
    return buffer.getvalue(), n


def read_documents(path: Path) -> Iterator[Document]:
    with gzip.open(path, "rt", encoding="utf-8") as f:
        for line in f:
            record = json.loads(line)
            yield Document(record["text"], record["id"], record["source"], record["metadata"])


# --- the two per-shard stages ------------------------------------------------------------------


def process_shard(job: ShardJob, cfg: BuildConfig, input_root: str, out: str) -> dict[str, Any]:
    """Read and filter one shard; write its documents and its statistics (the done marker)."""
    out_dir = Path(out)
    marker = out_dir / "done" / f"{job.name}.docs.json"
    if marker.exists():
        return json.loads(marker.read_text())
    module, opts = SOURCES[job.source], source_options(cfg, job.source)
    dropped: list[dict[str, Any]] = []

    def sink(stage: str, reason: str, doc: Document | None, file: str) -> None:
        if cfg.write_dropped:
            record = {"stage": stage, "reason": reason, "file": file}
            if doc is not None:
                record.update(id=doc.id, text=doc.text)
            dropped.append(record)

    ctx = Context(shard=job.name, sink=sink)
    read_stats = ctx.stage_stats("read")

    def read_all() -> Iterator[Document]:
        for file in job.files:
            read_stats.bytes_in += Path(file).stat().st_size
            for doc in module.read(Path(file), ctx, opts):
                read_stats.docs_out += 1
                read_stats.bytes_out += len(doc.text.encode("utf-8"))
                yield doc

    work_dir = out_dir / "work" / job.source
    steps = module.steps(opts, work_dir)
    for step in steps:  # the report lists stages in pipeline order
        ctx.stage_stats(step.name)
    kept = run_steps(read_all(), steps, ctx)
    records = (
        {"id": d.id, "source": d.source, "text": d.text, "metadata": d.metadata} for d in kept
    )
    data, n_docs = _gzip_jsonl(records)
    _write_atomic(out_dir / "documents" / job.source / f"{job.name}.jsonl.gz", data)
    if cfg.write_dropped:
        _write_atomic(out_dir / "dropped" / f"{job.name}.jsonl.gz", _gzip_jsonl(iter(dropped))[0])
    result = {
        "shard": job.name,
        "source": job.source,
        "files": [os.path.relpath(f, input_root) for f in job.files],
        "documents": n_docs,
        "stages": {stage: s.to_dict() for stage, s in ctx.stats.items()},
    }
    # Keys stay in pipeline order (no sort_keys): the report lists stages as they ran.
    _write_atomic(marker, json.dumps(result, indent=1).encode())
    return result


def tokenize_shard(job: ShardJob, tokenizer_path: str, out: str) -> dict[str, Any]:
    """Tokenize one shard's documents into ``tokens/SOURCE/SHARD.{bin,idx}``."""
    out_dir = Path(out)
    marker = out_dir / "done" / f"{job.name}.tokens.json"
    if marker.exists():
        return json.loads(marker.read_text())
    tokenizer = Tokenizer.from_file(tokenizer_path)
    documents = out_dir / "documents" / job.source / f"{job.name}.jsonl.gz"
    prefix = out_dir / "tokens" / job.source / job.name
    prefix.parent.mkdir(parents=True, exist_ok=True)
    stats = tokenize_documents((d.text for d in read_documents(documents)), tokenizer, prefix)
    result = {
        "shard": job.name,
        "source": job.source,
        "num_docs": stats.num_docs,
        "num_tokens": stats.num_tokens,
        "text_bytes": stats.text_bytes,
    }
    _write_atomic(marker, json.dumps(result, indent=1, sort_keys=True).encode())
    return result


# --- executors ---------------------------------------------------------------------------------


def _init_worker() -> None:
    logging.basicConfig(level=logging.WARNING, format="pasture: %(message)s")


def run_local(
    fn: Callable[..., dict], jobs: list[ShardJob], args: tuple, workers: int, desc: str
) -> list[dict]:
    """Run ``fn(job, *args)`` for every job in worker processes; results in job order."""
    results: dict[str, dict] = {}
    with tqdm(total=len(jobs), desc=desc, unit="shard") as bar:
        if workers <= 1:
            for job in jobs:
                results[job.name] = fn(job, *args)
                bar.update()
        else:
            with ProcessPoolExecutor(max_workers=workers, initializer=_init_worker) as pool:
                futures = {pool.submit(fn, job, *args): job for job in jobs}
                for future in as_completed(futures):
                    results[futures[future].name] = future.result()
                    bar.update()
    return [results[job.name] for job in jobs]


def run_ray(
    fn: Callable[..., dict], jobs: list[ShardJob], args: tuple, workers: int, desc: str
) -> list[dict]:
    """The same work as Ray tasks: on a cluster if ``RAY_ADDRESS`` is set, else a local Ray."""
    try:
        import ray
    except ImportError:
        raise PastureError("the Ray executor needs ray: pip install 'pasture[ray]'") from None
    if not ray.is_initialized():
        ray.init(
            num_cpus=workers or None,
            include_dashboard=False,
            log_to_driver=True,
            configure_logging=False,
        )
    remote = ray.remote(fn)
    shared_args = [ray.put(a) for a in args]
    pending = {remote.remote(job, *shared_args): job for job in jobs}
    results: dict[str, dict] = {}
    with tqdm(total=len(jobs), desc=desc, unit="shard") as bar:
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            for ref in done:
                results[pending.pop(ref).name] = ray.get(ref)
                bar.update()
    return [results[job.name] for job in jobs]


EXECUTORS = {"local": run_local, "ray": run_ray}


def build_dataset(
    cfg: BuildConfig,
    input_root: Path,
    out: Path,
    executor: str = "local",
    tokenizer: str | None = None,
) -> dict[str, Any]:
    """The whole build. Returns the report (also written to ``out/report.{json,md}``)."""
    from .report import build_report, write_report

    if executor not in EXECUTORS:
        raise PastureError(f"unknown executor {executor!r}; known: {', '.join(EXECUTORS)}")
    if not input_root.is_dir():
        raise PastureError(f"{input_root}: input root is not a directory")
    validate(cfg)
    tokenizer = tokenizer or cfg.tokenizer
    if tokenizer:
        Tokenizer.from_file(tokenizer)  # fail now, not after hours of filtering
    out.mkdir(parents=True, exist_ok=True)
    _write_atomic(out / "config.json", json.dumps(to_dict(cfg), indent=2).encode())
    jobs = plan(cfg, input_root)
    for name in dict.fromkeys(job.source for job in jobs):
        SOURCES[name].prepare(source_options(cfg, name), input_root, out / "work" / name)
    run = EXECUTORS[executor]
    workers = cfg.workers or os.cpu_count() or 1
    shard_stats = run(process_shard, jobs, (cfg, str(input_root), str(out)), workers, "filter")
    if not tokenizer:
        tokenizer = str(out / "tokenizer.model")
        if not Path(tokenizer).exists():
            files = sorted((out / "documents").rglob("*.jsonl.gz"))
            text_file = out / "work" / "tokenizer-corpus.txt"
            text_file.parent.mkdir(parents=True, exist_ok=True)
            with text_file.open("w", encoding="utf-8") as f:
                for path in files:
                    for doc in read_documents(path):
                        f.write(doc.text.replace("\n", " ") + "\n")
            train_tokenizer([text_file], Path(tokenizer), vocab_size=cfg.vocab_size)
    elif Path(tokenizer).resolve() != (out / "tokenizer.model").resolve():
        # The output folder carries its tokenizer: training and export find it there.
        _write_atomic(out / "tokenizer.model", Path(tokenizer).read_bytes())
    token_stats = run(tokenize_shard, jobs, (tokenizer, str(out)), workers, "tokenize")
    report = build_report(cfg, jobs, shard_stats, token_stats, out)
    write_report(report, out)
    return report


__all__ = ["BuildConfig", "ShardJob", "build_dataset", "load_config", "plan"]
