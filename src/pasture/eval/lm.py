"""The narrow model contract every task is written against, implemented once on Pasture models.

    >>> from pasture import load_model
    >>> from pasture.eval import PastureLM
    >>> lm = PastureLM(*load_model("stories260K.bin", tokenizer="tok512.model"), batch_size=16)
    >>> lm.loglikelihood([("Once upon a time", " there was")])
    [(-3.1..., True)]

Three methods, as in lm-evaluation-harness: ``loglikelihood(context, continuation)``,
``loglikelihood_rolling(text)`` and ``generate_until(context, stop, sampling)``.

Log-likelihoods are scored in packed rows: a context followed by every continuation asked of
it, each continuation attending to the context and to itself only and starting at the position
right after the context. A multiple-choice item therefore costs one forward pass over its
context instead of one per choice, and the vocabulary projection runs only where a
continuation token is predicted. A padded key is never visible to a real query, and every row
is computed at a padded length of at least ``PAD`` tokens that depends on its own length only
(rows are batched with rows of the same padded length; see ``aligned_prefix`` for a cached
prefix), so on a CPU the batch size does not change a log-likelihood, not even in the last
bit: matrix kernels round differently for different shapes, and MKL multiplies fewer than 16
rows with another kernel. Generation makes no such promise (docs/evaluation.md).

Tokenization follows lm-evaluation-harness: trailing spaces of the context move to the
continuation, and the continuation's tokens are those of ``context + continuation`` after the
context's own tokens, so a piece that straddles the boundary is scored where it ends.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

import torch
from tqdm import tqdm

from ..generate import StreamDecoder, generate_tokens
from ..generate.sampling import sample
from ..model import KVCache, Transformer
from .task import DEFAULT_BATCH_SIZE


@dataclass(frozen=True)
class Sampling:
    """How ``generate_until`` picks tokens: greedy at temperature 0, else seeded sampling."""

    max_new_tokens: int = 256
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int = 0


@dataclass(frozen=True)
class GenerationRequest:
    context: str
    stop: tuple[str, ...] = ()
    sampling: Sampling = field(default_factory=Sampling)


class LanguageModel(Protocol):
    """What a task may ask of a model."""

    def loglikelihood(self, requests: Sequence[tuple[str, str]]) -> list[tuple[float, bool]]:
        """For each (context, continuation): log P(continuation | context) and whether greedy
        decoding from the context would produce exactly the continuation."""
        ...

    def loglikelihood_rolling(self, texts: Sequence[str]) -> list[float]:
        """log P(text) of each whole text (from BOS), in windows of the model's context."""
        ...

    def generate_until(self, requests: Sequence[GenerationRequest]) -> list[str]:
        """The continuation of each context, cut before the first stop string."""
        ...


class TokenizerLike(Protocol):
    bos_id: int
    eos_id: int

    def encode(self, text: str, bos: bool = False, eos: bool = False) -> list[int]: ...
    def decode(self, ids: Sequence[int]) -> str: ...


PAD = 16  # rows are computed at a multiple of this many tokens


