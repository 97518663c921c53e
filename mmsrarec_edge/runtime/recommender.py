"""The torch-free recommender: a verified bundle in, top-K items with scores and explanation keywords out.

One request: history (a known user's, from the bundle's user table, or an ad-hoc list of item ids) -> SASRec user
encoder (ONNX) -> hnswlib neighbours among the training users -> their collaborative keywords -> prompt (shared prefix:
history keywords + collaborative keywords; one suffix per candidate: its title, keywords and cached image features) ->
shared-prefix yes/no scoring (runtime/scorer.py) -> top-K. Each result carries its score p(yes)/(p(yes)+p(no)) and
explanation keywords: the candidate's keywords that also appear in the history or collaborative keywords, then its own.

Candidates:
- an explicit list of item ids: all of them are scored by the LLM (items already in the history allowed: asked for);
- "sampled:N": N items drawn (seeded, without replacement) from the catalog items not in the history;
- "all": every catalog item not in the history, all scored by the LLM (C / max_candidates decoder calls);
- default (None): a cheap first stage ranks every catalog item not in the history and the top `n_rescore` (default
  the bundle's `recommender.n_rescore`, else 50) are rescored by the LLM. The first stage is the SASRec dot product
  with the item embeddings when the bundle ships them (config sasrec.item_embeddings, safetensors), else popularity
  among the known users' histories, else catalog order. Items the first stage cannot rank (no SASRec embedding:
  cold-start items added with `summarize-item --add-to-catalog`) are always rescored: the LLM reads their keywords
  and image, which is the point of summarizing them. Why a first stage: the LLM costs one batched decoder call per
  `max_candidates` items, the dot product costs microseconds for the whole catalog.

Histories: every id must be in the catalog, without duplicates, and not empty (UserError otherwise). A history longer
than SASRec's max_len is truncated to its last max_len items (older items cannot reach the encoder, and the prompt
shows only the last `history_len` anyway), with a warning in the result for an ad-hoc history (a known user's long
history is the bundle's own and is truncated silently). Ties in LLM score keep the candidate order.

Thread-safety: all state is read-only after construction; onnxruntime's `run` is thread-safe and the hnswlib query
(which mutates ef) is under a lock, so one Recommender serves many threads with results identical to serial calls.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from ..errors import BundleError, UserError
from ..recommend import prompt as rp
from ..retrieval import RetrievalIndex
from .bundle import load_manifest, read_safetensors
from .catalog import Catalog
from .llm import Decoder, Embedder
from .scorer import CandidateScorer
from .sessions import SessionConfig, open_bundle_graph
from .tokenizer import Codec

DEFAULT_RESCORE = 50


@dataclass
class RecommendedItem:
    rank: int
    item_id: int
    title: str
    score: float
    explanation: list[str]
    first_stage: float | None = None


@dataclass
class Recommendation:
    items: list[RecommendedItem]
    user: int | None
    history: list[int]
    candidate_mode: str
    scored: list[tuple[int, float]]  # every LLM-scored candidate, in candidate order
    neighbours: list[int] = field(default_factory=list)
    collaborative_keywords: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    provider: str = "cpu"
    timings_ms: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["scored"] = [{"item_id": i, "score": s} for i, s in self.scored]
        return d


class Recommender:
    def __init__(self, bundle_dir: Path, provider: str | None = None, precision: str | None = None,
                 threads: int | None = None, verify: bool = True, max_batch: int | None = None):
        self.manifest = load_manifest(bundle_dir, verify=verify)
        self.config = config = self.manifest.config()
        self.session_config = cfg = SessionConfig.resolve(provider, precision, threads)
        rec = config.get("recommender")
        if not rec or not self.manifest.has_graph("recommender.decoder"):
            raise BundleError(f"bundle {self.manifest.root} has no recommender",
                              "export it with the recommender graphs (recommender.embed, recommender.decoder)")
        self.rec_conf = rec
        self.limits = config.get("limits", {})
        special = rec.get("special_tokens", {})
        self.pad_id, self.bos_id = int(special.get("pad_id") or 0), special.get("bos_id")
        self.image_token_id = rec.get("image_token_id")
        self.n_image_tokens = int(rec.get("num_image_tokens", 0))
        self.codec = Codec(self.manifest.path(rec.get("tokenizer", "tokenizer.json")))
        embedder = Embedder(open_bundle_graph(self.manifest, "recommender.embed", cfg), self.image_token_id)
        decoder = Decoder(open_bundle_graph(self.manifest, "recommender.decoder", cfg))
        batch = max_batch or int(self.limits.get("max_candidates", 32))
        self.scorer = CandidateScorer(decoder, embedder, self.pad_id, max_batch=batch)
        self.catalog = Catalog.load(self.manifest)
        self.prompt_config = rp.PromptConfig.from_dict(rec.get("prompt"))
        self.n_rescore = int(rec.get("n_rescore", DEFAULT_RESCORE))
        if self.prompt_config.candidate_image and self.n_image_tokens < 1:
            raise BundleError("config.json: recommender.num_image_tokens is missing", "re-export the bundle")
        self._load_sasrec()
        self._load_retrieval()
        self._popularity = self._popularity_scores()
        self._suffix_cache: dict[int, list[int]] = {}  # item -> suffix ids; benign race: same value either way

    # ------------------------------------------------------------------ loading

    def _load_sasrec(self) -> None:
        s = self.config.get("sasrec")
        self.user_encoder, self.sasrec_index, self.item_embeddings = None, {}, None
        if not s or not self.manifest.has_graph("sasrec.user_encoder"):
            return
        self.max_len = int(s["max_len"])
        ids = json.loads(self.manifest.path(s["item_ids"]).read_text())["item_ids"]
        self.sasrec_index = {int(i): k + 1 for k, i in enumerate(ids)}
        self.user_encoder = open_bundle_graph(self.manifest, "sasrec.user_encoder", self.session_config)
        if s.get("item_embeddings"):
            self.item_embeddings = read_safetensors(self.manifest.path(s["item_embeddings"]))["item_embeddings"]

    def _load_retrieval(self) -> None:
        self.retrieval = None
        section = self.config.get("retrieval")
        if section and self.user_encoder is not None:
            self.retrieval = RetrievalIndex(self.manifest.root / section.get("dir", "index"))

    def _popularity_scores(self) -> np.ndarray | None:
        if self.retrieval is None:
            return None
        counts: dict[int, int] = {}
        for h in self.retrieval.histories.values():
            for i in h:
                counts[i] = counts.get(i, 0) + 1
        return np.array([counts.get(int(i), 0) for i in self.catalog.ids], np.float64)

    @property
    def provider(self) -> str:
        return self.session_config.provider

    def known_users(self) -> list[int]:
        return sorted(self.retrieval.histories) if self.retrieval is not None else []

    # ------------------------------------------------------------------ request parts

    def _history(self, user: int | None, history: Sequence[int] | None) -> tuple[list[int], list[str]]:
        if (user is None) == (history is None):
            raise UserError("pass exactly one of a user id or a history")
        if user is not None:
            if self.retrieval is None or int(user) not in self.retrieval.histories:
                n = len(self.known_users())
                raise UserError(f"unknown user id {user}", f"the bundle knows {n} users" + (
                    f" (e.g. {', '.join(map(str, self.known_users()[:5]))}); or pass an ad-hoc history" if n
                    else "; pass an ad-hoc history instead"))
            history = self.retrieval.histories[int(user)]
        hist = [int(i) for i in history]
        if not hist:
            raise UserError("the history is empty", "give at least one item id")
        unknown = [i for i in hist if i not in self.catalog]
        if unknown:
            raise UserError(f"unknown item id {unknown[0]} in the history (not in the bundle's catalog)"
                            + (f"; {len(unknown) - 1} more unknown" if len(unknown) > 1 else ""))
        dup = sorted({i for i in hist if hist.count(i) > 1})
        if dup:
            raise UserError(f"duplicate item id {dup[0]} in the history", "list each item once, oldest first")
        warnings = []
        limit = getattr(self, "max_len", None)
        if limit and len(hist) > limit:
            if user is None:  # a known user's long history is the bundle's own: nothing to warn the caller about
                warnings.append(f"history has {len(hist)} items; the model reads the last {limit}, older ones are "
                                "ignored")
            hist = hist[-limit:]
        return hist, warnings

    def _user_embedding(self, hist: list[int]) -> np.ndarray | None:
        if self.user_encoder is None:
            return None
        idx = [self.sasrec_index[i] for i in hist if i in self.sasrec_index][-self.max_len:]
        row = np.zeros((1, self.max_len), np.int64)
        if idx:
            row[0, self.max_len - len(idx):] = idx
        return self.user_encoder.run(None, {"history": row})[0][0]

    def _candidates(self, candidates, hist: list[int], emb, n_rescore: int | None, seed: int):
        """(candidate ids, first-stage scores or None, mode)."""
        seen = set(hist)
        pool = [int(i) for i in self.catalog.ids if int(i) not in seen]
        if isinstance(candidates, str):
            mode = candidates.strip().lower()
            if mode == "all":
                return pool, None, "all"
            if mode.startswith("sampled:"):
                try:
                    n = int(mode.split(":", 1)[1])
                except ValueError as exc:
                    raise UserError(f"candidates {candidates!r}: sampled:N needs an integer N") from exc
                if not 1 <= n <= len(pool):
                    raise UserError(f"sampled:{n} asks for {n} candidates; {len(pool)} items are not in the history",
                                    f"choose 1 <= N <= {len(pool)}")
                pick = np.random.default_rng(seed).choice(len(pool), size=n, replace=False)
                return [pool[k] for k in sorted(pick)], None, f"sampled:{n}"
            raise UserError(f"unknown candidate mode {candidates!r}", "use a list of item ids, sampled:N or all")
        if candidates is not None:
            ids = [int(i) for i in candidates]
            if not ids:
                raise UserError("the candidate list is empty")
            unknown = [i for i in ids if i not in self.catalog]
            if unknown:
                raise UserError(f"unknown candidate item id {unknown[0]} (not in the bundle's catalog)")
            dup = sorted({i for i in ids if ids.count(i) > 1})
            if dup:
                raise UserError(f"duplicate candidate item id {dup[0]}")
            return ids, None, "list"
        n = self.n_rescore if n_rescore is None else int(n_rescore)
        if n < 1:
            raise UserError(f"n_rescore must be >= 1, got {n}")
        pos = {int(i): r for r, i in enumerate(self.catalog.ids)}
        if self.item_embeddings is not None and emb is not None:
            rankable = [i for i in pool if i in self.sasrec_index]
            scores = self.item_embeddings[[self.sasrec_index[i] for i in rankable]] @ emb
            mode = "sasrec"
        elif self._popularity is not None:
            rankable = [i for i in pool if i in self.sasrec_index or not self.sasrec_index]
            scores = self._popularity[[pos[i] for i in rankable]]
            mode = "popularity"
        else:
            rankable, scores, mode = pool, -np.arange(len(pool), dtype=np.float64), "catalog-order"
        order = np.argsort(-np.asarray(scores, np.float64), kind="stable")[:n]
        chosen = [rankable[k] for k in order]
        first = [float(scores[k]) for k in order]
        ranked = set(rankable)
        cold = [i for i in pool if i not in ranked]
        return chosen + cold, first + [None] * len(cold), f"{mode}+llm"

    def _prompts(self, hist: list[int], collab: list[str], cands: list[int]):
        """(prefix ids, suffix ids per candidate, image features per candidate) by the recommender's one prompt
        builder (recommend/prompt.py). A candidate's image is used when the prompt config says so and the catalog
        caches its features; the catalog's precomputed candidate_token_ids are used when present."""
        items, pc = self.catalog.items, self.prompt_config
        prefix_ids = rp.prefix_ids(self.codec.encode, self.bos_id, [items[i].keywords for i in hist], collab, pc)
        suffixes, feats = [], []
        for i in cands:
            f = self.catalog.features.get(i) if pc.candidate_image else None
            n_img = self.n_image_tokens if f is not None else 0
            ids = self._suffix_cache.get(i)
            if ids is None:
                ids = items[i].candidate_token_ids
                if ids is None or sum(1 for t in ids if t == self.image_token_id) != n_img:
                    # no precomputed ids, or they have image slots this bundle has no cached features for
                    ids = rp.suffix_ids(self.codec.encode, items[i].title, items[i].keywords, n_img, pc)
                self._suffix_cache[i] = ids
            suffixes.append(ids)
            feats.append([f] if n_img else None)
        return prefix_ids, suffixes, feats

    def _check_lengths(self, prefix: list[int], suffixes: list[list[int]]) -> None:
        longest = max(len(s) for s in suffixes)
        max_pos = int(self.rec_conf.get("max_position_embeddings", 1 << 30))
        if len(prefix) + longest > max_pos:
            raise UserError(f"prompt of {len(prefix) + longest} tokens exceeds the model's {max_pos} positions",
                            "use a shorter history")
        if self.provider == "tensorrt":
            for what, n, key in (("prefix", len(prefix), "max_prefix_tokens"), ("suffix", longest, "max_suffix_tokens")):
                if key in self.limits and n > int(self.limits[key]):
                    raise UserError(f"{what} of {n} tokens exceeds the TensorRT profile's {key} "
                                    f"({self.limits[key]})", "re-export with larger [limits] or run on cuda/cpu")

    @staticmethod
    def explain(keywords: Sequence[str], context_keywords: set[str], limit: int = 5) -> list[str]:
        shared = [k for k in keywords if k in context_keywords]
        return (shared + [k for k in keywords if k not in context_keywords])[:limit]

    # ------------------------------------------------------------------ the request

    def recommend(self, user: int | None = None, history: Sequence[int] | None = None, candidates=None,
                  top_k: int = 10, n_rescore: int | None = None, seed: int = 0) -> Recommendation:
        if top_k < 1:
            raise UserError(f"top_k must be >= 1, got {top_k}")
        t = {"start": time.perf_counter()}
        hist, warnings = self._history(user, history)
        emb = self._user_embedding(hist)
        t["encode"] = time.perf_counter()
        neighbours, collab = [], []
        if self.retrieval is not None and emb is not None:
            neighbours = self.retrieval.neighbours(emb[None], exclude=[user])[0]
            collab = self.retrieval.collaborative_keywords(neighbours)
        t["retrieve"] = time.perf_counter()
        cands, first, mode = self._candidates(candidates, hist, emb, n_rescore, seed)
        prefix, suffixes, feats = self._prompts(hist, collab, cands)
        self._check_lengths(prefix, suffixes)
        t["prompt"] = time.perf_counter()
        scores = self.scorer.score(prefix, suffixes, None, feats)
        t["score"] = time.perf_counter()
        order = np.lexsort((np.arange(len(cands)), -scores))[:top_k]
        ctx = {k for i in hist for k in self.catalog.items[i].keywords} | set(collab)
        items = [RecommendedItem(r + 1, cands[k], self.catalog.items[cands[k]].title, float(scores[k]),
                                 self.explain(self.catalog.items[cands[k]].keywords, ctx),
                                 None if first is None else first[k]) for r, k in enumerate(order)]
        keys = list(t)
        timings = {b: round((t[b] - t[a]) * 1e3, 3) for a, b in zip(keys, keys[1:])}
        timings["total"] = round((t[keys[-1]] - t["start"]) * 1e3, 3)
        return Recommendation(items, user, hist, mode, [(c, float(s)) for c, s in zip(cands, scores)], neighbours,
                              collab, warnings, self.provider, timings)
