"""``pasture demo`` (what ``make demo`` runs): everything built so far, on data with no download.

1. Train a SentencePiece BPE tokenizer with the paper's settings on Python's standard library.
2. Build a debug-size LLaMA, round-trip it Meta → Hugging Face → llama2.c → GGUF → Meta and
   check that the logits never change.
3. Pretrain the debug model on the standard library with the paper's recipe (AdamW, warmup +
   cosine, clipping; DCP checkpoints), plot its loss, record its energy and carbon.
4. Export the trained model to Hugging Face's format and generate from it.
5. If ``../shared/data/models`` is present, convert llama2.c's trained stories260K and tell a
   story.
6. Instruction-tune the pretrained model (paper §4, LLaMA-I) on a synthetic instruction set
   and answer one held-out instruction through the chat template saved beside it.

Each step appends a JSON line to ``WORKDIR/demo.jsonl``.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import torch
from tqdm import tqdm

from . import interop
from .config import data_root
from .data.corpus import default_corpus_files
from .data.tokenizer import Tokenizer, train_tokenizer
from .export import export
from .generate import generate
from .interop import Checkpoint
from .model import Transformer, count_parameters, preset
from .train.config import load_train_config
from .train.loop import train
from .train.plot import plot_loss, read_metrics

ROUND_TRIP = [("meta", "meta"), ("hf", "hf"), ("llama2c", "model.bin"), ("gguf", "model.gguf")]


def default_data_dir() -> Path:
    return data_root(default=Path.cwd().parent / "shared" / "data")


Log = Callable[..., None]


def run_demo(
    workdir: Path,
    data: Path | None = None,
    corpus_bytes: int = 4_000_000,
    train_steps: int = 300,
    finetune_steps: int = 150,
) -> None:
    workdir.mkdir(parents=True, exist_ok=True)
    log_path = workdir / "demo.jsonl"
    log_path.unlink(missing_ok=True)

    def log(step: str, **fields: object) -> None:
        with log_path.open("a") as f:
            f.write(json.dumps({"step": step, **fields}) + "\n")

    start = time.perf_counter()
    tokenizer = _train_tokenizer(workdir, corpus_bytes, log)
    _round_trip(workdir, tokenizer, log)
    run_dir = _pretrain(workdir, corpus_bytes, train_steps, log)
    _generate_trained(workdir, run_dir, log)
    _stories(workdir, data or default_data_dir(), log)
    _instruction_tune(workdir, finetune_steps, log)
    print(f"done in {time.perf_counter() - start:.1f}s; results in {log_path}")


def _train_tokenizer(workdir: Path, corpus_bytes: int, log: Log) -> Tokenizer:
    files = default_corpus_files(max_bytes=corpus_bytes)
    print(f"[1/6] training a tokenizer on {len(files)} stdlib files ({corpus_bytes:,} bytes)")
    tokenizer = train_tokenizer(files, workdir / "tokenizer.model", vocab_size=2000)
    digits = [tokenizer.id_to_piece(i) for i in tokenizer.encode("12345")]
    print(f"      {tokenizer.vocab_size} pieces; '12345' -> {digits}")
    log("tokenizer", vocab_size=tokenizer.vocab_size, files=len(files), digits=digits)
    return tokenizer


def _round_trip(workdir: Path, tokenizer: Tokenizer, log: Log) -> None:
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
        f"[2/6] debug model: {count_parameters(config):,} parameters; round trip through "
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


def _pretrain(workdir: Path, corpus_bytes: int, train_steps: int, log: Log) -> Path:
    run_dir = workdir / "train"
    print(f"[3/6] pretraining the debug model for {train_steps} steps on the standard library")
    overrides = [
        f"run_dir={run_dir}",
        f"steps={train_steps}",
        "batch_tokens=4096",
        "micro_batch=8",
        "metrics.log_every=1",
        "eval_every=50",
        f"checkpoint.every={train_steps}",
        "model.preset=debug",
        "data.seq_len=256",
        f"data.tokenizer={workdir / 'tokenizer.model'}",
        f"data.corpus_bytes={corpus_bytes}",
        "optim.lr=3e-3",
        "optim.warmup_steps=20",
        "parallel.mixed_precision=fp32",
    ]
    shutil.rmtree(run_dir, ignore_errors=True)
    last = train(load_train_config(None, overrides))
    first = read_metrics(run_dir)[0]
    plot = plot_loss([run_dir], run_dir / "loss.png")
    carbon = json.loads((run_dir / "carbon.jsonl").read_text().splitlines()[-1])
    print(f"      loss {first['loss']:.2f} -> {last['loss']:.2f}; plot {plot}")
    log(
        "train",
        run_dir=str(run_dir),
        first_loss=first["loss"],
        last_loss=last["loss"],
        plot=str(plot),
        **carbon,
    )
    return run_dir


def _generate_trained(workdir: Path, run_dir: Path, log: Log) -> None:
    print("[4/6] exporting the trained model to Hugging Face format and generating:")
    trained = export(run_dir, workdir / "trained-hf", "hf")
    text = generate(
        trained.to_model(),
        trained.tokenizer,
        "def main():",
        max_new_tokens=40,
        seed=0,
        temperature=0.8,
        top_p=0.95,
    )
    print("      " + ("def main():" + text).replace("\n", "\n      "))
    log("generate_trained", prompt="def main():", completion=text)


def _stories(workdir: Path, data: Path, log: Log) -> None:
    stories = data / "models" / "stories260K"
    if (stories / "stories260K.bin").is_file():
        print("[5/6] llama2.c's trained stories260K, converted to Hugging Face format, greedy:")
        ckpt = interop.load(stories / "stories260K.bin", tokenizer=stories / "tok512.model")
        interop.save(ckpt, workdir / "stories260K-hf", "hf")
        ckpt = interop.load(workdir / "stories260K-hf")
        story = generate(ckpt.to_model(), ckpt.tokenizer, "Once upon a time", max_new_tokens=120)
        print("      Once upon a time" + story.replace("\n", "\n      "))
        log("generate_stories260K", prompt="Once upon a time", completion=story)
    else:
        print(f"[5/6] skipped: no stories260K under {data} (set PASTURE_DATA or pass --data)")


def _instruction_tune(workdir: Path, steps: int, log: Log) -> None:
    from .finetune.demo import instruction_demo

    print(f"[6/6] instruction-tuning the pretrained model ({steps} steps, synthetic instructions):")
    tuned = instruction_demo(workdir, workdir / "trained-hf", steps=steps)
    question = tuned["question"].replace("\n", " ")
    print(f"      {question!r} -> {tuned['answer']!r} (expected {tuned['expected']!r})")
    print(
        f"      held-out response loss {tuned['loss_before']:.2f} -> {tuned['loss_after']:.2f}; "
        f"model and chat template in {tuned['out']}"
    )
    fields = ("question", "answer", "expected", "loss_before", "loss_after", "out")
    log("instruction_tune", **{k: tuned[k] for k in fields})
