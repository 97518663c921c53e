"""The embedded default's warm start: MiniLM token embeddings at a set spread, the projector matched to them, and the
vision-keyword alignment that trains only the vision side."""

import numpy as np
import torch

from mmsrarec_edge.models.mllm import MLLMConfig, build_mllm, build_tokenizer, image_size
from mmsrarec_edge.summarize.align import align_vision
from mmsrarec_edge.summarize.embeddings import EMBED_STD, image_tokens, minilm_word_embeddings, warm_start_default


def _model():
    tok = build_tokenizer()
    return build_mllm(MLLMConfig(seed=0), tok), tok


def test_warm_start_spreads_tokens_and_image_features_alike():
    model, tok = _model()
    pix = torch.from_numpy(np.random.default_rng(0).normal(size=(6, 3, image_size(model), image_size(model)))
                           .astype(np.float32))
    info = warm_start_default(model, pix)
    emb = model.get_input_embeddings().weight.detach()
    assert info["embedding_rows"] == minilm_word_embeddings().shape[0]
    assert abs(float(emb[: info["embedding_rows"]].std()) - EMBED_STD) < 1e-3
    with torch.no_grad():
        feats = image_tokens(model, pix)
    assert abs(float(feats.std()) - EMBED_STD) < 0.02  # image tokens as loud as text tokens
    # related words end up closer than unrelated ones (the point of starting from MiniLM)
    red, blue, table = (emb[tok.convert_tokens_to_ids(w)] for w in ("red", "blue", "table"))
    cos = torch.nn.functional.cosine_similarity
    assert cos(red, blue, dim=0) > cos(red, table, dim=0)


def test_alignment_trains_the_vision_side_only():
    model, tok = _model()
    rng = np.random.default_rng(1)
    pix = rng.normal(size=(8, 3, image_size(model), image_size(model))).astype(np.float32)
    ids = [tok(w, add_special_tokens=False)["input_ids"] for w in ("red", "blue", "green", "lamp", "vase", "kite",
                                                                      "clock", "chair")]
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    losses = align_vision(model, pix, ids, steps=4, batch_size=8, seed=0)
    assert len(losses) == 4 and np.isfinite(losses).all()
    changed = {n for n, p in model.named_parameters() if not torch.equal(before[n], p.detach())}
    assert changed and all("vision_tower" in n or "multi_modal_projector" in n for n in changed)
    assert all(p.requires_grad for p in model.parameters())  # restored
