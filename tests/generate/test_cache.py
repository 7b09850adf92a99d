"""The KV caches of generate/: the per-row StaticCache and the batch DecodeCache, each against
the same sequences run through the model without any cache."""

from __future__ import annotations

import pytest
import torch

from pasture.errors import PastureError
from pasture.generate import DecodeCache, StaticCache
from pasture.model import ModelArgs, Transformer

VOCAB = 97


def _model(n_kv_heads: int | None = 2) -> Transformer:
    args = ModelArgs(
        dim=64,
        n_layers=2,
        n_heads=4,
        n_kv_heads=n_kv_heads,
        vocab_size=VOCAB,
        multiple_of=16,
        max_seq_len=64,
    )
    model = Transformer(args)
    model.init_weights(std=0.2, seed=0)
    return model.eval()


def _alone(model: Transformer, sequence: list[int]) -> torch.Tensor:
    """Next-token logits after ``sequence``, no cache: the reference."""
    assert model.layers[0].attention.cache is None
    return model(torch.tensor([sequence]))[0, -1]  # (vocab,)


def _greedy_alone(model: Transformer, prompt: list[int], n: int) -> list[int]:
    sequence = list(prompt)
    for _ in range(n):
        sequence.append(int(_alone(model, sequence).argmax()))
    return sequence[len(prompt) :]


def _prefill(cache: StaticCache, model: Transformer, row: int, prompt: list[int]) -> torch.Tensor:
    """Prompt into cache row ``row`` in chunks of 4; the logits after its last token."""
    cache.select(torch.tensor([row]))
    for start in range(0, len(prompt), 4):
        chunk = torch.tensor([prompt[start : start + 4]])  # (1, chunk)
        h = model.hidden(chunk, positions=torch.arange(start, start + chunk.shape[1])[None])
    return model.logits(h[0, -1])


@pytest.mark.parametrize("n_kv_heads", [None, 2])
@torch.no_grad()
def test_rows_decode_as_if_alone(n_kv_heads: int | None) -> None:
    model = _model(n_kv_heads)
    g = torch.Generator().manual_seed(1)
    prompts = [torch.randint(0, VOCAB, (n,), generator=g).tolist() for n in (9, 2, 6)]
    steps = 7
    expected = [_greedy_alone(model, p, steps) for p in prompts]
    sequences = [list(p) for p in prompts]

    with StaticCache(model, batch_size=3, max_seq_len=32) as cache:
        last = torch.stack([_prefill(cache, model, r, p) for r, p in enumerate(prompts)])
        cache.select(None)
        for _ in range(steps):
            chosen = last.argmax(-1)  # (3,) greedy
            for r in range(3):
                sequences[r].append(int(chosen[r]))
            positions = torch.tensor([[len(s) - 1] for s in sequences])  # (3, 1): per row
            h = model.hidden(chosen[:, None], positions=positions)  # (3, 1, dim)
            last = model.logits(h[:, -1])  # (3, vocab)
            for r in range(3):
                torch.testing.assert_close(
                    last[r], _with_cache_off(cache, model, sequences[r]), atol=1e-5, rtol=0
                )
    assert [s[len(p) :] for s, p in zip(sequences, prompts, strict=True)] == [
        e[:steps] for e in expected
    ]
    assert all(layer.attention.cache is None for layer in model.layers)


def _with_cache_off(cache: StaticCache, model: Transformer, sequence: list[int]) -> torch.Tensor:
    """The reference for one row, run with the cache uninstalled (and put back)."""
    installed = [layer.attention.cache for layer in model.layers]
    cache.close()
    try:
        return _alone(model, sequence)
    finally:
        for layer, c in zip(model.layers, installed, strict=True):
            layer.attention.cache = c


