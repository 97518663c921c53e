"""InternVL3 (InternVLForConditionalGeneration: InternViT, pixel shuffle, MLP projector, Qwen2 decoder) end to end on
a tiny random model built from transformers' config classes: export passes every fp32 gate (vision tower at its fixed
resolution, the LLaVA decoder graphs and the scorer), the runtime ranks generated cases (images in the prefix and in
candidates) as PyTorch does on every scoring path, summarize-item with an image gives PyTorch's greedy keywords, and
the checkpoint round-trips with its preprocessing (tests/shuffle_vl_support.py holds the checks)."""

import pytest
import shuffle_vl_support as S
import torch

from mmsrarec_edge.models import families as F

FAMILY = "internvl"


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    m, tok = S.build(FAMILY)
    out = tmp_path_factory.mktemp(FAMILY) / "bundle"
    manifest, yes_no = S.export(m, tok, out)
    return m, tok, out, manifest, yes_no


def test_geometry_and_vision_graph_equal_transformers():
    from mmsrarec_edge.exporter.internvl import InternVLVisionGraph

    m, _ = S.build(FAMILY)
    assert F.family_of(m) == FAMILY and F.image_size(m) == 64 and F.num_image_tokens(m) == 16 and F.rope(m) is None
    assert m.config.image_seq_length == F.num_image_tokens(m)
    px = torch.randn(3, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(InternVLVisionGraph(m)(px), m.model.get_image_features(px), rtol=0, atol=1e-6)


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
    from transformers import GotOcr2ImageProcessor

    m, tok, _, _, _ = bundle
    S.check_round_trip(m, tok, tmp_path, GotOcr2ImageProcessor)


def test_unsupported_decoder_and_feature_layer_are_one_line(tmp_path):
    import json

    from mmsrarec_edge.core.errors import UserError
    from mmsrarec_edge.models.mllm import load_mllm, save_mllm

    m, tok = S.build(FAMILY, decoder="llama", num_layers=1)
    save_mllm(m, tok, tmp_path / "ok")
    assert F.family_of(load_mllm(tmp_path / "ok")[0]) == FAMILY  # a Llama decoder is fine
    cfg = json.loads((tmp_path / "ok" / "config.json").read_text())
    cfg["text_config"]["model_type"] = "gemma"
    (tmp_path / "ok" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(UserError, match="unsupported internvl decoder 'gemma'") as err:
        load_mllm(tmp_path / "ok")
    assert "internvl (InternVLForConditionalGeneration" in str(err.value.hint)


@pytest.mark.slow  # about 25 s: a synthetic set with images, SASRec, one training step, the whole cpu-fp32 export
def test_cli_train_export_recommend_with_an_internvl_checkpoint(tmp_path):
    S.cli_train_export_recommend(S.build(FAMILY, decoder="qwen2"), tmp_path)


@pytest.mark.slow  # about 40 s: the README's bring-your-own-model example (import-model with a LoRA adapter)
def test_import_model_with_a_lora_adapter_exports_and_recommends(tmp_path):
    S.byom_import_export_recommend(FAMILY, "qwen2", tmp_path)
