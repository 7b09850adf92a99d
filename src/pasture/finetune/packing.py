"""Examples → token sequences with response labels → batches, padded or packed.

Loss only on responses: a token's label is itself when it belongs to an answer, ``IGNORE``
(-100, PyTorch's ``ignore_index``) otherwise. A batch row holds inputs ``tokens[:-1]`` and
targets ``labels[1:]`` of one example (padded) or of several (packed). Packed rows carry a
block-causal mask (a token sees only earlier tokens of its own example) and positions that
restart at 0 for each example, so each example is computed exactly as if it were alone
(torchtune's and torchtitan's packing).

    seqs = [tokenize(tokenizer, template, ex.messages) for ex in examples]
    rows = pack(seqs, seq_len)                     # lists of sequence indices per row
    batch = collate([[seqs[i] for i in row] for row in rows], seq_len)
    logits = model(batch.inputs, positions=batch.positions, mask=batch.mask)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from .template import TokenizerLike, encode_chat

IGNORE = -100  # torch.nn.functional.cross_entropy's default ignore_index


@dataclass(frozen=True)
class TokenSequence:
    tokens: list[int]
    labels: list[int]  # the token where it is trained on, IGNORE elsewhere

    def __len__(self) -> int:
        return len(self.tokens)

    @property
    def trained(self) -> int:
        """How many targets this sequence contributes (labels[1:] that are not IGNORE)."""
        return sum(label != IGNORE for label in self.labels[1:])


def tokenize(
    tokenizer: TokenizerLike,
    template: str,
    messages: Sequence[dict[str, str]],
    max_tokens: int | None = None,
    train_on_prompt: bool = False,
) -> TokenSequence:
    """The templated chat's ids and labels (answers only unless ``train_on_prompt``),
    truncated to ``max_tokens`` (a row of ``seq_len`` inputs holds ``seq_len + 1`` tokens)."""
    ids, is_response = encode_chat(tokenizer, template, messages)
    labels = [
        t if (r or train_on_prompt) else IGNORE for t, r in zip(ids, is_response, strict=True)
    ]
    if max_tokens is not None:
        ids, labels = ids[:max_tokens], labels[:max_tokens]
    return TokenSequence(ids, labels)


def pack(lengths: Sequence[TokenSequence] | Sequence[int], seq_len: int) -> list[list[int]]:
    """Rows of sequence indices, in order, each row's inputs (length - 1 per sequence) fitting
    ``seq_len``: a new row starts when the next sequence does not fit (greedy, deterministic)."""
    rows: list[list[int]] = []
    used = seq_len + 1
    for i, item in enumerate(lengths):
        n = (item if isinstance(item, int) else len(item)) - 1
        if n > seq_len:
            raise ValueError(f"sequence {i} has {n} inputs, more than seq_len {seq_len}")
        if used + n > seq_len:
            rows.append([])
            used = 0
        rows[-1].append(i)
        used += n
    return rows


@dataclass
class Batch:
    inputs: torch.Tensor  # (B, T) token ids
    targets: torch.Tensor  # (B, T) next-token labels, IGNORE where no loss
    positions: torch.Tensor | None = None  # (B, T) rotary positions (packed)
    mask: torch.Tensor | None = None  # (B, T, T) True where query t may see key s (packed)

    def to(self, device: torch.device | str) -> Batch:
        def move(t: torch.Tensor | None) -> torch.Tensor | None:
            return None if t is None else t.to(device, non_blocking=True)

        return Batch(move(self.inputs), move(self.targets), move(self.positions), move(self.mask))

    @property
    def trained_tokens(self) -> int:
        return int((self.targets != IGNORE).sum())


def collate(rows: Sequence[Sequence[TokenSequence]], seq_len: int | None = None) -> Batch:
    """One batch. Rows of one sequence each are right-padded and need no mask (causal attention
    never looks right); rows of several get positions and a block-causal mask. ``seq_len``
    pads every row to that width (default: the longest row's)."""
    widths = [sum(len(s) - 1 for s in row) for row in rows]
    T = seq_len if seq_len is not None else max(widths)
    if max(widths) > T:
        raise ValueError(f"a row of {max(widths)} inputs does not fit seq_len {T}")
    B = len(rows)
    inputs = torch.zeros(B, T, dtype=torch.long)
    targets = torch.full((B, T), IGNORE, dtype=torch.long)
    packed = any(len(row) > 1 for row in rows)
    positions = torch.zeros(B, T, dtype=torch.long)
    document = torch.full((B, T), -1, dtype=torch.long)  # which sequence each input is from
    for b, row in enumerate(rows):
        at = 0
        for d, seq in enumerate(row):
            n = len(seq) - 1
            inputs[b, at : at + n] = torch.tensor(seq.tokens[:-1])
            targets[b, at : at + n] = torch.tensor(seq.labels[1:])
            positions[b, at : at + n] = torch.arange(n)
            document[b, at : at + n] = d
            at += n
    if not packed:
        return Batch(inputs, targets)
    causal = torch.ones(T, T, dtype=torch.bool).tril()  # (T, T)
    same = document[:, :, None] == document[:, None, :]  # (B, T, T)
    # Padding (document -1) sees the padding before it: every query row keeps a key (no NaN).
    return Batch(inputs, targets, positions, same & causal)


def batches(
    sequences: Sequence[TokenSequence], seq_len: int, rows_per_batch: int, packed: bool = True
) -> list[Batch]:
    """All of ``sequences`` as batches of ``rows_per_batch`` rows of width ``seq_len``, in order
    (packed several per row, or one per row)."""
    rows = pack(sequences, seq_len) if packed else [[i] for i in range(len(sequences))]
    out = []
    for start in range(0, len(rows), rows_per_batch):
        chunk = rows[start : start + rows_per_batch]
        out.append(collate([[sequences[i] for i in row] for row in chunk], seq_len))
    return out


__all__ = ["IGNORE", "Batch", "TokenSequence", "batches", "collate", "pack", "tokenize"]
