"""Language identification (CCNet's fastText step; py3langid by default)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from ...errors import PastureError
from ..document import Document, Step, filter_step


class LanguageIdentifier:
    """``identify(text) -> (language, score)``; py3langid by default, fastText if given a model.

    Scores are probabilities in [0, 1] rounded to 2 digits, as in CCNet's output.
    """

    def __init__(self, fasttext_model: str | Path | None = None) -> None:
        self._fasttext = None
        self._langid = None
        if fasttext_model is not None:
            try:
                import fasttext  # noqa: PLC0415 - optional dependency
            except ImportError as e:
                raise PastureError(
                    f"fasttext_model={fasttext_model} needs the fasttext package: "
                    "pip install fasttext (or leave fasttext_model unset to use py3langid)"
                ) from e
            if not Path(fasttext_model).is_file():
                raise PastureError(f"fasttext_model={fasttext_model}: no such file")
            self._fasttext = fasttext.load_model(str(fasttext_model))
        else:
            from py3langid.langid import MODEL_FILE
            from py3langid.langid import LanguageIdentifier as Py3Langid

            self._langid = Py3Langid.from_model_file(MODEL_FILE, norm_probs=True)

    def identify(self, text: str) -> tuple[str, float]:
        text = text.replace("\n", " ").strip()
        if not text:
            return "unknown", 0.0
        if self._fasttext is not None:
            labels, scores = self._fasttext.predict(text, k=1)
            return labels[0].removeprefix("__label__"), round(float(scores[0]), 2)
        lang, score = self._langid.classify(text)
        return lang, round(float(score), 2)


def language_step(
    languages: Sequence[str] | None,
    min_score: float,
    fasttext_model: str | Path | None = None,
    name: str = "language",
) -> Step:
    """Set ``language`` and ``language_score``; drop ``language`` when the language is not in
    ``languages`` (None keeps all) or the score is under ``min_score``."""
    identifier = LanguageIdentifier(fasttext_model)
    wanted = set(languages) if languages else None

    def why_drop(doc: Document) -> str | None:
        lang, score = identifier.identify(doc.text)
        doc.metadata["language"] = lang
        doc.metadata["language_score"] = score
        if (wanted is not None and lang not in wanted) or score < min_score:
            return "language"
        return None

    return filter_step(name, why_drop)
