"""Which catalog items a request sends to the LLM: the candidate spec (core/candidates.py) resolved against the catalog,
and the cheap first stage that ranks the whole catalog for the default spec. Torch-free.

- an explicit list of item ids: all of them are scored by the LLM (items already in the history allowed: asked for);
- "sampled:N": N items drawn (seeded, without replacement) from the catalog items not in the history;
- "all": every catalog item not in the history, all scored by the LLM (C / max_candidates decoder calls);
- default: the first stage ranks every catalog item not in the history and the top `n_rescore` (default the bundle's
  `recommender.n_rescore`, written by `train recommender`, else core.candidates.DEFAULT_RESCORE) are rescored by the
  LLM. The first stage is the SASRec dot product with the item embeddings when the bundle ships them (config
  sasrec.item_embeddings), else popularity among the known users' histories, else catalog order. Items the first
  stage cannot rank (no SASRec embedding: cold-start items added with `summarize-item --add-to-catalog`, or the
  k-core-dropped items of an `export --catalog all`) are rescored too, at most `n_rescore` of them (the last ones in
  catalog order: the most recently added): the LLM reads their keywords and image, which is the point of summarizing
  them, but thousands of them must not silently cost seconds per request; a warning says how many were left out. So
  the LLM scores at most 2 x n_rescore items by default. Why a first stage: the LLM costs one batched decoder call per
  `max_candidates` items, the dot product costs microseconds for the catalog.

Read-only after construction, so one FirstStage serves many threads.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

from ..core.candidates import ALL, IDS, SAMPLED, CandidateSpec
from ..core.errors import UserError
from .catalog import check_candidate_ids


def popularity_scores(histories: Mapping[int, Sequence[int]], catalog_ids: Sequence[int]) -> np.ndarray:
    """How many known users' histories hold each catalog item (row k <-> catalog_ids[k])."""
    counts: dict[int, int] = {}
    for h in histories.values():
        for i in h:
            counts[i] = counts.get(i, 0) + 1
    return np.array([counts.get(int(i), 0) for i in catalog_ids], np.float64)


class FirstStage:
    """Candidates of a request: `catalog` (ids in catalog order, `in` for membership), the SASRec item index
    (item id -> 1-based row) and item embeddings (row k-1 <-> index k; None without them), popularity scores per
    catalog position (None without known users) and the default number of items to rescore."""

    def __init__(self, catalog, sasrec_index: Mapping[int, int], item_embeddings: np.ndarray | None,
                 popularity: np.ndarray | None, n_rescore: int):
        self.catalog = catalog
        self.sasrec_index = sasrec_index
        self.item_embeddings = item_embeddings
        self.popularity = popularity
        self.n_rescore = int(n_rescore)

    def candidates(self, candidates, history: Sequence[int], user_embedding: np.ndarray | None,
                   n_rescore: int | None = None, seed: int = 0,
                   warnings: list[str] | None = None) -> tuple[list[int], list[float | None] | None, str]:
        """(candidate ids, first-stage scores or None, mode) for any accepted candidate spec; what the caller should
        know (cold-start items over the budget) is appended to `warnings`."""
        seen = set(history)
        pool = [int(i) for i in self.catalog.ids if int(i) not in seen]
        spec = CandidateSpec.parse(candidates)
        if spec.kind == ALL:
            return pool, None, "all"
        if spec.kind == SAMPLED:
            if spec.n > len(pool):
                raise UserError(f"{spec.mode} asks for {spec.n} candidates; {len(pool)} items are not in the "
                                "history", f"choose 1 <= N <= {len(pool)}")
            pick = np.random.default_rng(seed).choice(len(pool), size=spec.n, replace=False)
            return [pool[k] for k in sorted(pick)], None, spec.mode
        if spec.kind == IDS:
            check_candidate_ids(spec.ids, self.catalog)
            return list(spec.ids), None, "list"
        return self.rank(pool, user_embedding, self.n_rescore if n_rescore is None else int(n_rescore), warnings)

    def rank(self, pool: list[int], user_embedding: np.ndarray | None, n: int,
             warnings: list[str] | None = None) -> tuple[list[int], list[float | None], str]:
        """The top `n` of `pool` by the first stage, then at most `n` items it cannot rank (the last in catalog order;
        a warning in `warnings` when there are more); mode "<stage>+llm"."""
        if n < 1:
            raise UserError(f"n_rescore must be >= 1, got {n}")
        if self.item_embeddings is not None and user_embedding is not None:
            rankable = [i for i in pool if i in self.sasrec_index]
            scores = self.item_embeddings[[self.sasrec_index[i] - 1 for i in rankable]] @ user_embedding
            mode = "sasrec"
        elif self.popularity is not None:
            pos = {int(i): r for r, i in enumerate(self.catalog.ids)}
            rankable = [i for i in pool if i in self.sasrec_index or not self.sasrec_index]
            scores = self.popularity[[pos[i] for i in rankable]]
            mode = "popularity"
        else:
            rankable, scores, mode = pool, -np.arange(len(pool), dtype=np.float64), "catalog-order"
        order = np.argsort(-np.asarray(scores, np.float64), kind="stable")[:n]
        chosen = [rankable[k] for k in order]
        first: list[float | None] = [float(scores[k]) for k in order]
        ranked = set(rankable)
        cold = [i for i in pool if i not in ranked]
        if len(cold) > n:
            if warnings is not None:
                warnings.append(f"{len(cold)} cold-start items (the first stage cannot rank them) exceed the "
                                f"rescoring budget of {n}: the LLM rescored the {n} most recently added; --rescore N "
                                "or --candidates all score more")
            cold = cold[-n:]
        return chosen + cold, first + [None] * len(cold), f"{mode}+llm"
