"""Weight-only int8/int4: torch's packed kernels agree with the plain arithmetic they stand for,
a quantized stories260K keeps its perplexity, and the quantized checkpoint round-trips."""

from __future__ import annotations

import copy
import math
import re

import pytest
import torch
from torch import nn

from pasture import interop
from pasture.errors import PastureError
from pasture.interop import quantized
from pasture.model.quant import (
    Int4Linear,
    Int8Linear,
    QuantConfig,
    dequantize,
    quantize,
    quantize_linear,
)


def _linear(n: int, k: int, seed: int = 0) -> nn.Linear:
    torch.manual_seed(seed)
    layer = nn.Linear(k, n, bias=False)
    nn.init.normal_(layer.weight, std=0.05)
    return layer


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("cfg", [QuantConfig("int8"), QuantConfig("int4", 32)])
def test_kernel_equals_dequantized_matmul(cfg: QuantConfig, dtype: torch.dtype) -> None:
    layer = _linear(64, 256)
    q = quantize_linear(layer, cfg)
    assert isinstance(q, Int8Linear if cfg.dtype == "int8" else Int4Linear)
    x = torch.randn(3, 5, 256).to(dtype)
    # float32 arithmetic on the stored integers, with the activations the CPU kernels take
    # (bfloat16: the only dtype they vectorize)
    want = x.bfloat16().float() @ dequantize(q).t()
    got = q(x)
    assert got.dtype == dtype and got.shape == (3, 5, 64)
    tol = 0.01 * want.abs().max().item()
    assert (got.float() - want).abs().max().item() < tol


def test_int8_columns_not_a_multiple_of_16_stay_float32() -> None:
    """torch 2.13's bfloat16 CPU int8 kernel reads past rows of 100 or 172 columns (SIGSEGV);
    there the activations stay float32 and the answer is exact to float32."""
    q = quantize_linear(_linear(64, 172), QuantConfig("int8"))
    x = torch.randn(4, 172)
    torch.testing.assert_close(q(x), x @ dequantize(q).t(), atol=1e-4, rtol=1e-4)


def test_int8_rounds_to_nearest_step() -> None:
    layer = _linear(32, 64)
    q = quantize_linear(layer, QuantConfig("int8"))
    step = q.scales[:, None]  # one scale per output row
    assert ((dequantize(q) - layer.weight).abs() <= step / 2 + 1e-7).all()
    assert (q.weight.abs() == 127).any(dim=1).all()  # each row's largest weight uses the range


def test_int4_groups_cover_their_range() -> None:
    layer = _linear(16, 128)
    q = quantize_linear(layer, QuantConfig("int4", 32))
    scale = q.scales_and_zeros[..., 0].t().repeat_interleave(32, dim=1)  # (N, K)
    assert ((dequantize(q) - layer.weight).abs() <= scale / 2 + 1e-6).all()
    groups = layer.weight.reshape(16, 4, 32)
    deq = dequantize(q).reshape(16, 4, 32)
    # min-max: each group's smallest and largest weight are represented (to rounding)
    torch.testing.assert_close(deq.amin(-1), groups.amin(-1), atol=1e-6, rtol=0)
    torch.testing.assert_close(deq.amax(-1), groups.amax(-1), atol=1e-6, rtol=0)


def test_int4_leaves_shapes_the_kernel_cannot_take() -> None:
    model = nn.Sequential(_linear(16, 64), _linear(24, 64), _linear(16, 48))
    report = quantize(model, QuantConfig("int4", 32))
    assert report == {"layers": ["0"], "kept_float": 2}  # 24 rows: not 16k; 48 cols: not 32k
    assert isinstance(model[0], Int4Linear) and isinstance(model[1], nn.Linear)


def test_config_errors_are_one_line() -> None:
    with pytest.raises(PastureError, match="use int8 or int4"):
        QuantConfig("int3")
    with pytest.raises(PastureError, match="group size 48"):
        QuantConfig("int4", 48)


