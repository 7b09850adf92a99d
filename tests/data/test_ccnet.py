"""CCNet text processing: normalization, line dedup, language id, n-gram LM, classifier."""

from __future__ import annotations

import gzip
import hashlib
import itertools
import json
import random
import re
import statistics
from pathlib import Path

import numpy as np
import pytest

from pasture.data.ccnet import dedup, language, normalize, quality
from pasture.data.document import Context, Document, run_steps
from pasture.data.sources import commoncrawl
from pasture.errors import PastureError


@pytest.fixture(scope="module")
def wiki_texts(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    root = shared_data / "pretrain"
    work = tmp_path_factory.mktemp("wiki")
    texts = list(itertools.islice(commoncrawl.wikipedia_texts(root, "en", work), 36))
    assert len(texts) == 36 and sum(map(len, texts)) > 500_000
    return texts


@pytest.fixture(scope="module")
def web_texts(shared_data: Path) -> list[str]:
    path = (
        shared_data / "pretrain/commoncrawl/reference_processed/"
        "dolma_CC-MAIN-20190717121559-20190717143559-00140.jsonl.gz"
    )
    with gzip.open(path, "rt") as f:
        return [json.loads(line)["text"] for line in f]


def test_normalize_for_dedup_is_cc_nets() -> None:
    # cc_net text_normalizer.normalize_for_dedup: strip, lower, \d → 0, then delete its
    # UNICODE_PUNCT keys and the C0/C1 controls; ASCII punctuation and accents stay.
    assert normalize.normalize_for_dedup("  Café, 1999: Hello!  ") == "café, 0000: hello!"
    assert normalize.normalize_for_dedup("Café 1") != normalize.normalize_for_dedup("cafe, 2!")
    assert normalize.normalize_for_dedup("“Quoted” — text…") == "quoted  text"
    assert normalize.normalize_for_dedup("Ａ１٣ B\x07c\x9f") == "ａ00 bc"  # Unicode digits → 0
    assert normalize.normalize_for_dedup("_Hello") == "_hello"
    assert normalize.normalize_for_dedup("\u200b \t") == "\u200b"  # not whitespace, not control
    # the deleted characters are those of cc_net's PUNCT_OR_NON_PRINTING_CHARS_RE, built as it is
    punct = "，。、„”“«»１」「《》´∶：？！（）；–—．～’…━〈〉【】％►"
    controls = "".join(map(chr, [*range(32), *range(127, 160)]))
    reference = re.compile(("[" + punct + "]" + "[" + controls + "]").replace("][", ""))
    deleted = normalize._CCNET_PUNCT_OR_NON_PRINTING
    assert all(
        bool(reference.fullmatch(chr(c))) == bool(deleted.fullmatch(chr(c))) for c in range(65536)
    )
    # cc_net's str_hash: sha1's first 8 bytes as a little-endian uint64
    assert dedup.line_hash("_hello") == int.from_bytes(
        hashlib.sha1(b"_hello").digest()[:8], "little"
    )
    # Pasture's looser key, kept for line_dedup = "keep_first"
    assert normalize.fold_for_dedup("  Café, 1999: Hello!  ") == "cafe 0000 hello"
    assert normalize.fold_for_dedup("Café 1") == normalize.fold_for_dedup("cafe, 2!")
    assert normalize.fold_for_dedup("\u200b \t") == ""


def _docs(*texts: str) -> list[Document]:
    return [Document(t, f"d{i}", "commoncrawl") for i, t in enumerate(texts)]


def _lines(*lines: str) -> str:
    return "\n".join(lines)


def test_line_dedup_as_cc_nets_tests() -> None:
    # cc_net tests/test_dedup.py::test_dedup_fast: HashesCollector over both parts, then
    # DuplicatesRemover; "_World" is in both pages, so both lose it.
    ctx = Context("s")
    docs = _docs(
        _lines("Hello", "_World", "I'm so original"),
        _lines("Good morning", "_World", "I'm originaler"),
    )
    out = list(dedup.line_dedup_step()(docs, ctx))
    assert [(d.text, d.metadata["line_ids"], d.metadata["nlines"]) for d in out] == [
        (_lines("Hello", "I'm so original"), [0, 2], 2),
        (_lines("Good morning", "I'm originaler"), [0, 2], 2),
    ]
    assert all(d.metadata["original_nlines"] == 3 for d in out)
    assert [d.metadata["length"] for d in out] == [21, 27]
    # Hand-computed from dedup.py: FlatHashSet.add looks a page's hashes up before adding them,
    # so a line repeated inside one page only is no duplicate (finalize_doc keeps it once); a
    # line in two pages goes from both, even where one page repeats it; a page that keeps no
    # line is dropped; empty lines are not lines (cc_net's WET reader drops them).
    ctx = Context("s")
    docs = _docs(
        _lines("Alpha line", "Beta line", "alpha LINE", "", "X 1"),
        _lines("  x 2  ", "Gamma", "x 3", "Delta"),
        _lines("Gamma", "Café"),
        _lines("Delta", "Gamma"),
        _lines("Cafe"),
    )
    out = list(dedup.line_dedup_step()(docs, ctx))
    assert [(d.id, d.text, d.metadata["line_ids"]) for d in out] == [
        ("d0", _lines("Alpha line", "Beta line"), [0, 1]),
        ("d2", "Café", [1]),
        ("d4", "Cafe", [0]),  # accents stay apart, as in cc_net
    ]
    assert ctx.stats["read"].dropped == {"duplicate_lines": 2}  # d1: all shared; d3 too


def test_line_dedup_keep_first_is_the_named_older_rule() -> None:
    shared = "This paragraph is shared by two pages of the same shard.\nAnd its second line."
    docs = _docs(
        f"First page intro.\n{shared}\nFirst page outro.",
        f"Second page intro.\n{shared.upper().replace('.', '!')}\nSecond page outro.",
        "Second page intro.\n\nSecond page outro.",
    )
    ctx = Context("s")
    out = list(dedup.keep_first_dedup_step()(docs, ctx))
    assert [d.id for d in out] == ["d0", "d1"]
    assert out[0].text.count("\n") == 3
    assert out[1].text == "Second page intro.\nSecond page outro."
    assert out[1].metadata["line_ids"] == [0, 3]
    assert out[1].metadata["original_nlines"] == 4 and out[1].metadata["nlines"] == 2
    assert ctx.stats["read"].dropped == {"duplicate_lines": 1}
    with pytest.raises(PastureError, match="line_dedup = 'first'"):
        commoncrawl.Options(line_dedup="first")


@pytest.mark.full_data  # a sample outside tests/assets/data
def test_ccnet_mode_on_real_web_pages(web_texts: list[str]) -> None:
    # 697 real, unfiltered CC pages (Dolma's sample): cc_net's min_len, then its paper mode.
    ctx = Context("s")
    steps = [dedup.length_step(300), dedup.line_dedup_step()]
    out = list(run_steps(_docs(*web_texts), steps, ctx))
    assert ctx.stats["length"].dropped == {"too_short": 146}
    assert ctx.stats["line_dedup"].dropped == {"duplicate_lines": 5}
    assert len(out) == 546 and sum(d.metadata["nlines"] for d in out) == 17_529
    keys = [{normalize.normalize_for_dedup(x) for x in d.text.split("\n")} for d in out]
    assert sum(map(len, keys)) == len(set().union(*keys))  # no kept line is in two pages
    for doc in out:
        source = dedup.wet_lines(web_texts[int(doc.id[1:])])
        assert doc.text.split("\n") == [source[i] for i in doc.metadata["line_ids"]]
    # The older rule keeps the first copy and folds accents and punctuation: 131 of its line
    # classes merge lines cc_net keeps apart.
    ctx = Context("s")
    older = list(dedup.keep_first_dedup_step()(_docs(*web_texts), ctx))
    assert len(older) == 657 and sum(d.metadata["nlines"] for d in older) == 18_628


def test_language_identifier() -> None:
    ident = language.LanguageIdentifier()
    lang, score = ident.identify("The quick brown fox jumps over the lazy dog near the river.")
    assert lang == "en" and 0.5 <= score <= 1.0
    assert ident.identify("Der schnelle braune Fuchs springt über den faulen Hund.")[0] == "de"
    with pytest.raises(Exception, match="fasttext"):
        language.LanguageIdentifier("/nonexistent/lid.176.bin")


@pytest.mark.slow
def test_ngram_lm_ranks_wikipedia_above_garbage(wiki_texts: list[str], tmp_path: Path) -> None:
    train, held_out = wiki_texts[:30], wiki_texts[30:]
    lines = [line for t in train for line in t.split("\n") if line.strip()]
    tokens = quality.SentencePieceTokens.train(lines, 2000)
    lm = quality.NgramLM.train(map(tokens, lines), tokens.vocab_size, 4)
    lm.save(tmp_path / "lm.npz")
    model = quality.PerplexityModel(tokens, quality.NgramLM.load(tmp_path / "lm.npz"))

    # probabilities of a context sum to one over the vocabulary (+ EOS)
    ctx = tuple(tokens(lines[0])[:3])
    total = sum(10 ** lm.log10_prob(ctx, t) for t in [*range(lm.vocab_size), lm.eos])
    assert total == pytest.approx(1.0, abs=1e-6)

    rng = random.Random(0)
    wiki = [model.perplexity(t[:5000]) for t in held_out]
    shuffled, letters = [], []
    for t in held_out:
        words = t[:5000].split()
        rng.shuffle(words)
        shuffled.append(model.perplexity(" ".join(words)))
        letters.append(model.perplexity("".join(rng.choice("abcdefghij ") for _ in range(1500))))
    assert all(w < s for w, s in zip(wiki, shuffled, strict=True))  # word order matters
    assert statistics.median(shuffled) < statistics.median(letters)
    assert max(wiki) < min(letters)
    cutoffs = (statistics.median(wiki), max(letters))
    assert quality.bucket_of(min(wiki), cutoffs) == "head"
    assert quality.bucket_of(max(shuffled), cutoffs) == "middle"
    assert quality.bucket_of(max(letters) + 1, cutoffs) == "tail"
    # same input, same model
    one, two = (quality.NgramLM.train(map(tokens, lines[:500]), tokens.vocab_size, 4) for _ in "ab")
    assert all(np.array_equal(a, b) for a, b in zip(one.grams, two.grams, strict=True))


@pytest.mark.slow
def test_reference_classifier_learns_wikipedia_vs_web(
    wiki_texts: list[str], web_texts: list[str], tmp_path: Path
) -> None:
    wiki = [p for t in wiki_texts for p in t.split("\n") if len(p) > 300]
    web = [t for t in web_texts if len(t) > 300]
    assert len(wiki) > 300 and len(web) > 300
    clf = quality.train_reference_classifier(wiki[::2], web[::2], n_features=2**18)
    pos = [clf.score(t) for t in wiki[1::2]]
    neg = [clf.score(t) for t in web[1::2]]
    accuracy = (sum(s >= 0.5 for s in pos) + sum(s < 0.5 for s in neg)) / (len(pos) + len(neg))
    assert accuracy > 0.85, accuracy
    clf.save(tmp_path / "clf.npz")
    loaded = quality.ReferenceClassifier.load(tmp_path / "clf.npz")
    assert loaded.score(wiki[1]) == clf.score(wiki[1])
    again = quality.train_reference_classifier(wiki[::2], web[::2], n_features=2**18)
    assert np.array_equal(again.weights, clf.weights)

    ctx = Context("s")
    docs = _docs(wiki[1], web[1])
    kept = list(quality.reference_step(clf, 0.5)(docs, ctx))
    assert "reference_score" in docs[1].metadata
    assert len(kept) + sum(ctx.stats["read"].dropped.values()) == 2
