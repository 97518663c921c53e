"""SmolVLM / Idefics3 (SmolVLMForConditionalGeneration, Idefics3ForConditionalGeneration: SigLIP-style ViT, pixel
shuffle, linear connector, Llama decoder), the small edge VLM, end to end on a tiny random SmolVLM built from
transformers' config classes: export passes every fp32 gate (the vision tower at one fixed-size tile, the LLaVA decoder
graphs and the scorer), the runtime ranks generated cases (images in the prefix and in candidates) as PyTorch does on
every scoring path, summarize-item with an image gives PyTorch's greedy keywords, and the checkpoint round-trips with
its preprocessing (tests/shuffle_vl_support.py holds the checks). Idefics3 itself shares the code path: its vision
graph is checked against transformers and exported."""

import pytest
import shuffle_vl_support as S
import torch

from mmsrarec_edge.models import families as F

FAMILY = "smolvlm"


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    m, tok = S.build(FAMILY, decoder="llama")
    out = tmp_path_factory.mktemp(FAMILY) / "bundle"
    manifest, yes_no = S.export(m, tok, out)
    return m, tok, out, manifest, yes_no


@pytest.mark.parametrize("family", ["smolvlm", "idefics3"])
def test_geometry_and_vision_graph_equal_transformers(family, tmp_path):
    """The constant patch position ids are the tower's own for a full tile; the wrapper equals get_image_features
    (which derives them per image), and its legacy export keeps the image count dynamic."""
    from mmsrarec_edge.exporter.graphs import export_graph
    from mmsrarec_edge.exporter.idefics3 import Idefics3VisionGraph
    from mmsrarec_edge.exporter.kinds import export_kind
    from mmsrarec_edge.exporter.parity import session

    m, _ = S.build(family, decoder="llama", num_layers=1)
    assert F.family_of(m) == family and F.image_size(m) == 64 and F.num_image_tokens(m) == 16 and F.rope(m) is None
    px = torch.randn(3, 3, 64, 64)
    emb = m.model.vision_model.embeddings
    with torch.no_grad():
        full = torch.ones(3, 8, 8, dtype=torch.bool)
        want = emb(px, full) - emb.patch_embedding(px).flatten(2).transpose(1, 2)
        graph = Idefics3VisionGraph(m)
        torch.testing.assert_close(emb.position_embedding(graph.position_ids)[None].expand(3, -1, -1), want,
                                   rtol=0, atol=1e-6)
        ref = m.model.get_image_features(px[None])
        torch.testing.assert_close(graph(px), ref, rtol=0, atol=1e-6)
    spec = export_kind("vision", f"{family}.vision", m).spec(m)
    path = export_graph(spec, tmp_path / "vision.onnx", "legacy")
    got = session(path).run(None, {"pixel_values": px.numpy()})[0]
    assert abs(got - ref.numpy()).max() <= 1e-4 * abs(ref.numpy()).max()


def test_export_passes_every_fp32_gate(bundle):
    m, _, out, manifest, _ = bundle
    S.check_gates(m, FAMILY, out, manifest)


def test_runtime_ranking_equals_pytorch(bundle):
    m, tok, out, _, yes_no = bundle
    S.check_ranking(m, tok, out, yes_no)


def test_summarize_item_with_an_image_matches_pytorch_greedy(bundle):
    m, tok, out, _, _ = bundle
    S.check_summarize(m, tok, out)


def test_checkpoint_round_trip_and_preprocessing(bundle, tmp_path):
    from transformers import SmolVLMImageProcessor

    m, tok, _, _, _ = bundle
    S.check_round_trip(m, tok, tmp_path, SmolVLMImageProcessor)


def test_a_tile_the_tower_cannot_take_is_one_line(tmp_path):
    import json

    from mmsrarec_edge.core.errors import UserError
    from mmsrarec_edge.models.mllm import load_mllm, save_mllm

    m, tok = S.build(FAMILY, decoder="llama", num_layers=1)
    save_mllm(m, tok, tmp_path / "m")
    d = json.loads((tmp_path / "m" / "preprocessor_config.json").read_text())
    d["max_image_size"] = {"longest_edge": 96}
    (tmp_path / "m" / "preprocessor_config.json").write_text(json.dumps(d))
    with pytest.raises(UserError, match=r"gives \(96, 96\) pixels, the vision tower takes 64x64"):
        load_mllm(tmp_path / "m")
    d["max_image_size"] = {"height": 64, "width": 64}
    (tmp_path / "m" / "preprocessor_config.json").write_text(json.dumps(d))
    with pytest.raises(UserError, match="max_image_size .* is not a size this toolkit applies"):
        load_mllm(tmp_path / "m")


def test_trainers_refuse_what_they_cannot_train_yet(tmp_path):
    from mmsrarec_edge.core.errors import UserError
    from mmsrarec_edge.core.prompt import PromptConfig
    from mmsrarec_edge.models.mllm import save_mllm
    from mmsrarec_edge.recommend.pipeline import RecommenderConfig, init_model
    from mmsrarec_edge.summarize.config import SummarizerConfig
    from mmsrarec_edge.summarize.pipeline import init_summarizer

    save_mllm(*S.build(FAMILY, decoder="llama", num_layers=1), tmp_path / "ckpt")
    with pytest.raises(UserError, match="train summarizer does not train smolvlm"):
        init_summarizer(tmp_path / "ckpt", SummarizerConfig())
    with pytest.raises(UserError, match="candidate images are not supported for smolvlm"):
        init_model(RecommenderConfig(init=str(tmp_path / "ckpt"), prompt=PromptConfig(candidate_image=True)))
    model, _ = init_model(RecommenderConfig(init=str(tmp_path / "ckpt")))
    assert F.family_of(model) == FAMILY


@pytest.mark.slow  # about 25 s: a synthetic set with images, SASRec, one training step, the whole cpu-fp32 export
def test_cli_train_export_recommend_with_a_smolvlm_checkpoint(tmp_path):
    S.cli_train_export_recommend(S.build(FAMILY, decoder="llama"), tmp_path)


@pytest.mark.slow  # about 40 s: the README's bring-your-own-model example (import-model with a LoRA adapter)
def test_import_model_with_a_lora_adapter_exports_and_recommends(tmp_path):
    S.byom_import_export_recommend(FAMILY, "llama", tmp_path)
