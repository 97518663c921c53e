"""Collaborative retrieval: hnswlib recall against exact search, save/load, no self-retrieval, no target leakage."""

from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from mmsrarec_edge.core.retrieval import RetrievalConfig, RetrievalIndex, build_retrieval, cut_points, exact_neighbours
from mmsrarec_edge.models.sasrec import SASRec, SASRecConfig, SASRecModel


@pytest.fixture(scope="module")
def sasrec(tiny_protocol):
    torch.manual_seed(0)
    net = SASRec(len(tiny_protocol.items), SASRecConfig(hidden=16, layers=1, heads=2, max_len=20, dropout=0.0))
    return SASRecModel(net, tiny_protocol.items)


def item_kw(i: int) -> list[str]:
    return [f"kw{i}", f"group{i % 7}"]


@pytest.fixture(scope="module")
def index_dir(tiny_protocol, sasrec, tmp_path_factory):
    out = tmp_path_factory.mktemp("retrieval") / "retrieval"
    q = sasrec.user_embeddings(tiny_protocol.val.prefixes)
    build_retrieval(out, tiny_protocol.train_sequences(), sasrec.user_embeddings, item_kw,
                    RetrievalConfig(stride=2, ef=64), queries=q)
    return out


def test_cut_points_leave_history_and_next_items():
    cfg = RetrievalConfig(stride=3, min_history=2, max_cuts_per_user=100)
    assert cut_points(10, cfg) == [3, 6, 9]
    assert cut_points(2, cfg) == []  # no cut with >= 2 history items and >= 1 next item
    assert cut_points(100, RetrievalConfig(stride=1, min_history=1, max_cuts_per_user=5)) == [95, 96, 97, 98, 99]


def test_hnswlib_recall_against_exact_search(tmp_path):
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(20, 32))
    base = (centres[rng.integers(0, 20, 3000)] + 0.3 * rng.normal(size=(3000, 32))).astype(np.float32)
    queries = (centres[rng.integers(0, 20, 200)] + 0.3 * rng.normal(size=(200, 32))).astype(np.float32)
    seqs = {u: [u] * 3 for u in range(3000)}  # one window per user (cut 2): row u <-> base[u]
    rows = {}
    meta = build_retrieval(tmp_path / "r", seqs, lambda hists: base[[h[0] for h in hists]],
                           lambda i: rows.setdefault(i, [str(i)]), RetrievalConfig(min_history=2, ef=100),
                           queries=queries)
    assert meta["rows"] == 3000
    assert meta["recall"]["recall@10"] >= 0.95
    idx = RetrievalIndex(tmp_path / "r")
    got = idx.neighbours(queries, k=10)
    want = exact_neighbours(base, queries, 10)
    recall = np.mean([len({n.user_id for n in g} & set(w.tolist())) / 10 for g, w in zip(got, want)])
    assert recall >= 0.95
    # similarities are cosine similarities
    q0 = queries[0] / np.linalg.norm(queries[0])
    b0 = base[got[0][0].user_id] / np.linalg.norm(base[got[0][0].user_id])
    assert got[0][0].similarity == pytest.approx(float(q0 @ b0), abs=1e-4)


def test_directory_is_pickle_free_and_round_trips(index_dir, tiny_protocol):
    assert sorted(p.name for p in index_dir.iterdir()) == [
        "collab.parquet", "histories.parquet", "retrieval.json", "users.hnsw", "users.parquet"]
    idx = RetrievalIndex(index_dir)
    users = pq.read_table(index_dir / "users.parquet").to_pydict()
    assert set(users["user_id"]) <= set(tiny_protocol.train_users)  # only training users are indexed
    seqs = tiny_protocol.train_sequences()
    for r in range(0, len(idx.row_user), 7):  # next items are the user's items from the cut on
        u, c = int(idx.row_user[r]), int(idx.row_cut[r])
        assert idx.next_items[r] == seqs[u][c:c + idx.config.max_next]
        assert idx.next_keywords[r] == [item_kw(i) for i in idx.next_items[r]]
    assert idx.meta["recall"]["recall@3"] >= 0.9


def test_training_user_never_retrieves_itself(index_dir, tiny_protocol, sasrec):
    idx = RetrievalIndex(index_dir)
    seqs = tiny_protocol.train_sequences()
    users = sorted(seqs)
    # Query with each user's own indexed window: without `exclude` it is (nearly always) its own nearest neighbour.
    rows = [int(np.flatnonzero(idx.row_user == u)[-1]) for u in users]
    emb = sasrec.user_embeddings([seqs[u][:int(idx.row_cut[r])] for u, r in zip(users, rows)])
    plain = idx.neighbours(emb, k=3)
    assert np.mean([nb[0].user_id == u for nb, u in zip(plain, users)]) > 0.9
    excluded = idx.neighbours(emb, k=3, exclude=users)
    for nb, u in zip(excluded, users):
        assert len(nb) == 3
        assert u not in {n.user_id for n in nb}
        assert len({n.user_id for n in nb}) == 3  # distinct users


def test_context_comes_from_neighbours_after_their_cut(index_dir, tiny_protocol, sasrec):
    idx = RetrievalIndex(index_dir)
    seqs = tiny_protocol.sequences
    emb = sasrec.user_embeddings(tiny_protocol.test.prefixes[:5])
    for nbs in idx.neighbours(emb, k=3, exclude=tiny_protocol.test.user_id[:5].tolist()):
        items, groups = idx.context(nbs, items_per_neighbour=2)
        nexts = [seqs[nb.user_id][int(idx.row_cut[nb.row]):][:2] for nb in nbs]
        allowed = [n[j] for j in range(2) for n in nexts if j < len(n)]  # round robin over the neighbours
        assert items == list(dict.fromkeys(allowed))
        assert groups == [item_kw(i) for i in items]
        assert all(nb.user_id in tiny_protocol.train_users for nb in nbs)
