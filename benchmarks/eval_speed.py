"""Log-likelihood requests/s on CPU: Pasture's eval contract vs lm-eval's Hugging Face backend.

    .venv/bin/python benchmarks/eval_speed.py                       # 1 thread, 3 rounds
    LD_PRELOAD=/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4 \
        .venv/bin/python benchmarks/eval_speed.py --rounds 5 --threads 2

One model for both: llama2.c's 15M shape (288/6/6) with Meta's 32000-piece LLaMA tokenizer and
LLaMA's 2048-token window, randomly initialized, exported by Pasture's converter and loaded
by lm-eval's ``HFLM`` (transformers' LlamaForCausalLM, float32). The requests are the ones
lm-eval builds from the YAML tasks in tests/eval/lm_eval_tasks/ on the original data files:
ARC-Easy, PIQA, HellaSwag (the hand-written fixture in the official format) and MMLU 5-shot
(two subjects). Both backends get the same lm-eval ``Instance`` list per task at the same
batch size: Pasture through ``pasture.eval.harness.HarnessLM``, HF through
``HFLM.loglikelihood``; both tokenize with SentencePiece (HF through transformers'
SentencePiece backend), and the script checks that they agree per request before timing.
Rounds alternate the two backends (and which goes first), so machine noise hits both alike.
Appends one JSON line per task and round to benchmarks/results/eval_speed.jsonl.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import torch
from lm_eval.models.huggingface import HFLM
from lm_eval.tasks import TaskManager
from transformers.tokenization_utils_sentencepiece import SentencePieceBackend

from pasture import interop
from pasture.data.tokenizer import Tokenizer
from pasture.eval import PastureLM
from pasture.eval.harness import HarnessLM
from pasture.interop import Checkpoint
from pasture.model import Transformer, preset

ROOT = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).parent / "results" / "eval_speed.jsonl"
TASK_DIR = ROOT / "tests" / "eval" / "lm_eval_tasks"
FIXTURES = ROOT / "tests" / "eval" / "fixtures"
DATA = Path(os.environ.get("PASTURE_DATA", ROOT.parent / "shared" / "data"))
TASKS = {  # lm-eval task → the folder its data_files are relative to
    "pasture_arc_easy": DATA / "eval",
    "pasture_piqa": DATA / "eval",
    "pasture_hellaswag": FIXTURES,
    "pasture_mmlu_abstract_algebra": DATA / "eval",
    "pasture_mmlu_global_facts": DATA / "eval",
}


def allocator() -> str:
    return "tcmalloc" if "tcmalloc" in os.environ.get("LD_PRELOAD", "") else "glibc malloc"


def cpu_model() -> str:
    out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    names = [line.split(":", 1)[1].strip() for line in out.splitlines() if "Model name" in line]
    return f"{names[0] if names else platform.machine()}, {os.cpu_count()} cores"


def requests_per_task(limit: int, mmlu_limit: int) -> dict[str, list]:
    """lm-eval's log-likelihood Instances for each task, as its evaluator builds them."""
    manager = TaskManager(include_path=str(TASK_DIR), include_defaults=False)
    cwd = os.getcwd()
    out = {}
    for name, folder in TASKS.items():
        os.chdir(folder)
        try:
            task = manager.load([name])["tasks"][name]
        finally:
            os.chdir(cwd)
        task.set_fewshot_seed(1234)
        n = mmlu_limit if "mmlu" in name else limit
        task.build_all_requests(limit=n, rank=0, world_size=1)
        out[name] = list(task.instances)
    return out


