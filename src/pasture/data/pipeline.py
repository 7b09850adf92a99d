"""``pasture data build``: raw public dumps → filtered documents → packed token shards + report.

    pasture data build --config configs/data/llama.toml --input-root ../shared/data/pretrain \\
        --out runs/data --tokenizer tokenizer.model [--executor ray] [--workers 8]

Work is split into shards (a group of raw files a source processes together: its dedup scope).
Each shard runs read → the source's steps → ``documents/SOURCE/SHARD.jsonl.gz``, then
tokenize → ``tokens/SOURCE/SHARD.{bin,idx}``. Every output is written under a temporary name
and renamed; a shard counts as done only when its marker ``done/SHARD.*.json`` (its statistics)
exists, so a rerun after a crash or kill skips finished shards and redoes the rest, giving the
same bytes as an uninterrupted build. A shard is named by the hash of its inputs (relative
names, sizes, mtimes), its source's options and what ``prepare`` made for it: a rerun with a
changed input set redoes exactly the shards whose inputs changed, and removes the outputs of
shards that no longer exist. Shards run in parallel processes (``local``) or as Ray tasks
(``ray``) through the same function, so both executors write identical files.

Inputs are read only inside ``--input-root`` (links that leave it are skipped and counted), and
``--out`` may not lie inside it. One bad file or record never stops a build: it is skipped and
counted in the report with its reason.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import logging
import os
import re
import stat
import tempfile
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from tqdm import tqdm

from ..config import build, load_toml, to_dict
from ..errors import PastureError
from ..files import atomic_file, write_bytes, write_text
from .document import Context, Document, run_steps
from .inputs import printable, printable_values, valid_text, why_not_readable
from .loader import LLAMA_MIXTURE
from .shards import tokenize_documents
from .sources import SOURCES
from .tokenizer import Tokenizer, train_tokenizer

log = logging.getLogger("pasture.data")


@dataclass
class BuildConfig:
    seed: int = 0
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
    index: int  # position in the plan (report order)
    files: tuple[str, ...]
    key: str  # hash of the inputs (names, sizes, mtimes), the options and the prepared state

    @property
    def name(self) -> str:
        # Named by its key, not its position: a changed input set redoes exactly the shards
        # whose inputs changed, and the others' outputs are reused.
        return f"{self.source}-{self.key[:16]}"


@dataclass
class Plan:
    jobs: list[ShardJob]
    skipped: dict[str, Counter]  # per source: inputs not read (links out of the root, ...)


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


def _file_state(path: str, input_root: Path) -> list[Any]:
    """What identifies an input's content cheaply: its name under the root, size and mtime."""
    rel = os.fsencode(os.path.relpath(path, input_root)).hex()
    try:
        st = os.stat(path)
    except OSError:
        return [rel, -1, -1]
    return [rel, st.st_size, st.st_mtime_ns]


