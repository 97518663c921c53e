"""The torch-free Recommender on a tiny exported bundle: PyTorch parity, candidates, errors, thread-safety, cold
start."""

import re
import threading

import numpy as np
import pytest
from runtime_support import copy_bundle, shared_tiny_bundle

from mmsrarec_edge.core.errors import BundleError, UserError
from mmsrarec_edge.core.imaging import load_image, preprocess
from mmsrarec_edge.runtime.recommender import Recommender


@pytest.fixture(scope="module")
def bundle():
    return shared_tiny_bundle()


@pytest.fixture(scope="module")
def rec(bundle):
    return Recommender(bundle.dir, provider="cpu", threads=1)


def _user(bundle):
    seqs = bundle.dataset.sequences()
    return sorted(seqs)[0]


def test_known_user_top_k(rec, bundle):
    user = _user(bundle)
    res = rec.recommend(user=user, top_k=5)
    assert res.history == bundle.dataset.sequences()[user][-8:]  # the index keeps the history, SASRec reads 8
    assert res.candidate_mode == "sasrec+llm" and len(res.scored) == 8  # n_rescore from the bundle
    assert [it.rank for it in res.items] == [1, 2, 3, 4, 5]
    scores = [it.score for it in res.items]
    assert scores == sorted(scores, reverse=True) and all(0 < s < 1 for s in scores)
    assert not set(it.item_id for it in res.items) & set(res.history)
    assert len(res.neighbours) == 3 and user not in res.neighbours and res.collaborative_keywords
    ctx = {k for i in res.history for k in rec.catalog.items[i].keywords} | set(res.collaborative_keywords)
    for it in res.items:
        kws = rec.catalog.items[it.item_id].keywords
        assert it.explanation and set(it.explanation) <= set(kws)
        shared = [k for k in kws if k in ctx]
        assert it.explanation[:len(shared)] == shared[:5]  # overlapping keywords come first
    assert res.warnings == []


def test_runtime_scores_equal_pytorch(rec, bundle):
    """Every LLM-scored candidate of an ad-hoc request (text, collaborative context and candidate images) vs the
    recommender stage's PyTorch scorers (recommend/scoring.py) on the same prompt ids, fed the items' images:
    within 1e-4 and the same ranking."""
    from mmsrarec_edge.recommend.scoring import TorchScorer

    ds, g = bundle.dataset, bundle.graphs
    hist = list(ds.sequences()[_user(bundle)][:4])
    res = rec.recommend(history=hist, candidates="sampled:6", seed=1, top_k=6)
    case = rec.build_case(history=hist, candidates="sampled:6", seed=1)
    assert case.candidates == [i for i, _ in res.scored] and case.collab_groups  # collaborative context prompted
    assert all(f is not None for f in case.features) and g.image_token_id in case.suffixes[0]  # image slots used
    pixels = [preprocess(load_image(ds.image_path(c)), 64) for c in case.candidates]
    torch_scorer = TorchScorer(g.model, g.yes_id, g.no_id, rec.pad_id, max_batch=4)
    got = np.array([s for _, s in res.scored])
    for ref in (torch_scorer.score_shared(case.prefix, case.suffixes, pixels),
                torch_scorer.score_naive(case.prefix, case.suffixes, pixels)):
        assert np.abs(got - ref).max() < 1e-4
        assert np.array_equal(np.argsort(-got, kind="stable"), np.argsort(-ref, kind="stable"))
    assert got.std() > 1e-4


