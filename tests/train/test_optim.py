"""The paper's optimizer recipe (§2.3): schedule, decay groups, AdamW settings, clipping."""

from __future__ import annotations

import math

import pytest
import torch

from pasture.errors import PastureError
from pasture.model import Transformer, preset
from pasture.train.optim import (
    OptimConfig,
    build_optimizer,
    build_scheduler,
    clip_grad_norm,
    lr_at,
    param_groups,
)

TOTAL = 100_000
PAPER = OptimConfig()  # lr 3e-4, warmup 2000, min 10%


def test_defaults_are_the_papers() -> None:
    assert (PAPER.lr, PAPER.betas, PAPER.weight_decay) == (3e-4, (0.9, 0.95), 0.1)
    assert (PAPER.grad_clip, PAPER.warmup_steps, PAPER.min_lr_ratio) == (1.0, 2000, 0.1)


def test_warmup_boundaries() -> None:
    assert lr_at(0, TOTAL, PAPER) == 3e-4 / 2000
    assert lr_at(999, TOTAL, PAPER) == 3e-4 / 2
    assert lr_at(1999, TOTAL, PAPER) == 3e-4  # the peak, exactly, on the last warmup step
    assert lr_at(2000, TOTAL, PAPER) < 3e-4  # the first cosine step already decays
    assert lr_at(2000, TOTAL, PAPER) == pytest.approx(3e-4, rel=1e-9)


def test_cosine_closed_form_and_final_ten_percent() -> None:
    peak, last = 1999, TOTAL - 1
    for step in (2000, 25_000, 51_000, 77_777, 99_998):
        progress = (step - peak) / (last - peak)
        expected = 3e-5 + (3e-4 - 3e-5) * 0.5 * (1 + math.cos(math.pi * progress))
        assert lr_at(step, TOTAL, PAPER) == pytest.approx(expected, rel=1e-12)
    midpoint = (peak + last) // 2
    assert lr_at(midpoint, TOTAL, PAPER) == pytest.approx((3e-4 + 3e-5) / 2, rel=1e-12)
    assert lr_at(last, TOTAL, PAPER) == PAPER.lr * PAPER.min_lr_ratio
    assert lr_at(last, TOTAL, PAPER) == pytest.approx(3e-5, rel=1e-15)
    assert lr_at(TOTAL + 500, TOTAL, PAPER) == lr_at(last, TOTAL, PAPER)  # stays at the floor


def test_monotonic() -> None:
    lrs = [lr_at(step, TOTAL, PAPER) for step in range(TOTAL)]
    warmup, decay = lrs[:2000], lrs[1999:]
    assert all(a < b for a, b in zip(warmup, warmup[1:], strict=False))
    assert all(a > b for a, b in zip(decay, decay[1:], strict=False))
    assert max(lrs) == 3e-4 and min(lrs[2000:]) == lrs[-1]


def test_no_warmup_and_bad_lengths() -> None:
    cfg = OptimConfig(warmup_steps=0)
    assert lr_at(0, 10, cfg) == cfg.lr
    assert lr_at(9, 10, cfg) == pytest.approx(cfg.lr * 0.1, rel=1e-15)
    with pytest.raises(PastureError, match="warmup_steps"):
        lr_at(0, 2000, PAPER)
    with pytest.raises(ValueError):
        lr_at(-1, TOTAL, PAPER)


def test_scheduler_drives_adamw_at_lr_at() -> None:
    cfg = OptimConfig(warmup_steps=5)
    total = 20
    model = torch.nn.Linear(4, 4)
    optimizer = build_optimizer(model, cfg)
    scheduler = build_scheduler(optimizer, total, cfg)
    for step in range(total + 2):
        for group in optimizer.param_groups:
            assert group["lr"] == lr_at(step, total, cfg), step
        model(torch.randn(2, 4)).sum().backward()
        optimizer.step()
        optimizer.zero_grad()
        scheduler.step()


def _model(**overrides) -> Transformer:
    return Transformer(preset("debug", vocab_size=300, **overrides))


@pytest.mark.parametrize("tied", [False, True])
def test_param_groups_decay_matrices_not_norms(tied: bool) -> None:
    model = _model(tie_embeddings=tied)
    decay, no_decay = param_groups(model, 0.1)
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    decayed = {id(p) for p in decay["params"]}
    plain = {id(p) for p in no_decay["params"]}
    for name, param in model.named_parameters():
        if name.endswith("norm.weight"):
            assert id(param) in plain, name
        else:
            assert param.ndim == 2 and id(param) in decayed, name
    assert model.tok_embeddings.weight in decay["params"]
    n_layers = model.args.n_layers
    assert len(plain) == 2 * n_layers + 1  # attention_norm, ffn_norm per block; final norm
    assert len(decayed) == 7 * n_layers + (1 if tied else 2)  # wq wk wv wo w1 w2 w3; emb, out
    assert len(decay["params"]) == len(decayed)  # the tied matrix is listed once
    total = sum(p.numel() for group in (decay, no_decay) for p in group["params"])
    assert total == sum(p.numel() for p in model.parameters())


