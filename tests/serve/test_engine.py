"""The continuous-batching engine on stories260K: batching changes no bit of a greedy
sequence, seeded sampling ignores its neighbours, stop strings that span tokens, logprobs
against a cache-free forward, chunked prefill interleaved with decoding, cancellation."""

from __future__ import annotations

import threading
import time

import pytest
import torch
from serve_support import aligned_stories, load_stories, random_model

import pasture
from pasture.errors import PastureError
from pasture.generate import generate, generate_tokens
from pasture.generate.engine import Engine, SamplingParams

PROMPTS = [
    "Once upon a time",
    "Lily and Ben went to the park. They saw a big dog",
    "Tom",
    "The sun was shining and the birds were singing. A little girl named Sue wanted to play "
    "outside with her friends, but her mom said",
    "One day, a cat",
]


def _ids(tokenizer: pasture.Tokenizer) -> list[list[int]]:
    return [tokenizer.encode(p, bos=True) for p in PROMPTS]


def _alone(stories, prompt: list[int], params: SamplingParams, **engine_args) -> tuple:
    engine = Engine(*stories, **engine_args)
    try:
        return engine.submit(prompt, params).result()
    finally:
        engine.close()


@pytest.mark.slow
def test_batched_greedy_sequences_equal_their_runs_alone_bit_for_bit(shared_data) -> None:
    model, tokenizer = aligned_stories(shared_data)
    prompts = _ids(tokenizer)
    lengths = [60, 25, 80, 40, 70]
    params = [SamplingParams(max_tokens=n, temperature=0, logprobs=3) for n in lengths]
    # Three rows for five requests: two wait for a free row; chunks of 4 prompt tokens.
    engine = Engine(model, tokenizer, max_batch=3, prefill_chunk=4)
    try:
        first = engine.submit(prompts[0], params[0])
        next(iter(first))  # it is decoding before the others arrive
        rest = [engine.submit(p, q) for p, q in zip(prompts[1:3], params[1:3], strict=True)]
        time.sleep(0.05)
        rest += [engine.submit(p, q) for p, q in zip(prompts[3:], params[3:], strict=True)]
        batched = [r.result() for r in [first, *rest]]
    finally:
        engine.close()
    assert engine.stats["decode_steps"] < sum(len(b[1]) for b in batched)  # rows did share
    original = load_stories(shared_data)[0]
    reference = generate_tokens(original, prompts, max(lengths), stop_ids=(1, 2))
    for i, (prompt, p) in enumerate(zip(prompts, params, strict=True)):
        alone = _alone(load_copy(model, tokenizer), prompt, p, max_batch=3, prefill_chunk=4)
        assert batched[i] == alone  # text, ids, logprobs (floats, exactly), finish reason
        # Tokens agree with generate's batch decode of the unpadded model (another code path).
        assert batched[i][1] == reference[i][: len(batched[i][1])]
        if batched[i][3] == "length":
            assert len(batched[i][1]) == lengths[i]


def load_copy(model, tokenizer):
    """Another model with the same weights (an engine owns the one it serves)."""
    copy = type(model)(model.args)
    copy.load_state_dict(model.state_dict())
    return copy.eval(), tokenizer


def test_seeded_sampling_does_not_depend_on_the_batch(stories) -> None:
    model, tokenizer = stories
    prompts = _ids(tokenizer)
    params = SamplingParams(max_tokens=40, temperature=1.0, top_p=0.9, top_k=40, seed=1234)
    alone = _alone(load_copy(model, tokenizer), prompts[1], params, max_batch=4)
    engine = Engine(model, tokenizer, max_batch=4)
    try:
        others = [engine.submit(p, SamplingParams(max_tokens=50, temperature=1.0)) for p in prompts]
        ours = engine.submit(prompts[1], params)
        assert ours.result() == alone
        for other in others:
            other.result()
    finally:
        engine.close()
    # A different seed gives a different sample (40 tokens at temperature 1).
    other = _alone(load_copy(model, tokenizer), prompts[1], SamplingParams(40, 1.0, 0.9, 40, 99))
    assert other[1] != alone[1]


@pytest.mark.slow
def test_stop_string_spanning_tokens_is_cut_and_never_emitted(stories) -> None:
    model, tokenizer = stories
    prompt = tokenizer.encode("Once upon a time", bos=True)
    full = generate(load_copy(model, tokenizer)[0], tokenizer, "Once upon a time", 60)
    ids = generate_tokens(load_copy(model, tokenizer)[0], [prompt], 60, stop_ids=(1, 2))[0]
    # A stop string made of the end of one token's text and the start of the next one's.
    pieces = [tokenizer.decode(prompt + ids[: k + 1]) for k in range(len(ids))]
    k = next(k for k in range(5, len(ids) - 1) if len(pieces[k]) - len(pieces[k - 1]) >= 2)
    stop = pieces[k][-2:] + pieces[k + 1][len(pieces[k]) : len(pieces[k]) + 2]
    assert len(stop) == 4
    expected = full[: full.index(stop)]
    engine = Engine(model, tokenizer, max_batch=2)
    try:
        request = engine.submit(prompt, SamplingParams(max_tokens=60, temperature=0, stop=(stop,)))
        deltas = list(request)
    finally:
        engine.close()
    assert "".join(d.text for d in deltas) == expected
    assert deltas[-1].finish_reason == "stop"
    assert all(stop not in d.text for d in deltas)
    assert request.completion_tokens < len(ids)  # it stopped early
    # Text that is a stop string's prefix waits: no delta ends inside the stop string.
    sent = ""
    for d in deltas:
        sent += d.text
        assert expected.startswith(sent)


