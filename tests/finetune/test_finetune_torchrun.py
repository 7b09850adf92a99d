"""pasture finetune under torchrun: two gloo ranks with FSDP2 and LoRA take the steps one
process takes with twice the gradient accumulation (same global micro-batches, per-token loss
over every rank), and rank 0 exports the merged weights with the template."""

from __future__ import annotations

import json
from pathlib import Path

import launch
import pytest
import torch

from pasture import interop
from pasture.data.tokenizer import Tokenizer
from pasture.finetune.config import load_finetune_config
from pasture.finetune.run import finetune
from pasture.finetune.synthetic import synthetic_records, write_jsonl
from pasture.finetune.template import TEMPLATE_FILE
from pasture.interop import Checkpoint
from pasture.model import ModelArgs, Transformer

BOUND_S = 300


@pytest.mark.slow
@pytest.mark.slow
def test_two_ranks_take_the_single_process_steps(tmp_path: Path, shared_data: Path) -> None:
    tokenizer = Tokenizer.from_file(shared_data / "models" / "stories260K" / "tok512.model")
    model = Transformer(ModelArgs(dim=32, n_layers=2, n_heads=4, vocab_size=tokenizer.vocab_size))
    model.init_weights(seed=0)
    base = tmp_path / "base"
    interop.save(Checkpoint.from_model(model, tokenizer), base, "meta")
    train = write_jsonl(tmp_path / "train.jsonl", synthetic_records(24, seed=0))
    common = [
        f"data=['{train}']",
        "steps=3",
        "seq_len=96",
        "rows=2",
        "log_every=1",
        "optim.lr=0.01",
        "optim.warmup_steps=1",
        "lora.targets=['wq', 'wv', 'w2']",
        "parallel.mixed_precision=fp32",
    ]
    single = tmp_path / "single"
    finetune(load_finetune_config(None, [*common, "grad_accum=2", f"run_dir='{single}'"]), base)

    ranks = tmp_path / "ranks"
    command = [
        *launch.TORCHRUN,
        "--nproc-per-node",
        "2",
        "--master-port",
        str(launch.free_port()),
        "-m",
        "pasture.cli",
        "finetune",
        "--checkpoint",
        str(base),
    ]
    for item in [*common, "grad_accum=1", f"run_dir='{ranks}'"]:
        command += ["--set", item]
    log = tmp_path / "torchrun.log"
    assert launch.run(command, log, BOUND_S) == 0, launch.tail([log])

    def losses(run: Path) -> list[float]:
        return [json.loads(x)["loss"] for x in (run / "metrics.jsonl").read_text().splitlines()]

    assert losses(ranks) == pytest.approx(losses(single), abs=1e-5)
    assert (ranks / "model" / TEMPLATE_FILE).is_file()
    expected = interop.load(single / "model").state_dict
    got = interop.load(ranks / "model").state_dict
    assert set(got) == set(expected)
    for key, tensor in expected.items():
        assert torch.allclose(got[key], tensor, rtol=0, atol=1e-5), key
    first = interop.load(base).state_dict
    assert not torch.equal(
        got["layers.0.attention.wq.weight"], first["layers.0.attention.wq.weight"]
    )
