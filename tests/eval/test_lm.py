"""The model contract on a real model (stories260K): packed scoring against plain forwards."""

from __future__ import annotations

import pytest
import torch

from pasture import load_model
from pasture.eval import GenerationRequest, PastureLM, Sampling
from pasture.eval.lm import padded

REQUESTS = [
    ("Once upon a time, there was a little girl", " named Lily."),
    ("Once upon a time, there was a little girl", " who liked cats."),
    ("Once upon a time, there was a little girl", " in a big park and she played all day"),
    ("The dog ran ", "fast."),  # trailing space moves to the continuation
    ("Tom said", " hello"),
    ("", "Once upon a time"),
]


@pytest.fixture(scope="module")
def model_and_tokenizer(shared_data):
    d = shared_data / "models" / "stories260K"
    return load_model(d / "stories260K.bin", tokenizer=d / "tok512.model")


def reference(model, lm: PastureLM, context: str, continuation: str) -> tuple[float, bool]:
    """One plain causal forward over context + continuation, summed in float64."""
    ctx, cont = lm.encode_pair(context, continuation)
    with torch.no_grad():
        logprobs = torch.log_softmax(model(torch.tensor([ctx + cont])).double(), -1)[0]
    rows = logprobs[len(ctx) - 1 : len(ctx) - 1 + len(cont)]
    score = float(sum(rows[i, t] for i, t in enumerate(cont)))
    greedy = all(int(rows[i].argmax()) == t for i, t in enumerate(cont))
    return score, greedy


def test_packed_rows_equal_separate_forwards(model_and_tokenizer):
    model, tok = model_and_tokenizer
    lm = PastureLM(model, tok, batch_size=4, progress=False)
    got = lm.loglikelihood(REQUESTS)
    for (context, continuation), (score, greedy) in zip(REQUESTS, got, strict=True):
        want_score, want_greedy = reference(model, lm, context, continuation)
        assert score == pytest.approx(want_score, abs=1e-4)
        assert greedy == want_greedy
    assert any(g for _, g in got) and not all(g for _, g in got)


def test_requests_sharing_a_context_share_one_row(model_and_tokenizer):
    model, tok = model_and_tokenizer
    lm = PastureLM(model, tok, progress=False)
    rows = lm._pack([lm.encode_pair(c, x) for c, x in REQUESTS])
    assert len(rows) == 4  # the three "little girl" continuations ride on one context
    assert [i for i, _ in rows[0].continuations] == [0, 1, 2]


def test_batch_size_changes_nothing(model_and_tokenizer):
    model, tok = model_and_tokenizer
    requests = REQUESTS * 3 + [(c + " and", x) for c, x in REQUESTS]
    results = {
        bs: PastureLM(model, tok, batch_size=bs, progress=False).loglikelihood(requests)
        for bs in (1, 3, 16)
    }
    assert results[1] == results[3] == results[16]  # to the last bit


def test_context_longer_than_the_window_keeps_its_end(model_and_tokenizer):
    model, tok = model_and_tokenizer
    lm = PastureLM(model, tok, max_length=24, progress=False)
    context, continuation = "Once upon a time " * 10, " there was a cat."
    ((score, _),) = lm.loglikelihood([(context, continuation)])
    ctx, cont = lm.encode_pair(context, continuation)
    window = (ctx + cont)[-25:]
    with torch.no_grad():
        logprobs = torch.log_softmax(model(torch.tensor([window[:-1]])).double(), -1)[0]
    want = sum(float(logprobs[24 - len(cont) + i, t]) for i, t in enumerate(cont))
    assert score == pytest.approx(want, abs=1e-4)


def test_rolling_loglikelihood_sums_every_token(model_and_tokenizer):
    model, tok = model_and_tokenizer
    text = "Once upon a time, there was a little girl named Lily. She liked to play outside."
    ids = [tok.bos_id, *tok.encode(text)]
    with torch.no_grad():
        logprobs = torch.log_softmax(model(torch.tensor([ids[:-1]])).double(), -1)[0]
    want = sum(float(logprobs[i, t]) for i, t in enumerate(ids[1:]))
    whole = PastureLM(model, tok, progress=False).loglikelihood_rolling([text])[0]
    assert whole == pytest.approx(want, abs=1e-4)
    # Windows shorter than the text: every token still counted exactly once.
    windowed = PastureLM(model, tok, max_length=8, progress=False).loglikelihood_rolling([text])
    assert windowed[0] < 0 and windowed[0] != pytest.approx(want, abs=1e-3)
    assert len(ids) > 16


@pytest.mark.slow
def test_generate_until_cuts_at_the_first_stop_string(model_and_tokenizer):
    model, tok = model_and_tokenizer
    lm = PastureLM(model, tok, progress=False)
    free = lm.generate_until([GenerationRequest("Once upon a time", (), Sampling(40))])[0]
    assert "." in free
    cut = lm.generate_until([GenerationRequest("Once upon a time", (".",), Sampling(40))])[0]
    assert cut == free[: free.index(".")]


