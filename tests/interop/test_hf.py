"""Logit parity with Hugging Face transformers' LlamaForCausalLM, through the real converter."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from pasture import interop
from pasture.interop import Checkpoint
from pasture.model import ModelArgs, Transformer

CONFIGS = {
    "mha": ModelArgs(dim=64, n_layers=2, n_heads=4, vocab_size=101, multiple_of=32, max_seq_len=64),
    "gqa": ModelArgs(
        dim=96,
        n_layers=3,
        n_heads=6,
        n_kv_heads=2,
        vocab_size=101,
        hidden_dim=200,
        max_seq_len=64,
        rope_theta=500000.0,
        norm_eps=1e-5,
    ),
    "tied": ModelArgs(
        dim=64,
        n_layers=2,
        n_heads=8,
        n_kv_heads=4,
        vocab_size=101,
        multiple_of=4,
        max_seq_len=64,
        tie_embeddings=True,
    ),
}
FIELDS = (
    "dim",
    "n_layers",
    "n_heads",
    "kv_heads",
    "ffn_hidden_dim",
    "vocab_size",
    "norm_eps",
    "rope_theta",
    "max_seq_len",
    "tie_embeddings",
)


def _shape(args: ModelArgs) -> tuple:
    return tuple(getattr(args, f) for f in FIELDS)


TOKENS = torch.randint(0, 101, (2, 33), generator=torch.Generator().manual_seed(0))


def _hf_logits(model: LlamaForCausalLM) -> torch.Tensor:
    with torch.no_grad():
        return model(TOKENS).logits.float()


@pytest.mark.parametrize("name", CONFIGS)
def test_pasture_to_hf(name: str, tmp_path: Path) -> None:
    model = Transformer(CONFIGS[name])
    model.init_weights(std=0.15, seed=1)
    model.eval()
    interop.save(Checkpoint.from_model(model), tmp_path / "hf", "hf")
    theirs = LlamaForCausalLM.from_pretrained(tmp_path / "hf", torch_dtype=torch.float32).eval()
    with torch.no_grad():
        ours = model(TOKENS)
    reference = _hf_logits(theirs)
    assert reference.abs().max() > 1.0
    assert (ours - reference).abs().max().item() <= 1e-5


@pytest.mark.parametrize("name", CONFIGS)
def test_hf_to_pasture(name: str, tmp_path: Path) -> None:
    args = CONFIGS[name]
    config = LlamaConfig(**interop.hf.config_from_args(args, torch.float32), initializer_range=0.15)
    torch.manual_seed(2)
    theirs = LlamaForCausalLM(config).eval()
    with torch.no_grad():  # HF initializes norms to one; make them informative
        for name_, p in theirs.named_parameters():
            if "norm" in name_:
                p.uniform_(0.5, 1.5)
    theirs.save_pretrained(tmp_path / "hf")
    ckpt = interop.load(tmp_path / "hf")
    assert ckpt.format == "hf" and _shape(ckpt.args) == _shape(args)
    with torch.no_grad():
        ours = ckpt.to_model()(TOKENS)
    reference = _hf_logits(theirs)
    assert reference.abs().max() > 1.0
    assert (ours - reference).abs().max().item() <= 1e-5


def test_greedy_decoding_matches_hf_generate(tmp_path: Path) -> None:
    from pasture.generate import generate_tokens

    model = Transformer(CONFIGS["gqa"])
    model.init_weights(std=0.3, seed=4)
    interop.save(Checkpoint.from_model(model), tmp_path / "hf", "hf")
    theirs = LlamaForCausalLM.from_pretrained(tmp_path / "hf").eval()
    prompt = TOKENS[0, :9].tolist()
    ours = generate_tokens(model.eval(), [prompt], max_new_tokens=20)[0]
    with torch.no_grad():
        out = theirs.generate(
            torch.tensor([prompt]),
            max_new_tokens=20,
            do_sample=False,
            eos_token_id=None,
            pad_token_id=0,
        )
    assert ours == out[0, len(prompt) :].tolist()
