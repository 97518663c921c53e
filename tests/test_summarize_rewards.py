"""Reward terms against values computed by hand: R_info from MiniLM embeddings, R_recon token by token, R_len, R."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from mmsrarec_edge.summarize.rewards import RewardModel, SentenceEncoder, cosine, r_len, total_reward

TEXTS = {1: "Fable clock. This small blue clock has a dotted look. Rustic design, crafted from plastic.",
         2: "Toy Story (1995). A cowboy doll is threatened by a new spaceman figure."}


@pytest.fixture(scope="module")
def encoder():
    return SentenceEncoder()


@pytest.fixture(scope="module")
def recon():
    from mmsrarec_edge.models.mllm import build_tokenizer
    from mmsrarec_edge.summarize.reconstructor import Reconstructor, compact_vocab

    tok = build_tokenizer()
    vocab = compact_vocab(tok, list(TEXTS.values()) + ["blue, dotted, clock"], 24)  # small: some ids become [UNK]
    r = Reconstructor.build(tok, vocab, hidden=32, layers=1, max_text_tokens=16, seed=3)
    with torch.no_grad():  # random but not near-uniform, so that keywords change the likelihood noticeably
        for p in r.model.parameters():
            p.mul_(4.0)
    return r


def hand_embedding(encoder, text):
    enc = encoder.tokenizer([text], return_tensors="pt")
    with torch.no_grad():
        h = encoder.model(**enc).last_hidden_state[0].numpy()
    m = enc["attention_mask"][0].numpy()[:, None]
    v = (h * m).sum(0) / m.sum()
    return v / np.linalg.norm(v)


def test_encoder_is_minilm_mean_pooled_and_normalised(encoder):
    assert encoder.dim == 384
    e = encoder.embed(["blue, dotted, clock", TEXTS[1]])
    assert e.shape == (2, 384) and e.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(e, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(e[0], hand_embedding(encoder, "blue, dotted, clock"), atol=1e-5)
    # batched with padding == one at a time, and the cache returns the same vector
    np.testing.assert_allclose(encoder.embed([TEXTS[1]])[0], e[1], atol=1e-6)


def test_encoder_matches_sentence_transformers(encoder):
    st = pytest.importorskip("sentence_transformers")
    from mmsrarec_edge.models.mllm import minilm_dir

    ref = st.SentenceTransformer(str(minilm_dir()), device="cpu").encode(["red, striped, lamp", TEXTS[2]])
    np.testing.assert_allclose(encoder.embed(["red, striped, lamp", TEXTS[2]]), ref, atol=1e-5)


def test_r_info_is_cosine_by_hand(encoder, recon):
    rm = RewardModel(encoder, recon, TEXTS, a=1.0, b=0.0, c=0.0)
    kws = [["blue", "dotted", "clock"], ["cowboy doll", "toy"], []]
    got = rm.r_info([1, 2, 1], kws)
    by_hand = [cosine(hand_embedding(encoder, "blue, dotted, clock"), hand_embedding(encoder, TEXTS[1])),
               cosine(hand_embedding(encoder, "cowboy doll, toy"), hand_embedding(encoder, TEXTS[2])), 0.0]
    np.testing.assert_allclose(got, by_hand, atol=1e-5)
    assert got[0] > 0.5 and got[1] > 0.4  # a real encoder: these keywords do describe these texts
    assert rm.r_info([1], [["cowboy doll", "toy"]])[0] < got[0]


def hand_mean_nll(recon, keywords, text):
    """Token by token, one prefix at a time, no batching and no padding."""
    ids, start = recon.sequence(keywords, text)
    nlls = []
    with torch.no_grad():
        for j in range(start, len(ids)):
            logits = recon.model(input_ids=torch.tensor([ids[:j]])).logits[0, -1].double()
            nlls.append(-torch.log_softmax(logits, -1)[ids[j]].item())
    return sum(nlls) / len(nlls)


def test_reconstructor_sequence_layout(recon):
    from mmsrarec_edge.summarize.reconstructor import BOS, EOS, UNK

    ids, start = recon.sequence(["blue", "dotted"], TEXTS[1])
    assert ids[0] == BOS and ids[start - 1] == EOS and start == 1 + len(recon._encode(" blue, dotted")) + 1
    assert len(ids) - start == 16  # text truncated to max_text_tokens
    assert UNK in ids  # words outside the 24-id vocabulary
    assert recon.sequence([], "x")[1] == 2


def test_r_recon_is_minus_exp_mean_nll_by_hand(encoder, recon):
    rm = RewardModel(encoder, recon, TEXTS, a=0.0, b=1.0, c=0.0)
    cases = [(1, ["blue", "dotted", "clock"]), (2, []), (1, ["cowboy"]), (2, ["a very long keyword", "toy", "doll"])]
    got = rm.r_recon([i for i, _ in cases], [k for _, k in cases])  # one padded batch of different lengths
    by_hand = [-math.exp(hand_mean_nll(recon, k, TEXTS[i])) for i, k in cases]
    np.testing.assert_allclose(got, by_hand, rtol=1e-4)
    assert len(set(np.round(got, 3))) == 4  # keywords do change the likelihood


def test_r_len_and_total(encoder, recon):
    assert r_len([]) == 0.0 and r_len(["a", "b", "c"]) == -3.0
    assert total_reward(0.5, -4.0, -3.0, 1.0, 0.1, 0.02) == pytest.approx(0.5 - 0.4 - 0.06)
    rm = RewardModel(encoder, recon, TEXTS, a=1.5, b=0.2, c=0.05)
    kws = [["blue", "clock"], [], ["doll", "toy", "cowboy"]]
    rb = rm.score([1, 1, 2], kws)
    np.testing.assert_allclose(rb.r_len, [-2, 0, -3])
    np.testing.assert_allclose(rb.n_keywords, [2, 0, 3])
    np.testing.assert_allclose(rb.total, 1.5 * rb.r_info + 0.2 * rb.r_recon + 0.05 * rb.r_len, rtol=1e-6)
    np.testing.assert_allclose(rb.r_recon, rm.r_recon([1, 1, 2], kws), rtol=1e-6)
    assert rb.mean()["n_keywords"] == pytest.approx(5 / 3)