def timed(fn, instances: list) -> tuple[float, list]:
    start = time.perf_counter()
    results = fn(instances)
    return time.perf_counter() - start, results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--limit", type=int, default=40, help="items per task")
    parser.add_argument("--mmlu-limit", type=int, default=10, help="items per MMLU subject")
    parser.add_argument("--note", default="", help="recorded with the results (machine state)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    tokenizer = Tokenizer.from_file(DATA / "models" / "llama-tokenizer" / "tokenizer.model")
    model = Transformer(preset("stories15M", max_seq_len=2048))
    model.init_weights(seed=0)
    model.eval()
    pasture = HarnessLM(PastureLM(model, tokenizer, batch_size=args.batch_size, progress=False))
    with tempfile.TemporaryDirectory() as tmp:
        export = Path(tmp) / "hf"
        interop.save(Checkpoint.from_model(model, tokenizer), export, "hf")
        sentencepiece = SentencePieceBackend(
            vocab_file=str(export / "tokenizer.model"),
            legacy=True,
            special_tokens_pattern="bos",
            bos_token="<s>",
            eos_token="</s>",
            unk_token="<unk>",
        )
        hf = HFLM(
            pretrained=str(export),
            tokenizer=sentencepiece,
            add_bos_token=True,
            device="cpu",
            dtype="float32",
            batch_size=args.batch_size,
        )
    backends = {
        "pasture": pasture.loglikelihood,
        "hf": lambda instances: hf.loglikelihood(instances, disable_tqdm=True),
    }

    tasks = requests_per_task(args.limit, args.mmlu_limit)
    # The same work on both sides: every request's score agrees (float32 on both).
    for name, instances in tasks.items():
        ours, theirs = (backends[b](instances) for b in ("pasture", "hf"))
        worst = max(abs(a[0] - b[0]) for a, b in zip(ours, theirs, strict=True))
        assert worst < 1e-3, f"{name}: backends disagree by {worst}"

    run = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": cpu_model(),
        "allocator": allocator(),
        "threads": args.threads,
        "batch_size": args.batch_size,
        "torch": torch.__version__,
        "model": "stories15M shape, vocab 32000, window 2048, random init, float32",
        "note": args.note,
    }
    seconds: dict[str, dict[str, list[float]]] = {n: {b: [] for b in backends} for n in tasks}
    for r in range(args.rounds):
        order = list(backends) if r % 2 == 0 else list(reversed(backends))
        for name, instances in tasks.items():
            for backend in order:
                elapsed, _ = timed(backends[backend], instances)
                seconds[name][backend].append(elapsed)
        load = os.getloadavg()[0]
        print(f"round {r + 1}/{args.rounds} done (load average {load:.1f})")

    totals = {"pasture": 0.0, "hf": 0.0}
    requests = 0
    RESULTS.parent.mkdir(exist_ok=True)
    with RESULTS.open("a") as f:
        for name, instances in tasks.items():
            n = len(instances)
            median = {b: statistics.median(seconds[name][b]) for b in backends}
            for b in backends:
                totals[b] += median[b]
            requests += n
            record = {
                **run,
                "task": name,
                "requests": n,
                "rounds": args.rounds,
                "pasture_req_s": round(n / median["pasture"], 1),
                "hf_req_s": round(n / median["hf"], 1),
                "ratio": round(median["hf"] / median["pasture"], 2),
                "seconds": seconds[name],
            }
            f.write(json.dumps(record) + "\n")
            print(
                f"{name:32s} {n:4d} req   pasture {record['pasture_req_s']:7.1f} req/s   "
                f"hf {record['hf_req_s']:7.1f} req/s   ratio {record['ratio']:.2f}x"
            )
        overall = {
            **run,
            "task": "all",
            "requests": requests,
            "rounds": args.rounds,
            "pasture_req_s": round(requests / totals["pasture"], 1),
            "hf_req_s": round(requests / totals["hf"], 1),
            "ratio": round(totals["hf"] / totals["pasture"], 2),
        }
        f.write(json.dumps(overall) + "\n")
    print(
        f"{'all':32s} {requests:4d} req   pasture {overall['pasture_req_s']:7.1f} req/s   "
        f"hf {overall['hf_req_s']:7.1f} req/s   ratio {overall['ratio']:.2f}x   "
        f"({run['allocator']}, {args.threads} threads, batch {args.batch_size})"
    )


if __name__ == "__main__":
    main()
