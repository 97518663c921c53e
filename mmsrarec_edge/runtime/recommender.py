"""The torch-free recommender: a verified bundle in, top-K items with scores and explanation keywords out.

One request: history (a known user's, from the retrieval index's histories table, or an ad-hoc list of item ids) ->
SASRec user encoder (ONNX) -> hnswlib neighbours among the training users (retrieval.py) -> the keywords of what they
chose next -> prompt ids by the recommender stage's PromptMaker (recommend/context.py over recommend/prompt.py, the
same code training and evaluation use; shared prefix: history + collaborative keywords; one suffix per candidate:
title, keywords, image slots) -> shared-prefix yes/no scoring (runtime/scorer.py) -> top-K. Each result carries its
score p(yes)/(p(yes)+p(no)) and explanation keywords: the candidate's keywords that also appear in the history or the
collaborative context, then its own. `build_case` returns a request's exact scorer inputs (for benchmarks).

Candidate images: when the recommender was trained with them (prompt.candidate_image), a candidate's suffix gets its
image slots and the catalog's cached image features (PyTorch fp32, computed at export). A bundle holds no images, so an
item without cached features is shown without an image.

Candidates (runtime/first_stage.py): an explicit list of item ids, "sampled:N", "all", or by default the cheap first
stage (SASRec dot product, else popularity, else catalog order) picks `n_rescore` items (the bundle's
`recommender.n_rescore`) for the LLM to rescore, plus at most `n_rescore` cold-start items it cannot rank (a warning
when there are more; the result's `rescore_budget` says both numbers); any accepted form is parsed by
core.candidates.CandidateSpec.

History items the user encoder (SASRec) does not know are read by the LLM's prompt but not by the encoder: a warning
says how many; when none is known, the request uses no user embedding (no neighbours, the first stage ranks by
popularity or catalog order) and the warning says so.

Histories: every id must be in the catalog, without duplicates, and not empty (UserError otherwise). A history longer
than SASRec's max_len is truncated to its last max_len items (older items cannot reach the encoder, and the prompt
shows only the last `history_len` anyway), with a warning in the result for an ad-hoc history (a known user's long
history is the bundle's own and is truncated silently); the WHOLE history, older items included, is still excluded
from the first stage's and the sampled/all candidates (an item the user already has is never recommended back).
Ties in LLM score keep the candidate order.

Thread-safety: all state is read-only after construction; onnxruntime's `run` is thread-safe and the hnswlib query
(which mutates ef) is under a lock, so one Recommender serves many threads with results identical to serial calls.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from ..core import prompt as rp
from ..core.bundle import load_manifest, read_safetensors
from ..core.candidates import DEFAULT_RESCORE
from ..core.context import PromptMaker, SASRecRanks, item_texts
from ..core.errors import BundleError, UserError
from ..core.retrieval import RetrievalIndex
from ..core.rope_index import rope_from_config
from .bundle_config import RECOMMENDER, check_config
from .catalog import Catalog, check_history_ids, unknown_user
from .first_stage import FirstStage, popularity_scores
from .llm import Decoder, Embedder, SuffixScorer
from .scorer import CandidateScorer
from .sessions import SessionConfig, bundle_graph_variant, open_bundle_graph
from .tokenizer import Codec


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
    variants: dict[str, str] = field(default_factory=dict)  # graph -> precision variant loaded
    timings_ms: dict[str, float] = field(default_factory=dict)
    # the default candidates' LLM budget, {"first_stage": n_rescore, "cold_start": n_rescore}: the first stage's top
    # n_rescore plus at most n_rescore cold-start items; None for a list, sampled:N or all (exactly those are scored)
    rescore_budget: dict | None = None

    def to_dict(self) -> dict:
        d = asdict(self)
        d["scored"] = [{"item_id": i, "score": s} for i, s in self.scored]
        return d


@dataclass
class Case:
    """One request's inputs to the LLM scorer (Recommender.build_case)."""

    user: int | None
    history: list[int]
    warnings: list[str]
    user_embedding: np.ndarray | None
    neighbours: list[int]
    collab_groups: list[list[str]]  # keyword groups of the collaborative context, as prompted
    candidates: list[int]
    first_stage: list[float | None] | None
    candidate_mode: str
    prefix: list[int]
    suffixes: list[list[int]]
    features: list[list[np.ndarray] | None]  # image features per candidate (spliced over its <image> slots)
    timings_ms: dict[str, float] = field(default_factory=dict)
    seen: list[int] = field(default_factory=list)  # the whole history (`history` is its last max_len items)
    rescore_budget: dict | None = None  # Recommendation.rescore_budget