def test_candidate_modes(rec, bundle):
    user = _user(bundle)
    hist = rec.recommend(user=user).history
    a = rec.recommend(user=user, candidates="sampled:7", seed=3, top_k=50)
    b = rec.recommend(user=user, candidates="sampled:7", seed=3, top_k=50)
    c = rec.recommend(user=user, candidates="sampled:7", seed=4, top_k=50)
    assert a.scored == b.scored and [i for i, _ in a.scored] != [i for i, _ in c.scored]
    assert len(a.items) == 7 and not {i for i, _ in a.scored} & set(hist)
    full = rec.recommend(user=user, candidates="all", top_k=100)
    assert len(full.scored) == len(rec.catalog) - len(hist)
    explicit = rec.recommend(user=user, candidates=[hist[0], 5, 7], top_k=3)
    assert [i for i, _ in explicit.scored] == [hist[0], 5, 7] and explicit.candidate_mode == "list"
    # the same candidate gets the same score whatever else is in the batch (the batch is padded per row)
    by_id = dict(full.scored)
    for i, s in explicit.scored[1:]:
        assert abs(by_id[i] - s) < 1e-6


@pytest.mark.parametrize("kwargs, needle", [
    ({"user": 10**6}, "unknown user id 1000000"),
    ({"history": [1, 10**6]}, "unknown item id 1000000"),
    ({"history": []}, "the history is empty"),
    ({"history": [1, 2, 1]}, "duplicate item id 1"),
    ({"history": [1], "candidates": [2, 2]}, "duplicate candidate item id 2"),
    ({"history": [1], "candidates": [2, 999]}, "unknown candidate item id 999"),
    ({"history": [1], "candidates": "sampled:0"}, "sampled:0"),
    ({"history": [1], "candidates": "sampled:1000"}, "sampled:1000"),
    ({"history": [1], "candidates": "best"}, "candidates 'best' is neither comma-separated item ids"),
    ({"history": [1], "top_k": 0}, "top_k must be >= 1"),
    ({}, "exactly one of"),
])
def test_bad_requests_are_user_errors(rec, kwargs, needle):
    with pytest.raises(UserError, match=needle):
        rec.recommend(**kwargs)


def test_precision_variants(bundle, rec):
    """The bundle ships fp32 (default) and int8 decoders: --precision int8 loads the int8 graphs (SASRec stays fp32,
    pinned), scores move by less than the int8 parity tolerance, and a variant the bundle lacks is refused."""
    r8 = Recommender(bundle.dir, provider="cpu", precision="int8", threads=1)
    a = r8.recommend(history=[1, 2, 3], candidates="all", top_k=5)
    b = rec.recommend(history=[1, 2, 3], candidates="all", top_k=5)
    assert a.variants == {"recommender.embed": "int8", "recommender.decoder": "int8", "recommender.scorer": "int8",
                          "sasrec.user_encoder": "fp32"}
    assert set(b.variants.values()) == {"fp32"}
    diff = np.abs(np.array([s for _, s in a.scored]) - np.array([s for _, s in b.scored]))
    assert 0 < diff.max() < 0.05  # really another graph, and close
    with pytest.raises(UserError, match="no fp16 variant"):
        Recommender(bundle.dir, precision="fp16")


def test_session_choices_are_checked(bundle):
    with pytest.raises(UserError, match="unknown precision 'int2'"):
        Recommender(bundle.dir, precision="int2")
    with pytest.raises(UserError, match="unknown execution provider 'rocm'"):
        Recommender(bundle.dir, provider="rocm")


def test_long_history_is_truncated_with_a_warning(rec):
    hist = list(range(1, 13))
    res = rec.recommend(history=hist, top_k=3)
    assert res.history == hist[-8:]
    assert len(res.warnings) == 1 and "12 items" in res.warnings[0] and "last 8" in res.warnings[0]


