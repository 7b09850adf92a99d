"""Text generation: prefill the prompt, then decode one token at a time from the KV cache.

    >>> from pasture import load_model, generate
    >>> model, tokenizer = load_model("stories260K.bin", tokenizer="tok512.model")
    >>> generate(model, tokenizer, "Once upon a time", max_new_tokens=50)

Prompts of different lengths decode together as in Meta's reference: the batch is prefilled up
to the shortest prompt, and at each later position a row still inside its prompt takes its
prompt token instead of the sampled one. Positions stay shared, so no padding mask is needed.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Sequence
from typing import Protocol

import torch
from torch import nn

from ..errors import PastureError
from ..model import Transformer
from .cache import DecodeCache, check_memory
from .sampling import sample


class TokenizerLike(Protocol):
    bos_id: int
    eos_id: int

    def encode(self, text: str, bos: bool = False, eos: bool = False) -> list[int]: ...
    def decode(self, ids: Sequence[int]) -> str: ...


def use_decode_layout(model: nn.Module) -> None:
    """Store each linear weight column-major (same values, same shapes, other strides).

    Decoding multiplies one row vector by every weight matrix. On CPU, MKL streams a (in, out)
    contiguous matrix 2-4x faster than Meta's (out, in) rows for that product (measured in
    benchmarks/RESULTS.md), and decode time is those products. Idempotent; checkpoints written
    afterwards are unchanged (writers make tensors contiguous).
    """
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.Linear) and module.weight.stride(-1) == 1:
                module.weight.data = module.weight.data.t().contiguous().t()


@torch.inference_mode()
def generate_tokens(
    model: Transformer,
    prompts: Sequence[Sequence[int]],
    max_new_tokens: int,
    temperature: float = 0.0,
    top_p: float = 1.0,
    top_k: int = 0,
    seed: int | None = None,
    stop_ids: Sequence[int] = (),
    on_token: Callable[[int, int], bool | None] | None = None,
    sampler: Callable[[torch.Tensor], torch.Tensor] | None = None,
    decode_layout: bool = True,
) -> list[list[int]]:
    """New tokens for each prompt (token ids), without the prompt and without the stop token.

    ``on_token(row, token)`` is called as each new token is chosen (for streaming); if it
    returns True that row stops after this token (e.g. a stop string appeared in its text).
    ``sampler`` (logits (B, vocab) → tokens (B,)) replaces temperature/top-p/top-k/seed, e.g.
    ``Llama2cSampler`` to reproduce llama2.c's ``run.c``.

    With ``decode_layout`` (the default) a CPU model's linear weights are first stored
    column-major (``use_decode_layout``: same values and shapes, other strides; 2-4x faster
    decoding, and it stays so afterwards); ``decode_layout=False`` leaves the model's
    strides alone. The model gets a ``DecodeCache`` for the call and none after it.
    """
    max_new_tokens = _check_request(prompts, max_new_tokens, model.args.max_seq_len)
    if max_new_tokens == 0:
        return [[] for _ in prompts]
    lengths = [len(p) for p in prompts]
    total = min(model.args.max_seq_len, max(lengths) + max_new_tokens)
    B = len(prompts)
    device = model.tok_embeddings.weight.device
    check_memory(model, B, total)
    if decode_layout and device.type == "cpu":
        use_decode_layout(model)
    tokens = torch.zeros((B, total), dtype=torch.long, device=device)
    in_prompt = torch.zeros((B, total), dtype=torch.bool, device=device)
    for row, prompt in enumerate(prompts):
        tokens[row, : len(prompt)] = torch.tensor(prompt, dtype=torch.long)
        in_prompt[row, : len(prompt)] = True
    limit = torch.tensor([n + max_new_tokens for n in lengths], device=device)  # (B,)
    ends = [n + max_new_tokens for n in lengths]  # where each row's output ends
    stop_set = set(stop_ids)
    stop = torch.tensor(sorted(stop_set), dtype=torch.long, device=device)
    done = torch.zeros(B, dtype=torch.bool, device=device)
    generator = None
    if seed is not None:
        generator = torch.Generator(device=device).manual_seed(seed)
    model.setup_cache(B, total, DecodeCache)
    try:
        prev = 0
        for cur in range(min(lengths), total):
            h = model.hidden(tokens[:, prev:cur], start_pos=prev)  # (B, cur - prev, dim)
            logits = model.logits(h[:, -1])  # (B, vocab): the projection for the last only
            if sampler is not None:
                chosen = sampler(logits).to(device)  # (B,)
            else:
                chosen = sample(logits, temperature, top_p, top_k, generator)  # (B,)
            chosen = torch.where(in_prompt[:, cur], tokens[:, cur], chosen)
            tokens[:, cur] = chosen
            new = ~in_prompt[:, cur] & ~done
            if on_token is not None:
                for row in new.nonzero().flatten().tolist():
                    if int(chosen[row]) not in stop_set and on_token(row, int(chosen[row])):
                        done[row], ends[row] = True, cur + 1
            done |= new & torch.isin(chosen, stop)
            done |= cur + 1 >= limit
            prev = cur
            if bool(done.all()):
                break
    finally:
        model.clear_cache()
    return [
        _until_stop(tokens[row, n : min(cur + 1, ends[row])].tolist(), stop_set)
        for row, n in enumerate(lengths)
    ]


def _check_request(prompts: Sequence[Sequence[int]], max_new_tokens: object, context: int) -> int:
    """``max_new_tokens`` as an int, once the request is known to fit the model's context."""
    if not prompts or any(len(p) == 0 for p in prompts):
        raise ValueError("every prompt needs at least one token (begin with BOS)")
    if isinstance(max_new_tokens, bool) or not hasattr(max_new_tokens, "__index__"):
        raise PastureError(f"max_new_tokens must be an integer, got {max_new_tokens!r}")
    max_new_tokens = operator.index(max_new_tokens)
    if max_new_tokens < 0:
        raise PastureError(f"max_new_tokens {max_new_tokens} is negative")
    longest = max(len(p) for p in prompts)
    if max_new_tokens and longest >= context:
        raise PastureError(
            f"a prompt of {longest:,} tokens leaves no room in the model's context of "
            f"{context:,} tokens (max_seq_len); shorten it"
        )
    return max_new_tokens


