"""Quality filters of web pages: perplexity under a Wikipedia language model (CCNet's buckets)
and LLaMA's classifier of pages used as references in Wikipedia."""

from __future__ import annotations

import io
import math
import re
import zlib
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ...errors import PastureError
from ..document import Document, Step, filter_step
from .normalize import normalize_for_lm

# ---------------------------------------------------------------- perplexity


class SentencePieceTokens:
    """Tokenize normalized lines with a SentencePiece model, as CCNet did before KenLM."""

    def __init__(self, model: bytes | str | Path) -> None:
        import sentencepiece as spm

        if isinstance(model, bytes):
            self.proto = model
        else:
            self.proto = Path(model).read_bytes()
        self.sp = spm.SentencePieceProcessor(model_proto=self.proto)

    @classmethod
    def train(cls, lines: Iterable[str], vocab_size: int) -> SentencePieceTokens:
        import sentencepiece as spm

        out = io.BytesIO()
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter([normalize_for_lm(x) for x in lines if x.strip()]),
            model_writer=out,
            vocab_size=vocab_size,
            hard_vocab_limit=False,  # a few MB of text may not support the full vocabulary
            model_type="unigram",
            character_coverage=0.9995,
            num_threads=1,  # deterministic
            shuffle_input_sentence=False,
            minloglevel=2,
        )
        return cls(out.getvalue())

    def __call__(self, line: str) -> list[int]:
        return self.sp.encode(normalize_for_lm(line))

    @property
    def vocab_size(self) -> int:
        return self.sp.get_piece_size()


class NgramLM:
    """Interpolated Kneser-Ney n-gram model over token ids (Chen & Goodman 1998).

    ``counts[k]`` maps k-grams to counts: raw counts for the highest order, continuation counts
    (distinct left extensions) below it. One discount per order, D = n1 / (n1 + 2 n2). The
    lowest order interpolates with the uniform distribution over the vocabulary, so unseen
    tokens have non-zero probability. Lines are padded with order-1 BOS ids and end with EOS.
    """

    def __init__(self, grams: list[np.ndarray], counts: list[np.ndarray], vocab_size: int) -> None:
        """``grams[k-1]``: (n, k) int array of the k-grams; ``counts[k-1]``: their counts."""
        self.order = len(grams)
        self.vocab_size = vocab_size
        self.bos, self.eos = vocab_size, vocab_size + 1  # ids outside the tokenizer's range
        self.grams, self.raw_counts = grams, counts
        self.counts: list[dict[tuple[int, ...], int]] = []
        self.discounts: list[float] = []
        self.context_total: list[dict[tuple[int, ...], int]] = []
        self.context_types: list[dict[tuple[int, ...], int]] = []
        for k, (g, c) in enumerate(zip(grams, counts, strict=True), start=1):
            self.counts.append(dict(zip(_rows(g), c.tolist(), strict=True)))
            n1, n2 = int((c == 1).sum()), int((c == 2).sum())
            self.discounts.append(n1 / (n1 + 2 * n2) if n1 + n2 else 0.5)
            if k == 1:
                keys, total, types = [()], [int(c.sum())], [len(c)]
            else:
                contexts, inverse = np.unique(g[:, : k - 1], axis=0, return_inverse=True)
                inverse = inverse.reshape(-1)
                total = np.bincount(inverse, weights=c).astype(np.int64).tolist()
                types = np.bincount(inverse).tolist()
                keys = list(_rows(contexts))
            self.context_total.append(dict(zip(keys, total, strict=True)))
            self.context_types.append(dict(zip(keys, types, strict=True)))

    @classmethod
    def train(cls, token_lines: Iterable[list[int]], vocab_size: int, order: int) -> NgramLM:
        top: Counter = Counter()
        bos, eos = vocab_size, vocab_size + 1
        for tokens in token_lines:
            seq = [bos] * (order - 1) + tokens + [eos]
            top.update(zip(*[seq[i:] for i in range(order)], strict=False))
        tables: list[Counter] = [top]
        for _ in range(order - 1):  # continuation counts of each lower order
            tables.insert(0, Counter(gram[1:] for gram in tables[0]))
        grams = [
            np.array(list(t.keys()), dtype=np.int32).reshape(-1, k)
            for k, t in enumerate(tables, start=1)
        ]
        counts = [np.array(list(t.values()), dtype=np.int64) for t in tables]
        return cls(grams, counts, vocab_size)

    def log10_prob(self, context: tuple[int, ...], token: int) -> float:
        prob = 1.0 / (self.vocab_size + 2)
        for k in range(1, self.order + 1):  # from unigram up to the full context
            ctx = context[len(context) - (k - 1) :] if k > 1 else ()
            total = self.context_total[k - 1].get(ctx)
            if not total:
                break  # longer contexts are unseen too
            d = self.discounts[k - 1]
            c = self.counts[k - 1].get((*ctx, token), 0)
            backoff = d * self.context_types[k - 1][ctx] / total
            prob = max(c - d, 0.0) / total + backoff * prob
        return math.log10(prob)

    def score_line(self, tokens: list[int]) -> tuple[float, int]:
        """(log10 probability, number of predicted tokens incl. EOS) of one line."""
        seq = [self.bos] * (self.order - 1) + tokens + [self.eos]
        n = self.order - 1
        logp = sum(self.log10_prob(tuple(seq[i - n : i]), seq[i]) for i in range(n, len(seq)))
        return logp, len(tokens) + 1

    def save(self, path: Path) -> None:
        arrays = {"vocab_size": np.array(self.vocab_size)}
        for k in range(1, self.order + 1):
            arrays[f"grams{k}"] = self.grams[k - 1]
            arrays[f"counts{k}"] = self.raw_counts[k - 1]
        with open(path, "wb") as f:
            np.savez(f, **arrays)

    @classmethod
    def load(cls, path: Path) -> NgramLM:
        with np.load(path, allow_pickle=False) as data:
            order = sum(1 for key in data.files if key.startswith("grams"))
            grams = [data[f"grams{k}"] for k in range(1, order + 1)]
            counts = [data[f"counts{k}"] for k in range(1, order + 1)]
            return cls(grams, counts, int(data["vocab_size"]))


