"""Parse a summarizer's decoded output into keywords, and score keywords against ground truth. Torch-free.

The model is taught to write comma-separated keywords, but a sampled or half-trained model writes anything: nothing,
one endless run-on phrase, the same keyword five times, leaked special tokens, bullets, stray punctuation, WordPiece
fragments. `parse_keywords` turns any string into a clean, bounded list and never raises; the runtime's cold-start
summarizer uses the same function on its numpy-decoded output.
"""

from __future__ import annotations

import re
import unicodedata
from typing import Iterable, Sequence

MAX_INPUT_CHARS = 2000  # a runaway generation is cut here before any regex work
SEPARATORS = re.compile(r"[,;\n\r\t|/•·]+")
SPECIAL_TOKEN = re.compile(r"\[(?:[A-Z]+|unused\d+)\]|<\|?[^<>\s]{1,24}\|?>")
ENUMERATION = re.compile(r"^\s*(?:\d{1,2}[.)]|[-*+>]+)\s+")
NOT_KEPT = re.compile(r"[^0-9a-z'\- ]+")
SPACED_JOINERS = re.compile(r"\s*([-'])\s*")
STOPWORDS = frozenset(
    """a about above after again against all also am an and any are as at be because been before being below between
    both but by can could did do does doing down during each few for from further had has have having he her here hers
    him his how i if in into is it its itself just keywords keyword me more most my no nor not of off on once only or
    other our out over own same she should so some such than that the their them then there these they this those
    through to too under until up very was we were what when where which while who whom why will with would you your
    image text none n/a""".split()
)


def normalize_keyword(text: str, max_words: int = 4, max_chars: int = 40) -> str:
    """One keyword in canonical form: lowercase ASCII-ish words, single spaces, no repeated words, bounded length.

    Returns "" when nothing meaningful is left (only punctuation, only stopwords, a leaked special token...).
    """
    s = SPECIAL_TOKEN.sub(" ", unicodedata.normalize("NFKD", text))
    # accents go (WordPiece strips them too); control and format characters become spaces
    s = "".join(" " if unicodedata.category(ch)[0] == "C" else ch for ch in s if unicodedata.category(ch) != "Mn")
    s = s.lower()
    s = ENUMERATION.sub("", s)
    s = s.replace("##", "")
    s = NOT_KEPT.sub(" ", s)
    s = SPACED_JOINERS.sub(r"\1", s)  # WordPiece decodes "it's" as "it ' s" and "sci-fi" as "sci - fi"
    words = []
    for w in s.split():
        w = w.strip("-'")
        if w and not (words and words[-1] == w):  # "lamp lamp lamp" is one lamp
            words.append(w)
    words = words[:max_words]
    while words and len(" ".join(words)) > max_chars:
        words.pop()
    heads = [w.strip("-'") for w in s.split() if w.strip("-'")]
    if not words and heads:  # a single word longer than max_chars: keep its head rather than nothing
        words = [heads[0][:max_chars].strip("-'")]  # stripped like every word, so re-parsing changes nothing
    if not any(ch.isalnum() for w in words for ch in w) or all(w in STOPWORDS for w in words):
        return ""
    return " ".join(words)


def parse_keywords(output, max_keywords: int = 8, max_words: int = 4, max_chars: int = 40) -> list[str]:
    """Decoded model output -> at most `max_keywords` distinct, normalized keywords in order of appearance."""
    if not isinstance(output, str):
        return []
    out: list[str] = []
    seen: set[str] = set()
    # special tokens go before splitting: "<|im_end|>" holds a separator
    for piece in SEPARATORS.split(SPECIAL_TOKEN.sub(" ", output[:MAX_INPUT_CHARS])):
        kw = normalize_keyword(piece, max_words=max_words, max_chars=max_chars)
        if kw and kw not in seen:
            seen.add(kw)
            out.append(kw)
            if len(out) >= max_keywords:
                break
    return out


def _contains(words: Sequence[str], phrase: Sequence[str]) -> bool:
    n = len(phrase)
    return n > 0 and any(list(words[i:i + n]) == list(phrase) for i in range(len(words) - n + 1))


def match_counts(keywords: Sequence[str], gold: Iterable[str],
                 synonyms: dict[str, str] | None = None) -> tuple[int, int, int, int]:
    """(correct keywords, keywords, recalled gold values, gold values) for micro-averaged precision and recall.

    A keyword is correct when it contains a gold value as a whole word or phrase ("blue lamp" is correct for "blue");
    a gold value is recalled when some keyword contains it. `synonyms` maps a word to the gold word it stands for.
    """
    syn = synonyms or {}
    gold_words = [g.split() for g in dict.fromkeys(normalize_keyword(x, 8, 80) for x in gold) if g]
    kw_words = [[syn.get(w, w) for w in k.split()] for k in keywords]
    correct = sum(1 for kw in kw_words if any(_contains(kw, g) for g in gold_words))
    recalled = sum(1 for g in gold_words if any(_contains(kw, g) for kw in kw_words))
    return correct, len(kw_words), recalled, len(gold_words)


def precision_recall(counts: Iterable[tuple[int, int, int, int]]) -> dict:
    """Micro-averaged precision, recall and F1 over many items' `match_counts`."""
    c = k = r = g = 0
    for a, b, d, e in counts:
        c, k, r, g = c + a, k + b, r + d, g + e
    p = c / k if k else 0.0
    rec = r / g if g else 0.0
    return {"precision": p, "recall": rec, "f1": 2 * p * rec / (p + rec) if p + rec else 0.0, "keywords": k, "gold": g}