def _folder_digest(folder: Path) -> str:
    """The hash of every file under ``folder`` (a source's prepared models), names and bytes."""
    h = hashlib.sha256()
    if folder.is_dir():
        for path in sorted(p for p in folder.rglob("*") if p.is_file()):
            if path.name.startswith("."):
                continue  # temporary files of an interrupted write
            h.update(os.fsencode(path.relative_to(folder)) + b"\0")
            with open(path, "rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    h.update(block)
    return h.hexdigest()


def plan(cfg: BuildConfig, input_root: Path) -> Plan:
    """The shards of every source with a positive weight, keyed by their inputs and settings."""
    jobs: list[ShardJob] = []
    skipped: dict[str, Counter] = {}
    for name, weight in cfg.mixture.items():
        if weight <= 0:
            continue
        module, opts = SOURCES[name], source_options(cfg, name)
        inputs = []
        for path in module.find_inputs(input_root, opts):
            reason = why_not_readable(path, input_root)
            if reason is None:
                inputs.append(path)
                continue
            skipped.setdefault(name, Counter())[reason] += 1
            log.warning("%s: skipped (%s)", path, reason)
        if not inputs:
            log.warning("%s: no input files for source %s", input_root / name, name)
        settings = {
            "source": name,
            "options": to_dict(opts),
            "write_dropped": cfg.write_dropped,
            "version": SHARD_FORMAT,
        }
        for files in module.shards(inputs, opts):
            files = tuple(str(f) for f in files)
            state = [_file_state(f, input_root) for f in files]
            blob = json.dumps([settings, state], sort_keys=True, default=str).encode()
            jobs.append(ShardJob(name, len(jobs), files, hashlib.sha256(blob).hexdigest()))
    return Plan(jobs, skipped)


def with_prepared(job: ShardJob, digest: str) -> ShardJob:
    """``job`` keyed also by what its source's ``prepare`` wrote (``_folder_digest``): a
    retrained perplexity LM or another choice of sites redoes the shards that use them."""
    return replace(job, key=hashlib.sha256(f"{job.key}:{digest}".encode()).hexdigest())


# Bump when a change in the code makes earlier shards wrong, so that reruns redo them.
SHARD_FORMAT = 8


# --- writing ----------------------------------------------------------------------------------


class _JsonlWriter:
    """Deterministic gzip (no timestamp, no file name) of JSON lines, streamed to ``tmp``."""

    def __init__(self, tmp: Path) -> None:
        self._raw = open(tmp, "wb")  # noqa: SIM115 - closed in close()
        self._gz = gzip.GzipFile(filename="", mode="wb", fileobj=self._raw, mtime=0)
        self.count = 0

    def write(self, record: dict[str, Any]) -> None:
        line = json.dumps(record, ensure_ascii=False, sort_keys=True)
        self._gz.write(line.encode("utf-8") + b"\n")
        self.count += 1

    def close(self) -> None:
        self._gz.close()
        self._raw.close()


@contextmanager
def _jsonl_gz(path: Path) -> Iterator[_JsonlWriter]:
    with atomic_file(path) as tmp:
        writer = _JsonlWriter(tmp)
        try:
            yield writer
        finally:
            writer.close()


def read_documents(path: Path) -> Iterator[Document]:
    with gzip.open(path, "rt", encoding="utf-8") as f:
        for line in f:
            record = json.loads(line)
            yield Document(record["text"], record["id"], record["source"], record["metadata"])


def _read_marker(path: Path, key: str) -> dict[str, Any] | None:
    """A done marker's statistics if it is there and belongs to this very shard, else None."""
    try:
        result = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return result if isinstance(result, dict) and result.get("key") == key else None


# --- the two per-shard stages ------------------------------------------------------------------


def process_shard(job: ShardJob, cfg: BuildConfig, input_root: str, out: str) -> dict[str, Any]:
    """Read and filter one shard; write its documents and its statistics (the done marker)."""
    out_dir = Path(out)
    marker = out_dir / "done" / f"{job.name}.docs.json"
    if (done := _read_marker(marker, job.key)) is not None:
        return done
    module, opts = SOURCES[job.source], source_options(cfg, job.source)
    with ExitStack() as stack:
        dropped = (
            stack.enter_context(_jsonl_gz(out_dir / "dropped" / f"{job.name}.jsonl.gz"))
            if cfg.write_dropped
            else None
        )

        def sink(stage: str, reason: str, doc: Document | None, file: str) -> None:
            if dropped is not None:
                record = {"stage": stage, "reason": reason, "file": printable(file)}
                if doc is not None:
                    record.update(id=printable(doc.id), text=valid_text(doc.text))
                dropped.write(record)

        ctx = Context(shard=job.name, sink=sink)
        read_stats = ctx.stage_stats("read")

        def read_file(file: str) -> Iterator[Document]:
            try:
                st = os.stat(file)
            except OSError as e:
                ctx.bad_input(file, "unreadable", e.strerror or str(e))
                return
            read_stats.bytes_in += st.st_size
            if stat.S_ISREG(st.st_mode) and st.st_size == 0:
                ctx.bad_input(file, "empty_file")
                return
            try:
                yield from module.read(Path(file), ctx, opts)
            except Exception as e:  # one bad file must not stop the build: counted, logged
                ctx.bad_input(file, "reader_error", f"{type(e).__name__}: {e}")

        def read_all() -> Iterator[Document]:
            for file in job.files:
                for doc in read_file(file):
                    doc.id = printable(doc.id)
                    doc.text = valid_text(doc.text)
                    doc.metadata = printable_values(doc.metadata)
                    read_stats.docs_out += 1
                    read_stats.bytes_out += len(doc.text.encode("utf-8"))
                    yield doc

        work_dir = out_dir / "work" / job.source
        steps = module.steps(opts, work_dir)
        for step in steps:  # the report lists stages in pipeline order
            ctx.stage_stats(step.name)
        with _jsonl_gz(out_dir / "documents" / job.source / f"{job.name}.jsonl.gz") as docs:
            for d in run_steps(read_all(), steps, ctx):
                docs.write({"id": d.id, "source": d.source, "text": d.text, "metadata": d.metadata})
    result = {
        "shard": job.name,
        "key": job.key,
        "source": job.source,
        "files": [printable(os.path.relpath(f, input_root)) for f in job.files],
        "documents": docs.count,
        "stages": {stage: s.to_dict() for stage, s in ctx.stats.items()},
    }
    # Keys stay in pipeline order (no sort_keys): the report lists stages as they ran.
    write_text(marker, json.dumps(result, indent=1))
    return result


def tokenize_shard(job: ShardJob, tokenizer_path: str, out: str) -> dict[str, Any]:
    """Tokenize one shard's documents into ``tokens/SOURCE/SHARD.{bin,idx}``."""
    out_dir = Path(out)
    marker = out_dir / "done" / f"{job.name}.tokens.json"
    key = hashlib.sha256((job.key + _file_digest(Path(tokenizer_path))).encode()).hexdigest()
    if (done := _read_marker(marker, key)) is not None:
        return done
    tokenizer = Tokenizer.from_file(tokenizer_path)
    documents = out_dir / "documents" / job.source / f"{job.name}.jsonl.gz"
    prefix = out_dir / "tokens" / job.source / job.name
    prefix.parent.mkdir(parents=True, exist_ok=True)
    stats = tokenize_documents((d.text for d in read_documents(documents)), tokenizer, prefix)
    result = {
        "shard": job.name,
        "key": key,
        "source": job.source,
        "num_docs": stats.num_docs,
        "num_tokens": stats.num_tokens,
        "text_bytes": stats.text_bytes,
    }
    write_text(marker, json.dumps(result, indent=1, sort_keys=True))
    return result


def _file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


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


def check_out(out: Path, input_root: Path) -> None:
    """Refuse an output folder the build could not write, or would read back as input."""
    root, target = input_root.resolve(), out.resolve()
    if target == root or target.is_relative_to(root):
        raise PastureError(
            f"{out}: --out is inside --input-root {input_root}; a rerun would read its own "
            "outputs as input. Choose a folder outside it"
        )
    if out.exists() and not out.is_dir():
        raise PastureError(f"{out}: exists and is not a folder; --out must be a folder")
    try:
        out.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".pasture-write-test.", dir=out)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise PastureError(f"{out}: cannot write there ({e.strerror or e})") from None


