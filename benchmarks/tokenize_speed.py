"""Tokenization + packing tokens/s: Pasture's ``tokenize_documents`` vs two peers, same text.

    .venv/bin/python benchmarks/tokenize_speed.py
    LD_PRELOAD=/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4 \\
        .venv/bin/python benchmarks/tokenize_speed.py --rounds 5      # under tcmalloc

Real text: the C4 excerpt (1000 + 30 pages), Dolma's 697 CC pages and the English Wikipedia
sample articles (read by Pasture's Wikipedia source). Meta's LLaMA tokenizer
(``shared/data/models/llama-tokenizer/tokenizer.model``). Each side loads the tokenizer, encodes
every document, appends EOS and writes a packed shard to disk, in one process, alternating:

* pasture: ``pasture.data.shards.tokenize_documents`` (batched SentencePiece, ``.bin`` + ``.idx``)
* sentencepiece: the naive peer, ``SentencePieceProcessor.encode`` one document at a time, each
  written as a uint16 array, plus an offsets index.
* datatrove: ``DocumentTokenizer`` (HF ``tokenizers``, batched) unshuffled, on a
  ``tokenizer.json`` converted locally from the same model by transformers' ``LlamaTokenizer``.

Batched encoders use threads (both cores here); the naive peer uses one. CPU seconds are
recorded too. One JSON line per run of the script goes to
benchmarks/results/tokenize_speed.jsonl.
"""

from __future__ import annotations

import argparse
import gzip
import importlib.metadata
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
import sentencepiece as spm
from datatrove.data import Document
from datatrove.pipeline.tokens import DocumentTokenizer
from datatrove.utils.logging import logger as datatrove_logger

from pasture.data.shards import tokenize_documents
from pasture.data.sources.commoncrawl import wikipedia_texts
from pasture.data.tokenizer import Tokenizer

RESULTS = Path(__file__).parent / "results" / "tokenize_speed.jsonl"
SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
TOKENIZER = SHARED / "models" / "llama-tokenizer" / "tokenizer.model"
JSONL_TEXT = [
    "pretrain/c4/c4-en-train.00000-of-01024_first1000.jsonl.gz",
    "pretrain/c4/olmo_c4-sample.01.json.gz",
    "pretrain/c4/olmo_c4-sample.02.json.gz",
    "pretrain/c4/olmo_c4-sample.03.json.gz",
    "pretrain/commoncrawl/reference_processed/dolma_CC-MAIN-20190717121559-20190717143559-00140.jsonl.gz",
]


def allocator() -> str:
    return "tcmalloc" if "tcmalloc" in os.environ.get("LD_PRELOAD", "") else "glibc malloc"


def load_texts(work: Path) -> list[str]:
    texts = []
    for name in JSONL_TEXT:
        with gzip.open(SHARED / name, "rt", encoding="utf-8") as f:
            texts += [json.loads(line)["text"] for line in f]
    texts += list(wikipedia_texts(SHARED / "pretrain", "en", work))
    return [t for t in texts if t]


def run_pasture(texts: list[str], out: Path) -> int:
    tokenizer = Tokenizer.from_file(TOKENIZER)
    return tokenize_documents(texts, tokenizer, out / "pasture").num_tokens


def run_sentencepiece(texts: list[str], out: Path) -> int:
    sp = spm.SentencePieceProcessor(model_file=str(TOKENIZER))
    eos = sp.eos_id()
    offsets = [0]
    with open(out / "naive.bin", "wb") as f:
        for text in texts:
            ids = sp.encode(text)
            ids.append(eos)
            f.write(np.asarray(ids, dtype=np.uint16).tobytes())
            offsets.append(offsets[-1] + len(ids))
    np.asarray(offsets, dtype=np.uint64).tofile(out / "naive.idx")
    return offsets[-1]