class Recommender:
    def __init__(self, bundle_dir: Path, provider: str | None = None, precision: str | None = None,
                 threads: int | None = None, verify: bool = True, max_batch: int | None = None,
                 suffix_scorer: bool = True):
        self.manifest = load_manifest(bundle_dir, verify=verify)
        self.config = config = self.manifest.config()
        check_config(config, RECOMMENDER)  # a wrong type: one line naming the key, not a ValueError below
        self.session_config = cfg = SessionConfig.resolve(provider, precision, threads)
        rec = config.get("recommender")
        has_decoder = self.manifest.has_graph("recommender.decoder")
        if not rec or not (has_decoder or self.manifest.has_graph("recommender.scorer")):
            raise BundleError(f"bundle {self.manifest.root} has no recommender",
                              "export it with the recommender graphs (recommender.embed, recommender.scorer or "
                              "recommender.decoder)")
        # The suffix-scorer graph when the bundle has one (`suffix_scorer=False` forces the expanded-KV decoder path,
        # which benchmarks compare against): same scores, fewer copies and FLOPs (exporter/suffix_graph.py). Beside
        # it the merged decoder is opened only if a request needs it (an empty prefix), never at start.
        use = self.manifest.has_graph("recommender.scorer") and (suffix_scorer or not has_decoder)
        manifest = self.manifest
        # The scorer holds nearly all the weights and is the slowest to open (1.3 s of a 3 s cold start for a 0.5B
        # int8 bundle, benchmarks/SCALE.md): onnxruntime opens it without the GIL in a background thread while this
        # one loads the rest; it is joined before __init__ returns, so a broken graph still fails here.
        # Leaving the `with` joins the thread, also when loading the rest fails (that error is then the one raised).
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="open-scorer") as pool:
            pending = pool.submit(open_bundle_graph, manifest, "recommender.scorer", cfg) if use else None
            self.rec_conf = rec
            self.limits = config.get("limits", {})
            special = rec.get("special_tokens", {})
            # recommender.json's own ids win (it may train without bos); the tokenizer's special tokens otherwise
            self.pad_id = int(rec["pad_id"] if rec.get("pad_id") is not None else special.get("pad_id") or 0)
            self.bos_id = rec["bos_id"] if "bos_id" in rec else special.get("bos_id")
            self.image_token_id = rec.get("image_token_id")
            self.n_image_tokens = int(rec.get("num_image_tokens", 0))
            self.codec = Codec(self.manifest.path(rec.get("tokenizer", "tokenizer.json")))
            decoder, embedder = self._load(rec, cfg, has_decoder, use)
        scorer_session = pending.result() if pending is not None else None  # re-raises the thread's error
        batch = max_batch or int(self.limits.get("max_candidates", 32))
        suffix = SuffixScorer(scorer_session) if scorer_session is not None else None
        self.scorer = CandidateScorer(decoder, embedder, self.pad_id, max_batch=batch, suffix_scorer=suffix,
                                      rope=rope_from_config(rec.get("rope")))

    def _load(self, rec: dict, cfg: SessionConfig, has_decoder: bool, use: bool):
        """Everything but the scorer graph; returns the (merged decoder or its factory, embedder) for the scorer."""
        manifest = self.manifest
        embedder = Embedder(open_bundle_graph(manifest, "recommender.embed", cfg), self.image_token_id)

        def open_decoder():
            return Decoder(open_bundle_graph(manifest, "recommender.decoder", cfg))

        decoder = open_decoder if has_decoder else None  # scorer-only bundles (profile merged_decoder = "fallback")
        self.variants = {g: bundle_graph_variant(manifest, g, cfg) for g in
                         ("recommender.embed", "recommender.decoder", "recommender.scorer", "sasrec.user_encoder")
                         if manifest.has_graph(g) and (use or g != "recommender.scorer")}
        self.catalog = Catalog.load(self.manifest)
        self.prompt_config = pc = rp.PromptConfig.from_dict(rec.get("prompt"))
        self.n_rescore = int(rec.get("n_rescore", DEFAULT_RESCORE))
        if pc.candidate_image and self.n_image_tokens < 1:
            raise BundleError("config.json: recommender.num_image_tokens is missing", "re-export the bundle")
        self._load_sasrec()
        self._load_retrieval()
        if pc.rank_hint and self.item_embeddings is None:
            raise BundleError(f"bundle {self.manifest.root}: the recommender's prompt uses the SASRec rank hint but "
                              "the bundle has no SASRec item embeddings (config sasrec.item_embeddings)",
                              "re-export the bundle with them")
        popularity = (popularity_scores(self.retrieval.histories, self.catalog.ids)
                      if self.retrieval is not None else None)
        self.first_stage = FirstStage(self.catalog, self.sasrec_index, self.item_embeddings, popularity,
                                      self.n_rescore)
        # A candidate shows its image only when the catalog caches its features: a bundle holds no images.
        cat = self.catalog.items
        # Titles are free text: one holding the literal image token would add an image slot with no features (a
        # ValueError on every request scoring that item), so the token is blanked; no trained prompt could hold it.
        texts = item_texts({i: it.title.replace(rp.IMAGE_TOKEN, " ") for i, it in cat.items()},
                           {i: it.keywords for i, it in cat.items()}, {i: i in self.catalog.features for i in cat})
        ranks = SASRecRanks(list(self.sasrec_index), self.item_embeddings) if self.item_embeddings is not None else None
        r = rec.get("retrieval") or {}
        self.prompts = PromptMaker(texts, self.codec.encode, self.bos_id, pc, self.retrieval,
                                   r.get("items_per_neighbour"), r.get("k"), ranks if pc.rank_hint else None,
                                   self.n_image_tokens)
        return decoder, embedder

    # ------------------------------------------------------------------ loading

    def _load_sasrec(self) -> None:
        s = self.config.get("sasrec")
        self.user_encoder, self.sasrec_index, self.item_embeddings = None, {}, None
        if not s or not self.manifest.has_graph("sasrec.user_encoder"):
            return
        self.max_len = int(s["max_len"])
        ids = self.manifest.read_json(s["item_ids"])["item_ids"]
        self.sasrec_index = {int(i): k + 1 for k, i in enumerate(ids)}
        self.user_encoder = open_bundle_graph(self.manifest, "sasrec.user_encoder", self.session_config)
        if s.get("item_embeddings"):
            emb = read_safetensors(self.manifest.path(s["item_embeddings"]))["item_embeddings"]
            if len(emb) == len(ids) + 1:  # the whole embedding table, padding row first
                emb = emb[1:]
            if emb.shape[0] != len(ids):
                raise BundleError(f"{s['item_embeddings']}: {emb.shape[0]} item embeddings for {len(ids)} SASRec items")
            self.item_embeddings = np.ascontiguousarray(emb, np.float32)  # row k <-> item_ids[k]

    def _load_retrieval(self) -> None:
        self.retrieval = None
        section = self.config.get("retrieval")
        if section and self.user_encoder is not None:
            self.retrieval = RetrievalIndex(self.manifest.root / section.get("dir", "index"))

    @property
    def provider(self) -> str:
        return self.session_config.provider

    def known_users(self) -> list[int]:
        return sorted(self.retrieval.histories) if self.retrieval is not None else []

    # ------------------------------------------------------------------ request parts

    def _history(self, user: int | None, history: Sequence[int] | None) -> tuple[list[int], list[str], list[int]]:
        """(the history the model reads: its last max_len items, warnings, the whole history)"""
        if (user is None) == (history is None):
            raise UserError("pass exactly one of a user id or a history")
        if user is not None:
            if self.retrieval is None or int(user) not in self.retrieval.histories:
                raise unknown_user(user, self.known_users())
            history = self.retrieval.histories[int(user)]
        hist = [int(i) for i in history]
        if not hist:
            raise UserError("the history is empty", "give at least one item id")
        check_history_ids(hist, self.catalog)
        dup = sorted({i for i in hist if hist.count(i) > 1})
        if dup:
            raise UserError(f"duplicate item id {dup[0]} in the history", "list each item once, oldest first")
        warnings, whole = [], hist
        limit = getattr(self, "max_len", None)
        if limit and len(hist) > limit:
            if user is None:  # a known user's long history is the bundle's own: nothing to warn the caller about
                warnings.append(f"history has {len(hist)} items; the model reads the last {limit} (older ones are "
                                "still never recommended back)")
            hist = hist[-limit:]
        return hist, warnings, whole

    def _user_embedding(self, hist: list[int]) -> np.ndarray | None:
        if self.user_encoder is None:
            return None
        idx = [self.sasrec_index[i] for i in hist if i in self.sasrec_index][-self.max_len:]
        row = np.zeros((1, self.max_len), np.int64)
        if idx:
            row[0, self.max_len - len(idx):] = idx
        return self.user_encoder.run(None, {"history": row})[0][0]

    def _encoder_coverage(self, hist: list[int], warnings: list[str]) -> bool:
        """Whether the user embedding carries any signal; a warning in `warnings` (saying what is used instead) when
        history items are unknown to the user encoder (SASRec): cold-start items, or items the k-core filter
        dropped."""
        if self.user_encoder is None:
            return False
        unknown = [i for i in hist if i not in self.sasrec_index]
        if not unknown:
            return True
        if len(unknown) < len(hist):
            warnings.append(f"{len(unknown)} of the {len(hist)} history items are unknown to the user encoder "
                            f"(SASRec), e.g. item {unknown[0]}: the user embedding uses the other "
                            f"{len(hist) - len(unknown)}")
            return True
        stage = "popularity" if self.first_stage.popularity is not None else "catalog order"
        warnings.append(f"none of the {len(hist)} history items is known to the user encoder (SASRec): no user "
                        f"embedding, so no collaborative context (neighbours) and the first stage ranks by {stage}; "
                        "the LLM reads the history's keywords")
        return False

    def _context(self, emb, user: int | None) -> tuple[list[int], list[int], list[list[str]]]:
        """(neighbour user ids, their next items, keyword groups) of the collaborative context."""
        if self.retrieval is None or emb is None:
            return [], [], []
        r = self.rec_conf.get("retrieval") or {}
        nbs = self.retrieval.neighbours(emb[None], r.get("k"), exclude=user)[0]
        items, groups = self.retrieval.context(nbs, r.get("items_per_neighbour"))
        return [nb.user_id for nb in nbs], items, groups

    def _prompts(self, hist: list[int], groups: list[list[str]], cands: list[int], emb=None):
        """(prefix ids, suffix ids per candidate, image features per candidate) by the recommender stage's
        PromptMaker (recommend/context.py, over the one prompt builder recommend/prompt.py)."""
        prefix = self.prompts.prefix(hist, groups)
        suffixes = self.prompts.suffixes(cands, emb)
        feats = [[self.catalog.features[c]] if self.prompts.image_tokens(c) else None for c in cands]
        return prefix, suffixes, feats

    def _check_lengths(self, prefix: list[int], suffixes: list[list[int]]) -> None:
        longest = max(len(s) for s in suffixes)
        max_pos = int(self.rec_conf.get("max_position_embeddings", 1 << 30))
        if len(prefix) + longest > max_pos:
            raise UserError(f"prompt of {len(prefix) + longest} tokens exceeds the model's {max_pos} positions",
                            "use a shorter history")
        if self.provider == "tensorrt":
            for what, n, key in (("prefix", len(prefix), "max_prefix_tokens"),
                                 ("suffix", longest, "max_suffix_tokens")):
                if key in self.limits and n > int(self.limits[key]):
                    raise UserError(f"{what} of {n} tokens exceeds the TensorRT profile's {key} "
                                    f"({self.limits[key]})", "re-export with larger [limits] or run on cuda/cpu")

    @staticmethod
    def explain(keywords: Sequence[str], context_keywords: set[str], limit: int = 5) -> list[str]:
        shared = [k for k in keywords if k in context_keywords]
        return (shared + [k for k in keywords if k not in context_keywords])[:limit]

    # ------------------------------------------------------------------ the request

    def build_case(self, user: int | None = None, history: Sequence[int] | None = None, candidates=None,
                   n_rescore: int | None = None, seed: int = 0) -> Case:
        """Everything of a request up to the LLM scoring: history, retrieval, candidates, prompt ids. Public so that
        benchmarks can time or re-score the exact inputs the runtime scores."""
        t0 = time.perf_counter()
        hist, warnings, whole = self._history(user, history)
        emb = self._user_embedding(hist)
        signal = self._encoder_coverage(hist, warnings)
        t1 = time.perf_counter()
        neighbours, _, groups = self._context(emb if signal else None, user)
        t2 = time.perf_counter()
        # excluded: the whole history, not only the part the model reads
        cands, first, mode = self.first_stage.candidates(candidates, whole, emb if signal else None, n_rescore, seed,
                                                         warnings)
        prefix, suffixes, feats = self._prompts(hist, groups, cands, emb)
        self._check_lengths(prefix, suffixes)
        t3 = time.perf_counter()
        timings = {"encode": (t1 - t0) * 1e3, "retrieve": (t2 - t1) * 1e3, "prompt": (t3 - t2) * 1e3}
        budget = None
        if mode.endswith("+llm"):
            n = self.n_rescore if n_rescore is None else int(n_rescore)
            budget = {"first_stage": n, "cold_start": n}
        return Case(user, hist, warnings, emb, neighbours, groups, cands, first, mode, prefix, suffixes, feats,
                    timings, whole, budget)

    def recommend(self, user: int | None = None, history: Sequence[int] | None = None, candidates=None,
                  top_k: int = 10, n_rescore: int | None = None, seed: int = 0) -> Recommendation:
        if top_k < 1:
            raise UserError(f"top_k must be >= 1, got {top_k}")
        case = self.build_case(user, history, candidates, n_rescore, seed)
        t, parts = time.perf_counter(), {}
        scores = self.scorer.score(case.prefix, case.suffixes, None, case.features, timings=parts)
        timings = {**case.timings_ms, "score": (time.perf_counter() - t) * 1e3}
        # the score's own parts ("score:embed", "score:prefill+candidates", ...) are inside "score", not in the total
        timings = {k: round(v, 3) for k, v in {**timings, "total": sum(timings.values()),
                                               **{f"score:{k}": v for k, v in parts.items()}}.items()}
        cands = case.candidates
        order = np.lexsort((np.arange(len(cands)), -scores))[:top_k]
        collab = list(dict.fromkeys(k for g in case.collab_groups for k in g))
        ctx = {k for i in case.history for k in self.catalog.items[i].keywords} | set(collab)
        items = [RecommendedItem(r + 1, cands[k], self.catalog.items[cands[k]].title, float(scores[k]),
                                 self.explain(self.catalog.items[cands[k]].keywords, ctx),
                                 None if case.first_stage is None else case.first_stage[k])
                 for r, k in enumerate(order)]
        return Recommendation(items, user, case.history, case.candidate_mode,
                              [(c, float(s)) for c, s in zip(cands, scores)], case.neighbours, collab,
                              case.warnings, self.provider, dict(self.variants), timings, case.rescore_budget)
