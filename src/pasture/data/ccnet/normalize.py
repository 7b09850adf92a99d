"""cc_net's ``text_normalizer.py``: the keys lines are deduplicated by, and the text the
quality model reads."""

from __future__ import annotations

import re
import unicodedata
from functools import cache

_DIGITS = re.compile(r"\d")
_SPACES = re.compile(r"\s+")
# CCNet's punctuation normalization for the LM (text_normalizer.py): unicode forms → ASCII.
_PUNCT_TO_ASCII = str.maketrans(
    {
        "，": ",", "。": ". ", "、": ",", "„": '"', "”": '"', "“": '"', "«": '"', "»": '"',
        "１": '"', "」": '"', "「": '"', "《": '"', "》": '"', "´": "'", "∶": ":", "：": ":",
        "？": "?", "！": "!", "（": "(", "）": ")", "；": ";", "–": "-", "—": " - ", "．": ". ",
        "～": "~", "’": "'", "…": "...", "━": "-", "〈": "<", "〉": ">", "【": "[", "】": "]",
        "％": "%", "►": "-",
    }
)  # fmt: skip


_PUNCT_TO_ASCII_KEYS = "".join(chr(c) for c in _PUNCT_TO_ASCII)


@cache
def _punct_or_control_table() -> dict[int, None]:
    """Every code point that is punctuation (P*) or non-printing (Cc, Cf): deleted for dedup."""
    table: dict[int, None] = {}
    for cp in range(0x110000):
        cat = unicodedata.category(chr(cp))
        if cat[0] == "P" or cat in ("Cc", "Cf"):
            table[cp] = None
    return table


def strip_accents(text: str) -> str:
    decomposed = unicodedata.normalize("NFD", text)
    if decomposed == text and text.isascii():
        return text
    return "".join(c for c in decomposed if unicodedata.category(c) != "Mn")


# cc_net's text_normalizer: the Unicode punctuation it maps for the LM, and C0/C1 controls.
_CCNET_PUNCT_OR_NON_PRINTING = re.compile(
    "[" + "".join(map(re.escape, _PUNCT_TO_ASCII_KEYS)) + "\x00-\x1f\x7f-\x9f]"
)


def normalize_for_dedup(line: str) -> str:
    """cc_net's ``normalize_for_dedup``, exactly: strip, lowercase, every Unicode digit → 0,
    then delete its 34 Unicode punctuation marks (``“ ” — …``) and control characters. ASCII
    punctuation and accents stay: "Café, 1" and "cafe 2" are different lines."""
    line = line.strip()
    if not line:
        return line
    line = _DIGITS.sub("0", line.lower())
    return _CCNET_PUNCT_OR_NON_PRINTING.sub("", line)


def fold_for_dedup(line: str) -> str:
    """Pasture's looser key (``line_dedup = "keep_first"``): lowercase, digits → 0, no accents,
    no punctuation (any Unicode P*) or control characters, so "Café 1" and "cafe, 2" match."""
    line = line.strip()
    if not line:
        return line
    line = strip_accents(line.lower())
    line = _DIGITS.sub("0", line)
    return line.translate(_punct_or_control_table())


def normalize_for_lm(line: str) -> str:
    """CCNet's normalization before the LM: lowercase, no accents, digits → 0, ASCII punctuation,
    collapsed spaces."""
    line = strip_accents(line.strip().lower())
    line = _DIGITS.sub("0", line).translate(_PUNCT_TO_ASCII)
    return _SPACES.sub(" ", line).strip()
