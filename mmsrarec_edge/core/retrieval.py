"""Collaborative keyword retrieval (MMSRARec stage 2): an hnswlib cosine index over training users' SASRec states.

One vector per (training user, cut point): SASRec's user embedding of the user's items *before* the cut; stored next
to it are the items the user interacted with *from* the cut on (at most `max_next`) and their keywords. Cuts are taken
every `stride` items from each user's end backwards, so every part of a sequence can be matched ("the point where a
neighbour was where the query user is now"). A query embedding's neighbours are the k nearest windows of k DISTINCT
training users (the best-matching cut of each); the keywords of the first `items_per_neighbour` items each of them
interacted with afterwards, round robin over the neighbours, are the collaborative context (one keyword group per
item).

No leakage: only training users are indexed, so a validation or test user's own items never reach its context; a
training window of user u (an SFT example) passes `exclude=u`, so u never retrieves itself and its target cannot
appear through its own later items. Other training users' whole sequences are fair game: they are disjoint users
(the paper's setting). The query side is the caller's: embed only the items before the target.

Directory (copied into a bundle's index/ as is; no pickle):
    users.hnsw        hnswlib index, space "cosine", label = row
    users.parquet     row -> user_id, cut (index in the user's sequence), n_history
    collab.parquet    row -> next_items list<int64>, next_keywords list<list<string>>
    histories.parquet user_id -> full training sequence (lets the runtime serve known users by id)
    retrieval.json    format, config, dim, rows, users, recall of hnswlib against exact search
Torch-free: numpy, hnswlib and pyarrow only.
"""

from __future__ import annotations

import json
import threading
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from .errors import BundleError, UserError
from .io_utils import atomic_dir

FORMAT = "mmsrarec-retrieval"
VERSION = 2


@dataclass
class RetrievalConfig:
    k: int = 3  # neighbours (distinct training users), the paper's k
    items_per_neighbour: int = 3  # next items taken from each neighbour (chosen on validation)
    max_next: int = 10  # next items stored per window (upper bound of items_per_neighbour)
    stride: int = 5  # cut spacing within a training user's sequence
    min_history: int = 3  # shortest history a cut may have
    max_cuts_per_user: int = 40  # keeps the index small for long sequences (the most recent cuts win)
    M: int = 16
    ef_construction: int = 200
    ef: int = 64
    seed: int = 0

    @classmethod
    def from_dict(cls, d: dict | None) -> "RetrievalConfig":
        d = d or {}
        return cls(**{k: d[k] for k in cls.__dataclass_fields__ if k in d})


@dataclass(frozen=True)
class Neighbour:
    user_id: int
    row: int
    similarity: float


def cut_points(n: int, cfg: RetrievalConfig) -> list[int]:
    """Cuts c (history = seq[:c], next = seq[c:]) from the end backwards, oldest first."""
    cuts = list(range(n - 1, cfg.min_history - 1, -cfg.stride))[: cfg.max_cuts_per_user]
    return sorted(cuts)