def _rows(array: np.ndarray) -> Iterator[tuple[int, ...]]:
    """The rows of a 2-D int array as tuples (the n-gram dictionaries' keys)."""
    return zip(*(array[:, j].tolist() for j in range(array.shape[1])), strict=True)


class KenlmScorer:
    """A user's KenLM model (.arpa or .bin), as CCNet's ``lm_sp/<lang>.arpa.bin``."""

    def __init__(self, path: str | Path) -> None:
        try:
            import kenlm  # noqa: PLC0415 - optional dependency
        except ImportError as e:
            raise PastureError(
                f"kenlm_model={path} needs the kenlm package: "
                "pip install https://github.com/kpu/kenlm/archive/master.zip "
                "(or leave kenlm_model unset to train the built-in n-gram model)"
            ) from e
        if not Path(path).is_file():
            raise PastureError(f"kenlm_model={path}: no such file")
        self.model = kenlm.Model(str(path))


@dataclass
class PerplexityModel:
    """Tokenizer + LM for one language: ``perplexity(text)`` as CCNet computes it,
    10 ** (-sum of line log10 probs / sum of line lengths incl. EOS), rounded to 0.1."""

    tokens: SentencePieceTokens | None
    lm: NgramLM | KenlmScorer

    def perplexity(self, text: str) -> float:
        log_score, length = 0.0, 0
        for line in text.split("\n"):
            if not line.strip():
                continue
            if isinstance(self.lm, KenlmScorer):
                pieces = (
                    self.tokens.sp.encode(normalize_for_lm(line), out_type=str)
                    if self.tokens is not None
                    else normalize_for_lm(line).split()
                )
                log_score += self.lm.model.score(" ".join(pieces))
                length += len(pieces) + 1
            else:
                lp, n = self.lm.score_line(self.tokens(line))
                log_score += lp
                length += n
        if length == 0:
            return math.inf
        return round(10.0 ** (-log_score / length), 1)


def bucket_of(perplexity: float, cutoffs: Sequence[float]) -> str:
    """CCNet's buckets: head below the first cutoff, middle below the second, else tail."""
    head, middle = cutoffs
    if perplexity < head:
        return "head"
    return "middle" if perplexity < middle else "tail"


def perplexity_step(
    models: dict[str, PerplexityModel],
    cutoffs: dict[str, Sequence[float]],
    keep_buckets: Sequence[str],
    name: str = "perplexity",
) -> Step:
    """Set ``perplexity`` and ``bucket`` from the document's ``language``; drop
    ``quality_bucket`` when the bucket is not kept and ``no_language_model`` when the language
    has no model."""
    keep = set(keep_buckets)

    def why_drop(doc: Document) -> str | None:
        lang = doc.metadata.get("language")
        if lang not in models:
            return "no_language_model"
        pp = models[lang].perplexity(doc.text)
        doc.metadata["perplexity"] = pp
        doc.metadata["bucket"] = bucket_of(pp, cutoffs[lang])
        return None if doc.metadata["bucket"] in keep else "quality_bucket"

    return filter_step(name, why_drop)