def test_eight_threads_equal_serial(rec, bundle):
    users = sorted(bundle.dataset.sequences())[:8]
    serial = [rec.recommend(user=u, top_k=5).to_dict() for u in users]
    out = [None] * 8
    barrier = threading.Barrier(8)

    def work(k):
        barrier.wait()
        for _ in range(2):
            out[k] = rec.recommend(user=users[k], top_k=5).to_dict()

    threads = [threading.Thread(target=work, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for a, b in zip(serial, out):
        a.pop("timings_ms"), b.pop("timings_ms")
        assert a == b


def test_mixed_requests_from_eight_threads_equal_serial(rec, bundle):
    """Known users, ad-hoc and over-long histories, every candidate mode and bad requests, interleaved on 8 threads:
    each result (or error) is the one a serial call gives."""
    users = sorted(bundle.dataset.sequences())
    requests = [dict(user=users[0]), dict(user=users[1], candidates="sampled:5", seed=2),
                dict(history=[3, 9, 4]), dict(history=list(range(1, 13)), top_k=3),  # truncated, with a warning
                dict(history=[5], candidates=[1, 2, 3, 4]), dict(history=[2, 7], candidates="all", top_k=40),
                dict(user=users[2], n_rescore=3), dict(history=[1, 1]), dict(user=10**6), dict(history=[8, 6, 2],
                                                                                             candidates="sampled:9")]

    def call(kw):
        try:
            out = rec.recommend(**kw).to_dict()
            out.pop("timings_ms")
            return out
        except UserError as exc:
            return f"UserError: {exc}"

    serial = [call(kw) for kw in requests]
    assert sum(isinstance(r, str) for r in serial) == 2 and serial[3]["warnings"]
    got: dict[tuple[int, int], object] = {}
    barrier = threading.Barrier(8)

    def work(k):
        barrier.wait()
        for j in range(len(requests)):
            n = (k + j) % len(requests)  # every thread runs every request, each in its own order
            got[k, n] = call(requests[n])

    threads = [threading.Thread(target=work, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(got) == 8 * len(requests)
    for (k, n), r in got.items():
        assert r == serial[n], (k, requests[n])


def test_image_token_in_a_title_never_breaks_requests(bundle, tmp_path):
    """A title holding the literal <image> would add an image slot without features: cold start refuses such a title,
    and a catalog that has one anyway (an imported dataset) still serves, scoring the title without the token."""
    import dataclasses

    from mmsrarec_edge.core.bundle import load_manifest
    from mmsrarec_edge.runtime.catalog import add_item
    from mmsrarec_edge.runtime.cold_start import add_summarized_item
    from mmsrarec_edge.runtime.sessions import SessionConfig
    from mmsrarec_edge.runtime.summarizer import ItemSummary

    d = copy_bundle(bundle, tmp_path / "b")
    man = load_manifest(d)
    summary = ItemSummary(text_keywords=["red", "lamp"])
    with pytest.raises(UserError, match="reserved for images"):
        add_summarized_item(man, SessionConfig.resolve("cpu", threads=1), 5000, "Evil <image> lamp", "a red lamp",
                            summary)
    base = Recommender(d, provider="cpu", threads=1).catalog.items[3]
    d2 = copy_bundle(bundle, tmp_path / "b2")
    for root, title in ((d, "Evil <image> lamp"), (d2, "Evil lamp")):
        add_item(root, dataclasses.replace(base, item_id=5000, title=title))
    got = Recommender(d, provider="cpu", threads=1).recommend(history=[1, 2], candidates=[5000, 3]).scored
    want = Recommender(d2, provider="cpu", threads=1).recommend(history=[1, 2], candidates=[5000, 3]).scored
    assert [i for i, _ in got] == [5000, 3] and np.allclose([s for _, s in got], [s for _, s in want], atol=1e-6)


def test_tampered_bundle_is_refused(bundle, tmp_path):
    d = copy_bundle(bundle, tmp_path / "b")
    items = d / "catalog" / "items.parquet"
    items.write_bytes(items.read_bytes()[:-1] + b"\x00")
    with pytest.raises(BundleError, match="SHA-256 does not match"):
        Recommender(d)


def test_scorer_opened_in_the_background_reports_its_error_at_load(bundle, tmp_path):
    """The scorer graph opens in a background thread while the rest loads: a graph onnxruntime cannot read still
    fails the Recommender's construction with the bundle error naming it, and a failure of the rest is the one
    reported even while the thread is still opening the scorer."""
    d = copy_bundle(bundle, tmp_path / "b")
    scorer = d / "recommender" / "scorer.onnx"
    assert scorer.exists()
    scorer.write_bytes(b"x" * scorer.stat().st_size)  # same size: only onnxruntime notices
    with pytest.raises(BundleError, match="cannot load scorer.onnx"):
        Recommender(d, verify=False)
    d2 = copy_bundle(bundle, tmp_path / "b2")
    embed = d2 / "recommender" / "embed.onnx"
    embed.write_bytes(b"x" * embed.stat().st_size)
    with pytest.raises(BundleError, match="cannot load embed.onnx"):
        Recommender(d2, verify=False)


def test_cold_start_item_is_added_and_recommended(bundle, tmp_path):
    """summarize-item --add-to-catalog's path: the new item is in the catalog, with image features, the bundle still
    verifies, and the default first stage always passes it to the LLM."""
    from PIL import Image

    from mmsrarec_edge.core.bundle import load_manifest
    from mmsrarec_edge.runtime.cold_start import add_summarized_item
    from mmsrarec_edge.runtime.sessions import SessionConfig
    from mmsrarec_edge.runtime.summarizer import load_item_summarizer

    d = copy_bundle(bundle, tmp_path / "b")
    Image.fromarray((np.random.default_rng(0).random((40, 50, 3)) * 255).astype(np.uint8)).save(tmp_path / "n.png")
    cfg = SessionConfig.resolve("cpu", threads=1)
    man = load_manifest(d)
    summary = load_item_summarizer(man, cfg).summarize(tmp_path / "n.png", "Nova lamp. A green striped lamp.")
    row = add_summarized_item(man, cfg, 5000, None, "Nova lamp. A green striped lamp.", summary, tmp_path / "n.png")
    assert row.title == "Nova lamp" and row.keywords == summary.keywords and row.has_image
    man2 = load_manifest(d, verify=True)
    assert man2.config()["catalog"]["count"] == len(bundle.dataset.items) + 1
    from mmsrarec_edge.core.keyword_store import read_keyword_store

    store = read_keyword_store(d / man2.config()["keywords"]["file"])
    assert store[5000].keywords == summary.keywords and len(store) == man2.config()["keywords"]["items"]
    rec = Recommender(d, provider="cpu", threads=1)
    assert 5000 in rec.catalog and rec.catalog.features[5000].shape == (16, 64)
    res = rec.recommend(user=_user(bundle), top_k=20)
    assert 5000 in [i for i, _ in res.scored]
    with pytest.raises(UserError, match="already in the catalog"):
        add_summarized_item(man2, cfg, 5000, "x", "x", summary, None)


def test_sasrec_first_stage_matches_pytorch(rec, bundle):
    """The default candidates are the SASRec top-n by dot product with the item embeddings (PyTorch reference)."""
    import torch

    hist = [3, 9, 4]
    res = rec.recommend(history=hist, n_rescore=5, top_k=5)
    assert res.candidate_mode == "sasrec+llm"
    net = bundle.sasrec.net
    with torch.no_grad():
        u = net.user_embedding(torch.from_numpy(bundle.sasrec.pad_histories([hist])))[0].numpy()
    weights = net.item_emb.weight.detach().numpy()
    ids = [i for i in sorted(bundle.dataset.items) if i not in hist]
    dots = np.array([weights[bundle.sasrec.index[i]] @ u for i in ids])
    want = [ids[k] for k in np.argsort(-dots, kind="stable")[:5]]
    assert [i for i, _ in res.scored] == want
    first = {it.item_id: it.first_stage for it in res.items}
    assert all(abs(first[i] - dots[ids.index(i)]) < 1e-4 for i in first)


def test_popularity_first_stage_without_item_embeddings(bundle, tmp_path):
    import json

    from mmsrarec_edge.core.bundle import load_manifest
    from mmsrarec_edge.runtime.catalog import rewrite_bundle

    d = copy_bundle(bundle, tmp_path / "b")
    man = load_manifest(d)
    config = man.config()
    del config["sasrec"]["item_embeddings"]
    rewrite_bundle(man, {"config.json": lambda p: p.write_text(json.dumps(config))})
    rec = Recommender(d, provider="cpu", threads=1)
    res = rec.recommend(history=[3, 9, 4], n_rescore=6, top_k=6)
    assert res.candidate_mode == "popularity+llm"
    counts = {}
    for h in rec.retrieval.histories.values():
        for i in h:
            counts[i] = counts.get(i, 0) + 1
    got = [counts.get(i, 0) for i, _ in res.scored]
    rest = [counts.get(i, 0) for i in bundle.dataset.items if i not in [3, 9, 4] + [j for j, _ in res.scored]]
    assert got == sorted(got, reverse=True) and min(got) >= max(rest)


def test_cold_start_item_on_a_rank_hint_bundle(bundle, tmp_path):
    """A recommender trained with the SASRec rank hint (the default) builds each candidate's suffix per request, so a
    cold-start item is stored without cached suffix ids and is still scored (it used to fail with a TypeError)."""
    import json

    import pyarrow.parquet as pq

    from mmsrarec_edge.core.bundle import load_manifest
    from mmsrarec_edge.runtime.catalog import rewrite_bundle
    from mmsrarec_edge.runtime.cold_start import add_summarized_item
    from mmsrarec_edge.runtime.sessions import SessionConfig
    from mmsrarec_edge.runtime.summarizer import load_item_summarizer

    d = copy_bundle(bundle, tmp_path / "b")
    man = load_manifest(d)
    config = man.config()
    config["recommender"]["prompt"] = {**config["recommender"]["prompt"], "rank_hint": True, "rank_digits": 2}
    items_rel = config["catalog"].get("items", "catalog/items.parquet")
    items = pq.read_table(man.path(items_rel))
    if "candidate_token_ids" in items.column_names:  # a rank-hint export caches no suffix ids
        items = items.drop(["candidate_token_ids"])
    rewrite_bundle(man, {"config.json": lambda p: p.write_text(json.dumps(config)),
                         items_rel: lambda p: pq.write_table(items, p)})
    man = load_manifest(d, verify=True)
    cfg = SessionConfig.resolve("cpu", threads=1)
    summary = load_item_summarizer(man, cfg).summarize(None, "Nova lamp. A green striped lamp.")
    # through the CLI, as a user adds an item to the default (rank-hint) bundle
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-m", "mmsrarec_edge.cli", "summarize-item", str(d), "--text",
                        "Nova lamp. A green striped lamp.", "--add-to-catalog", "--item-id", "5000", "--json"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["keywords"] == summary.keywords
    rec = Recommender(d, provider="cpu", threads=1)
    assert 5000 in rec.catalog
    res = rec.recommend(user=_user(bundle), top_k=20)
    assert 5000 in [i for i, _ in res.scored]
    case = rec.build_case(user=_user(bundle), candidates=[5000, 3])
    assert all(re.search(r"rank (: )?\d+", rec.codec.decode(s)) for s in case.suffixes)  # the hint, built per request
    with pytest.raises(UserError, match="already in the catalog"):
        add_summarized_item(load_manifest(d), cfg, 5000, "x", "x", summary)


def test_merged_decoder_opens_only_when_a_request_needs_it(bundle):
    """With the scorer graph the merged decoder is not opened at start (seconds and its weights' memory at real
    sizes); the first request that needs it (an empty prefix) opens it, and the answer equals an eager scorer's."""
    lazy = Recommender(bundle.dir, provider="cpu", threads=1)
    assert lazy.scorer.path == "suffix-scorer" and lazy.scorer.decoder is None
    lazy.recommend(user=_user(bundle), top_k=3)
    assert lazy.scorer.decoder is None  # the scorer graph served the request
    suffixes = [[5, 6, 7], [8, 9]]
    got = lazy.scorer.score([], suffixes)
    assert lazy.scorer.decoder is not None
    eager = Recommender(bundle.dir, provider="cpu", threads=1, suffix_scorer=False)
    np.testing.assert_allclose(got, eager.scorer.score([], suffixes), rtol=0, atol=1e-6)