def padded(n: int, multiple: int = PAD) -> int:
    """The length a row of n tokens is computed at."""
    return -(-n // multiple) * multiple


def aligned_prefix(n: int, max_seq_len: int) -> int:
    """How much of a shared prefix of n tokens to cache: a multiple of ``PAD`` that leaves at
    least ``PAD`` positions of the window for the rows after it. Then every row's part after
    the prefix is computed at a padded length of its own (>= PAD tokens), never cut short by
    the window: a matrix product of fewer than 16 rows takes another kernel in MKL, which
    rounds differently, so a short tail would make a result depend on how many rows share
    its batch."""
    return max(0, min(n, max_seq_len - PAD)) // PAD * PAD


@dataclass
class _Row:
    """One packed sequence: a context, then continuations each scored against the context."""

    context: list[int]
    continuations: list[tuple[int, list[int]]]  # (request index, continuation tokens)

    def __len__(self) -> int:  # tokens fed to the model: a continuation's last is a target only
        return len(self.context) + sum(len(c) - 1 for _, c in self.continuations)

    @property
    def prefix_only(self) -> bool:
        """Every continuation is one token (MMLU's letters): the row is its context alone."""
        return all(len(c) == 1 for _, c in self.continuations)


MIN_SHARED_PREFIX = 64  # tokens; shorter common prefixes are cheaper to recompute


def shared_prefixes(rows: list[_Row]) -> list[tuple[list[int], list[_Row]]]:
    """Rows grouped by a long common prefix of their contexts (few-shot examples shared by a
    task's items, as MMLU's five per subject), to compute it once; ([], rows) for the rest.
    A prefix always leaves each row at least its context's last token."""
    groups: dict[tuple[int, ...], list[_Row]] = {}
    alone: list[_Row] = []
    for row in rows:
        if len(row.context) > MIN_SHARED_PREFIX:
            groups.setdefault(tuple(row.context[:MIN_SHARED_PREFIX]), []).append(row)
        else:
            alone.append(row)
    out: list[tuple[list[int], list[_Row]]] = []
    for members in groups.values():
        first = members[0].context
        shared = min(len(r.context) for r in members) - 1
        for row in members[1:]:
            n = 0
            while n < shared and row.context[n] == first[n]:
                n += 1
            shared = n
        if len(members) > 1 and shared >= MIN_SHARED_PREFIX:
            out.append((first[:shared], members))
        else:
            alone.extend(members)
    if alone:
        out.append(([], alone))
    return out


class PastureLM:
    """The contract on a Pasture ``Transformer`` and its SentencePiece tokenizer."""

    def __init__(
        self,
        model: Transformer,
        tokenizer: TokenizerLike,
        batch_size: int = DEFAULT_BATCH_SIZE,
        max_length: int | None = None,
        progress: bool = True,
    ) -> None:
        self.model, self.tokenizer = model.eval(), tokenizer
        self.batch_size = batch_size
        self.max_length = min(max_length or model.args.max_seq_len, model.args.max_seq_len)
        self.progress = progress
        self.device = model.tok_embeddings.weight.device

    # -- tokenization ---------------------------------------------------------------------

    def encode_pair(self, context: str, continuation: str) -> tuple[list[int], list[int]]:
        """Context tokens (from BOS) and continuation tokens, split as lm-eval splits them."""
        spaces = len(context) - len(context.rstrip())
        if spaces:
            context, continuation = context[:-spaces], context[-spaces:] + continuation
        context_ids = self.tokenizer.encode(context, bos=True)
        if not context:
            return context_ids, self.tokenizer.encode(continuation)
        whole = self.tokenizer.encode(context + continuation, bos=True)
        return context_ids, whole[len(context_ids) :]

    # -- log-likelihoods ------------------------------------------------------------------

    def loglikelihood(self, requests: Sequence[tuple[str, str]]) -> list[tuple[float, bool]]:
        pairs = [self.encode_pair(c, x) for c, x in requests]
        return self.loglikelihood_tokens(pairs)

    def loglikelihood_tokens(
        self, pairs: Sequence[tuple[list[int], list[int]]]
    ) -> list[tuple[float, bool]]:
        """The same from token ids: each context must start with BOS (or be truncated)."""
        pieces, owner = self._split_long(pairs)
        scored: list[tuple[float, bool]] = [(0.0, False)] * len(pieces)
        bar = tqdm(total=len(pieces), desc="log-likelihoods", unit="req", disable=not self.progress)
        for prefix, rows in shared_prefixes(self._pack(pieces)):
            P = aligned_prefix(len(prefix), self.model.args.max_seq_len)
            prefix = prefix[:P]
            by_length: dict[tuple[int, bool], list[_Row]] = {}
            for row in sorted(rows, key=len, reverse=True):
                # A row's shape and attention path depend on the row (and its prefix) alone.
                by_length.setdefault((padded(len(row) - P), row.prefix_only), []).append(row)
            caches: list[KVCache] = []
            if P:
                longest = max(padded(len(r) - P) for r in rows)
                caches = self.model.setup_cache(1, min(P + longest, self.model.args.max_seq_len))
                prefix_tokens = torch.tensor([prefix], device=self.device)
                with torch.inference_mode():
                    self.model.hidden(prefix_tokens)  # fills the caches
            try:
                for same_length in by_length.values():
                    for start in range(0, len(same_length), self.batch_size):
                        batch = same_length[start : start + self.batch_size]
                        for index, value in self._score_rows(batch, P, caches):
                            scored[index] = value
                        bar.update(sum(len(r.continuations) for r in batch))
            finally:
                self.model.clear_cache()
        bar.close()
        results = [(0.0, True)] * len(pairs)
        for i, (score, greedy) in zip(owner, scored, strict=True):
            results[i] = (results[i][0] + score, results[i][1] and greedy)
        return results

    def _split_long(
        self, pairs: Sequence[tuple[list[int], list[int]]]
    ) -> tuple[list[tuple[list[int], list[int]]], list[int]]:
        """A continuation longer than half the window is scored in pieces, each conditioned on
        as many of the tokens before it as fit (a rolling window); their scores add up."""
        half = self.max_length // 2
        pieces: list[tuple[list[int], list[int]]] = []
        owner: list[int] = []
        for i, (context, continuation) in enumerate(pairs):
            if not continuation:
                raise ValueError(f"request {i}: the continuation has no tokens")
            if not context:
                raise ValueError(f"request {i}: the context has no tokens (start it with BOS)")
            if len(context) + len(continuation) <= self.max_length or len(continuation) <= half:
                pieces.append((context, continuation))
                owner.append(i)
                continue
            whole = context + continuation
            for start in range(len(context), len(whole), half):
                end = min(start + half, len(whole))
                pieces.append((whole[max(0, end - 1 - self.max_length) : start], whole[start:end]))
                owner.append(i)
        return pieces, owner

    def _pack(self, pairs: Sequence[tuple[list[int], list[int]]]) -> list[_Row]:
        """Requests sharing a context share a row while the row fits in the context window."""
        limit = self.max_length
        rows: list[_Row] = []
        open_rows: dict[tuple[int, ...], _Row] = {}
        for index, (context, continuation) in enumerate(pairs):
            if len(context) + len(continuation) - 1 > limit:
                # Too long: keep the last ``limit`` tokens that predict the continuation,
                # as lm-eval does (the context loses its start, BOS included).
                whole = (context + continuation)[-(limit + 1) :]
                rows.append(_Row(whole[: -len(continuation)], [(index, continuation)]))
                continue
            key = tuple(context)
            row = open_rows.get(key)
            if row is None or len(row) + len(continuation) - 1 > limit:
                row = open_rows[key] = _Row(list(context), [])
                rows.append(row)
            row.continuations.append((index, continuation))
        return rows

    @torch.inference_mode()
    def _score_rows(
        self, rows: list[_Row], prefix: int = 0, caches: Sequence[KVCache] = ()
    ) -> list[tuple[int, tuple[float, bool]]]:
        """Score packed rows; with ``prefix`` > 0 their first ``prefix`` tokens (the same in
        every row) are already in the model's KV ``caches`` (one row), and only the rest is
        computed."""
        B, P = len(rows), prefix
        T = min(P + padded(max(len(r) for r in rows) - P), self.model.args.max_seq_len)
        tokens = torch.zeros((B, T), dtype=torch.long)
        positions = torch.zeros((B, T), dtype=torch.long)
        segment = torch.full((B, T), -1, dtype=torch.long)  # 0 context, j continuation j, -1 pad
        wanted: list[list[int]] = []  # per row: the positions whose logits are needed
        targets: list[list[int]] = []
        for b, row in enumerate(rows):
            n = len(row.context)
            tokens[b, :n] = torch.tensor(row.context)
            positions[b, :n] = torch.arange(n)
            segment[b, :n] = 0
            at, want = n, []
            for j, (_, cont) in enumerate(row.continuations, start=1):
                fed = len(cont) - 1  # the last token is a target, never an input
                tokens[b, at : at + fed] = torch.tensor(cont[:fed])
                positions[b, at : at + fed] = torch.arange(n, n + fed)
                segment[b, at : at + fed] = j
                # The first token is predicted from the context's last position, the others
                # from the continuation's own previous token.
                want += [n - 1, *range(at, at + fed)]
                at += fed
            wanted.append(want)
            targets.append([t for _, cont in row.continuations for t in cont])
        K = padded(max(len(w) for w in wanted))
        picked = torch.zeros((B, K), dtype=torch.long)
        target = torch.zeros((B, K), dtype=torch.long)
        for b in range(B):
            picked[b, : len(wanted[b])] = torch.tensor(wanted[b]) - P
            target[b, : len(targets[b])] = torch.tensor(targets[b])
        for cache in caches:
            cache.fork(B)  # every row continues from the shared prefix
        if all(row.prefix_only for row in rows):
            # Contexts only: plain causal attention (pads come last, no real token sees them).
            h = self.model.hidden(tokens[:, P:].to(self.device), start_pos=P)
        else:
            causal = torch.ones((T, T), dtype=torch.bool).tril()
            same = segment[:, :, None] == segment[:, None, :]  # (B, T, T)
            sees_context = (segment[:, None, :] == 0) & (segment[:, :, None] >= 0)
            mask = causal & (same | sees_context)  # a pad query sees only pads; never empty
            h = self.model.hidden(
                tokens[:, P:].to(self.device),
                start_pos=P,
                positions=positions[:, P:].to(self.device),
                mask=mask[:, P:].to(self.device),  # (B, T - P, T): the prefix's keys too
            )  # (B, T - P, dim)
        # The vocabulary projection only where a logit is needed: (B, K, vocab).
        at = picked.to(self.device)[:, :, None].expand(-1, -1, h.shape[-1])
        logits = self.model.logits(torch.gather(h, 1, at))
        logprobs = torch.log_softmax(logits, dim=-1).cpu()
        target_lp = logprobs.gather(-1, target[:, :, None])[:, :, 0]  # (B, K)
        greedy = logprobs.argmax(-1) == target  # (B, K)
        out = []
        for b, row in enumerate(rows):
            at = 0
            for index, cont in row.continuations:
                m = len(cont)
                score = float(target_lp[b, at : at + m].double().sum())
                out.append((index, (score, bool(greedy[b, at : at + m].all()))))
                at += m
        return out

    def loglikelihood_rolling(self, texts: Sequence[str]) -> list[float]:
        """Windows of ``max_length`` predictions; each window after the first is conditioned
        on the ``max_length`` tokens before it is predicted (lm-eval's rolling windows with a
        context of one token would condition on less; we use all the room there is)."""
        pairs: list[tuple[list[int], list[int]]] = []
        owner: list[int] = []
        L = self.max_length
        for i, text in enumerate(texts):
            ids = [self.tokenizer.bos_id, *self.tokenizer.encode(text)]
            for start in range(1, len(ids), L):
                end = min(start + L, len(ids))
                context_start = max(0, end - 1 - L)
                pairs.append((ids[context_start:start], ids[start:end]))
                owner.append(i)
        totals = [0.0] * len(texts)
        for i, (score, _) in zip(owner, self.loglikelihood_tokens(pairs), strict=True):
            totals[i] += score
        return totals

    # -- generation -----------------------------------------------------------------------

    def generate_until(self, requests: Sequence[GenerationRequest]) -> list[str]:
        """Batched by sampling settings and prompt length; greedy rows are deterministic, and a
        sampled row draws from a generator seeded by (its seed, position), whatever batch it
        lands in."""
        prompts = [self.tokenizer.encode(r.context, bos=True) for r in requests]
        order = sorted(
            range(len(requests)),
            key=lambda i: (requests[i].sampling.max_new_tokens, -len(prompts[i])),
        )
        results = [""] * len(requests)
        bar = tqdm(total=len(requests), desc="generate", unit="req", disable=not self.progress)
        for start in range(0, len(order), self.batch_size):
            chunk = order[start : start + self.batch_size]
            for i, text in zip(
                chunk,
                self._generate([requests[i] for i in chunk], [prompts[i] for i in chunk]),
                strict=True,
            ):
                results[i] = text
            bar.update(len(chunk))
        bar.close()
        return results

    def _generate(self, requests: list[GenerationRequest], prompts: list[list[int]]) -> list[str]:
        max_new = max(r.sampling.max_new_tokens for r in requests)
        # A prompt keeps its last tokens: as many as leave room for max_new_tokens, but at
        # least half the window (a small-context model then stops when its window is full).
        room = max(self.max_length - max_new, self.max_length // 2)
        prompts = [p if len(p) <= room else p[-room:] for p in prompts]
        decoders = [StreamDecoder(self.tokenizer, p) for p in prompts]
        texts = [""] * len(requests)
        produced = [0] * len(requests)

        def on_token(row: int, token: int) -> bool:
            texts[row] += decoders[row].push(token)
            produced[row] += 1
            if produced[row] >= requests[row].sampling.max_new_tokens:
                return True
            return any(s in texts[row] for s in requests[row].stop)

        first = min(len(p) for p in prompts)
        step = iter(range(first, 1 << 30))

        def sampler(logits: torch.Tensor) -> torch.Tensor:
            position = next(step)  # the position being chosen, the same for every row
            out = torch.empty(len(requests), dtype=torch.long)
            for row, request in enumerate(requests):
                s = request.sampling
                if s.temperature <= 0:
                    out[row] = logits[row].argmax()
                    continue
                generator = torch.Generator(device=logits.device)
                generator.manual_seed(s.seed * 1_000_003 + position)
                out[row] = sample(
                    logits[row : row + 1], s.temperature, s.top_p, s.top_k, generator
                )[0]
            return out

        generate_tokens(
            self.model,
            prompts,
            max_new,
            stop_ids=(self.tokenizer.eos_id,),
            on_token=on_token,
            sampler=sampler,
        )
        outs = []
        for request, text in zip(requests, texts, strict=True):
            cut = min((text.find(s) for s in request.stop if s in text), default=len(text))
            outs.append(text[:cut])
        return outs
