"""Turning a case (history, user embedding, candidates) into token ids: keywords lookup, collaborative retrieval, the
optional SASRec rank hint, the prompt builder, per-item suffix caching. Shared by training, evaluation and (being
torch-free) the runtime, so the three cannot drift apart.

The user embedding is computed by the caller (SASRec in PyTorch, or its ONNX graph) from the items BEFORE the target
only; `exclude` is the user's own id when that user is indexed (training windows), so it never retrieves itself.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from . import prompt as P
from .retrieval import RetrievalIndex


@dataclass
class ItemText:
    title: str
    keywords: list[str]
    has_image: bool = False


def item_texts(titles: dict[int, str], keywords: dict, has_image: dict[int, bool] | None = None) -> dict[int, ItemText]:
    """Titles + keyword store (item id -> ItemKeywords or list of keywords) -> ItemText per item
    (missing keywords: [])."""
    out = {}
    for i, title in titles.items():
        kw = keywords.get(i)
        kws = list(getattr(kw, "keywords", kw) or [])
        out[int(i)] = ItemText(title, kws, bool((has_image or {}).get(i, False)))
    return out


class SASRecRanks:
    """Catalog ranks of items under a SASRec user embedding (score = item embedding . user embedding), in numpy."""

    def __init__(self, item_ids: Sequence[int], item_embeddings: np.ndarray):
        self.item_ids = np.asarray(item_ids, np.int64)
        self.emb = np.asarray(item_embeddings, np.float32)
        self.col = {int(i): k for k, i in enumerate(self.item_ids)}

    def ranks(self, user_embedding: np.ndarray, items: Sequence[int]) -> list[int]:
        scores = self.emb @ np.asarray(user_embedding, np.float32)
        out = []
        for i in items:
            k = self.col.get(int(i))
            # An item SASRec never saw ranks last, as SASRec itself scores it.
            out.append(len(scores) if k is None else int((scores > scores[k]).sum()))
        return out


class PromptMaker:
    def __init__(self, items: dict[int, ItemText], encode: P.Encode, bos_id: int | None, cfg: P.PromptConfig,
                 retrieval: RetrievalIndex | None = None, items_per_neighbour: int | None = None,
                 k_neighbours: int | None = None, ranks: SASRecRanks | None = None, n_image_tokens: int = 0):
        if cfg.rank_hint and ranks is None:
            raise ValueError("the prompt config asks for the SASRec rank hint but no SASRec item embeddings were given")
        self.items, self.encode, self.bos_id, self.cfg = items, encode, bos_id, cfg
        self.retrieval, self.ipn, self.k = retrieval, items_per_neighbour, k_neighbours
        self.ranks, self.n_image_tokens = ranks, n_image_tokens
        self._suffix: dict[tuple[int, int | None], list[int]] = {}

    def keywords(self, item: int) -> list[str]:
        it = self.items.get(int(item))
        return it.keywords if it is not None else []

    def collab(self, embeddings: np.ndarray | None, exclude=None) -> list[list[list[str]]]:
        """Keyword groups of the collaborative context per embedding row ([] everywhere without retrieval)."""
        if self.retrieval is None or embeddings is None:
            n = 0 if embeddings is None else len(np.atleast_2d(embeddings))
            return [[] for _ in range(n)]
        return self.retrieval.collaborative_context(embeddings, exclude, self.k, self.ipn)

    def prefix(self, history: Sequence[int], collab: Sequence[Sequence[str]]) -> list[int]:
        hist = [self.keywords(i) for i in list(history)[-self.cfg.history_len:]] if self.cfg.history_len else []
        return P.prefix_ids(self.encode, self.bos_id, hist, collab, self.cfg)

    def image_tokens(self, item: int) -> int:
        it = self.items.get(int(item))
        return self.n_image_tokens if self.cfg.candidate_image and it is not None and it.has_image else 0

    def suffix(self, item: int, rank: int | None = None) -> list[int]:
        if self.cfg.rank_hint and rank is None:
            raise ValueError("the SASRec rank hint needs the candidate's rank")
        key = (int(item), P.rank_bucket(rank, self.cfg.rank_digits) if self.cfg.rank_hint else None)
        if key not in self._suffix:
            it = self.items.get(int(item)) or ItemText(f"item {item}", [])
            self._suffix[key] = P.suffix_ids(self.encode, it.title, it.keywords, self.image_tokens(item),
                                             rank if self.cfg.rank_hint else None, self.cfg)
        return self._suffix[key]

    def suffixes(self, candidates: Sequence[int], embedding: np.ndarray | None = None) -> list[list[int]]:
        if self.cfg.rank_hint:
            if embedding is None:
                raise ValueError("the SASRec rank hint needs the user embedding")
            ranks = self.ranks.ranks(embedding, candidates)
        else:
            ranks = [None] * len(candidates)
        return [self.suffix(c, r) for c, r in zip(candidates, ranks)]

    def case(self, history: Sequence[int], embedding: np.ndarray | None, candidates: Sequence[int],
             collab: Sequence[Sequence[str]] | None = None, exclude=None) -> tuple[list[int], list[list[int]]]:
        """(prefix ids, suffix ids per candidate) of one case."""
        if collab is None:
            collab = self.collab(np.atleast_2d(embedding), exclude)[0] if embedding is not None else []
        return self.prefix(history, collab), self.suffixes(candidates, embedding)