def _normalize(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def exact_neighbours(base: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    """Row indices of the k most cosine-similar base vectors per query (numpy reference for hnswlib)."""
    sims = _normalize(queries) @ _normalize(base).T
    return np.argsort(-sims, axis=1, kind="stable")[:, :k]


def recall_vs_exact(index, base: np.ndarray, queries: np.ndarray, k: int, ef: int) -> float:
    k = min(k, len(base))
    index.set_ef(max(ef, k))
    got, _ = index.knn_query(np.asarray(queries, np.float32), k=k)
    want = exact_neighbours(base, queries, k)
    return float(np.mean([len(set(g.tolist()) & set(w.tolist())) / k for g, w in zip(got, want)]))


def build_retrieval(out: Path, train_sequences: dict[int, list[int]],
                    embed: Callable[[list[list[int]]], np.ndarray],
                    item_keywords: Callable[[int], Sequence[str]], cfg: RetrievalConfig | None = None,
                    queries: np.ndarray | None = None) -> dict:
    """Index the training users' windows; `embed(histories) -> float32 [N, d]` is SASRec's `user_embeddings`.
    `queries` (embeddings, e.g. of validation histories) measure hnswlib's recall@k against exact search.
    Returns retrieval.json's content."""
    import hnswlib

    cfg = cfg or RetrievalConfig()
    rows_user, rows_cut, hists, nexts = [], [], [], []
    for u in sorted(train_sequences):
        seq = list(train_sequences[u])
        for c in cut_points(len(seq), cfg):
            rows_user.append(int(u))
            rows_cut.append(c)
            hists.append(seq[:c])
            nexts.append(seq[c:c + cfg.max_next])
    if not rows_user:
        raise UserError(f"no training user has more than {cfg.min_history} items to index",
                        "lower the retrieval min_history")
    emb = np.ascontiguousarray(embed(hists), dtype=np.float32)
    index = hnswlib.Index(space="cosine", dim=int(emb.shape[1]))
    index.init_index(max_elements=len(emb), ef_construction=cfg.ef_construction, M=cfg.M, random_seed=cfg.seed)
    index.set_num_threads(1)  # a deterministic graph: the same inputs give the same index
    index.add_items(emb, np.arange(len(emb)))
    meta = {"format": FORMAT, "version": VERSION, "config": asdict(cfg), "dim": int(emb.shape[1]),
            "rows": len(rows_user), "users": len(set(rows_user))}
    if queries is not None and len(queries):
        meta["recall"] = {f"recall@{k}": recall_vs_exact(index, emb, queries, k, cfg.ef) for k in (cfg.k, 10)}
        meta["recall"].update({"queries": int(len(queries)), "ef": cfg.ef, "M": cfg.M})
    with atomic_dir(Path(out)) as tmp:
        index.save_index(str(tmp / "users.hnsw"))
        pq.write_table(pa.table({"row": pa.array(np.arange(len(rows_user)), pa.int64()),
                                 "user_id": pa.array(rows_user, pa.int64()), "cut": pa.array(rows_cut, pa.int64()),
                                 "n_history": pa.array([len(h) for h in hists], pa.int64())}), tmp / "users.parquet")
        pq.write_table(pa.table({
            "row": pa.array(np.arange(len(rows_user)), pa.int64()),
            "next_items": pa.array(nexts, pa.list_(pa.int64())),
            "next_keywords": pa.array([[list(item_keywords(i)) for i in n] for n in nexts],
                                      pa.list_(pa.list_(pa.string())))}), tmp / "collab.parquet")
        users = sorted(train_sequences)
        pq.write_table(pa.table({"user_id": pa.array(users, pa.int64()),
                                 "history": pa.array([list(train_sequences[u]) for u in users], pa.list_(pa.int64()))}),
                       tmp / "histories.parquet")
        (tmp / "retrieval.json").write_text(json.dumps(meta, indent=2) + "\n")
    return meta


class RetrievalIndex:
    """A built retrieval directory, loaded for queries. Queries hold a lock: hnswlib's set_ef mutates the index, and
    one caller's ef must not leak into another's query."""

    def __init__(self, index_dir: Path):
        import hnswlib

        index_dir = Path(index_dir)
        for name in ("users.hnsw", "users.parquet", "collab.parquet", "retrieval.json"):
            if not (index_dir / name).is_file():
                raise BundleError(f"{index_dir / name} is missing",
                                  "rebuild it with `mmsrarec-edge train recommender` (writes DIR/retrieval)")
        self.meta = json.loads((index_dir / "retrieval.json").read_text())
        if self.meta.get("format") != FORMAT or int(self.meta.get("version", 0)) > VERSION:
            raise BundleError(f"{index_dir / 'retrieval.json'}: unsupported format/version "
                              f"{self.meta.get('format')!r} v{self.meta.get('version')}")
        self.config = RetrievalConfig.from_dict(self.meta["config"])
        users = pq.read_table(index_dir / "users.parquet").to_pydict()
        collab = pq.read_table(index_dir / "collab.parquet").to_pydict()
        self.row_user = np.asarray(users["user_id"], np.int64)
        self.row_cut = np.asarray(users["cut"], np.int64)
        self.next_items = [list(x) for x in collab["next_items"]]
        self.next_keywords = [[list(k or []) for k in x] for x in collab["next_keywords"]]
        if not (len(self.row_user) == len(self.next_items) == int(self.meta["rows"])):
            raise BundleError(f"{index_dir}: users.parquet, collab.parquet and retrieval.json "
                              "disagree on the row count")
        self.histories: dict[int, list[int]] = {}
        if (index_dir / "histories.parquet").is_file():
            h = pq.read_table(index_dir / "histories.parquet").to_pydict()
            self.histories = {int(u): [int(i) for i in s] for u, s in zip(h["user_id"], h["history"])}
        self.index = hnswlib.Index(space="cosine", dim=int(self.meta["dim"]))
        try:
            self.index.load_index(str(index_dir / "users.hnsw"), max_elements=len(self.row_user))
        except RuntimeError as exc:
            raise BundleError(f"{index_dir / 'users.hnsw'}: cannot load the hnswlib index ({exc})") from exc
        if self.index.get_current_count() != len(self.row_user):
            raise BundleError(f"{index_dir}: users.hnsw holds {self.index.get_current_count()} rows, users.parquet "
                              f"{len(self.row_user)}", "rebuild the retrieval index")
        self.index.set_num_threads(1)
        self._lock = threading.Lock()

    @property
    def dim(self) -> int:
        return int(self.meta["dim"])

    def neighbours(self, embeddings: np.ndarray, k: int | None = None,
                   exclude: Sequence[int | None] | int | None = None) -> list[list[Neighbour]]:
        """embeddings [N, d] -> per row, its k nearest DISTINCT training users (their best window), without
        `exclude[row]` (a user id; a single id or None applies to every row)."""
        emb = np.atleast_2d(np.asarray(embeddings, np.float32))
        k = self.config.k if k is None else int(k)
        if k < 1 or len(emb) == 0:
            return [[] for _ in emb]
        if exclude is None or isinstance(exclude, (int, np.integer)):
            exclude = [exclude] * len(emb)
        n_rows = len(self.row_user)
        want = min(n_rows, max(8 * k, 32))
        out: list[list[Neighbour] | None] = [None] * len(emb)
        pending = list(range(len(emb)))
        while pending:
            with self._lock:
                self.index.set_ef(max(self.config.ef, want))
                labels, dists = self.index.knn_query(emb[pending], k=want)
            retry = []
            for q, lab, dist in zip(pending, labels, dists):
                seen, got = set(), []
                for r, d in zip(lab.tolist(), dist.tolist()):
                    u = int(self.row_user[r])
                    if u == exclude[q] or u in seen:
                        continue
                    seen.add(u)
                    got.append(Neighbour(u, int(r), 1.0 - float(d)))
                    if len(got) == k:
                        break
                if len(got) < k and want < n_rows:
                    retry.append(q)  # many windows of the same users crowded the list: ask for more
                else:
                    out[q] = got
            pending, want = retry, min(n_rows, want * 4)
        return out  # type: ignore[return-value]

    def context(self, neighbours: Sequence[Neighbour], items_per_neighbour: int | None = None
                ) -> tuple[list[int], list[list[str]]]:
        """(item ids, keyword groups) of what the neighbours interacted with after their matching cut: round robin
        (every neighbour's first next item, then every neighbour's second, ...), so a prompt that keeps only the
        first groups still hears from every neighbour; an item shown once."""
        ipn = self.config.items_per_neighbour if items_per_neighbour is None else int(items_per_neighbour)
        items, groups, seen = [], [], set()
        for j in range(ipn):
            for nb in neighbours:
                nxt = self.next_items[nb.row]
                if j >= len(nxt) or nxt[j] in seen:
                    continue
                seen.add(nxt[j])
                items.append(int(nxt[j]))
                groups.append(self.next_keywords[nb.row][j])
        return items, groups

    def collaborative_context(self, embeddings: np.ndarray, exclude=None, k: int | None = None,
                              items_per_neighbour: int | None = None) -> list[list[list[str]]]:
        """Keyword groups of the collaborative context for each embedding row."""
        return [self.context(nbs, items_per_neighbour)[1] for nbs in self.neighbours(embeddings, k, exclude)]