@pytest.mark.slow
def test_sampled_generation_does_not_depend_on_the_batch(model_and_tokenizer):
    model, tok = model_and_tokenizer
    requests = [
        GenerationRequest(p, ("\n",), Sampling(20, temperature=0.8, top_p=0.95, seed=s))
        for p in ("Lily and Tom went to the park", "The cat", "One day, a big dog")
        for s in (1, 2)
    ]
    outs = {
        bs: PastureLM(model, tok, batch_size=bs, progress=False).generate_until(requests)
        for bs in (1, 3)
    }
    assert outs[1] == outs[3]
    assert outs[1][0] != outs[1][1]  # another seed, another sample


def test_padded_lengths_depend_on_the_row_only():
    assert [padded(n) for n in (1, 16, 17, 33)] == [16, 16, 32, 48]


def _windowed_reference(model, ids: list[int], start: int, window: int, piece: int) -> float:
    """log P(ids[start:]) predicted ``piece`` tokens at a time, each conditioned on the (at most
    ``window``) tokens before it: plain forwards, summed in float64."""
    total = 0.0
    for s in range(start, len(ids), piece):
        e = min(s + piece, len(ids))
        inputs = ids[max(0, e - 1 - window) : e - 1]
        with torch.no_grad():
            logprobs = torch.log_softmax(model(torch.tensor([inputs])).double(), -1)[0]
        offset = len(inputs) - (e - s)
        total += sum(float(logprobs[offset + i, t]) for i, t in enumerate(ids[s:e]))
    return total


def test_requests_longer_than_the_whole_window(model_and_tokenizer):
    model, tok = model_and_tokenizer
    lm = PastureLM(model, tok, progress=False)  # the model's own window: 512 tokens
    context = "Once upon a time, there was a little girl named Lily. " * 40
    ((score, _),) = lm.loglikelihood([(context, " She liked to play.")])
    ctx, cont = lm.encode_pair(context, " She liked to play.")
    assert len(ctx) > 512
    assert score == pytest.approx(
        _windowed_reference(model, ctx + cont, len(ctx), 512, 99), abs=1e-4
    )
    # A continuation longer than the window: scored in rolling pieces of half a window.
    small = PastureLM(model, tok, max_length=24, progress=False)
    story = "Tom and Lily went to the park. They saw a big dog and a red ball. The dog ran."
    ((score, _),) = small.loglikelihood([("Once upon a time", " " + story)])
    ctx, cont = small.encode_pair("Once upon a time", " " + story)
    assert len(cont) > 24
    want = _windowed_reference(model, ctx + cont, len(ctx), 24, 12)
    assert score == pytest.approx(want, abs=1e-4)


def test_a_shared_few_shot_prefix_is_computed_once(model_and_tokenizer, monkeypatch):
    import pasture.eval.lm as lm_module

    model, tok = model_and_tokenizer
    shots = "Lily had a red ball. She liked to play with it in the park every day. " * 4
    requests = [
        (shots + f"Tom had a {thing}.", cont)
        for thing in ("dog", "big box", "cat who sat on the mat")
        for cont in (" He was happy.", " He", " It was sad and small.")
    ]
    lm = PastureLM(model, tok, batch_size=4, progress=False)
    rows = lm._pack([lm.encode_pair(c, x) for c, x in requests])
    ((prefix, members),) = lm_module.shared_prefixes(rows)
    assert len(members) == 3 and len(prefix) >= lm_module.MIN_SHARED_PREFIX
    shared = {
        bs: PastureLM(model, tok, batch_size=bs, progress=False).loglikelihood(requests)
        for bs in (1, 3)
    }
    assert shared[1] == shared[3]
    for (context, continuation), (score, greedy) in zip(requests, shared[1], strict=True):
        want, want_greedy = reference(model, lm, context, continuation)
        assert score == pytest.approx(want, abs=1e-4) and greedy == want_greedy


@pytest.mark.slow
def test_a_shared_prefix_at_the_end_of_the_window_changes_nothing(model_and_tokenizer):
    """Contexts that fill the window after a long shared prefix (BoolQ's passages, MMLU's five
    shots on a small model): the rows after the prefix were cut to a few tokens by the window,
    and MKL multiplies fewer than 16 rows with another kernel, so batch sizes 1 and 7 differed
    in the last bits. The cached prefix now stops where every row keeps 16 positions."""
    import pasture.eval.lm as lm_module

    model, tok = model_and_tokenizer
    window = model.args.max_seq_len
    story = "Lily had a red ball. She liked to play with it in the park every day. "
    shots = story * (window // len(tok.encode(story)))
    while len(tok.encode(shots + "Tom had a cat.", bos=True)) > window - 4:
        shots = shots[shots.index(".") + 2 :]
    requests = [
        (shots + f"Tom had a {thing}.", cont)
        for thing in ("dog", "cat", "box")
        for cont in (" He was happy.", " It was sad.")
    ]
    lm = PastureLM(model, tok, progress=False)
    rows = lm._pack([lm.encode_pair(c, x) for c, x in requests])
    ((prefix, members),) = lm_module.shared_prefixes(rows)
    assert len(members) >= 3 and max(len(r) for r in members) > window - 16 < len(prefix)
    got = {
        bs: PastureLM(model, tok, batch_size=bs, progress=False).loglikelihood(requests)
        for bs in (1, 2, 7)
    }
    assert got[1] == got[2] == got[7]
    for (context, continuation), (score, greedy) in zip(requests, got[1], strict=True):
        want, want_greedy = reference(model, lm, context, continuation)
        assert score == pytest.approx(want, rel=1e-5) and greedy == want_greedy