# ---------------------------------------------------------------- reference classifier

_WORD = re.compile(r"\w+")


def hashed_ngrams(text: str, n_features: int, ngram: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """Word 1..ngram-grams of the normalized text, hashed with crc32 (stable) into
    ``n_features`` buckets; values are log(1 + count), L2-normalized."""
    words = _WORD.findall(normalize_for_lm(text))
    grams = Counter()
    for n in range(1, ngram + 1):
        grams.update(" ".join(words[i : i + n]) for i in range(len(words) - n + 1))
    if not grams:
        return np.zeros(0, np.int64), np.zeros(0, np.float64)
    ids = Counter()
    for gram, c in grams.items():
        ids[zlib.crc32(gram.encode("utf-8")) % n_features] += c
    idx = np.fromiter(ids.keys(), np.int64, len(ids))
    val = np.log1p(np.fromiter(ids.values(), np.float64, len(ids)))
    return idx, val / np.linalg.norm(val)


@dataclass
class ReferenceClassifier:
    """Logistic regression on hashed word n-grams; ``score(text)`` is P(reference page)."""

    weights: np.ndarray
    bias: float
    ngram: int = 2

    def score(self, text: str) -> float:
        idx, val = hashed_ngrams(text, len(self.weights), self.ngram)
        z = float(self.weights[idx] @ val) + self.bias
        return 1.0 / (1.0 + math.exp(-z))

    def save(self, path: Path) -> None:
        with open(path, "wb") as f:
            np.savez_compressed(
                f, weights=self.weights, bias=np.array(self.bias), ngram=np.array(self.ngram)
            )

    @classmethod
    def load(cls, path: str | Path) -> ReferenceClassifier:
        try:
            with np.load(path, allow_pickle=False) as data:
                return cls(data["weights"], float(data["bias"]), int(data["ngram"]))
        except (OSError, KeyError, ValueError) as e:
            raise PastureError(
                f"reference_classifier={path}: not a saved classifier ({e}); pass "
                '{"positives": file, "negatives": file} to train one'
            ) from e


def train_reference_classifier(
    pos_texts: Iterable[str],
    neg_texts: Iterable[str],
    n_features: int = 2**20,
    ngram: int = 2,
    epochs: int = 5,
    lr: float = 0.5,
    l2: float = 1e-6,
    seed: int = 0,
) -> ReferenceClassifier:
    """Train LLaMA's reference-page classifier: SGD on the logistic loss, fixed-seed order."""
    examples = [(hashed_ngrams(t, n_features, ngram), 1.0) for t in pos_texts]
    examples += [(hashed_ngrams(t, n_features, ngram), 0.0) for t in neg_texts]
    if not examples or all(y == examples[0][1] for _, y in examples):
        raise PastureError("reference classifier needs both positive and negative texts")
    weights = np.zeros(n_features)
    bias = 0.0
    rng = np.random.default_rng(seed)
    for epoch in range(epochs):
        step = lr / math.sqrt(1 + epoch)
        for i in rng.permutation(len(examples)):
            (idx, val), y = examples[i]
            z = float(weights[idx] @ val) + bias
            grad = 1.0 / (1.0 + math.exp(-max(min(z, 30.0), -30.0))) - y
            weights[idx] -= step * (grad * val + l2 * weights[idx])
            bias -= step * grad
    return ReferenceClassifier(weights, bias, ngram)


def reference_step(
    classifier: ReferenceClassifier, min_score: float, name: str = "reference_classifier"
) -> Step:
    """Set ``reference_score``; drop ``reference_score`` under ``min_score``."""

    def why_drop(doc: Document) -> str | None:
        score = round(classifier.score(doc.text), 4)
        doc.metadata["reference_score"] = score
        return None if score >= min_score else "reference_score"

    return filter_step(name, why_drop)


def read_text_documents(path: Path) -> list[str]:
    """A plain text file as documents separated by blank lines (for LM or classifier data)."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as e:
        raise PastureError(f"{path}: cannot read text file ({e})") from e
    return [d.strip() for d in re.split(r"\n\s*\n", text) if d.strip()]
