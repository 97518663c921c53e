"""Shared-prefix scoring in numpy/ONNX Runtime: equal to per-candidate scoring and to the PyTorch LLaVA forward."""

import numpy as np
import pytest
from runtime_support import shared_tiny_llava, torch_yes_probability

from mmsrarec_edge.core.scores import yes_probability
from mmsrarec_edge.runtime.llm import Decoder, Embedder, ImageEncoder
from mmsrarec_edge.runtime.scorer import CandidateScorer, expand_kv
from mmsrarec_edge.runtime.sessions import SessionConfig, open_session


@pytest.fixture(scope="module")
def tiny():
    return shared_tiny_llava()


@pytest.fixture(scope="module")
def parts(tiny):
    cfg = SessionConfig.resolve("cpu", threads=1)
    emb = Embedder(open_session(tiny.path("embed"), cfg), tiny.image_token_id)
    dec = Decoder(open_session(tiny.path("decoder_yes_no"), cfg))
    vis = ImageEncoder(open_session(tiny.path("vision"), cfg))
    return emb, dec, vis


def _prompts(rng, n_cand=9):
    prefix = rng.integers(1000, 29000, size=37).tolist()
    suffixes = [rng.integers(1000, 29000, size=int(rng.integers(1, 12))).tolist() for _ in range(n_cand)]
    return prefix, suffixes


def test_decoder_layout_is_read_from_the_graph(parts):
    _, dec, vis = parts
    assert dec.layout.head == "yes_no" and dec.layout.layers == 2
    assert (dec.layout.kv_heads, dec.layout.head_dim) == (2, 16)
    assert vis.tokens == 16 and vis.image_size == 64


@pytest.mark.parametrize("expand", ["view", "contiguous", "repeat"])
@pytest.mark.parametrize("max_batch", [1, 4, 64])
def test_shared_prefix_equals_naive_per_candidate(parts, expand, max_batch):
    emb, dec, _ = parts
    prefix, suffixes = _prompts(np.random.default_rng(1))
    scorer = CandidateScorer(dec, emb, pad_id=0, max_batch=max_batch, expand=expand)
    shared = scorer.score(prefix, suffixes)
    naive = scorer.score_naive(prefix, suffixes)
    assert shared.shape == (9,) and np.all((shared > 0) & (shared < 1))
    assert np.abs(shared - naive).max() < 1e-6
    assert np.array_equal(np.argsort(-shared, kind="stable"), np.argsort(-naive, kind="stable"))
    assert shared.std() > 1e-4  # candidates really differ: equality above is not a constant


def test_scores_equal_pytorch_llava_with_image_slots(tiny, parts):
    """Prefix with one image, each candidate with its own image: the splice must put features where LLaVA does."""
    emb, dec, vis = parts
    rng = np.random.default_rng(2)
    prefix, suffixes = _prompts(rng, 4)
    img = [tiny.image_token_id] * 16
    prefix = prefix[:5] + img + prefix[5:]
    suffixes = [s + img + [1010] for s in suffixes]
    px = rng.standard_normal((5, 3, 64, 64)).astype(np.float32)
    feats = vis(px)
    scorer = CandidateScorer(dec, emb, pad_id=0, max_batch=3)
    got = scorer.score(prefix, suffixes, [feats[0]], [[feats[c + 1]] for c in range(4)])
    ref = np.array([torch_yes_probability(tiny.model, prefix + s, px[[0, c + 1]], tiny.yes_id, tiny.no_id)
                    for c, s in enumerate(suffixes)])
    assert np.abs(got - ref).max() < 1e-4
    assert np.array_equal(np.argsort(-got), np.argsort(-ref))


def test_text_only_scores_equal_pytorch(tiny, parts):
    emb, dec, _ = parts
    prefix, suffixes = _prompts(np.random.default_rng(3), 6)
    got = CandidateScorer(dec, emb, pad_id=0).score(prefix, suffixes)
    ref = np.array([torch_yes_probability(tiny.model, prefix + s, None, tiny.yes_id, tiny.no_id) for s in suffixes])
    assert np.abs(got - ref).max() < 1e-4
    assert np.array_equal(np.argsort(-got), np.argsort(-ref))


def test_slot_feature_mismatch_is_refused(tiny, parts):
    emb, dec, vis = parts
    scorer = CandidateScorer(dec, emb, pad_id=0)
    with pytest.raises(ValueError, match="16 <image> slots but 0"):
        scorer.score([1000] + [tiny.image_token_id] * 16, [[1001]])
    with pytest.raises(ValueError, match="at least one token"):
        scorer.score([1000], [[1001], []])


def test_expand_kv_variants_agree():
    kv = {"past_key_values.0.key": np.arange(24, dtype=np.float32).reshape(1, 2, 3, 4)}
    views = {h: expand_kv(kv, 5, h)["past_key_values.0.key"] for h in ("view", "contiguous", "repeat")}
    for v in views.values():
        assert v.shape == (5, 2, 3, 4) and np.array_equal(v[4], kv["past_key_values.0.key"][0])
    assert views["view"].strides[0] == 0 and views["contiguous"].flags.c_contiguous


def test_yes_probability_is_stable():
    a = np.array([[800.0, 0.0], [0.0, 800.0], [1.0, 1.0], [2.0, 0.0]], np.float32)
    p = yes_probability(a[:, 0], a[:, 1])
    assert np.all(np.isfinite(p)) and p[0] == 1.0 and p[1] < 1e-300 and p[2] == 0.5
    assert abs(p[3] - 1 / (1 + np.exp(-2.0))) < 1e-12
