"""LoRA composes with FSDP2: two gloo ranks, each with its own number of response tokens, take
the step one process takes on all the data (the per-token normalization is global)."""

from __future__ import annotations

import random
import time
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.distributed.device_mesh import init_device_mesh

from pasture.finetune.lora import LoRAConfig, apply_lora, lora_state
from pasture.finetune.loss import finetune_step
from pasture.finetune.packing import IGNORE, TokenSequence, batches
from pasture.model import ModelArgs, Transformer
from pasture.parallel.parallelize import apply_fsdp

ARGS = ModelArgs(dim=32, n_layers=2, n_heads=4, vocab_size=61, multiple_of=16, max_seq_len=64)


def _sequences() -> list[TokenSequence]:
    rng = random.Random(0)
    out = []
    for _ in range(8):
        prompt, response = rng.randint(2, 9), rng.randint(1, 6)
        tokens = [rng.randrange(3, ARGS.vocab_size) for _ in range(prompt + response)]
        out.append(TokenSequence(tokens, [IGNORE] * prompt + tokens[prompt:]))
    return out


def _model() -> Transformer:
    model = Transformer(ARGS)
    model.init_weights(std=0.1, seed=0)
    torch.manual_seed(0)
    apply_lora(model, LoRAConfig(rank=4, alpha=8, targets=["wq", "wv", "w2"]))
    with torch.no_grad():  # non-zero B, so every adapter weight has a gradient
        generator = torch.Generator().manual_seed(1)
        for name, param in model.named_parameters():
            if "lora_b" in name:
                param.normal_(0, 0.05, generator=generator)
    return model


def _step(model: Transformer, seqs: list[TokenSequence]) -> None:
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1.0)
    finetune_step(model, optimizer, batches(seqs, 40, rows_per_batch=8), grad_clip=1e9)


def _rank(rank: int, world: int, folder: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{folder}/store", rank=rank, world_size=2)
    try:
        model = _model()
        apply_fsdp(model, init_device_mesh("cpu", (world,)), "fp32")
        seqs = _sequences()
        _step(model, seqs[:1] if rank == 0 else seqs[1:])  # 1 example here, 7 there
        state = {k: v.full_tensor() for k, v in model.state_dict().items() if ".lora_" in k}
        if rank == 0:
            torch.save(state, f"{folder}/adapters.pt")
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
@pytest.mark.slow
def test_lora_under_fsdp2_takes_the_single_process_step(tmp_path: Path) -> None:
    context = mp.start_processes(
        _rank, args=(2, str(tmp_path)), nprocs=2, join=False, start_method="spawn"
    )
    deadline = time.monotonic() + 180
    while not context.join(timeout=5):
        if time.monotonic() > deadline:
            for process in context.processes:
                process.kill()
            pytest.fail("the FSDP2 ranks did not finish within 180 s")
    sharded = torch.load(tmp_path / "adapters.pt", weights_only=True)
    model = _model()
    _step(model, _sequences())
    reference = lora_state(model)
    assert set(sharded) == set(reference)
    for name, tensor in reference.items():
        assert torch.allclose(sharded[name], tensor, rtol=0, atol=1e-6), name
