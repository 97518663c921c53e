"""Multi-task SFT data (LC-Rec spirit) from the training users only. Torch-free.

Every example is (prefix ids, suffix ids, target ids): the loss covers the target tokens only. The examples of one
window share its prefix, so they are packed into one training row (`Row`: the prefix once, then each example's suffix
+ target as a segment that sees the prefix and itself only, positions restarting after the prefix), which is exactly
the model's view of each unpacked prompt -- and of the runtime's shared-prefix scoring -- at a third of the tokens.
- "rec" (the task scored at test time): a training window (user u, target position t) -> prefix from u's items
  before t and the collaborative context retrieved with u excluded; the suffix of the true next item -> " yes", of a
  sampled negative (an item u never interacted with, uniform like the protocol's) -> " no". Negatives are redrawn
  every epoch.
- "next_keywords": the same prefix -> " what will the user choose next ? keywords :" -> the next item's keywords.
- "next_title": the same prefix -> the next item's title.
- "item_title": an item's keywords -> its title;  "item_keywords": an item's title -> its keywords.
Windows are a seeded sample of at most `windows_per_user` target positions per training user (with at least
`min_history` items before them), so the data size stays bounded on long sequences.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..core import prompt as P
from ..core.context import PromptMaker


@dataclass
class TaskConfig:
    windows_per_user: int = 8
    min_history: int = 3
    negatives: int = 3  # per positive
    aux: bool = True  # the auxiliary tasks; False is the "w/o multi-task" ablation
    aux_fraction: float = 0.5  # share of windows that also give a next_keywords / next_title example (each)
    item_tasks: bool = True  # item_title / item_keywords, every item once per epoch (with aux)
    target_keywords: int = 6
    seed: int = 0


@dataclass
class Window:
    user: int
    position: int
    prefix: list[int]
    positive: int
    seen: set = field(repr=False, default_factory=set)
    embedding: np.ndarray | None = field(repr=False, default=None)  # SASRec's, of the items before the target
    rank_source: object = field(repr=False, default=None)  # SASRecRanks giving the rank hint (cross-fitted or not)
    rank_embedding: np.ndarray | None = field(repr=False, default=None)

    def ranks(self, items) -> list[int]:
        return self.rank_source.ranks(self.rank_embedding, items)


@dataclass
class Segment:
    suffix: list[int]
    target: list[int]
    task: str
    image_item: int | None = None  # the candidate whose image fills the suffix's <image> slots


@dataclass
class Row:
    """A shared prefix and the segments packed after it; each segment is one (prefix, suffix, target) example."""

    prefix: list[int]
    segments: list[Segment]

    def __len__(self) -> int:
        return len(self.prefix) + sum(len(s.suffix) + len(s.target) - 1 for s in self.segments)


def sample_windows(train_sequences: dict[int, list[int]], cfg: TaskConfig) -> list[tuple[int, int]]:
    rng = np.random.default_rng([cfg.seed, 17])
    out = []
    for u in sorted(train_sequences):
        pos = np.arange(cfg.min_history, len(train_sequences[u]))
        if len(pos) > cfg.windows_per_user:
            pos = np.sort(rng.choice(pos, size=cfg.windows_per_user, replace=False))
        out.extend((u, int(t)) for t in pos)
    return out


def build_windows(train_sequences: dict[int, list[int]], maker: PromptMaker, embed, cfg: TaskConfig,
                  progress=None, rank_folds=None) -> list[Window]:
    """Windows with their prefix ids. `embed(histories) -> [N, d]` (SASRec); the retrieval excludes the user.

    `rank_folds` (the rank hint only): [(held-out users, embed, SASRecRanks)] of SASRec models that never saw those
    users; a window's rank hint then comes from the model that did not train on its user (cross-fitting), so the
    hint is as reliable in training as on unseen test users. Without it the full SASRec ranks in-sample."""
    pairs = sample_windows(train_sequences, cfg)
    hists = [train_sequences[u][:t] for u, t in pairs]
    emb = embed(hists) if (maker.retrieval is not None or maker.cfg.rank_hint) else None
    collab = maker.collab(emb, exclude=[u for u, _ in pairs]) if maker.retrieval is not None else [[]] * len(pairs)
    rank_src, rank_emb = [maker.ranks] * len(pairs), emb if emb is not None else [None] * len(pairs)
    if maker.cfg.rank_hint and rank_folds:
        rank_emb = [None] * len(pairs)
        for held_out, fold_embed, fold_ranks in rank_folds:
            rows = [k for k, (u, _) in enumerate(pairs) if u in held_out]
            for k, e in zip(rows, fold_embed([hists[k] for k in rows]) if rows else []):
                rank_src[k], rank_emb[k] = fold_ranks, e
        if any(e is None for e in rank_emb):
            raise ValueError("the cross-fitted SASRec folds do not cover every training user")
    out = []
    for k, (u, t) in enumerate(pairs):
        seq = train_sequences[u]
        out.append(Window(u, t, maker.prefix(hists[k], collab[k]), seq[t], set(seq),
                          embedding=None if emb is None else emb[k], rank_source=rank_src[k],
                          rank_embedding=rank_emb[k]))
        if progress:
            progress(1)
    return out


def _target(maker: PromptMaker, text: str, eos_id: int) -> list[int]:
    return list(maker.encode(text)) + [int(eos_id)]


def epoch_rows(windows: list[Window], maker: PromptMaker, items: list[int], yes_id: int, no_id: int, eos_id: int,
               cfg: TaskConfig, epoch: int) -> list[Row]:
    """One epoch's rows (negatives and auxiliary picks drawn with the epoch's seed)."""
    rng = np.random.default_rng([cfg.seed, epoch])
    universe = np.asarray(items, np.int64)
    out: list[Row] = []
    next_kw = maker.encode(P.next_keywords_suffix())
    next_title = maker.encode(P.next_title_suffix())
    for w in windows:
        negs: list[int] = []
        while len(negs) < cfg.negatives:
            c = int(universe[rng.integers(len(universe))])
            if c not in w.seen and c not in negs:
                negs.append(c)
        cands = [w.positive] + negs
        segs = [Segment(s, [yes_id if c == w.positive else no_id], "rec", c if maker.image_tokens(c) else None)
                for c, s in zip(cands, _suffixes(maker, w, cands))]
        it = maker.items.get(w.positive)
        if cfg.aux and it is not None:
            if rng.random() < cfg.aux_fraction:
                segs.append(Segment(next_kw, _target(maker, P.keywords_target(it.keywords, cfg.target_keywords),
                                                     eos_id), "next_keywords"))
            if rng.random() < cfg.aux_fraction:
                segs.append(Segment(next_title, _target(maker, P.title_target(it.title), eos_id), "next_title"))
        order = rng.permutation(len(segs))  # the positive must not always sit first
        out.append(Row(w.prefix, [segs[k] for k in order]))
    if cfg.aux and cfg.item_tasks:
        for i in items:
            it = maker.items.get(int(i))
            if it is None:
                continue
            pre, suf = P.title_from_keywords(it.keywords, maker.cfg)
            out.append(Row(_bos(maker) + maker.encode(pre), [Segment(
                maker.encode(suf), _target(maker, P.title_target(it.title), eos_id), "item_title")]))
            pre, suf = P.keywords_from_title(it.title)
            out.append(Row(_bos(maker) + maker.encode(pre), [Segment(
                maker.encode(suf), _target(maker, P.keywords_target(it.keywords, cfg.target_keywords), eos_id),
                "item_keywords")]))
    return out


def _suffixes(maker: PromptMaker, w: Window, cands: list[int]) -> list[list[int]]:
    if not maker.cfg.rank_hint:
        return [maker.suffix(c) for c in cands]
    return [maker.suffix(c, r) for c, r in zip(cands, w.ranks(cands))]


def _bos(maker: PromptMaker) -> list[int]:
    return [int(maker.bos_id)] if maker.bos_id is not None else []