_SHARD_FILE = re.compile(
    r"(?P<shard>[a-z]+-[0-9a-f]+)\.(?:jsonl\.gz|bin|idx|docs\.json|tokens\.json)"
)


def remove_stale_shards(out: Path, jobs: list[ShardJob]) -> list[Path]:
    """Delete the shard outputs of earlier builds into ``out`` that this plan no longer has
    (their inputs changed or went away), so the token folders hold exactly this build."""
    current = {job.name for job in jobs}
    folders = [out / "done", out / "dropped"]
    folders += [out / kind / name for kind in ("documents", "tokens") for name in SOURCES]
    removed = []
    for folder in folders:
        if not folder.is_dir():
            continue
        for path in sorted(folder.iterdir()):
            m = _SHARD_FILE.fullmatch(path.name)
            if m and m["shard"].split("-")[0] in SOURCES and m["shard"] not in current:
                path.unlink()
                removed.append(path)
    return removed


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
    check_out(out, input_root)
    write_text(out / "config.json", json.dumps(to_dict(cfg), indent=2))
    the_plan = plan(cfg, input_root)
    prepared = {}
    for name in dict.fromkeys(job.source for job in the_plan.jobs):
        SOURCES[name].prepare(source_options(cfg, name), input_root, out / "work" / name)
        prepared[name] = _folder_digest(out / "work" / name)
    # What prepare made (the perplexity LM, the chosen sites) is part of each shard's key.
    jobs = [with_prepared(job, prepared[job.source]) for job in the_plan.jobs]
    for path in remove_stale_shards(out, jobs):
        log.info("%s: removed (its inputs changed or are gone)", path)
    run = EXECUTORS[executor]
    workers = cfg.workers or os.cpu_count() or 1
    shard_stats = run(process_shard, jobs, (cfg, str(input_root), str(out)), workers, "filter")
    if not tokenizer:
        tokenizer = str(out / "tokenizer.model")
        if not Path(tokenizer).exists():
            files = sorted((out / "documents").rglob("*.jsonl.gz"))
            text_file = out / "work" / "tokenizer-corpus.txt"
            with atomic_file(text_file) as tmp, tmp.open("w", encoding="utf-8") as f:
                for path in files:
                    for doc in read_documents(path):
                        f.write(doc.text.replace("\n", " ") + "\n")
            train_tokenizer([text_file], Path(tokenizer), vocab_size=cfg.vocab_size)
    elif Path(tokenizer).resolve() != (out / "tokenizer.model").resolve():
        # The output folder carries its tokenizer: training and export find it there.
        write_bytes(out / "tokenizer.model", Path(tokenizer).read_bytes())
    token_stats = run(tokenize_shard, jobs, (tokenizer, str(out)), workers, "tokenize")
    report = build_report(cfg, jobs, shard_stats, token_stats, out, the_plan.skipped)
    write_report(report, out)
    return report


__all__ = ["BuildConfig", "Plan", "ShardJob", "build_dataset", "check_out", "load_config", "plan"]
