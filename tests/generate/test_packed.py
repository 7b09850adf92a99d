"""oneDNN-packed linear weights (the serving engine's CPU decode products): the same function
as ``F.linear``, a row's bits independent of the other rows, state dicts unchanged."""

from __future__ import annotations

import importlib

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from pasture.model import ModelArgs, Transformer

packed = importlib.import_module("pasture.generate.packed")
engine_module = importlib.import_module("pasture.generate.engine")

pytestmark = pytest.mark.skipif(not packed.available(), reason="this torch has no oneDNN on CPU")

# LLaMA-7B's attention and SwiGLU shapes scaled down, llama2.c's 172-wide SwiGLU, a vocabulary.
SHAPES = [(768, 768), (2048, 768), (768, 2048), (172, 64), (64, 172), (32000, 288)]


def _linear(out_features: int, in_features: int, seed: int = 0) -> nn.Linear:
    torch.manual_seed(seed)
    linear = nn.Linear(in_features, out_features, bias=False)
    nn.init.normal_(linear.weight, std=in_features**-0.5)
    return linear


@pytest.mark.parametrize(("out_features", "in_features"), SHAPES)
def test_products_equal_f_linear_for_any_row_count(out_features: int, in_features: int) -> None:
    linear = _linear(out_features, in_features)
    layer = packed.PackedLinear(linear, rows=8)
    assert torch.equal(layer.weight, linear.weight)  # the plain matrix comes back exactly
    for shape in [(8, in_features), (1, in_features), (1, 37, in_features), (3, 5, in_features)]:
        x = torch.randn(shape)
        got, want = layer(x), F.linear(x, linear.weight)
        assert got.shape == want.shape
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(("out_features", "in_features"), SHAPES)
def test_a_rows_bits_do_not_depend_on_the_other_rows(out_features: int, in_features: int) -> None:
    """What the engine's batch invariance rests on: in an 8-row product, row 3 comes out the
    same, bit for bit, whatever the seven other rows hold (zeros, noise, huge values)."""
    layer = packed.PackedLinear(_linear(out_features, in_features), rows=8)
    x = torch.randn(8, in_features)
    alone = layer(x)[3]
    for others in (torch.zeros(8, in_features), torch.randn(8, in_features) * 1e4):
        others[3] = x[3]
        assert torch.equal(layer(others)[3], alone)


def _model(tie: bool = False) -> Transformer:
    args = ModelArgs(dim=64, n_layers=2, n_heads=4, vocab_size=300, tie_embeddings=tie)
    model = Transformer(args)
    model.init_weights(std=0.1, seed=0)
    return model.eval()


def test_pack_linears_keeps_the_function_and_the_state_dict() -> None:
    model, plain = _model(), _model()
    state = {k: v.clone() for k, v in plain.state_dict().items()}
    assert packed.pack_linears(model, rows=4) == 2 * 7 + 1  # 7 per block and the output
    assert not any(type(m) is nn.Linear for m in model.modules())
    tokens = torch.randint(0, 300, (4, 9))
    with torch.inference_mode():
        torch.testing.assert_close(model(tokens), plain(tokens), rtol=1e-5, atol=1e-5)
    saved = model.state_dict()
    assert saved.keys() == state.keys()
    assert all(torch.equal(saved[k], state[k]) for k in state)
    # Loading repacks: a packed model takes another model's weights.
    other = _model()
    other.init_weights(std=0.1, seed=1)
    model.load_state_dict(other.state_dict())
    with torch.inference_mode():
        torch.testing.assert_close(model(tokens), other(tokens), rtol=1e-5, atol=1e-5)
    wrong = dict(other.state_dict())
    wrong["layers.0.attention.wq.weight"] = torch.zeros(3, 64)
    with pytest.raises(RuntimeError, match=r"layers\.0\.attention\.wq\.weight: shape \(3, 64\)"):
        model.load_state_dict(wrong)


def test_tied_output_packs_a_copy_and_leaves_the_embedding() -> None:
    model = _model(tie=True)
    embedding = model.tok_embeddings.weight.clone()
    packed.pack_linears(model, rows=2)
    assert isinstance(model.output, packed.PackedLinear)
    assert torch.equal(model.tok_embeddings.weight, embedding)
    assert torch.equal(model.output.weight, embedding)


def test_only_bias_free_float32_cpu_linears_are_packed() -> None:
    block = nn.Sequential(
        nn.Linear(16, 16, bias=False),
        nn.Linear(16, 16, bias=True),
        nn.Linear(16, 16, bias=False).to(torch.float64),
    )
    assert packed.pack_linears(block, rows=2) == 1
    assert [type(m).__name__ for m in block] == ["PackedLinear", "Linear", "Linear"]


def test_the_engine_packs_on_cpu_unless_its_step_is_compiled() -> None:
    class Tokenizer:
        bos_id, eos_id = 1, 2

        def decode(self, ids: list[int]) -> str:
            return "".join(chr(97 + i % 26) for i in ids)

    for compile, kind in [(None, packed.PackedLinear), ("eager", nn.Linear)]:
        model = _model()
        engine = engine_module.Engine(model, Tokenizer(), max_batch=3, compile=compile)
        try:
            assert type(model.layers[0].attention.wq) is kind
            params = engine_module.SamplingParams(max_tokens=5, temperature=0)
            assert len(engine.submit([1, 5, 7], params).result()[1]) == 5
        finally:
            engine.close()
