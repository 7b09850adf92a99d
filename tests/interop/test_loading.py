"""load_model: a Hugging Face (sharded) or quantized checkpoint read tensor by tensor onto the
device gives the same model as reading the whole checkpoint first."""

from __future__ import annotations

import json
import re

import pytest
import torch
from safetensors.torch import load_file, save_file

from pasture import interop
from pasture.errors import PastureError
from pasture.interop.loading import load_model
from pasture.model import ModelArgs, Transformer
from pasture.model.quant import Int8Linear, QuantConfig


def _model(tie: bool = False) -> Transformer:
    args = ModelArgs(
        dim=64, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=96, multiple_of=32,
        tie_embeddings=tie,
    )  # fmt: skip
    model = Transformer(args)
    model.init_weights(seed=3)
    return model


def _shard(folder) -> None:
    """Split model.safetensors into two shards with an index, as transformers writes them."""
    tensors = load_file(folder / "model.safetensors")
    (folder / "model.safetensors").unlink()
    keys = sorted(tensors)
    parts = {
        "model-00001-of-00002.safetensors": keys[::2],
        "model-00002-of-00002.safetensors": keys[1::2],
    }
    weight_map = {}
    for name, part in parts.items():
        save_file({k: tensors[k] for k in part}, folder / name)
        weight_map.update(dict.fromkeys(part, name))
    index = {"metadata": {}, "weight_map": weight_map}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))


@pytest.mark.parametrize("tie", [False, True])
@pytest.mark.parametrize("sharded", [False, True])
def test_hf_streamed_equals_whole_read(tmp_path, tie: bool, sharded: bool) -> None:
    model = _model(tie)
    dst = tmp_path / "hf"
    interop.save(interop.Checkpoint.from_model(model), dst, "hf")
    if sharded:
        _shard(dst)
    streamed, _ = load_model(dst)
    whole = interop.load(dst).to_model()
    tokens = torch.randint(0, 96, (2, 11))
    with torch.no_grad():
        want = model(tokens)
        torch.testing.assert_close(streamed(tokens), want, atol=0, rtol=0)
        torch.testing.assert_close(whole(tokens), want, atol=0, rtol=0)
    assert (streamed.output.weight is streamed.tok_embeddings.weight) == tie
    assert not any(p.requires_grad for p in streamed.parameters())  # for inference


def test_dtype_is_applied_per_tensor(tmp_path) -> None:
    model = _model()
    interop.save(interop.Checkpoint.from_model(model), tmp_path / "hf", "hf")
    loaded, _ = load_model(tmp_path / "hf", dtype=torch.bfloat16)
    assert {p.dtype for p in loaded.parameters()} == {torch.bfloat16}
    torch.testing.assert_close(
        loaded.layers[1].attention.wq.weight, model.layers[1].attention.wq.weight.bfloat16()
    )


def test_shape_errors_name_the_file_before_anything_is_built(tmp_path) -> None:
    model = _model()
    dst = tmp_path / "hf"
    interop.save(interop.Checkpoint.from_model(model), dst, "hf")
    config = json.loads((dst / "config.json").read_text())
    config["intermediate_size"] = 128
    (dst / "config.json").write_text(json.dumps(config))
    with pytest.raises(PastureError, match=re.escape(str(dst / "model.safetensors")) + ".*mlp"):
        load_model(dst)
    weights = dst / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(PastureError, match="truncated or corrupt"):
        load_model(dst)


def test_quantized_checkpoints_load_through_the_same_door(tmp_path) -> None:
    from pasture.interop import quantized

    model = _model()
    quantized.save(interop.Checkpoint.from_model(model), tmp_path / "q", QuantConfig("int8"))
    loaded, _ = load_model(tmp_path / "q")
    assert isinstance(loaded.layers[0].attention.wq, Int8Linear)
    with pytest.raises(PastureError, match="keeps its own dtypes"):
        load_model(tmp_path / "q", dtype=torch.bfloat16)


def test_quantize_on_load(tmp_path) -> None:
    model = _model()
    interop.save(interop.Checkpoint.from_model(model), tmp_path / "hf", "hf")
    loaded, _ = load_model(tmp_path / "hf", quantize=QuantConfig("int8"))
    assert isinstance(loaded.output, Int8Linear)
    tokens = torch.randint(0, 96, (1, 9))
    with torch.no_grad():
        want, got = model(tokens), loaded(tokens)
    assert not torch.equal(got, want)  # quantized, and close
    torch.testing.assert_close(got, want, atol=0.02 * want.abs().max().item(), rtol=0)
