"""pasture finetune end to end: config checks, a LoRA run whose export changes only the
targeted weights and carries its chat template, and learning on the synthetic set."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from pasture import interop
from pasture.data.tokenizer import Tokenizer
from pasture.errors import PastureError
from pasture.finetune.config import load_finetune_config
from pasture.finetune.run import answer, finetune
from pasture.finetune.synthetic import synthetic_records, write_jsonl
from pasture.finetune.template import DEFAULT_TEMPLATE, TEMPLATE_FILE, find_template
from pasture.interop import Checkpoint
from pasture.model import ModelArgs, Transformer, preset

REPO = Path(__file__).resolve().parents[2]


def test_config_keys_are_checked(tmp_path: Path) -> None:
    cfg = load_finetune_config(REPO / "configs" / "finetune" / "demo.toml")
    assert cfg.method == "lora" and cfg.lora.rank == 16 and cfg.optim.warmup_steps == 10
    with pytest.raises(PastureError, match="unknown key 'lerning_rate'"):
        load_finetune_config(None, ["data=['a.jsonl']", "lerning_rate=1"])
    with pytest.raises(PastureError, match="method = 'qlora'"):
        load_finetune_config(None, ["data=['a.jsonl']", "method=qlora"])
    with pytest.raises(PastureError, match="data: name at least one"):
        load_finetune_config(None, [])
    # A partial [optim] keeps finetuning's short warmup, not pretraining's 2,000 steps.
    cfg = load_finetune_config(None, ["data=['a.jsonl']", "optim.lr=0.01"])
    assert cfg.optim.lr == 0.01 and cfg.optim.warmup_steps == 10


def _tiny_checkpoint(tmp_path: Path, tokenizer: Tokenizer) -> Path:
    args = ModelArgs(dim=32, n_layers=2, n_heads=4, vocab_size=tokenizer.vocab_size)
    model = Transformer(args)
    model.init_weights(seed=0)
    path = tmp_path / "base"
    interop.save(Checkpoint.from_model(model, tokenizer), path, "meta")
    return path


@pytest.mark.slow
def test_lora_run_exports_merged_weights_and_the_template(
    tmp_path: Path, shared_data: Path
) -> None:
    tokenizer = Tokenizer.from_file(shared_data / "models" / "stories260K" / "tok512.model")
    base = _tiny_checkpoint(tmp_path, tokenizer)
    train = write_jsonl(tmp_path / "train.jsonl", synthetic_records(24, seed=0))
    held = write_jsonl(tmp_path / "held.jsonl", synthetic_records(8, seed=1))
    cfg = load_finetune_config(
        None,
        [
            f"data=['{train}']",
            f"eval_data=['{held}']",
            "steps=3",
            "seq_len=128",
            "rows=2",
            "log_every=1",
            "optim.lr=0.01",
            "optim.warmup_steps=1",
            "lora.targets=['wq', 'w2']",
            f"run_dir='{tmp_path / 'run'}'",
        ],
    )
    summary = finetune(cfg, base)
    out = Path(summary["out"])
    assert out == tmp_path / "run" / "model" and (out / TEMPLATE_FILE).is_file()
    assert find_template(out) == DEFAULT_TEMPLATE
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in lines] == [1, 2, 3]
    assert summary["loss_before"] > 0 and summary["loss_after"] > 0
    before = interop.load(base).state_dict
    after = interop.load(out).state_dict
    assert set(after) == set(before)
    for key, tensor in after.items():
        targeted = key.endswith(("attention.wq.weight", "feed_forward.w2.weight"))
        assert torch.equal(tensor, before[key]) != targeted, key


@pytest.mark.slow
def test_killed_run_resumes_bit_identically(tmp_path: Path, shared_data: Path) -> None:
    """``pasture finetune`` killed (SIGKILL) after its step-3 checkpoint, then run again with
    ``--resume``, ends with the very losses and weights of the run never stopped: LoRA dropout
    (the RNG), AdamW's moments, the learning-rate schedule and the data position restored."""
    tokenizer = Tokenizer.from_file(shared_data / "models" / "stories260K" / "tok512.model")
    base = _tiny_checkpoint(tmp_path, tokenizer)
    train = write_jsonl(tmp_path / "train.jsonl", synthetic_records(16, seed=0))
    steps = 40

    def cli(name: str, *extra: str) -> subprocess.Popen:
        sets = [f"data=['{train}']", f"steps={steps}", "seq_len=96", "rows=2", "grad_accum=2"]
        sets += ["log_every=1", "lora.dropout=0.1", "optim.warmup_steps=2"]
        sets += ["checkpoint.every=3", "checkpoint.keep=0", f"run_dir='{tmp_path / name}'"]
        cmd = [sys.executable, "-m", "pasture.cli", "finetune", "--checkpoint", str(base)]
        cmd += [arg for value in sets for arg in ("--set", value)]
        return subprocess.Popen(
            [*cmd, *extra], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
        )

    def losses(name: str) -> list[tuple[int, float]]:
        lines = (tmp_path / name / "metrics.jsonl").read_text().splitlines()
        return [(r["step"], r["loss"]) for r in map(json.loads, lines) if "loss" in r]

    whole = cli("whole")
    assert whole.wait(timeout=300) == 0, whole.stderr.read()
    killed = cli("killed")
    marker = tmp_path / "killed" / "checkpoints" / "step-00000003"
    deadline = time.time() + 120
    while time.time() < deadline and not marker.exists() and killed.poll() is None:
        time.sleep(0.01)
    killed.send_signal(signal.SIGKILL)
    assert killed.wait(timeout=30) == -signal.SIGKILL, "the run ended before it was killed"
    assert marker.exists()
    assert not (tmp_path / "killed" / "model").exists()
    saved = [int(p.name[5:]) for p in marker.parent.iterdir() if p.name[5:].isdigit()]
    with (tmp_path / "killed" / "metrics.jsonl").open("a") as f:  # a fresh start deletes it
        f.write(json.dumps({"killed_here": True}) + "\n")
    resumed = cli("killed", "--resume")
    assert resumed.wait(timeout=300) == 0, resumed.stderr.read()
    lines = (tmp_path / "killed" / "metrics.jsonl").read_text().splitlines()
    after_kill = [json.loads(x) for x in lines[lines.index('{"killed_here": true}') + 1 :]]
    assert after_kill[0]["step"] == max(saved) + 1  # from the latest checkpoint, not step 0
    by_step = dict(losses("killed"))  # the resumed run rewrites the steps after its checkpoint
    assert sorted(by_step.items()) == losses("whole")
    assert len(by_step) == steps
    whole_weights = interop.load(tmp_path / "whole" / "model").state_dict
    resumed_weights = interop.load(tmp_path / "killed" / "model").state_dict
    assert all(torch.equal(whole_weights[k], resumed_weights[k]) for k in whole_weights)
    first = interop.load(base).state_dict
    assert not all(torch.equal(whole_weights[k], first[k]) for k in whole_weights)  # it trained


