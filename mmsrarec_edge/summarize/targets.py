"""Pseudo-keywords that the SFT warm start teaches: from ground-truth attributes where a dataset has them, else TF-IDF.

Two sources, chosen per dataset (SummarizerConfig.targets, "auto" picks):
- "attributes": the item's ground-truth attribute values. The synthetic catalog has them; the image task learns the
  attributes drawn in the picture (size, colour, pattern, category), the text task all six (plus material, style).
- "tfidf": the top-k words of the item text by TF-IDF over the catalog (no labels needed; real sets such as ml100k_mm).
  Both tasks learn the text's keywords, so on such sets the image task learns to guess them from the poster.
Torch-free.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from typing import Iterable, Sequence

from ..core.keywords import STOPWORDS, normalize_keyword

WORD = re.compile(r"[a-z][a-z'\-]*[a-z]|[a-z]")
SYNTH_IMAGE_ATTRIBUTES = ("size", "colour", "pattern", "category")
SYNTH_TEXT_ATTRIBUTES = ("size", "colour", "pattern", "category", "material", "style")
# The synthetic descriptions sometimes say "plain" for the "solid" pattern.
SYNTH_SYNONYMS = {"plain": "solid"}


def text_words(text: str, min_len: int = 3) -> list[str]:
    """Lowercase content words of a text (stopwords, numbers and very short words dropped)."""
    return [w for w in WORD.findall(text.lower()) if len(w) >= min_len and w not in STOPWORDS]


class TfidfKeywords:
    """TF-IDF keyword extractor fitted on a catalog's texts (smoothed idf, raw term counts)."""

    def __init__(self, texts: Iterable[str]):
        docs = [set(text_words(t)) for t in texts]
        self.n_docs = len(docs)
        df = Counter(w for d in docs for w in d)
        self.idf = {w: math.log((1 + self.n_docs) / (1 + c)) + 1.0 for w, c in df.items()}
        self.default_idf = math.log(1 + self.n_docs) + 1.0

    def scores(self, text: str) -> dict[str, float]:
        tf = Counter(text_words(text))
        return {w: c * self.idf.get(w, self.default_idf) for w, c in tf.items()}

    def keywords(self, text: str, k: int = 5) -> list[str]:
        """The k highest-scoring words, ties broken by first appearance, in order of appearance in the text."""
        words = text_words(text)
        first = {w: i for i, w in reversed(list(enumerate(words)))}
        s = self.scores(text)
        top = sorted(s, key=lambda w: (-s[w], first[w]))[:k]
        return sorted(top, key=lambda w: first[w])


def attribute_keywords(attributes: dict | None, keys: Sequence[str]) -> list[str]:
    """Attribute values in `keys` order; "a|b" multi-values are split; missing keys are skipped."""
    out: list[str] = []
    for key in keys:
        value = (attributes or {}).get(key)
        if value is None:
            continue
        for v in str(value).split("|"):
            kw = normalize_keyword(v)
            if kw and kw not in out:
                out.append(kw)
    return out


def has_attributes(items: Iterable, keys: Sequence[str]) -> bool:
    """True when every item carries every key (so attribute targets exist for the whole catalog)."""
    items = list(items)
    return bool(items) and all(it.attributes and all(k in it.attributes for k in keys) for it in items)
