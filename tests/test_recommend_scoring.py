"""Yes/no scoring in PyTorch: the score formula, shared-prefix == naive (text and image suffixes, chunked), and the
packed training rows see exactly what an unpacked prompt sees."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from mmsrarec_edge.core.scores import yes_probability
from mmsrarec_edge.recommend.scoring import TorchScorer
from mmsrarec_edge.recommend.tasks import Row, Segment
from mmsrarec_edge.recommend.train import batch_loss, pack


@pytest.fixture(scope="module")
def tiny():
    from mmsrarec_edge.models.mllm import IMAGE_TOKEN, MLLMConfig, build_mllm, build_tokenizer

    torch.set_num_threads(1)
    tok = build_tokenizer()
    model = build_mllm(MLLMConfig(hidden_size=64, intermediate_size=128, seed=1), tok).float().eval()
    # At the default init every prompt gives nearly the same output; larger weights make rows differ.
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.model.language_model.layers.parameters():
            if p.dim() == 2:
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    yes, no = tok.convert_tokens_to_ids("yes"), tok.convert_tokens_to_ids("no")
    return model, tok, yes, no, tok.convert_tokens_to_ids(IMAGE_TOKEN)


def test_score_is_p_yes_over_p_yes_plus_p_no():
    logits = np.array([0.3, 2.0, -1.0, 0.5])  # vocabulary of 4; yes = 1, no = 3
    p = np.exp(logits) / np.exp(logits).sum()
    assert yes_probability(logits[1], logits[3]) == pytest.approx(p[1] / (p[1] + p[3]), abs=1e-12)
    assert yes_probability(2.0, 0.5) == pytest.approx(math.exp(2.0) / (math.exp(2.0) + math.exp(0.5)), abs=1e-12)
    t = yes_probability(torch.tensor([2.0, -3.0]), torch.tensor([0.5, -3.0]))
    assert t.dtype == np.float64 and t[1] == 0.5


def test_score_matches_full_vocabulary_softmax(tiny):
    model, tok, yes, no, _ = tiny
    ids = tok("user history : red lamp . candidate : blue clock . answer :", add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        probs = torch.softmax(model(input_ids=torch.tensor([ids])).logits[0, -1].double(), -1)
    want = float(probs[yes] / (probs[yes] + probs[no]))
    got = TorchScorer(model, yes, no, tok.pad_token_id).score_naive(ids[:5], [ids[5:]])[0]
    assert got == pytest.approx(want, abs=1e-9)


def _prompts(tok, n=7):
    enc = lambda s: tok(s, add_special_tokens=False)["input_ids"]  # noqa: E731
    prefix = [tok.bos_token_id] + enc("user history : red lamp ; blue clock . similar users then chose : kite . "
                                      "candidate :")
    words = ["small", "green striped vase made of glass", "x", "a large purple dotted badge", "cushion", "orange",
             "metal minimalist lamp from the studio"]
    return prefix, [enc(f" {w} . will the user choose it ? answer :") for w in words[:n]]


@pytest.mark.parametrize("max_batch", [64, 3])
def test_shared_prefix_equals_naive(tiny, max_batch):
    model, tok, yes, no, _ = tiny
    prefix, suffixes = _prompts(tok)
    sc = TorchScorer(model, yes, no, tok.pad_token_id, max_batch=max_batch)
    naive, shared = sc.score_naive(prefix, suffixes), sc.score_shared(prefix, suffixes)
    assert np.abs(naive - shared).max() < 1e-6
    assert naive.std() > 1e-3  # the candidates really get different scores


def test_shared_prefix_equals_naive_with_image_suffixes(tiny):
    model, tok, yes, no, image_id = tiny
    prefix, suffixes = _prompts(tok, 4)
    rng = np.random.default_rng(0)
    pix = [rng.normal(size=(3, 64, 64)).astype(np.float32) if k % 2 == 0 else None for k in range(4)]
    suffixes = [s[:2] + ([image_id] * 16 if pix[k] is not None else []) + s[2:] for k, s in enumerate(suffixes)]
    sc = TorchScorer(model, yes, no, tok.pad_token_id)
    naive, shared = sc.score_naive(prefix, suffixes, pix), sc.score_shared(prefix, suffixes, pix)
    assert np.abs(naive - shared).max() < 1e-6
    other = sc.score_shared(prefix, suffixes, [None if p is None else -p for p in pix])
    assert np.abs(other - shared)[[0, 2]].min() > 1e-6  # the image features do reach the score


def test_packed_rows_equal_unpacked_prompts(tiny):
    model, tok, yes, no, _ = tiny
    rng = np.random.default_rng(1)
    rows = [Row(rng.integers(1000, 20000, int(rng.integers(3, 25))).tolist(),
                [Segment(rng.integers(1000, 20000, int(rng.integers(1, 9))).tolist(),
                         rng.integers(1000, 20000, int(rng.integers(1, 4))).tolist(), "rec")
                 for _ in range(int(rng.integers(1, 5)))]) for _ in range(4)]
    ids, mask, pos, where = pack(rows, tok.pad_token_id)
    with torch.no_grad():
        h = model.model(input_ids=ids, attention_mask=mask, position_ids=pos).last_hidden_state
        k = 0
        for r, row in enumerate(rows):
            for seg in row.segments:
                full = row.prefix + seg.suffix + seg.target[:-1]
                ref = model.model(input_ids=torch.tensor([full])).last_hidden_state[0]
                for j, t in enumerate(seg.target):
                    rr, pp, tt, _ = where[k]
                    assert (rr, tt) == (r, t)
                    assert torch.allclose(h[rr, pp], ref[len(row.prefix) + len(seg.suffix) - 1 + j], atol=1e-5)
                    k += 1
    assert k == len(where)
    loss, stats = batch_loss(model, rows, tok.pad_token_id, aux_weight=0.5)
    assert torch.isfinite(loss) and set(stats) == {"rec"}
