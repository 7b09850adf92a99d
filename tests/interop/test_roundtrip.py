"""Meta ⇄ HF ⇄ llama2.c ⇄ GGUF round trips and Meta's model-parallel shards."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from pasture import interop
from pasture.data.tokenizer import Tokenizer
from pasture.interop import Checkpoint
from pasture.interop.meta import shard_dim
from pasture.model import Transformer, preset


def _checkpoint(name: str, tokenizer: Tokenizer | None = None, **overrides) -> Checkpoint:
    vocab = tokenizer.vocab_size if tokenizer else 300
    model = Transformer(preset(name, vocab_size=vocab, **overrides))
    model.init_weights(seed=5)
    return Checkpoint.from_model(model, tokenizer)


def _assert_same(a: Checkpoint, b: Checkpoint) -> None:
    assert a.state_dict.keys() == b.state_dict.keys()
    for key, tensor in a.state_dict.items():
        assert torch.equal(tensor, b.state_dict[key]), key


@pytest.mark.parametrize("name", ["debug", "debug-gqa"])
def test_lossless_chain(name: str, tmp_path: Path, shared_data: Path) -> None:
    tokenizer = Tokenizer.from_file(shared_data / "models" / "stories260K" / "tok512.model")
    # llama2.c's files hold no RMSNorm eps (run.c hard-codes 1e-5), so the chain uses 1e-5.
    original = _checkpoint(name, tokenizer, norm_eps=1e-5)
    ckpt = original
    chain = [
        ("meta", "meta"),
        ("hf", "hf"),
        ("llama2c", "m.bin"),
        ("gguf", "m.gguf"),
        ("hf", "hf2"),
        ("meta", "meta2"),
    ]
    for fmt, filename in chain:
        interop.save(ckpt, tmp_path / filename, fmt)
        ckpt = interop.load(tmp_path / filename)
        assert ckpt.format == fmt
        _assert_same(original, ckpt)
        assert ckpt.tokenizer is not None and ckpt.tokenizer.vocab() == tokenizer.vocab()
        for field in ("dim", "n_layers", "n_heads", "kv_heads", "ffn_hidden_dim", "norm_eps"):
            assert getattr(ckpt.args, field) == getattr(original.args, field)


def test_sharded_meta_checkpoint_merges(tmp_path: Path) -> None:
    ckpt = _checkpoint("debug-gqa")
    interop.save(ckpt, tmp_path / "one", "meta")
    interop.save(ckpt, tmp_path / "two", "meta", shards=2)
    shards = [
        torch.load(tmp_path / "two" / f"consolidated.0{r}.pth", weights_only=True) for r in range(2)
    ]
    # Meta's split: rows of wq/wk/wv/w1/w3/output, columns of wo/w2/tok_embeddings.
    full = ckpt.state_dict
    assert (
        shards[0]["layers.0.attention.wq.weight"].shape[0]
        == full["layers.0.attention.wq.weight"].shape[0] // 2
    )
    assert (
        shards[1]["layers.1.feed_forward.w2.weight"].shape[1]
        == full["layers.1.feed_forward.w2.weight"].shape[1] // 2
    )
    assert (
        shards[0]["tok_embeddings.weight"].shape[1] == full["tok_embeddings.weight"].shape[1] // 2
    )
    assert shards[0]["norm.weight"].shape == full["norm.weight"].shape
    assert torch.equal(torch.cat([s["output.weight"] for s in shards]), full["output.weight"])
    assert torch.equal(
        torch.cat([s["layers.0.attention.wo.weight"] for s in shards], dim=1),
        full["layers.0.attention.wo.weight"],
    )
    _assert_same(interop.load(tmp_path / "one"), interop.load(tmp_path / "two"))


def test_shard_dims_follow_meta() -> None:
    rows = ["attention.wq", "attention.wk", "attention.wv", "feed_forward.w1", "feed_forward.w3"]
    for key in rows:
        assert shard_dim(f"layers.3.{key}.weight") == 0
    assert shard_dim("output.weight") == 0
    for key in [
        "layers.0.attention.wo.weight",
        "layers.0.feed_forward.w2.weight",
        "tok_embeddings.weight",
    ]:
        assert shard_dim(key) == 1
    for key in ["norm.weight", "layers.2.attention_norm.weight", "layers.2.ffn_norm.weight"]:
        assert shard_dim(key) is None


def test_hidden_size_off_the_rounding_rule_survives_meta(tmp_path: Path) -> None:
    # Meta's params.json has no hidden size; odd sizes must still come back exactly.
    for hidden in (200, 40, 344):
        model = Transformer(preset("debug", vocab_size=64, hidden_dim=hidden))
        model.init_weights(seed=0)
        interop.save(Checkpoint.from_model(model), tmp_path / str(hidden), "meta")
        assert interop.load(tmp_path / str(hidden)).args.ffn_hidden_dim == hidden


def test_dtype_conversion(tmp_path: Path) -> None:
    ckpt = _checkpoint("debug")
    interop.save(ckpt, tmp_path / "bf16", "hf", dtype="bf16")
    loaded = interop.load(tmp_path / "bf16")
    for key, tensor in loaded.state_dict.items():
        assert tensor.dtype == torch.bfloat16
        assert torch.equal(tensor, ckpt.state_dict[key].to(torch.bfloat16))
