"""The recommender's suffix-scorer graph (exporter/suffix_graph.py) and the runtime path that uses it: the same scores
as the plain language model over each full prompt, for llama and qwen2 with grouped-query attention, chained over
chunks of candidates, exported and gated, and in the runtime equal to the expanded-KV path."""

import numpy as np
import pytest
import torch
from runtime_support import shared_tiny_bundle, shared_tiny_llava, torch_yes_probability

from mmsrarec_edge.exporter.graphs import export_graph
from mmsrarec_edge.exporter.kinds import export_kind
from mmsrarec_edge.exporter.parity import check
from mmsrarec_edge.exporter.suffix_graph import SuffixScorerGraph, supports
from mmsrarec_edge.runtime.llm import Decoder, Embedder, ImageEncoder, SuffixScorer
from mmsrarec_edge.runtime.scorer import CandidateScorer
from mmsrarec_edge.runtime.sessions import SessionConfig, open_session


def _model(decoder: str, kv_heads: int, seed: int = 0, layers: int = 2):
    from mmsrarec_edge.models.mllm import MLLMConfig, build_mllm, build_tokenizer

    tok = build_tokenizer()
    m = build_mllm(MLLMConfig(decoder=decoder, hidden_size=64, intermediate_size=128, num_heads=4,
                              num_kv_heads=kv_heads, seed=seed, num_layers=layers), tok)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():  # larger weights than the init, so candidates' scores differ visibly
        for p in m.model.language_model.layers.parameters():
            if p.dim() == 2:
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    return m.eval(), (tok.convert_tokens_to_ids("yes"), tok.convert_tokens_to_ids("no"))


def _oracle(model, ids, yes_no):
    with torch.no_grad():
        emb = model.get_input_embeddings()(torch.tensor([ids]))
        h = model.model.language_model(inputs_embeds=emb).last_hidden_state[0, -1]
        return (model.lm_head.weight[list(yes_no)] @ h).numpy()


def _pack(model, suffixes):
    S = max(len(s) for s in suffixes)
    H = model.config.text_config.hidden_size
    emb, mask = torch.zeros(len(suffixes), S, H), torch.zeros(len(suffixes), S, dtype=torch.long)
    with torch.no_grad():
        for r, s in enumerate(suffixes):
            emb[r, :len(s)] = model.get_input_embeddings()(torch.tensor(s))
            mask[r, :len(s)] = 1
    return emb, mask