def test_param_groups_skip_frozen() -> None:
    model = _model()
    model.tok_embeddings.weight.requires_grad_(False)
    (decay, _) = param_groups(model, 0.1)
    assert all(p is not model.tok_embeddings.weight for p in decay["params"])


def test_build_optimizer_settings() -> None:
    optimizer = build_optimizer(_model(), PAPER)
    assert isinstance(optimizer, torch.optim.AdamW)
    assert [g["weight_decay"] for g in optimizer.param_groups] == [0.1, 0.0]
    for group in optimizer.param_groups:
        assert group["lr"] == 3e-4 and group["betas"] == (0.9, 0.95) and group["eps"] == 1e-8
        assert group["fused"]  # all parameters on the CPU: torch's fused kernel


def test_fused_step_matches_torch_s_default_adamw() -> None:
    torch.manual_seed(0)
    ours, theirs = _model(), _model()
    theirs.load_state_dict(ours.state_dict())
    optimizers = [build_optimizer(ours, PAPER)]
    optimizers.append(torch.optim.AdamW(param_groups(theirs, 0.1), lr=3e-4, betas=(0.9, 0.95)))
    assert optimizers[0].param_groups[0]["fused"] and not optimizers[1].param_groups[0]["fused"]
    tokens = torch.randint(0, 300, (2, 16))
    for _ in range(3):
        for model, optimizer in zip((ours, theirs), optimizers, strict=True):
            model(tokens).float().square().mean().backward()
            optimizer.step()
            optimizer.zero_grad()
    for (name, a), b in zip(ours.state_dict().items(), theirs.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5, msg=name)


def test_mixed_devices_fall_back_to_torch_s_default() -> None:
    model = _model()
    model.output.to("meta")
    assert build_optimizer(model, PAPER).param_groups[0]["fused"] is None


def test_clip_grad_norm_scales_to_max_and_returns_pre_clip_norm() -> None:
    model = _model()
    params = list(model.parameters())
    for param in params:
        param.grad = torch.full_like(param, 0.5)
    n = sum(p.numel() for p in params)
    expected = 0.5 * math.sqrt(n)
    norm = clip_grad_norm(model, 1.0)
    torch.testing.assert_close(norm, torch.tensor(expected), rtol=1e-5, atol=0)
    # float64: a float32 norm of ~500k equal entries is itself off by ~2e-4.
    after = torch.linalg.vector_norm(torch.cat([p.grad.double().flatten() for p in params]))
    torch.testing.assert_close(after, torch.tensor(1.0, dtype=torch.float64), rtol=1e-5, atol=0)
    # Uniform gradients stay uniform: every entry is scaled by the same factor.
    torch.testing.assert_close(params[0].grad, torch.full_like(params[0], 1 / math.sqrt(n)))


def test_clip_grad_norm_leaves_small_gradients() -> None:
    model = torch.nn.Linear(3, 4, bias=False)
    model.weight.grad = torch.full_like(model.weight, 0.1)  # norm sqrt(12) · 0.1 ≈ 0.35
    norm = clip_grad_norm(model, 1.0)
    torch.testing.assert_close(norm, torch.tensor(0.1 * math.sqrt(12)))
    torch.testing.assert_close(model.weight.grad, torch.full_like(model.weight, 0.1))


@pytest.fixture
def single_rank_mesh(tmp_path):
    """A one-process gloo group: FSDP2 turns parameters and gradients into DTensors."""
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh

    dist.init_process_group(
        "gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1
    )
    try:
        yield init_device_mesh("cpu", (1,))
    finally:
        dist.destroy_process_group()


def test_fsdp2_dtensor_parameters(single_rank_mesh) -> None:
    from torch.distributed.fsdp import fully_shard
    from torch.distributed.tensor import DTensor

    model = _model()
    plain_groups = [[p.shape for p in g["params"]] for g in param_groups(model, 0.1)]
    for block in model.layers:
        fully_shard(block, mesh=single_rank_mesh)
    fully_shard(model, mesh=single_rank_mesh)
    assert all(isinstance(p, DTensor) for p in model.parameters())
    groups = param_groups(model, 0.1)
    assert [[p.shape for p in g["params"]] for g in groups] == plain_groups
    for param in model.parameters():
        param.grad = DTensor.from_local(
            torch.full_like(param.to_local(), 0.5), single_rank_mesh, param.placements
        )
    n = sum(p.numel() for p in model.parameters())
    norm = clip_grad_norm(model, 1.0)
    assert type(norm) is torch.Tensor
    torch.testing.assert_close(norm, torch.tensor(0.5 * math.sqrt(n)), rtol=1e-5, atol=0)
    build_optimizer(model, PAPER).step()
