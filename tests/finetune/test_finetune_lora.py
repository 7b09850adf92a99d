"""LoRA: wraps the named linear layers without touching the model code, trains only the
adapters (base weights bit-for-bit unchanged), and merges into weights that give the
unmerged model's logits under the plain checkpoint keys."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from pasture.errors import PastureError
from pasture.finetune.lora import (
    LoRAConfig,
    LoRALinear,
    apply_lora,
    lora_state,
    merge_lora,
    merge_weights,
    merged_state_dict,
    remove_lora,
    unmerge_lora,
)
from pasture.finetune.loss import finetune_step
from pasture.finetune.packing import IGNORE, TokenSequence, batches
from pasture.model import ModelArgs, Transformer
from pasture.train.optim import OptimConfig, build_optimizer

ARGS = ModelArgs(dim=32, n_layers=2, n_heads=4, vocab_size=61, multiple_of=16, max_seq_len=32)


def _model() -> Transformer:
    model = Transformer(ARGS)
    model.init_weights(std=0.1, seed=0)
    return model


def _train(model: nn.Module, steps: int = 5) -> None:
    torch.manual_seed(0)
    seqs = [
        TokenSequence(list(range(i, i + 12)), [IGNORE] * 6 + list(range(i + 6, i + 12)))
        for i in range(3, 40, 4)
    ]
    micro = batches(seqs, seq_len=24, rows_per_batch=4)
    optimizer = build_optimizer(model, OptimConfig(lr=1e-2, warmup_steps=0, weight_decay=0.1))
    for _ in range(steps):
        finetune_step(model, optimizer, micro, grad_clip=1.0)


def test_wraps_targets_and_freezes_the_rest() -> None:
    model = _model()
    names = apply_lora(model, LoRAConfig(rank=4, alpha=8, targets=["wq", "wv", "w2"]))
    expected = [f"layers.{i}.attention.{w}" for i in range(2) for w in ("wq", "wv")]
    expected += [f"layers.{i}.feed_forward.w2" for i in range(2)]
    assert sorted(names) == sorted(expected)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {f"{n}.lora_{ab}.weight" for n in names for ab in "ab"}
    wq = model.layers[0].attention.wq
    assert isinstance(wq, LoRALinear) and isinstance(wq.base, nn.Linear)
    assert wq.lora_a.weight.shape == (4, 32) and wq.lora_b.weight.shape == (32, 4)
    assert set(lora_state(model)) == trainable
    with pytest.raises(PastureError, match="already has LoRA"):
        apply_lora(model, LoRAConfig())


def test_starts_as_the_base_model_exactly() -> None:
    tokens = torch.randint(0, ARGS.vocab_size, (2, 10), generator=torch.Generator().manual_seed(1))
    model = _model()
    reference = model(tokens)
    apply_lora(model, LoRAConfig(rank=4, targets=["wq", "wk", "wv", "wo", "w1", "w2", "w3"]))
    assert torch.equal(model(tokens), reference)  # B starts at zero


def test_training_moves_only_adapters_and_merge_keeps_the_logits() -> None:
    model = _model()
    base = {n: p.detach().clone() for n, p in model.state_dict().items()}
    cfg = LoRAConfig(rank=4, alpha=8, targets=["wq", "wk", "wv", "wo", "w1", "w2", "w3", "output"])
    apply_lora(model, cfg)
    _train(model)
    for name, tensor in merged_state_dict(model).items():
        if not any(f".{t}." in f".{name}" for t in cfg.targets):
            assert torch.equal(tensor, base[name]), name  # norms, embeddings: bitwise
    for name, module in model.named_modules():
        if isinstance(module, LoRALinear):
            assert torch.equal(module.base.weight, base[f"{name}.weight"]), name  # bitwise
            assert module.lora_b.weight.abs().sum() > 0  # the adapters did train

    tokens = torch.randint(0, ARGS.vocab_size, (2, 16), generator=torch.Generator().manual_seed(2))
    model.eval()
    with torch.no_grad():
        unmerged = model(tokens)
        assert not torch.allclose(unmerged, _plain(base)(tokens), atol=1e-3)  # LoRA did learn
        # The merged weights under Meta's keys, in a plain model: the same logits.
        merged = merged_state_dict(model)
        assert set(merged) == set(base)
        # The same from a bare (gathered) state dict, as FSDP export merges it.
        from_state = merge_weights(model.state_dict(), cfg.alpha / cfg.rank)
        assert all(torch.equal(from_state[k], merged[k]) for k in merged)
        assert torch.allclose(_plain(merged)(tokens), unmerged, rtol=0, atol=1e-5)
        # Merging in place, then removing the wrappers, gives the same.
        merge_lora(model)
        assert torch.allclose(model(tokens), unmerged, rtol=0, atol=1e-5)
        unmerge_lora(model)
        assert torch.allclose(model(tokens), unmerged, rtol=0, atol=1e-5)
        plain = remove_lora(model)
        assert set(plain.state_dict()) == set(base)
        assert torch.allclose(plain(tokens), unmerged, rtol=0, atol=1e-5)


def _plain(state: dict[str, torch.Tensor]) -> Transformer:
    model = Transformer(ARGS)
    model.load_state_dict(state)
    return model.eval()


def test_bad_configs_are_one_line() -> None:
    with pytest.raises(PastureError, match="lora.rank"):
        LoRAConfig(rank=0)
    with pytest.raises(PastureError, match="lora.targets: wx"):
        LoRAConfig(targets=["wx"])
    with pytest.raises(PastureError, match="lora.dropout"):
        LoRAConfig(dropout=1.0)
    tied = Transformer(ModelArgs(dim=32, n_layers=1, n_heads=4, vocab_size=61, tie_embeddings=True))
    with pytest.raises(PastureError, match="tied"):
        apply_lora(tied, LoRAConfig(targets=["output"]))