@pytest.mark.parametrize("decoder,kv_heads", [("qwen2", 2), ("llama", 1), ("llama", 4)])
def test_graph_equals_the_language_model_over_each_full_prompt(decoder, kv_heads):
    """Eager module, chained as the runtime chains it: prefix + 3 candidates, then 4 more over the returned KV with the
    prefix's last token re-fed; two read slots per row (the last, and one in the middle)."""
    model, yes_no = _model(decoder, kv_heads)
    graph = SuffixScorerGraph(model, yes_no).eval()
    rng = np.random.default_rng(0)
    prefix = rng.integers(1000, 29000, size=23).tolist()
    suffixes = [rng.integers(1000, 29000, size=int(n)).tolist() for n in rng.integers(1, 9, size=7)]
    layers = model.config.text_config.num_hidden_layers
    head_dim = 64 // 4
    with torch.no_grad():
        pre = model.get_input_embeddings()(torch.tensor([prefix]))
        past = [torch.zeros(1, kv_heads, 0, head_dim) for _ in range(2 * layers)]
        got = []
        for lo, hi in ((0, 3), (3, 7)):
            chunk = suffixes[lo:hi]
            emb, mask = _pack(model, chunk)
            index = torch.tensor([[len(s) - 1, (len(s) - 1) // 2] for s in chunk])
            out = graph(emb, mask, index, pre, *past)
            got.append(out[0].numpy())
            present = out[1:]
            assert all(p.shape == (1, kv_heads, len(prefix), head_dim) for p in present)
            pre, past = pre[:, -1:], [p[:, :, :-1] for p in present]
    got = np.concatenate(got)  # [7, 2, 2]
    ref = np.stack([[_oracle(model, prefix + s, yes_no), _oracle(model, prefix + s[:(len(s) - 1) // 2 + 1], yes_no)]
                    for s in suffixes])
    assert np.abs(got - ref).max() <= 1e-4 * np.abs(ref).max()
    assert np.abs(ref[:, 0, 0] - ref[:, 0, 1]).std() > 1e-3  # rows differ: the equality is not about a constant


@pytest.mark.parametrize("decoder", ["qwen2", "llama"])
def test_export_passes_its_gate_and_a_wrong_model_fails_it(tmp_path, decoder):
    model, yes_no = _model(decoder, 2)
    path = export_graph(export_kind("decoder_scorer", "recommender.scorer", model).spec(model, yes_no),
                        tmp_path / "scorer.onnx")
    res = check("recommender.scorer", "decoder_scorer", path, "fp32", model, cases=2, yes_no_ids=yes_no)
    assert res.passed, res.failures
    assert res.metrics["score"] < 1e-5 and res.info["prefix_kv_error"] < 1e-5 and res.info["rank_agreement"] == 1.0
    other, _ = _model(decoder, 2, seed=1)
    wrong = check("recommender.scorer", "decoder_scorer", path, "fp32", other, cases=2, yes_no_ids=yes_no)
    assert not wrong.passed and wrong.metrics["score"] > 1e-2


def test_unsupported_decoders_are_named_and_skipped_at_export():
    from mmsrarec_edge.exporter.bundle import ExportInputs, MLLMInput, _graph_plan
    from mmsrarec_edge.exporter.profile import parse_profile

    model, yes_no = _model("qwen2", 2)
    assert supports(model) is None
    model.config.text_config.use_sliding_window = True
    assert "sliding-window" in supports(model)
    with pytest.raises(ValueError, match="sliding-window"):
        SuffixScorerGraph(model, yes_no)
    skipped = {}
    plan = _graph_plan(ExportInputs(recommender=MLLMInput(model, None), yes_no_ids=yes_no),
                       parse_profile({"graphs": ["recommender.decoder", "recommender.scorer"]}), skipped)
    assert [p[0] for p in plan] == ["recommender.decoder"] and "sliding-window" in skipped["recommender.scorer"]


# ---------------------------------------------------------------- runtime


@pytest.fixture(scope="module")
def parts():
    tiny = shared_tiny_llava()
    shared_tiny_bundle()  # the graphs below are the shared bundle's
    cfg = SessionConfig.resolve("cpu", threads=1)
    emb = Embedder(open_session(tiny.path("embed"), cfg), tiny.image_token_id)
    dec = Decoder(open_session(tiny.path("decoder_yes_no"), cfg))
    suf = SuffixScorer(open_session(tiny.path("scorer"), cfg))
    vis = ImageEncoder(open_session(tiny.path("vision"), cfg))
    return tiny, emb, dec, suf, vis


@pytest.mark.parametrize("max_batch", [1, 3, 64])
def test_runtime_scorer_path_equals_expanded_kv_and_pytorch(parts, max_batch):
    """With image slots in the prefix and in every candidate, chunked (max_batch 1 and 3 chain the prefix KV)."""
    tiny, emb, dec, suf, vis = parts
    rng = np.random.default_rng(5)
    img = [tiny.image_token_id] * 16
    prefix = rng.integers(1000, 29000, size=9).tolist() + img + rng.integers(1000, 29000, size=20).tolist()
    suffixes = [rng.integers(1000, 29000, size=int(n)).tolist() + img + [1010] for n in rng.integers(1, 8, size=7)]
    px = rng.standard_normal((8, 3, 64, 64)).astype(np.float32)
    feats = vis(px)
    fast = CandidateScorer(dec, emb, pad_id=0, max_batch=max_batch, suffix_scorer=suf)
    slow = CandidateScorer(dec, emb, pad_id=0, max_batch=max_batch)
    assert (fast.path, slow.path) == ("suffix-scorer", "expanded-kv")
    a = fast.score(prefix, suffixes, [feats[0]], [[f] for f in feats[1:]])
    b = slow.score(prefix, suffixes, [feats[0]], [[f] for f in feats[1:]])
    assert np.abs(a - b).max() < 1e-5 and a.std() > 1e-4
    for c in (0, 6):
        ref = torch_yes_probability(tiny.model, prefix + suffixes[c], np.stack([px[0], px[c + 1]]), tiny.yes_id,
                                    tiny.no_id)
        assert abs(a[c] - ref) < 1e-5


def test_recommender_uses_the_scorer_graph_unless_told_not_to():
    from mmsrarec_edge.runtime.recommender import Recommender

    bundle = shared_tiny_bundle()
    fast = Recommender(bundle.dir, provider="cpu", threads=1)
    slow = Recommender(bundle.dir, provider="cpu", threads=1, suffix_scorer=False)
    assert fast.scorer.path == "suffix-scorer" and fast.variants["recommender.scorer"] == "fp32"
    assert slow.scorer.path == "expanded-kv" and "recommender.scorer" not in slow.variants
    user = sorted(fast.retrieval.histories)[0]
    ra = fast.recommend(user=user, candidates="sampled:12", top_k=12, seed=1)
    rb = slow.recommend(user=user, candidates="sampled:12", top_k=12, seed=1)
    sa = {r.item_id: r.score for r in ra.items}
    sb = {r.item_id: r.score for r in rb.items}
    assert sa.keys() == sb.keys() and max(abs(sa[k] - sb[k]) for k in sa) < 1e-5


def test_timings_split_the_score_into_its_calls_outside_the_total():
    from mmsrarec_edge.runtime.recommender import Recommender

    bundle = shared_tiny_bundle()
    user = sorted(Recommender(bundle.dir, provider="cpu", threads=1).retrieval.histories)[0]
    for fast, parts in ((True, {"score:embed", "score:prefill+candidates"}),
                        (False, {"score:embed", "score:prefill", "score:candidates"})):
        rec = Recommender(bundle.dir, provider="cpu", threads=1, suffix_scorer=fast)
        t = rec.recommend(user=user, candidates="sampled:12", top_k=3).timings_ms
        assert {k for k in t if k.startswith("score:")} == parts
        assert sum(t[k] for k in parts) <= t["score"] + 1e-3
        assert t["total"] == pytest.approx(sum(t[k] for k in ("encode", "retrieve", "prompt", "score")), abs=5e-3)


def test_a_one_layer_decoder_exports_without_suffix_mask_and_passes(tmp_path):
    """With one layer only the last (read-slot) layer runs, which needs no suffix mask: the exporter drops the input
    and the runtime's scorer feeds what the graph takes (it refused such graphs before)."""
    import onnx

    model, yes_no = _model("qwen2", 2, layers=1)
    path = export_graph(export_kind("decoder_scorer", "recommender.scorer", model).spec(model, yes_no),
                        tmp_path / "scorer.onnx")
    assert "suffix_mask" not in {i.name for i in onnx.load(str(path)).graph.input}
    res = check("recommender.scorer", "decoder_scorer", path, "fp32", model, cases=2, yes_no_ids=yes_no)
    assert res.passed and res.metrics["score"] < 1e-5, res.failures