@pytest.mark.slow
def test_benchmarks_during_finetuning(tmp_path: Path, shared_data: Path) -> None:
    tokenizer = Tokenizer.from_file(shared_data / "models" / "stories260K" / "tok512.model")
    base = _tiny_checkpoint(tmp_path, tokenizer)
    train = write_jsonl(tmp_path / "train.jsonl", synthetic_records(8, seed=0))
    options = [f"data=['{train}']", "steps=2", "seq_len=96", "rows=2", "optim.warmup_steps=1"]
    bench = ['benchmarks.tasks=["arc_easy"]', "benchmarks.every=1", "benchmarks.limit=4"]
    bench.append(f"benchmarks.data_dir={shared_data / 'eval'}")
    finetune(load_finetune_config(None, options + bench + [f"run_dir='{tmp_path}/r'"]), base)
    rows = [json.loads(x) for x in (tmp_path / "r" / "benchmarks.jsonl").read_text().splitlines()]
    assert [(r["step"], r["task"], r["n"]) for r in rows] == [(s, "arc_easy", 4) for s in (1, 2)]
    assert all(0 <= r["value"] <= 1 for r in rows)
    bad = ['benchmarks.tasks=["nope"]', "benchmarks.every=1"]
    unknown = load_finetune_config(None, options + bad)
    with pytest.raises(PastureError, match="unknown task"):
        finetune(unknown, base)


@pytest.fixture
def one_thread():
    """One intra-op thread: with tiny matrices more threads only contend (3x slower here)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.slow
@pytest.mark.slow
def test_finetuning_learns_the_reverse_task(
    tmp_path: Path, shared_data: Path, one_thread: None
) -> None:
    """The demo-size model (the debug preset, 2 layers of width 128), from random weights,
    learns to reverse words through the default template: held-out response loss down by far
    more than 20%, held-out exact match from 0 to >= 90%."""
    tokenizer = Tokenizer.from_file(shared_data / "models" / "stories260K" / "tok512.model")
    model = Transformer(preset("debug", vocab_size=tokenizer.vocab_size))
    model.init_weights(seed=0)
    base = tmp_path / "base"
    interop.save(Checkpoint.from_model(model, tokenizer), base, "meta")
    train = write_jsonl(tmp_path / "train.jsonl", synthetic_records(600, 0, ["reverse"]))
    held_records = synthetic_records(20, 1, ["reverse"])
    held = write_jsonl(tmp_path / "held.jsonl", held_records)

    def exact_match(model: Transformer) -> float:
        hits = 0
        for r in held_records:
            chat = [{"role": "user", "content": f"{r['instruction']}\n\n{r['input']}"}]
            hits += answer(model, tokenizer, DEFAULT_TEMPLATE, chat, 12).strip() == r["output"]
        return hits / len(held_records)

    assert exact_match(model.eval()) == 0
    cfg = load_finetune_config(
        None,
        [
            f"data=['{train}']",
            f"eval_data=['{held}']",
            "method=full",
            "steps=150",
            "seq_len=256",
            "rows=4",
            "optim.lr=0.003",
            "optim.warmup_steps=5",
            "out_format=meta",
            f"run_dir='{tmp_path / 'run'}'",
        ],
    )
    summary = finetune(cfg, base)
    assert summary["loss_after"] <= 0.8 * summary["loss_before"]
    tuned = interop.load(summary["out"]).to_model(dtype=torch.float32)
    assert exact_match(tuned) >= 0.9
