"""`pasture train` on one CPU process: the loss falls, resume is exact, faults stop cleanly."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pasture.config import build
from pasture.errors import PastureError
from pasture.train.config import TrainConfig, load_train_config
from pasture.train.loop import train

REPO = Path(__file__).resolve().parents[2]
SMALL = [
    "data.corpus_bytes=1000000",
    "data.vocab_size=1000",
    "metrics.log_every=1",
    "optim.warmup_steps=4",
]


def _config(run_dir: Path, *settings: str) -> TrainConfig:
    return load_train_config(
        REPO / "configs" / "train" / "debug.toml", [*SMALL, *settings, f"run_dir={run_dir}"]
    )


def _losses(run_dir: Path) -> dict[int, float]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return {m["step"]: m["loss"] for m in map(json.loads, lines)}  # later lines win


@pytest.mark.slow
def test_debug_model_learns(tmp_path: Path) -> None:
    cfg = _config(tmp_path / "run", "steps=80", "checkpoint.every=1000")
    train(cfg)
    losses = _losses(tmp_path / "run")
    assert losses[1] > 6.0  # ≈ ln(1000) at the start
    assert losses[80] < 0.6 * losses[1]
    metrics = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert {"loss", "lr", "grad_norm", "tokens_per_s", "mfu", "val_loss"} <= set(metrics[-1])
    held_out = {m["step"]: m["val_loss"] for m in metrics if m["val_loss"] is not None}
    assert list(held_out) == [50] and held_out[50] < 0.75 * losses[1]  # eval_every = 50
    record = json.loads((tmp_path / "run" / "config.json").read_text())
    assert record["train"]["steps"] == 80 and record["train"]["checkpoint"]["keep"] == 2
    assert record["model"]["vocab_size"] == 1000 and record["model"]["max_seq_len"] == 256
    assert record["tokenizer"] == "data/tokenizer.model" and record["data_dir"] == "data"
    table = (tmp_path / "run" / "carbon.md").read_text()
    assert "| LLaMA-65B | A100-80GB | 400W | 1,022,362 | 449 MWh | 173 |" in table
    assert "| debug (run, this run) | cpu | 400W |" in table


def _cli(run_dir: Path, *extra: str) -> subprocess.Popen:
    cmd = [
        sys.executable,
        "-m",
        "pasture.cli",
        "train",
        "--config",
        str(REPO / "configs" / "train" / "debug.toml"),
        *(f"--set={s}" for s in [*SMALL, f"run_dir={run_dir}", "steps=16", "checkpoint.every=4"]),
        *extra,
    ]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.mark.slow
def test_killed_run_resumes_bit_identically(tmp_path: Path) -> None:
    clean = _cli(tmp_path / "clean")
    assert clean.wait(timeout=300) == 0, clean.stderr.read()
    # Same data folder (tokenizer, shard) for the second run, so only training differs.
    shutil.copytree(tmp_path / "clean" / "data", tmp_path / "killed" / "data")
    killed = _cli(tmp_path / "killed")
    marker = tmp_path / "killed" / "checkpoints" / "step-00000008"
    deadline = time.time() + 120
    while time.time() < deadline and not marker.exists():
        time.sleep(0.02)
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    assert marker.exists()
    before = _losses(tmp_path / "killed")
    assert max(before) < 16
    resumed = _cli(tmp_path / "killed", "--resume")
    assert resumed.wait(timeout=300) == 0, resumed.stderr.read()
    assert _losses(tmp_path / "killed") == _losses(tmp_path / "clean")  # every bit


@pytest.mark.slow
def test_kill_during_save_keeps_previous_checkpoint(tmp_path: Path) -> None:
    cfg = _config(tmp_path / "run", "steps=8", "checkpoint.every=4")
    train(cfg)
    ckpts = tmp_path / "run" / "checkpoints"
    # What a kill in the middle of saving step 12 leaves behind: a partial .tmp folder.
    partial = ckpts / "step-00000012.tmp"
    shutil.copytree(ckpts / "step-00000008", partial)
    (partial / "train_state.json").unlink()
    next(partial.glob("*.distcp")).write_bytes(b"\x00" * 10)
    (ckpts / "step-00000010.tmp").mkdir()  # a stale one from a step never saved again
    cfg.steps = 12
    train(cfg, resume=True)  # resumes from step 8, not from the broken save
    assert _losses(tmp_path / "run")[12] > 0
    assert sorted(p.name for p in ckpts.iterdir()) == ["step-00000008", "step-00000012"]


@pytest.mark.slow
def test_faults_stop_with_one_clear_error(tmp_path: Path) -> None:
    with pytest.raises(PastureError, match="not a multiple of micro_batch"):
        train(_config(tmp_path / "a", "batch_tokens=5000"))
    with pytest.raises(PastureError, match="model.preset: unknown preset 'huge'"):
        train(build(TrainConfig, {"model": {"preset": "huge"}}))
    cfg = _config(tmp_path / "nan", "steps=20", "checkpoint.every=2")
    cfg.optim.lr = 1e6  # diverges within a few steps
    cfg.optim.grad_clip = 1e30
    with pytest.raises(PastureError, match=r"step \d+: loss .*stopped. Last good checkpoint"):
        train(cfg)
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pasture.cli",
            "train",
            "--set",
            "optim.betaz=1",
            "--set",
            f"run_dir={tmp_path / 'x'}",
        ],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip() == (  # no --config: the packaged debug config
        f"pasture: error: {REPO / 'src/pasture/train/debug.toml'}.optim: unknown key 'betaz' "
        "(known: lr, betas, eps, weight_decay, grad_clip, warmup_steps, min_lr_ratio)"
    )


@pytest.mark.slow
def test_export_matches_transformers_and_reads_the_recorded_model(tmp_path: Path) -> None:
    """`pasture export` builds what RUN/config.json records, not what the train table would
    give again; a run folder can move (its own paths are recorded relative to it)."""
    import torch
    from transformers import LlamaForCausalLM

    from pasture.data.tokenizer import Tokenizer
    from pasture.export import export, load_trained

    train(_config(tmp_path / "run", "steps=6", "checkpoint.every=3", "model.max_seq_len=512"))
    export(tmp_path / "run", tmp_path / "hf", "hf")
    ours = load_trained(tmp_path / "run").to_model()
    theirs = LlamaForCausalLM.from_pretrained(tmp_path / "hf").eval()
    tokens = torch.randint(
        0, ours.args.vocab_size, (2, 40), generator=torch.Generator().manual_seed(0)
    )
    with torch.no_grad():
        assert (ours(tokens) - theirs(tokens).logits).abs().max() <= 1e-5
    assert (tmp_path / "hf" / "tokenizer.model").is_file()
    empty = tmp_path / "empty"
    empty.mkdir()
    shutil.copy(tmp_path / "run" / "config.json", empty / "config.json")
    with pytest.raises(PastureError, match="no complete checkpoint"):
        export(empty, tmp_path / "x", "hf")

    moved = tmp_path / "moved"
    (tmp_path / "run").rename(moved)
    ckpt = load_trained(moved)
    assert ckpt.args.max_seq_len == 512 and ckpt.args.vocab_size == 1000
    trained = Tokenizer.from_file(moved / "data" / "tokenizer.model")
    assert ckpt.tokenizer.encode("def f():") == trained.encode("def f():")
    other = tmp_path / "other.model"  # another tokenizer, recorded by its absolute path
    shutil.copy(REPO / "tests/assets/data/models/stories260K/tok512.model", other)
    record = json.loads((moved / "config.json").read_text())
    record["train"]["model"]["max_seq_len"] = None  # the preset's 256, were it derived again
    record["model"]["max_seq_len"] = 1024
    record["tokenizer"] = str(other)
    (moved / "config.json").write_text(json.dumps(record))
    ckpt = load_trained(moved)
    assert ckpt.args.max_seq_len == 1024 and ckpt.tokenizer.vocab_size == 512
    record["model"]["vocab_size"] = 999  # not this run's checkpoint: one line, nothing built
    (moved / "config.json").write_text(json.dumps(record))
    with pytest.raises(PastureError, match=r"embeddings of shape \(1000, 128\).*999 × 128"):
        load_trained(moved)


@pytest.mark.slow
def test_a_second_run_on_a_live_run_folder_fails_with_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pasture.train import checkpoint

    run = tmp_path / "run"
    run.mkdir()
    holder = subprocess.Popen(  # another live process holds the run folder's lock
        [
            sys.executable, "-c",
            "import fcntl, sys, time; f = open(sys.argv[1], 'a'); f.write('pid 1 on elsewhere');"
            " f.flush(); fcntl.flock(f, fcntl.LOCK_EX); print('locked', flush=True);"
            " time.sleep(120)",
            str(run / ".lock"),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "locked"
        monkeypatch.setattr(checkpoint, "LOCK_WAIT_S", 0.5)
        with pytest.raises(PastureError, match=r"run: in use by another training process"):
            train(_config(run, "steps=6"))
        assert not (run / "config.json").exists()  # refused before any work
    finally:
        holder.kill()
        holder.wait()
    train(_config(run, "steps=6", "checkpoint.every=6"))  # a dead holder's lock is free
    assert (run / "checkpoints" / "step-00000006").is_dir()


@pytest.mark.slow
def test_trains_on_a_built_mixture(tmp_path: Path, shared_data: Path) -> None:
    from pasture.data.pipeline import BuildConfig, build_dataset

    root = tmp_path / "in"
    for rel in ["stackexchange/coffee.stackexchange.com/Posts.xml", "books/gutenberg/972.txt"]:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(shared_data / "pretrain" / rel, root / rel)
    data_cfg = BuildConfig(
        mixture={"stackexchange": 0.5, "books": 0.5},
        workers=1,
        sources={"stackexchange": {"sites": ["*"]}},
    )
    tokenizer = shared_data / "models" / "llama-tokenizer" / "tokenizer.model"
    build_dataset(data_cfg, root, tmp_path / "data", tokenizer=str(tokenizer))
    cfg = _config(tmp_path / "run", "steps=6", "checkpoint.every=3")
    cfg.data.shards = str(tmp_path / "data")
    last = train(cfg)
    assert last["step"] == 6 and last["loss"] < 11.0  # ln(32000) ≈ 10.4 at the start
    record = json.loads((tmp_path / "run" / "config.json").read_text())
    assert record["data_dir"] == str((tmp_path / "data").resolve())
    assert record["tokenizer"] == str((tmp_path / "data" / "tokenizer.model").resolve())
    from pasture.export import export

    exported = export(tmp_path / "run", tmp_path / "hf", "hf")  # the build's tokenizer travels
    assert exported.tokenizer is not None and exported.tokenizer.vocab_size == 32000


@pytest.mark.slow
def test_resume_into_another_shape_is_one_clear_error(tmp_path: Path) -> None:
    train(_config(tmp_path / "run", "steps=6", "checkpoint.every=3"))
    other = _config(tmp_path / "run", "steps=9", "checkpoint.every=3")
    other.model.preset = "debug-gqa"  # fewer key/value heads: wk/wv shapes differ
    with pytest.raises(
        PastureError, match=r"step-00000006: cannot load into this model.*Size mismatch"
    ):
        train(other, resume=True)


def test_compiled_blocks_checkpoint_with_meta_keys(tmp_path: Path) -> None:
    # `parallel.compile = true` once failed at its first save (DCP asserted on a state-dict hook
    # of the compiled wrapper; seen on an H200). No forward runs, so nothing is compiled here.
    import torch
    import torch.distributed.checkpoint as dcp

    from pasture.model import Transformer, preset
    from pasture.parallel.parallelize import ParallelConfig, parallelize_model
    from pasture.train import checkpoint
    from pasture.train.optim import OptimConfig, build_optimizer

    def compiled(seed: int) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
        model = Transformer(preset("debug", vocab_size=64))
        model = parallelize_model(model, None, ParallelConfig(compile=True, mixed_precision="fp32"))
        model.init_weights(seed=seed)
        return model, build_optimizer(model, OptimConfig())

    model, optimizer = compiled(0)
    path = checkpoint.save(tmp_path, 1, model, optimizer, {"loader": {}}, keep=1)
    keys = dcp.FileSystemReader(str(path)).read_metadata().state_dict_metadata
    assert "model.layers.0.attention.wq.weight" in keys
    assert not [k for k in keys if "_orig_mod" in k]
    other, other_optimizer = compiled(1)
    checkpoint.load(path, other, other_optimizer)
    got = other.state_dict()
    for name, want in model.state_dict().items():
        assert torch.equal(want, got[name]), name
