"""``pasture demo`` (what ``make demo`` runs): everything built so far, on data with no download.

1. Train a SentencePiece BPE tokenizer with the paper's settings on Python's standard library.
2. Build a debug-size LLaMA, round-trip it Meta → Hugging Face → llama2.c → GGUF → Meta and
   check that the logits never change.
3. Generate from it (random weights: gibberish, but through the real cached decoder).
4. If ``../shared/data/models`` is present, convert llama2.c's trained stories260K and tell a
   story.

Each step appends a JSON line to ``WORKDIR/demo.jsonl``.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import torch
from tqdm import tqdm

from . import interop
from .data.corpus import default_corpus_files
from .data.tokenizer import train_tokenizer
from .generate import generate
from .interop import Checkpoint
from .model import Transformer, count_parameters, preset

ROUND_TRIP = [("meta", "meta"), ("hf", "hf"), ("llama2c", "model.bin"), ("gguf", "model.gguf")]


def default_data_dir() -> Path:
    return Path(os.environ.get("PASTURE_DATA", Path.cwd().parent / "shared" / "data"))


def run_demo(workdir: Path, data: Path | None = None, corpus_bytes: int = 4_000_000) -> None:
    workdir.mkdir(parents=True, exist_ok=True)
    log_path = workdir / "demo.jsonl"
    log_path.unlink(missing_ok=True)

    def log(step: str, **fields: object) -> None:
        with log_path.open("a") as f:
            f.write(json.dumps({"step": step, **fields}) + "\n")

    start = time.perf_counter()
    files = default_corpus_files(max_bytes=corpus_bytes)
    print(f"[1/4] training a tokenizer on {len(files)} stdlib files ({corpus_bytes:,} bytes)")
    tokenizer = train_tokenizer(files, workdir / "tokenizer.model", vocab_size=2000)
    digits = [tokenizer.id_to_piece(i) for i in tokenizer.encode("12345")]
    print(f"      {tokenizer.vocab_size} pieces; '12345' -> {digits}")
    log("tokenizer", vocab_size=tokenizer.vocab_size, files=len(files), digits=digits)

    # llama2.c's files cannot hold the RMSNorm eps (run.c hard-codes 1e-5), so the demo model
    # uses 1e-5 and survives that leg of the round trip exactly.
    config = preset("debug", vocab_size=tokenizer.vocab_size, norm_eps=1e-5)
    model = Transformer(config)
    model.init_weights(seed=0)
    model.eval()
    tokens = torch.tensor([tokenizer.encode("def main():\n    return 42", bos=True)])
    with torch.no_grad():
        reference = model(tokens)
    print(
        f"[2/4] debug model: {count_parameters(config):,} parameters; round trip through "
        + " -> ".join(name for name, _ in ROUND_TRIP)
        + " -> meta"
    )
    ckpt = Checkpoint.from_model(model, tokenizer)
    for fmt, filename in tqdm(ROUND_TRIP + [("meta", "meta-again")], desc="      formats"):
        interop.save(ckpt, workdir / filename, fmt)
        ckpt = interop.load(workdir / filename)
        with torch.no_grad():
            delta = (ckpt.to_model()(tokens) - reference).abs().max().item()
        log("round_trip", format=fmt, path=str(workdir / filename), max_abs_logit_delta=delta)
        if delta != 0.0:
            raise RuntimeError(f"logits changed by {delta} after writing {fmt}")
    print("      logits identical after every format")

    print("[3/4] generating from the (untrained) debug model:")
    text = generate(
        ckpt.to_model(),
        ckpt.tokenizer,
        "def main():",
        max_new_tokens=24,
        seed=0,
        temperature=0.8,
        top_p=0.95,
    )
    print("      " + repr("def main():" + text))
    log("generate_debug", prompt="def main():", completion=text)

    data = data or default_data_dir()
    stories = data / "models" / "stories260K"
    if (stories / "stories260K.bin").is_file():
        print("[4/4] llama2.c's trained stories260K, converted to Hugging Face format, greedy:")
        ckpt = interop.load(stories / "stories260K.bin", tokenizer=stories / "tok512.model")
        interop.save(ckpt, workdir / "stories260K-hf", "hf")
        ckpt = interop.load(workdir / "stories260K-hf")
        story = generate(ckpt.to_model(), ckpt.tokenizer, "Once upon a time", max_new_tokens=120)
        print("      Once upon a time" + story.replace("\n", "\n      "))
        log("generate_stories260K", prompt="Once upon a time", completion=story)
    else:
        print(f"[4/4] skipped: no stories260K under {data} (set PASTURE_DATA or pass --data)")
    print(f"done in {time.perf_counter() - start:.1f}s; results in {log_path}")