@torch.no_grad()
def test_a_reused_row_restarts_at_position_zero() -> None:
    model = _model()
    g = torch.Generator().manual_seed(2)
    long, short, other = (torch.randint(0, VOCAB, (n,), generator=g).tolist() for n in (20, 5, 11))
    with StaticCache(model, batch_size=2, max_seq_len=32) as cache:
        _prefill(cache, model, 0, long)  # leaves keys at positions 0..19 of row 0
        _prefill(cache, model, 1, other)
        got = _prefill(cache, model, 0, short)  # a new request in row 0: 5..19 are stale
        # One decode step for both rows: row 1 must be untouched by row 0's reuse.
        cache.select(None)
        tokens = torch.tensor([[3], [4]])
        h = model.hidden(tokens, positions=torch.tensor([[len(short)], [len(other)]]))
        step = model.logits(h[:, -1])
    torch.testing.assert_close(got, _alone(model, short), atol=1e-5, rtol=0)
    torch.testing.assert_close(step[0], _alone(model, [*short, 3]), atol=1e-5, rtol=0)
    torch.testing.assert_close(step[1], _alone(model, [*other, 4]), atol=1e-5, rtol=0)


@torch.no_grad()
def test_decode_step_traces_as_one_graph() -> None:
    """The fixed-shape step has no graph break or host sync, so CUDA graphs can capture it."""
    model = _model()
    prompts = [[5, 6, 7], [8]]
    with StaticCache(model, batch_size=2, max_seq_len=16) as cache:
        for r, p in enumerate(prompts):
            _prefill(cache, model, r, p)
        cache.select(None)

        def step(tokens: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
            return model.logits(model.hidden(tokens, positions=positions)[:, -1])

        compiled = torch.compile(step, backend="eager", fullgraph=True)
        out = compiled(torch.tensor([[9], [10]]), torch.tensor([[3], [1]]))
    torch.testing.assert_close(out[0], _alone(model, [5, 6, 7, 9]), atol=1e-5, rtol=0)
    torch.testing.assert_close(out[1], _alone(model, [8, 10]), atol=1e-5, rtol=0)


@torch.no_grad()
def test_static_cache_refuses_what_it_cannot_do() -> None:
    model = _model()
    with StaticCache(model, batch_size=2, max_seq_len=8) as cache:
        with pytest.raises(ValueError, match=r"rows must be in 0\.\.1"):
            cache.select(torch.tensor([2]))
        with pytest.raises(ValueError, match="distinct"):
            cache.select(torch.tensor([1, 1]))
        cache.select(torch.tensor([1]))
        with pytest.raises(ValueError, match="2 rows of tokens for 1 selected"):
            model.hidden(torch.tensor([[1], [2]]), positions=torch.tensor([[0], [0]]))
        with pytest.raises(ValueError, match=r"positions must be in 0\.\.7"):
            model.hidden(torch.tensor([[1]]), positions=torch.tensor([[8]]))
        with pytest.raises(ValueError, match="not a mask"):
            model.hidden(torch.tensor([[1]]), mask=torch.ones(1, 1, 1, dtype=torch.bool))
    assert all(layer.attention.cache is None for layer in model.layers)


@torch.no_grad()
def test_decode_cache_matches_the_full_forward() -> None:
    model = _model()
    tokens = torch.randint(0, VOCAB, (2, 12), generator=torch.Generator().manual_seed(3))
    full = model(tokens)  # (2, 12, vocab)
    caches = model.setup_cache(2, 16, DecodeCache)
    try:
        steps = [model(tokens[:, :5])]
        steps += [model(tokens[:, t : t + 1], start_pos=t) for t in range(5, 12)]
    finally:
        model.clear_cache()
    assert all(isinstance(c, DecodeCache) for c in caches)
    assert full.abs().max() > 1.0
    torch.testing.assert_close(torch.cat(steps, dim=1), full, atol=1e-5, rtol=0)


def test_a_static_cache_memory_cannot_hold_is_refused_before_allocating() -> None:
    args = ModelArgs(dim=64, n_layers=2, n_heads=4, vocab_size=VOCAB, max_seq_len=2**24)
    model = Transformer(args)  # claims 16M positions: 4096 rows of them are ~64 TiB
    with pytest.raises(PastureError, match="GiB for the KV cache.*lower batch_size or max_seq_len"):
        StaticCache(model, batch_size=4096)
    assert all(layer.attention.cache is None for layer in model.layers)
