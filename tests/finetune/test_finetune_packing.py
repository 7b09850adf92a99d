"""Loss on responses only, per token over the whole step: masked tokens get exactly zero
gradient; packed rows (block-causal mask, positions restarting per example), padded rows and
micro-batches all give the loss and gradients of the examples computed one by one."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch

from pasture.data.tokenizer import Tokenizer
from pasture.finetune.loss import (
    finetune_step,
    logits_of,
    response_loss,
    response_loss_sum,
    summed_loss,
    trimmed,
)
from pasture.finetune.packing import IGNORE, TokenSequence, batches, collate, pack, tokenize
from pasture.finetune.template import DEFAULT_TEMPLATE, encode_chat
from pasture.model import ModelArgs, Transformer

VOCAB = 97


def _model(seed: int = 0) -> Transformer:
    torch.manual_seed(seed)
    args = ModelArgs(
        dim=32,
        n_layers=2,
        n_heads=4,
        n_kv_heads=2,
        vocab_size=VOCAB,
        multiple_of=16,
        max_seq_len=64,
    )
    model = Transformer(args)
    model.init_weights(std=0.1, seed=seed)
    return model


def _sequences(n: int, seed: int = 0) -> list[TokenSequence]:
    """Random chats: a prompt of 2..9 tokens (IGNORE labels) then a response of 1..6 tokens."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        prompt, response = rng.randint(2, 9), rng.randint(1, 6)
        tokens = [rng.randrange(3, VOCAB) for _ in range(prompt + response)]
        out.append(TokenSequence(tokens, [IGNORE] * prompt + tokens[prompt:]))
    return out


def _reference_loss(model: Transformer, seqs: list[TokenSequence]) -> torch.Tensor:
    """Each example alone through the model; -log p of each response token, summed, divided by
    the number of response tokens of all examples (computed without the package's code)."""
    total, count = torch.zeros(()), 0
    for seq in seqs:
        logp = torch.log_softmax(model(torch.tensor([seq.tokens[:-1]]))[0].float(), -1)
        for t, label in enumerate(seq.labels[1:]):
            if label != IGNORE:
                total = total - logp[t, label]
                count += 1
    return total / count


def _grads(model: Transformer) -> dict[str, torch.Tensor]:
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad(set_to_none=True)
    return grads


@pytest.mark.parametrize("packed", [False, True])
def test_masked_positions_get_exactly_zero_gradient(packed: bool) -> None:
    model = _model()
    seqs = _sequences(6)
    (batch,) = batches(seqs, seq_len=48, rows_per_batch=8, packed=packed)
    assert (batch.mask is not None) == packed
    logits = logits_of(model, batch)
    logits.retain_grad()
    summed_loss(logits, batch.targets).backward()
    masked = batch.targets == IGNORE
    assert masked.any() and (~masked).any()
    assert torch.count_nonzero(logits.grad[masked]) == 0  # exactly zero, not just small
    assert (logits.grad[~masked].abs().sum(-1) > 0).all()
    assert batch.trained_tokens == sum(s.trained for s in seqs)


def test_packed_and_padded_match_examples_one_by_one() -> None:
    model = _model(1)
    seqs = _sequences(9, seed=1)
    reference = _reference_loss(model, seqs)
    reference.backward()
    expected = _grads(model)
    total = sum(s.trained for s in seqs)
    for packed in (False, True):
        loss = sum(
            summed_loss(logits_of(model, b), b.targets)
            for b in batches(seqs, seq_len=40, rows_per_batch=3, packed=packed)
        )
        (loss / total).backward()
        assert torch.allclose(loss / total, reference, rtol=0, atol=1e-5)
        for name, grad in _grads(model).items():
            assert torch.allclose(grad, expected[name], rtol=0, atol=1e-5), name
    packed_batches = batches(seqs, seq_len=40, rows_per_batch=3, packed=True)
    assert sum(b.inputs.shape[0] for b in packed_batches) < len(seqs)  # really packed
    assert abs(response_loss(model, packed_batches) - reference.item()) < 1e-5