def _until_stop(out: list[int], stop_set: set[int]) -> list[int]:
    """``out`` up to (without) its first stop token."""
    for i, token in enumerate(out):
        if token in stop_set:
            return out[:i]
    return out


class StreamDecoder:
    """Text of tokens as they arrive. SentencePiece pieces carry their leading space and byte
    pieces may split a character, so we decode prompt + new tokens and emit the difference,
    holding back an incomplete UTF-8 character."""

    def __init__(self, tokenizer: TokenizerLike, prompt: Sequence[int]) -> None:
        self.tokenizer, self.ids = tokenizer, list(prompt)
        self.emitted = tokenizer.decode(self.ids)

    def push(self, token: int) -> str:
        self.ids.append(token)
        text = self.tokenizer.decode(self.ids)
        if text.endswith("\ufffd"):
            return ""
        new, self.emitted = text[len(self.emitted) :], text
        return new


def generate(
    model: Transformer,
    tokenizer: TokenizerLike,
    prompts: str | Sequence[str],
    max_new_tokens: int = 256,
    temperature: float = 0.0,
    top_p: float = 1.0,
    top_k: int = 0,
    seed: int | None = None,
    stream: Callable[[str], None] | None = None,
    sampler: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> str | list[str]:
    """Continue each prompt; returns the new text (one string for one prompt).

    Generation stops at EOS or BOS (a new document) or after ``max_new_tokens``. ``stream``
    receives text fragments of the first prompt's continuation as they are produced. On CPU the
    model's weights are re-strided for decoding first (``generate_tokens``' ``decode_layout``).
    """
    single = isinstance(prompts, str)
    texts = [prompts] if single else list(prompts)
    encoded = [tokenizer.encode(t, bos=True) for t in texts]
    decoder = StreamDecoder(tokenizer, encoded[0]) if stream else None

    def on_token(row: int, token: int) -> None:
        if decoder is not None and row == 0:
            fragment = decoder.push(token)
            if fragment:
                stream(fragment)

    new = generate_tokens(
        model,
        encoded,
        max_new_tokens,
        temperature,
        top_p,
        top_k,
        seed,
        stop_ids=(tokenizer.eos_id, tokenizer.bos_id),
        on_token=on_token if stream else None,
        sampler=sampler,
    )
    outs = []
    for prompt, continuation in zip(encoded, new, strict=True):
        # Decode with the prompt so the first new piece keeps its leading space.
        full, prefix = tokenizer.decode(prompt + continuation), tokenizer.decode(prompt)
        outs.append(
            full[len(prefix) :] if full.startswith(prefix) else tokenizer.decode(continuation)
        )
    return outs[0] if single else outs
