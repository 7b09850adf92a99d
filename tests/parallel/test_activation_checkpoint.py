"""Activation checkpointing (§2.4): same gradients, same checkpoint keys, and selective mode
really keeps the matmul outputs (no matmul is recomputed) while recomputing the cheap ops."""

from __future__ import annotations

import copy
from collections import Counter

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

from pasture.errors import PastureError
from pasture.model import Transformer, preset
from pasture.parallel.activation_checkpoint import AC_MODES, apply_activation_checkpointing

VOCAB = 300
PREFIX = "_checkpoint_wrapped_module."
aten = torch.ops.aten


def _model(name: str = "debug") -> Transformer:
    torch.manual_seed(0)
    model = Transformer(preset(name, vocab_size=VOCAB))
    model.init_weights(seed=0)
    return model


def _tokens(batch: int = 2, length: int = 32) -> torch.Tensor:
    return torch.randint(0, VOCAB, (batch, length + 1), generator=torch.Generator().manual_seed(1))


def _loss(model: Transformer, tokens: torch.Tensor) -> torch.Tensor:
    logits = model(tokens[:, :-1])  # (B, T, vocab)
    return F.cross_entropy(logits.flatten(0, 1), tokens[:, 1:].flatten())


def _grads(model: Transformer) -> dict[str, torch.Tensor]:
    return {name.replace(PREFIX, ""): p.grad for name, p in model.named_parameters()}


class OpCounter(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.counts: Counter = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.counts[func] += 1
        return func(*args, **(kwargs or {}))


def _backward_ops(mode: str) -> Counter:
    """Ops run during the backward of one step: the gradient kernels plus any recomputation."""
    model = _model()
    apply_activation_checkpointing(model, mode)
    loss = _loss(model, _tokens())
    with OpCounter() as counter:
        loss.backward()
    return counter.counts


@pytest.mark.slow
@pytest.mark.parametrize("name", ["debug", "debug-gqa"])
@pytest.mark.parametrize("mode", ["full", "selective"])
def test_gradients_equal_no_checkpointing(name: str, mode: str) -> None:
    reference = _model(name)
    model = copy.deepcopy(reference)
    apply_activation_checkpointing(model, mode)
    tokens = _tokens()
    loss_ref, loss = _loss(reference, tokens), _loss(model, tokens)
    loss_ref.backward()
    loss.backward()
    torch.testing.assert_close(loss, loss_ref, rtol=0, atol=0)
    expected, got = _grads(reference), _grads(model)
    assert expected.keys() == got.keys()
    for key in expected:
        torch.testing.assert_close(got[key], expected[key], rtol=0, atol=0, msg=key)


@pytest.mark.parametrize("mode", AC_MODES)
def test_state_dict_keys_unchanged_and_plain_state_dicts_load(mode: str) -> None:
    plain = _model()
    keys = list(plain.state_dict())
    model = Transformer(preset("debug", vocab_size=VOCAB))  # different (default) init
    apply_activation_checkpointing(model, mode)
    assert list(model.state_dict()) == keys
    model.load_state_dict(plain.state_dict())  # strict
    for key, value in plain.state_dict().items():
        assert torch.equal(model.state_dict()[key], value), key
    back = Transformer(preset("debug", vocab_size=VOCAB))
    back.load_state_dict(model.state_dict())  # and a wrapped model's loads into a plain one
    tokens = _tokens()
    with torch.no_grad():
        torch.testing.assert_close(model(tokens), plain(tokens), rtol=0, atol=0)
        torch.testing.assert_close(back(tokens), plain(tokens), rtol=0, atol=0)


def test_full_recomputes_every_matmul() -> None:
    none, full = _backward_ops("none"), _backward_ops("full")
    n_layers = preset("debug").n_layers
    # wq wk wv wo w1 w3 of every block. Not w2, the block's last matmul: its output only feeds
    # the residual add, and non-reentrant recomputation stops once every saved tensor is back.
    assert full[aten.mm.default] - none[aten.mm.default] == 6 * n_layers
    assert full[aten.silu.default] - none[aten.silu.default] == n_layers
    sdpa = aten._scaled_dot_product_flash_attention_for_cpu.default
    assert full[sdpa] - none[sdpa] == n_layers


def test_selective_saves_matmuls_and_attention_recomputes_the_rest() -> None:
    none, selective = _backward_ops("none"), _backward_ops("selective")
    n_layers = preset("debug").n_layers
    assert none[aten.mm.default] > 0  # the gradient matmuls themselves
    assert selective[aten.mm.default] == none[aten.mm.default]  # no forward matmul rerun
    sdpa = aten._scaled_dot_product_flash_attention_for_cpu.default
    assert selective[sdpa] == none[sdpa] == 0
    assert none[aten.silu.default] == 0
    assert selective[aten.silu.default] == n_layers  # SwiGLU's SiLU is recomputed
    assert selective[aten.mul.Tensor] > none[aten.mul.Tensor]  # norms, rotary, SwiGLU product
    assert selective[aten.rsqrt.default] == 2 * n_layers  # both RMSNorms of every block


def test_wrapped_model_still_decodes_with_a_kv_cache() -> None:
    plain = _model()
    model = copy.deepcopy(plain)
    apply_activation_checkpointing(model, "selective")
    prompt = _tokens(1, 8)
    outputs = []
    for m in (plain, model):
        m.setup_cache(batch_size=1, max_seq_len=16)
        with torch.no_grad():
            first = m.logits(m.hidden(prompt)[:, -1])
            step = m(prompt[:, -1:], start_pos=prompt.shape[1])
        m.clear_cache()
        outputs.append((first, step))
    for got, expected in zip(outputs[1], outputs[0], strict=True):
        torch.testing.assert_close(got, expected, rtol=0, atol=0)


def test_none_leaves_the_model_alone() -> None:
    model = _model()
    layers = list(model.layers)
    apply_activation_checkpointing(model, "none")
    assert list(model.layers) == layers


def test_unknown_mode_and_double_application() -> None:
    model = _model()
    with pytest.raises(PastureError, match=r"'partial'.*none, full, selective"):
        apply_activation_checkpointing(model, "partial")
    apply_activation_checkpointing(model, "full")
    with pytest.raises(PastureError, match="already"):
        apply_activation_checkpointing(model, "selective")


def test_selective_under_fsdp2(tmp_path) -> None:
    """The training order: checkpointing first, then FSDP2 (one gloo rank, DTensor params)."""
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    reference = _model()
    model = copy.deepcopy(reference)
    dist.init_process_group(
        "gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1
    )
    try:
        mesh = init_device_mesh("cpu", (1,))
        apply_activation_checkpointing(model, "selective")
        for block in model.layers:
            fully_shard(block, mesh=mesh)
        fully_shard(model, mesh=mesh)
        tokens = _tokens()
        _loss(reference, tokens).backward()
        _loss(model, tokens).backward()
        got = {k: v.full_tensor() for k, v in _grads(model).items()}
    finally:
        dist.destroy_process_group()
    expected = _grads(reference)
    assert expected.keys() == got.keys()
    for key in expected:
        torch.testing.assert_close(got[key], expected[key], rtol=0, atol=0, msg=key)