@pytest.mark.parametrize("packed", [False, True])
def test_the_step_s_loss_scores_trained_positions_only_and_changes_nothing(packed: bool) -> None:
    """``finetune_step``'s loss drops trailing untrained columns and projects only trained
    positions onto the vocabulary: the loss and every gradient are the full forward's."""
    model = _model(3)
    seqs = _sequences(7, seed=3)
    (batch,) = batches(seqs, seq_len=60, rows_per_batch=8, packed=packed)
    short = trimmed(batch)
    assert short.inputs.shape[1] < batch.inputs.shape[1]  # padding to 60 really dropped
    assert short.trained_tokens == batch.trained_tokens
    assert (short.targets[:, -1] != IGNORE).any()  # and no trained column
    full = summed_loss(logits_of(model, batch), batch.targets) / batch.trained_tokens
    full.backward()
    expected = _grads(model)
    fast = response_loss_sum(model, batch) / batch.trained_tokens
    fast.backward()
    assert torch.allclose(fast, full, rtol=0, atol=1e-5)
    for name, grad in _grads(model).items():
        assert torch.allclose(grad, expected[name], rtol=0, atol=1e-6), name


def test_the_step_is_normalized_by_all_its_micro_batches() -> None:
    """SGD at lr 1 without clipping moves each weight by minus its gradient: one step over
    micro-batches of unequal response counts moves the weights as the whole batch at once."""
    seqs = _sequences(8, seed=2)
    moved = []
    for split in ([8], [1, 7], [5, 3]):
        model = _model(2)
        before = {n: p.detach().clone() for n, p in model.named_parameters()}
        optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
        micro, start = [], 0
        for size in split:
            micro += batches(seqs[start : start + size], 40, rows_per_batch=8)
            start += size
        loss, norm, stepped = finetune_step(model, optimizer, micro, grad_clip=1e9)
        assert stepped and norm > 0
        assert abs(loss - _reference_loss(_model(2), seqs).item()) < 1e-5
        moved.append({n: before[n] - p.detach() for n, p in model.named_parameters()})
    for other in moved[1:]:
        for name, delta in other.items():
            assert torch.allclose(delta, moved[0][name], rtol=0, atol=1e-5), name


def test_pack_keeps_order_and_fits_rows() -> None:
    seqs = _sequences(20, seed=3)
    rows = pack(seqs, seq_len=24)
    assert [i for row in rows for i in row] == list(range(20))
    assert all(sum(len(seqs[i]) - 1 for i in row) <= 24 for row in rows)
    # Greedy: the next sequence did not fit in the row before.
    for prev, row in zip(rows, rows[1:], strict=False):
        assert sum(len(seqs[i]) - 1 for i in prev) + len(seqs[row[0]]) - 1 > 24
    with pytest.raises(ValueError, match="more than seq_len"):
        pack([TokenSequence([1] * 30, [1] * 30)], seq_len=24)


def test_packed_row_positions_and_mask() -> None:
    a = TokenSequence([5, 6, 7, 8], [IGNORE, IGNORE, 7, 8])
    b = TokenSequence([9, 10, 11], [IGNORE, 10, 11])
    batch = collate([[a, b]], seq_len=7)
    assert batch.inputs.tolist() == [[5, 6, 7, 9, 10, 0, 0]]
    assert batch.targets.tolist() == [[IGNORE, 7, 8, 10, 11, IGNORE, IGNORE]]
    assert batch.positions.tolist() == [[0, 1, 2, 0, 1, 0, 0]]
    mask = batch.mask[0]
    assert mask[4].tolist() == [False, False, False, True, True, False, False]
    assert mask[2].tolist() == [True, True, True, False, False, False, False]
    assert mask.diagonal().all()  # every query sees at least itself: no NaN rows


def test_tokenize_masks_the_prompt(shared_data: Path) -> None:
    tokenizer = Tokenizer.from_file(shared_data / "models" / "stories260K" / "tok512.model")
    chat = [{"role": "user", "content": "Reverse: cat"}, {"role": "assistant", "content": "tac"}]
    ids, is_response = encode_chat(tokenizer, DEFAULT_TEMPLATE, chat)
    seq = tokenize(tokenizer, DEFAULT_TEMPLATE, chat)
    assert seq.tokens == ids
    assert [t for t, label in zip(ids, seq.labels, strict=True) if label != IGNORE] == [
        t for t, r in zip(ids, is_response, strict=True) if r
    ]
    assert tokenizer.decode([label for label in seq.labels if label != IGNORE]) == "tac"
    assert tokenize(tokenizer, DEFAULT_TEMPLATE, chat, train_on_prompt=True).labels == ids
    assert len(tokenize(tokenizer, DEFAULT_TEMPLATE, chat, max_tokens=5)) == 5
