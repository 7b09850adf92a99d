"""CCNet's processing of web pages (LLaMA §2.1; Wenzek et al. 2020), shared by the web sources.

The pieces, in the order CCNet applies them to a shard of CommonCrawl:

- ``dedup``: cc_net's paper mode (its ``dedup.py``): every line whose normalized form is in two
  or more pages of the shard group is removed, all its copies; a line repeated inside one page
  only is kept once; ``line_ids`` records the kept lines. ``keep_first_dedup_step`` is the
  earlier Pasture rule (accents and all punctuation folded, the first occurrence kept).
- ``language``: py3langid (ships its model) or a fastText ``lid.176.bin``; documents outside
  ``languages`` or under ``min_score`` are dropped.
- ``quality``: per-document perplexity under a language model trained on Wikipedia, and CCNet's
  head/middle/tail buckets by perplexity cutoffs (CCNet used a SentencePiece tokenizer and a
  5-gram KenLM; we train the same shape ourselves, SentencePiece unigram + interpolated
  Kneser-Ney n-gram in plain Python, or load a user's KenLM model); then LLaMA's linear
  classifier of "pages used as references in Wikipedia vs. randomly sampled pages", as hashed
  word n-gram logistic regression in numpy.
- ``normalize``: cc_net's ``text_normalizer.py``, the line keys of the dedup and the text the
  language model sees.

Everything is deterministic: no Python ``hash()`` (it is salted per process), fixed seeds.
"""