@pytest.fixture(scope="module")
def stories(shared_data):
    folder = shared_data / "models" / "stories260K"
    ckpt = interop.load(folder / "stories260K.bin", tokenizer=folder / "tok512.model")
    manifest = (shared_data / "models" / "MANIFEST.md").read_text()
    # held-out text: run.c's sampled story (top-p, seed 133742), not a greedy loop
    text = manifest.split("-s 133742")[1].split("```")[1].strip()
    return ckpt, [1, *ckpt.tokenizer.encode(text)]


def _perplexity(model: nn.Module, ids: list[int]) -> float:
    x = torch.tensor([ids])
    with torch.no_grad():
        logits = model(x[:, :-1])
    return math.exp(torch.nn.functional.cross_entropy(logits[0], x[0, 1:]).item())


@pytest.mark.full_data
def test_quantized_stories260k_keeps_its_perplexity(stories) -> None:
    ckpt, ids = stories
    model = ckpt.to_model()
    base = _perplexity(model, ids)
    assert 2 < base < 4  # the trained model, on TinyStories-like text
    int8 = copy.deepcopy(model)
    quantize(int8, QuantConfig("int8"))
    int4 = copy.deepcopy(model)
    report = quantize(int4, QuantConfig("int4", 32))
    assert len(report["layers"]) > 0
    # the targets (torchao's for 7B): Δ ≤ 0.05 int8, ≤ 0.7 int4
    assert abs(_perplexity(int8, ids) - base) <= 0.05
    assert abs(_perplexity(int4, ids) - base) <= 0.7
    assert _perplexity(int4, ids) != base  # int4 really ran


@pytest.mark.full_data
@pytest.mark.parametrize("cfg", [QuantConfig("int8"), QuantConfig("int4", 32)])
def test_quantized_checkpoint_round_trip(stories, tmp_path, cfg: QuantConfig) -> None:
    ckpt, ids = stories
    dst = tmp_path / "q"
    report = quantized.save(ckpt, dst, cfg)
    assert sorted(p.name for p in dst.iterdir()) == [
        "model.safetensors",
        "quantization.json",
        "tokenizer.model",
    ]
    model, tokenizer = quantized.load_model(dst)
    assert tokenizer is not None and tokenizer.encode("Once upon") == ckpt.tokenizer.encode(
        "Once upon"
    )
    want = ckpt.to_model()
    quantize(want, cfg)
    x = torch.tensor([ids[:64]])
    with torch.no_grad():
        torch.testing.assert_close(model(x), want(x), atol=0, rtol=0)
    quantized_layers = [
        n for n, m in model.named_modules() if isinstance(m, Int8Linear | Int4Linear)
    ]
    assert quantized_layers == report["layers"]
    # the weights file holds the integers, not floats
    size = (dst / "model.safetensors").stat().st_size
    floats = sum(t.numel() for t in ckpt.state_dict.values()) * 4
    assert size < floats * (0.6 if cfg.dtype == "int8" else 0.9)


@pytest.mark.full_data
def test_damaged_quantized_checkpoint_is_one_line(stories, tmp_path) -> None:
    ckpt, _ = stories
    dst = tmp_path / "q"
    quantized.save(ckpt, dst, QuantConfig("int8"))
    weights = dst / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(PastureError, match=re.escape(str(weights))):
        quantized.load_model(dst)
    (dst / "quantization.json").write_text('{"format": "pasture-quantized", "version": 7}')
    with pytest.raises(PastureError, match="version 7"):
        quantized.load_model(dst)


def test_refuses_to_write_into_a_foreign_folder(tmp_path) -> None:
    (tmp_path / "notes.txt").write_text("mine")
    from pasture.model import ModelArgs, Transformer

    model = Transformer(ModelArgs(dim=32, n_layers=1, n_heads=2, vocab_size=64, multiple_of=16))
    ckpt = interop.Checkpoint.from_model(model)
    with pytest.raises(PastureError, match="notes.txt"):
        quantized.save(ckpt, tmp_path, QuantConfig("int8"))
    assert (tmp_path / "notes.txt").read_text() == "mine"
