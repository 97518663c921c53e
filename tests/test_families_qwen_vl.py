"""Qwen2-VL and Qwen2.5-VL (the paper's backbone) end to end on tiny random models built from transformers' config
classes: the runtime's numpy M-RoPE position ids equal transformers' get_rope_index, the in-graph patch cutting equals
the Qwen image processor's, export passes every fp32 gate (vision tower at a fixed grid, decoders and the scorer with
3-D positions), the runtime ranks generated cases (images in the prefix and in candidates) as PyTorch does on both
scoring paths, and summarize-item with an image gives PyTorch's greedy keywords. Also: LLaVA-1.5 shapes, the profile's
fixed resolution, and the one-line refusal of an unsupported family."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from mmsrarec_edge.core.errors import UserError
from mmsrarec_edge.core.rope_index import MRope, rope_from_config
from mmsrarec_edge.models import families as F

FAMS = ("qwen2_vl", "qwen2_5_vl")


def _model(family: str, seed: int = 0):
    from mmsrarec_edge.models.mllm import build_tokenizer

    torch.set_num_threads(1)
    tok = build_tokenizer()
    m = F.build_qwen_vl(F.QwenVLConfig(family=family, seed=seed), tok)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():  # larger than the init, so candidates and generations differ visibly
        for p in m.model.language_model.layers.parameters():
            if p.dim() == 2:
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    return m, tok


def _image(rng, size=84) -> Image.Image:
    return Image.fromarray(rng.integers(0, 256, size=(size, size, 3), dtype=np.uint8))


def _with_image(r: MRope, end: int, ids: list[int], at: int) -> list[int]:
    return ids[:at] + [r.vision_start_token_id] + [r.image_token_id] * r.image_tokens + [end] + ids[at:]


@pytest.fixture(scope="module", params=FAMS)
def qwen(request):
    return (request.param, *_model(request.param))


# ---------------------------------------------------------------- positions and pixels


def test_rope_index_equals_transformers(qwen):
    family, m, _ = qwen
    r, end, rng = F.rope(m), m.config.vision_end_token_id, np.random.default_rng(0)
    rows = []
    for k in range(8):
        ids = rng.integers(1000, 29000, size=int(rng.integers(3, 20))).tolist()
        for _ in range(k % 3):  # 0, 1 or 2 images, anywhere (also first and last)
            ids = _with_image(r, end, ids, int(rng.integers(0, len(ids) + 1)))
        rows.append(ids)
    rows.append(_with_image(r, end, [], 0))  # an image and nothing else
    width = max(map(len, rows))
    ids = torch.zeros(len(rows), width, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, row in enumerate(rows):  # left padding, as the summarizer batches prompts
        ids[i, width - len(row):], mask[i, width - len(row):] = torch.tensor(row), 1
    n_img = sum(int(((torch.tensor(x[:-1]) == r.vision_start_token_id) & (torch.tensor(x[1:]) == r.image_token_id))
                    .sum()) for x in rows)
    grid = torch.tensor([list(F.patch_grid(m))] * n_img)
    want, deltas = m.model.get_rope_index(ids, image_grid_thw=grid, attention_mask=mask)
    got, nxt = r.batch(rows, width, left=True)
    assert r.grid == (1, 3, 3) and n_img > 4
    np.testing.assert_array_equal(got, want.numpy())
    np.testing.assert_array_equal(nxt, deltas[:, 0].numpy() + width)  # decoding continues where generate does
    # a suffix after a prefix continues from the prefix's next position: the tail of the whole row's positions
    prefix, suffix = rows[4], _with_image(r, end, [7, 8, 9], 1)
    whole, _ = r.row(prefix + suffix)
    p, after = r.row(prefix)
    np.testing.assert_array_equal(np.concatenate([p, r.row(suffix, after)[0]], axis=1), whole)
    assert rope_from_config(json.loads(json.dumps(r.to_dict()))) == r and rope_from_config(None) is None


def test_pixel_rows_equal_the_qwen_image_processor(qwen):
    from transformers import Qwen2VLImageProcessor

    from mmsrarec_edge.core.imaging import preprocess

    _, m, _ = qwen
    img = _image(np.random.default_rng(1))
    proc = Qwen2VLImageProcessor(patch_size=14, merge_size=2, temporal_patch_size=2, min_pixels=84 * 84,
                                 max_pixels=84 * 84)
    want = proc(images=[img], return_tensors="np")
    rows, grid = F.qwen_pixels(m, torch.from_numpy(preprocess(img, 84)[None]))
    assert grid.tolist() == want["image_grid_thw"].tolist() == [[1, 6, 6]]
    np.testing.assert_allclose(rows.numpy(), want["pixel_values"], atol=2e-5)


# ---------------------------------------------------------------- export and runtime


@pytest.fixture(scope="module")
def bundle(qwen, tmp_path_factory):
    from mmsrarec_edge.core.summary_prompts import PromptSpec
    from mmsrarec_edge.exporter.bundle import ExportInputs, MLLMInput, export_bundle
    from mmsrarec_edge.exporter.profile import ExportProfile

    family, m, tok = qwen
    spec = PromptSpec(eos_id=tok.eos_token_id, pad_id=tok.pad_token_id, image_token_id=F.image_token_id(m),
                      num_image_tokens=F.num_image_tokens(m), bos_id=tok.bos_token_id, **F.image_wrap(m))
    yes_no = (tok.convert_tokens_to_ids("yes"), tok.convert_tokens_to_ids("no"))
    inputs = ExportInputs(summarizer=MLLMInput(m, tok, {"prompt_spec": spec.to_dict(), "max_new_tokens": 6}),
                          recommender=MLLMInput(m, tok), yes_no_ids=yes_no)
    profile = ExportProfile(graphs=["summarizer.vision", "summarizer.embed", "summarizer.decoder",
                                    "recommender.vision", "recommender.embed", "recommender.decoder",
                                    "recommender.scorer"])
    out = tmp_path_factory.mktemp(family) / "bundle"
    manifest = export_bundle(inputs, profile, out)
    return family, m, tok, out, manifest, yes_no


def test_export_passes_every_fp32_gate(bundle):
    family, m, _, out, manifest, _ = bundle
    assert set(manifest["graphs"]) == {"summarizer.vision", "summarizer.embed", "summarizer.decoder",
                                       "recommender.vision", "recommender.embed", "recommender.decoder",
                                       "recommender.scorer"} and not manifest["graphs_skipped"]
    for name, entry in manifest["graphs"].items():
        parity = entry["variants"]["fp32"]["parity"]
        assert parity["passed"] and all(v <= 1e-4 for v in parity["metrics"].values()), (name, parity)
    vision = manifest["graphs"]["recommender.vision"]
    assert vision["inputs"][0]["shape"] == ["images", 3, 84, 84]  # the fixed grid
    scorer = [i["name"] for i in manifest["graphs"]["recommender.scorer"]["inputs"]]
    assert scorer[4:6] == ["position_ids", "prefix_position_ids"]
    conf = json.loads((out / "config.json").read_text())
    assert conf["recommender"]["family"] == family and conf["recommender"]["rope"] == F.rope(m).to_dict()
    assert conf["summarizer"]["num_image_tokens"] == 9 and conf["summarizer"]["image_size"] == 84


def _sessions(out):
    from mmsrarec_edge.runtime.llm import Decoder, Embedder, ImageEncoder, SuffixScorer
    from mmsrarec_edge.runtime.sessions import SessionConfig, open_session

    cfg = SessionConfig("cpu", threads=1)
    conf = json.loads((out / "config.json").read_text())["recommender"]
    rec = out / "recommender"
    return (ImageEncoder(open_session(rec / "vision.onnx", cfg)),
            Embedder(open_session(rec / "embed.onnx", cfg), conf["image_token_id"]),
            Decoder(open_session(rec / "decoder.onnx", cfg)), SuffixScorer(open_session(rec / "scorer.onnx", cfg)),
            rope_from_config(conf["rope"]))


def test_runtime_ranking_equals_pytorch(bundle):
    """Generated cases: a history prefix holding an image and candidates with and without one; the runtime's scores
    (vision graph features spliced, M-RoPE positions in numpy) on both scoring paths equal the full PyTorch forward
    of each whole prompt with its pixels, and so does the ranking."""
    from mmsrarec_edge.core.imaging import preprocess
    from mmsrarec_edge.runtime.scorer import CandidateScorer

    _, m, tok, out, _, (yes, no) = bundle
    vision, embedder, decoder, scorer_graph, r = _sessions(out)
    end, rng = m.config.vision_end_token_id, np.random.default_rng(3)
    for case in range(2):
        prefix_img, imgs = _image(rng), [_image(rng) for _ in range(3)]
        prefix = _with_image(r, end, rng.integers(1000, 29000, size=12 + 6 * case).tolist(), 4)
        suffixes, pixels = [], []
        for c in range(6):
            s = rng.integers(1000, 29000, size=int(rng.integers(2, 8))).tolist()
            if c % 2 == 0:
                s = _with_image(r, end, s, int(rng.integers(0, len(s))))
            suffixes.append(s + [tok.convert_tokens_to_ids(":")])
            pixels.append(preprocess(imgs[c // 2], 84) if c % 2 == 0 else None)
        pre_px = preprocess(prefix_img, 84)
        pre_feat = [vision(pre_px[None])[0]]
        feats = [None if px is None else [vision(px[None])[0]] for px in pixels]
        with torch.no_grad():
            want = []
            for s, px in zip(suffixes, pixels):
                stack = np.stack([pre_px] + ([px] if px is not None else []))
                logits = m(input_ids=torch.tensor([prefix + s]), **F.image_inputs(m, stack)).logits[0, -1].double()
                want.append(float(torch.sigmoid(logits[yes] - logits[no])))
        want = np.array(want)
        for path in ("suffix-scorer", "expanded-kv"):
            sc = CandidateScorer(decoder, embedder, tok.pad_token_id, max_batch=4, rope=r,
                                 suffix_scorer=scorer_graph if path == "suffix-scorer" else None)
            assert sc.path == path
            got = sc.score(prefix, suffixes, pre_feat, feats)  # 6 candidates in chunks of 4: the KV is reused
            np.testing.assert_allclose(got, want, atol=1e-5)
            assert list(np.argsort(-got, kind="stable")) == list(np.argsort(-want, kind="stable"))
        naive = CandidateScorer(decoder, embedder, tok.pad_token_id, rope=r).score_naive(prefix, suffixes, pre_feat,
                                                                                          feats)
        np.testing.assert_allclose(naive, want, atol=1e-5)
        assert want.std() > 1e-3  # the candidates' scores differ: the order is a real check


def test_summarize_item_with_an_image_matches_pytorch_greedy(bundle):
    import shuffle_vl_support as S

    from mmsrarec_edge.core.bundle import load_manifest
    from mmsrarec_edge.core.imaging import preprocess
    from mmsrarec_edge.runtime.sessions import SessionConfig
    from mmsrarec_edge.runtime.summarizer import load_item_summarizer

    _, m, tok, out, _, _ = bundle
    summarizer = load_item_summarizer(load_manifest(out), SessionConfig("cpu", threads=1))
    spec, img = summarizer.spec, _image(np.random.default_rng(5))
    assert summarizer.rope == F.rope(m) and spec.image_start_id == m.config.vision_start_token_id
    S.assert_greedy_like_pytorch(m, tok, summarizer, img, preprocess(img, 84)[None])


# ---------------------------------------------------------------- resolution, other families, refusals


def test_profile_fixes_the_resolution_and_guards_the_trained_token_count(qwen):
    from mmsrarec_edge.exporter.bundle import ExportInputs, MLLMInput, fix_image_size
    from mmsrarec_edge.exporter.profile import parse_profile

    family, _, _ = qwen
    m, tok = _model(family, seed=1)
    prof = parse_profile({"vision": {"image_size": 56}})
    fix_image_size(ExportInputs(summarizer=MLLMInput(m, tok)), prof)
    assert F.image_size(m) == 56 and F.num_image_tokens(m) == 4 and F.rope(m).grid == (1, 2, 2)
    with pytest.raises(UserError, match="trained with 4"):
        fix_image_size(ExportInputs(recommender=MLLMInput(m, tok, {"n_image_tokens": 4})),
                       parse_profile({"vision": {"image_size": 84}}))
    with pytest.raises(UserError, match="multiple of patch_size x spatial_merge_size = 28"):
        F.set_image_size(m, 70)
    with pytest.raises(UserError, match="vision.image_size must be >= 0"):
        parse_profile({"vision": {"image_size": -1}})


def test_checkpoint_round_trip_and_unsupported_family(qwen, tmp_path):
    from mmsrarec_edge.models.mllm import load_mllm, save_mllm

    family, m, tok = qwen
    save_mllm(m, tok, tmp_path / "ckpt")
    loaded, tok2 = load_mllm(tmp_path / "ckpt")
    assert type(loaded) is type(m) and F.image_size(loaded) == 84 and F.rope(loaded) == F.rope(m)
    assert tok2.convert_tokens_to_ids(F.VISION_START) == m.config.vision_start_token_id
    bad = tmp_path / "blip"
    bad.mkdir()
    (bad / "config.json").write_text(json.dumps({"model_type": "blip-2"}))
    with pytest.raises(UserError) as err:
        load_mllm(bad)
    assert "blip-2" in str(err.value) and "qwen2_5_vl" in str(err.value.hint) and "llava" in str(err.value.hint)


def test_llava_1_5_shapes_export_through_the_llava_path(tmp_path):
    """LLaVA-1.5's shapes at reduced width and depth: CLIP ViT-L/14-style at 336 px (576 patches, CLS dropped),
    vision_feature_layer -2, a Llama decoder: every graph passes its fp32 gate."""
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

    from mmsrarec_edge.exporter.bundle import ExportInputs, MLLMInput, export_bundle
    from mmsrarec_edge.exporter.graphs import VisionGraph
    from mmsrarec_edge.exporter.profile import ExportProfile
    from mmsrarec_edge.models.mllm import IMAGE_TOKEN, build_tokenizer

    torch.set_num_threads(1)
    torch.manual_seed(0)
    tok = build_tokenizer()
    vision = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=2,
                              image_size=336, patch_size=14, projection_dim=32)
    text = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=1024,
                       bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    m = LlavaForConditionalGeneration(LlavaConfig(
        vision_config=vision, text_config=text, image_token_index=tok.convert_tokens_to_ids(IMAGE_TOKEN),
        vision_feature_layer=-2, vision_feature_select_strategy="default", projector_hidden_act="gelu")).eval()
    assert F.family_of(m) == "llava" and F.num_image_tokens(m) == 576 and F.rope(m) is None
    px = torch.randn(1, 3, 336, 336)
    with torch.no_grad():
        want = m.model.get_image_features(px, vision_feature_layer=-2, vision_feature_select_strategy="default")
        np.testing.assert_allclose(VisionGraph(m)(px).numpy(), want[0][None].numpy(), atol=1e-6)
    yes_no = (tok.convert_tokens_to_ids("yes"), tok.convert_tokens_to_ids("no"))
    manifest = export_bundle(ExportInputs(recommender=MLLMInput(m, tok), yes_no_ids=yes_no),
                             ExportProfile(graphs=["recommender.vision", "recommender.embed", "recommender.decoder",
                                                   "recommender.scorer"]), tmp_path / "bundle")
    for name, entry in manifest["graphs"].items():
        parity = entry["variants"]["fp32"]["parity"]
        assert parity["passed"] and all(v <= 1e-4 for v in parity["metrics"].values()), (name, parity)


# ---------------------------------------------------------------- training


@pytest.mark.slow  # about 35 s: a synthetic set, SASRec, one training step, the whole cpu-fp32 export
def test_cli_train_export_recommend_with_a_qwen2_5_vl_checkpoint(tmp_path):
    """`train recommender --init CKPT` (a Qwen2.5-VL checkpoint written with save_pretrained; text-only prompts,
    which train exactly) for one step -> `export --profile cpu-fp32` (the same checkpoint as summarizer; every gate,
    real images through the fixed-grid tower) -> `recommend` (tests/shuffle_vl_support.py, shared by the families)."""
    import shuffle_vl_support as S

    out = S.cli_train_export_recommend(_model("qwen2_5_vl"), tmp_path, real_image_gate=False)
    assert out["variants"]["recommender.scorer"] == "fp32"


def test_trainers_refuse_what_they_cannot_train_yet(tmp_path):
    from mmsrarec_edge.core.prompt import PromptConfig
    from mmsrarec_edge.models.mllm import save_mllm
    from mmsrarec_edge.recommend.pipeline import RecommenderConfig, init_model
    from mmsrarec_edge.summarize.config import SummarizerConfig
    from mmsrarec_edge.summarize.pipeline import init_summarizer

    save_mllm(*_model("qwen2_vl"), tmp_path / "ckpt")
    with pytest.raises(UserError, match="train summarizer does not train qwen2_vl"):
        init_summarizer(tmp_path / "ckpt", SummarizerConfig())
    with pytest.raises(UserError, match="candidate images are not supported for qwen2_vl"):
        init_model(RecommenderConfig(init=str(tmp_path / "ckpt"), prompt=PromptConfig(candidate_image=True)))
    model, _ = init_model(RecommenderConfig(init=str(tmp_path / "ckpt")))
    assert F.family_of(model) == "qwen2_vl"