def run_datatrove(docs: list[Document], tokenizer_json: Path, out: Path) -> int:
    step = DocumentTokenizer(
        str(out / "datatrove"),
        tokenizer_name_or_path=str(tokenizer_json),
        eos_token="</s>",
        shuffle_documents=False,
        save_final_metadata=False,
    )
    step.run(iter(docs))  # writes the shard; returns nothing
    return int(step.stats["tokens"].total)


def convert_tokenizer(folder: Path) -> Path:
    """``tokenizer.json`` for HF ``tokenizers`` from the SentencePiece model (no download)."""
    from transformers import LlamaTokenizer

    folder.mkdir(parents=True)
    (folder / "tokenizer.model").write_bytes(TOKENIZER.read_bytes())
    LlamaTokenizer.from_pretrained(str(folder)).save_pretrained(str(folder / "hf"))
    return folder / "hf" / "tokenizer.json"


def timed(fn: Callable[[Path], int], out: Path) -> dict:
    out.mkdir(parents=True)
    wall, cpu = time.perf_counter(), time.process_time()
    tokens = fn(out)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    return {"tokens": tokens, "seconds": wall, "cpu_seconds": cpu}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    RESULTS.parent.mkdir(exist_ok=True)
    datatrove_logger.remove()  # its per-step INFO lines
    with tempfile.TemporaryDirectory(prefix="tok-bench-") as tmp_name:
        tmp = Path(tmp_name)
        texts = load_texts(tmp / "wiki-work")
        docs = [Document(text=t, id=str(i)) for i, t in enumerate(texts)]
        tokenizer_json = convert_tokenizer(tmp / "convert")
        n_bytes = sum(len(t.encode("utf-8")) for t in texts)
        print(f"{len(texts)} documents, {n_bytes / 1e6:.1f} MB of UTF-8 text")
        sides: dict[str, Callable[[Path], int]] = {
            "pasture": lambda out: run_pasture(texts, out),
            "sentencepiece": lambda out: run_sentencepiece(texts, out),
            "datatrove": lambda out: run_datatrove(docs, tokenizer_json, out),
        }
        samples: dict[str, list[dict]] = {name: [] for name in sides}
        for r in range(args.rounds):
            for name, fn in sides.items():
                samples[name].append(timed(fn, tmp / f"{name}-{r}"))
        tok_s = {
            name: runs[0]["tokens"] / statistics.median(s["seconds"] for s in runs)
            for name, runs in samples.items()
        }
        tok_cpu_s = {
            name: runs[0]["tokens"] / statistics.median(s["cpu_seconds"] for s in runs)
            for name, runs in samples.items()
        }
        record = {
            "date": datetime.now(UTC).isoformat(timespec="seconds"),
            "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
            "load_average": os.getloadavg()[0],
            "allocator": allocator(),
            "versions": {
                name: importlib.metadata.version(name)
                for name in ("sentencepiece", "tokenizers", "datatrove")
            },
            "documents": len(texts),
            "text_bytes": n_bytes,
            "rounds": args.rounds,
            "tokens": {name: runs[0]["tokens"] for name, runs in samples.items()},
            "tok_s": {k: round(v) for k, v in tok_s.items()},
            "tok_per_cpu_s": {k: round(v) for k, v in tok_cpu_s.items()},
            "ratio_vs_sentencepiece": round(tok_s["pasture"] / tok_s["sentencepiece"], 2),
            "ratio_vs_datatrove": round(tok_s["pasture"] / tok_s["datatrove"], 2),
            "samples": samples,
        }
        with RESULTS.open("a") as f:
            f.write(json.dumps(record) + "\n")
        for name in sides:
            print(
                f"{name:14s} {tok_s[name] / 1e6:6.2f} M tok/s  "
                f"({tok_cpu_s[name] / 1e6:.2f} M tok per CPU-second; "
                f"{record['tokens'][name]} tokens)"
            )
        print(
            f"ratio pasture/sentencepiece {record['ratio_vs_sentencepiece']:.2f}x, "
            f"pasture/datatrove {record['ratio_vs_datatrove']:.2f}x ({record['allocator']})"
        )


if __name__ == "__main__":
    main()