def test_logprobs_match_a_forward_without_cache(stories) -> None:
    model, tokenizer = stories
    reference_model = load_copy(model, tokenizer)[0]
    prompt = tokenizer.encode("Lily and Ben", bos=True)
    params = SamplingParams(max_tokens=30, temperature=0.7, seed=5, logprobs=5)
    text, ids, logprobs, _ = _alone(stories, prompt, params, max_batch=2, prefill_chunk=3)
    assert "".join(lp.text for lp in logprobs) == text
    with torch.no_grad():
        logits = reference_model(torch.tensor([prompt + ids]))[0]  # (T, vocab), no cache
    expected = torch.log_softmax(logits[len(prompt) - 1 : -1], dim=-1)  # predicts each new id
    for t, (token, entry) in enumerate(zip(ids, logprobs, strict=True)):
        assert entry.token_id == token
        assert entry.logprob == pytest.approx(float(expected[t, token]), abs=1e-4)
        top = expected[t].topk(5)
        assert [i for i, _, _ in entry.top] == top.indices.tolist()
        assert [lp for _, _, lp in entry.top] == pytest.approx(top.values.tolist(), abs=1e-4)


def test_chunked_prefill_interleaves_with_decoding(stories) -> None:
    _, tokenizer = stories
    model = random_model(tokenizer)
    engine = Engine(model, tokenizer, max_batch=2, prefill_chunk=16)
    try:
        running = engine.submit([1, 5, 9], SamplingParams(max_tokens=600, temperature=0))
        stream = iter(running)
        next(stream)
        noise = torch.randint(3, 512, (320,), generator=torch.Generator().manual_seed(0))
        long_prompt = [1, *noise.tolist()]  # 20 chunks of 16 (and one token)
        before = running.completion_tokens
        late = engine.submit(long_prompt, SamplingParams(max_tokens=5, temperature=0))
        next(iter(late))  # its first token: after its last prefill chunk
        during = running.completion_tokens - before
        assert late.result()[3] == "length"
        running.cancel()
        assert list(stream)[-1].finish_reason == "cancelled"
    finally:
        engine.close()
    # One decode step ran between consecutive chunks: the running request kept decoding.
    assert during >= 19


def test_cancel_frees_the_row_for_the_next_request(stories) -> None:
    _, tokenizer = stories
    engine = Engine(random_model(tokenizer), tokenizer, max_batch=1)
    try:
        long = engine.submit([1, 7], SamplingParams(max_tokens=1000, temperature=0))
        queued = engine.submit([1, 8], SamplingParams(max_tokens=1000, temperature=0))
        next(iter(long))
        queued.cancel()
        threading.Timer(0.05, long.cancel).start()
        assert long.result()[3] == "cancelled"
        assert queued.result()[3] == "cancelled"
        assert long.completion_tokens < 1000
        quick = engine.submit([1, 9], SamplingParams(max_tokens=4, temperature=0))
        assert quick.result()[3] == "length"
        assert engine.finished == {"cancelled": 2, "length": 1}
        assert engine.running == 0 and engine.waiting == 0
    finally:
        engine.close()


def test_bad_requests_are_one_line_errors(stories) -> None:
    model, tokenizer = stories
    with pytest.raises(PastureError, match="max_tokens must be at least 0"):
        SamplingParams(max_tokens=-1)
    with pytest.raises(PastureError, match="temperature"):
        SamplingParams(temperature=float("nan"))
    with pytest.raises(PastureError, match="stop"):
        SamplingParams(stop=("",))
    with pytest.raises(PastureError, match="logprobs"):
        SamplingParams(logprobs=21)
    huge = random_model(tokenizer, max_seq_len=2**24)  # a context no memory holds 1,024 times
    with pytest.raises(PastureError, match="lower max_batch or max_seq_len"):
        Engine(huge, tokenizer, max_batch=1024)
    engine = Engine(model, tokenizer, max_batch=1)
    try:
        with pytest.raises(PastureError, match="maximum context length is 512"):
            engine.submit([1] * 500, SamplingParams(max_tokens=13))
        with pytest.raises(PastureError, match="empty"):
            engine.submit([], SamplingParams())
        with pytest.raises(PastureError, match=r"0\.\.511"):
            engine.submit([1, 512], SamplingParams())
        assert engine.submit([1] * 500, SamplingParams(max_tokens=12, temperature=0)).result()
    finally:
        engine.close()


def test_decode_step_compiles_whole_and_gives_the_same_tokens(stories) -> None:
    """compile="eager" traces the engine's decode step with fullgraph=True (no graph break, no
    host sync: what CUDA graphs need on a GPU, where compile="inductor" captures it) and must
    give the eager engine's greedy tokens."""
    prompt = stories[1].encode(PROMPTS[1], bos=True)
    params = SamplingParams(max_tokens=12, temperature=0)
    eager = _alone(load_copy(*stories), prompt, params, max_batch=2)
    traced = _alone(load_copy(*stories), prompt, params, max_batch=2, compile="eager")
    assert traced == eager
    with pytest.raises(PastureError, match="compile = 'fast'"):
        Engine(*load_copy(*stories), compile="fast")
