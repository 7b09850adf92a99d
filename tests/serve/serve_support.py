"""Models for the engine and server tests: stories260K (a real trained model, llama2.c's
tinyllamas) loaded through pasture.interop, the same padded to widths of 64, and a random
model that never stops."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch

import pasture
from pasture.model import ModelArgs, Transformer


def load_stories(shared_data: Path) -> tuple[Transformer, pasture.Tokenizer]:
    """A fresh copy each call: an engine installs its cache in the model it serves."""
    folder = shared_data / "models" / "stories260K"
    return pasture.load_model(folder / "stories260K.bin", tokenizer=folder / "tok512.model")


def aligned_stories(shared_data: Path) -> tuple[Transformer, pasture.Tokenizer]:
    """stories260K with its SwiGLU width padded from 172 to 192 with zeros: the same function,
    every row width a multiple of 64. CPU elementwise kernels (SiLU's) run vector code over
    whole blocks of 2 x SIMD width and scalar code over the rest, which rounds differently; only
    with such widths (every LLaMA size has them) does a row's arithmetic not depend on where it
    sits in a batch."""
    model, tokenizer = load_stories(shared_data)
    args = dataclasses.replace(model.args, hidden_dim=192)
    padded = Transformer(args)
    state = model.state_dict()
    for name, tensor in state.items():
        if name.endswith(("w1.weight", "w3.weight")):
            state[name] = torch.cat([tensor, tensor.new_zeros(20, tensor.shape[1])])
        elif name.endswith("w2.weight"):
            state[name] = torch.cat([tensor, tensor.new_zeros(tensor.shape[0], 20)], dim=1)
    padded.load_state_dict(state)
    return padded.eval(), tokenizer


def random_model(
    tokenizer: pasture.Tokenizer, dim: int = 64, n_layers: int = 2, max_seq_len: int = 1024
) -> Transformer:
    """A random model over stories260K's vocabulary whose BOS and EOS logits are 0, far below
    the largest of the others: greedy, it never stops before max_tokens, so its generations
    last as long as a test needs."""
    args = ModelArgs(dim=dim, n_layers=n_layers, n_heads=4, vocab_size=512, max_seq_len=max_seq_len)
    model = Transformer(args)
    model.init_weights(std=0.2, seed=0)
    with torch.no_grad():
        model.output.weight[[tokenizer.bos_id, tokenizer.eos_id]] = 0.0
    return model.eval()
