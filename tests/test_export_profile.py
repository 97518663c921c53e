"""Export profiles (mmsrarec_edge/profiles/*.toml) and TensorRT profile computation: torch-free, fast."""

from __future__ import annotations

from pathlib import Path

import pytest

from mmsrarec_edge.core.config import PROFILES_DIR
from mmsrarec_edge.core.errors import UserError
from mmsrarec_edge.exporter.profile import ALL_GRAPHS, Limits, load_profile, parse_profile
from mmsrarec_edge.exporter.tensorrt import compute_profiles, dim_ranges
from mmsrarec_edge.runtime.tensorrt import provider_shape_strings

ROOT = Path(__file__).resolve().parents[1]
PROFILES = sorted(PROFILES_DIR.glob("*.toml"))


def test_the_shipped_profiles_parse():
    names = {p.stem for p in PROFILES}
    assert names == {"cpu-fp32", "cpu-int8", "cpu-int4", "cpu-fp32-int8", "cuda-fp16", "tensorrt-fp16", "jetson-orin"}
    for path in PROFILES:
        prof = load_profile(path)
        assert prof.name == path.stem
        assert set(prof.graphs) <= set(ALL_GRAPHS)


def test_variant_policy_of_shipped_profiles():
    int8 = load_profile(PROFILES_DIR / "cpu-int8.toml")
    assert int8.graph_variants("sasrec.user_encoder") == ["fp32"]
    assert int8.default_variant("sasrec.user_encoder") == "fp32"
    # the deployment profiles run the hot path quantized and store each recommender weight once ...
    assert int8.graph_variants("recommender.scorer") == ["int8"] and int8.merged_decoder == "fallback"
    assert int8.graph_variants("recommender.embed") == ["int8"]
    int4 = load_profile(PROFILES_DIR / "cpu-int4.toml")
    assert int4.graph_variants("recommender.scorer") == ["int4"] and int4.merged_decoder == "fallback"
    assert int4.graph_variants("recommender.vision") == ["fp32"]
    # ... the comparison profile ships both, fp32 by default, with a looser score gate for int8 only
    from mmsrarec_edge.exporter.parity import DEFAULT_TOLERANCES, tolerances

    both = load_profile(PROFILES_DIR / "cpu-fp32-int8.toml")
    assert both.graph_variants("recommender.decoder") == ["fp32", "int8"]
    assert both.default_variant("recommender.decoder") == "fp32"
    assert tolerances("fp32", both.parity) == DEFAULT_TOLERANCES["fp32"]
    assert tolerances("int8", both.parity)["score"] == 0.2
    assert tolerances("int8", both.parity)["logits"] == DEFAULT_TOLERANCES["int8"]["logits"]
    trt = load_profile(PROFILES_DIR / "tensorrt-fp16.toml")
    # TensorRT builds fp16 itself from fp32 graphs.
    assert trt.precision == "fp16" and trt.graph_variants("recommender.decoder") == ["fp32"]
    assert trt.tensorrt.enabled and trt.tensorrt.fp16 and trt.merged_decoder == "always"
    orin = load_profile(PROFILES_DIR / "jetson-orin.toml")
    assert orin.tensorrt.workspace_mb < trt.tensorrt.workspace_mb
    assert orin.limits.max_prefix_tokens < trt.limits.max_prefix_tokens


def test_unknown_keys_and_bad_values_are_named(tmp_path):
    cases = {
        'precison = "int8"\n': "unknown key 'precison'",
        '[limits]\nmax_candidate = 3\n': "unknown key 'limits.max_candidate'",
        'precision = "int2"\n': "precision must be one of",
        'merged_decoder = "never"\n': "merged_decoder must be one of",
        'graphs = ["recommender.decodr"]\n': "unknown graph 'recommender.decodr'",
        'providers = ["CoreMLExecutionProvider"]\n': "unknown execution provider",
        '[limits]\nmax_candidates = 0\n': "limits.max_candidates must be >= 1",
        '[limits]\nmax_candidates = "many"\n': "max_candidates must be an integer",
        'limits = 3\n': "limits must be a [limits] table",
        'variants = ["bf16"]\n': "unknown variant 'bf16'",
        'precision = \n': "not valid TOML",
    }
    for text, expected in cases.items():
        p = tmp_path / "p.toml"
        p.write_text(text)
        with pytest.raises(UserError) as err:
            load_profile(p)
        assert expected in str(err.value), (text, str(err.value))
        assert str(p) in str(err.value)
    with pytest.raises(UserError, match="not found"):
        load_profile(tmp_path / "missing.toml")


def test_defaults_are_all_graphs_fp32():
    prof = parse_profile({})
    assert prof.graphs == list(ALL_GRAPHS) and prof.precision == "fp32"
    assert prof.parity.cases >= 1


DECODER_INPUTS = [
    {"name": "inputs_embeds", "shape": ["batch", "sequence", 128]},
    {"name": "attention_mask", "shape": ["batch", "total_sequence"]},
    {"name": "position_ids", "shape": ["batch", "sequence"]},
    {"name": "past_key_values.0.key", "shape": ["batch", 2, "past_sequence", 32]},
    {"name": "logits_index", "shape": ["batch", "positions"]},
]


def test_recommender_decoder_gets_prefix_and_suffix_profiles():
    lim = Limits(max_candidates=21, max_prefix_tokens=300, max_suffix_tokens=40)
    profs = compute_profiles("recommender.decoder", "decoder_yes_no", DECODER_INPUTS, lim)
    assert [p["name"] for p in profs] == ["prefix", "suffix"]
    pre, suf = (p["shapes"] for p in profs)
    assert pre["inputs_embeds"] == {"min": [1, 1, 128], "opt": [1, 150, 128], "max": [1, 300, 128]}
    assert pre["past_key_values.0.key"]["max"] == [1, 2, 0, 32]  # the prefix runs with an empty past
    assert suf["inputs_embeds"]["max"] == [21, 40, 128]
    assert suf["past_key_values.0.key"]["max"] == [21, 2, 300, 32]
    # attention_mask covers past + current slots.
    assert suf["attention_mask"] == {"min": [1, 2], "opt": [21, 170], "max": [21, 340]}
    assert suf["logits_index"]["max"] == [21, 1]


def test_summarizer_decoder_profiles_cover_prompt_plus_generation():
    lim = Limits(max_prompt_tokens=100, max_new_tokens=20, summarizer_batch=4)
    inputs = [i for i in DECODER_INPUTS if i["name"] != "logits_index"]
    prefill, decode = compute_profiles("summarizer.decoder", "decoder_last", inputs, lim)
    assert prefill["shapes"]["inputs_embeds"]["max"] == [4, 100, 128]
    assert decode["shapes"]["inputs_embeds"]["max"] == [4, 1, 128]
    # The last decode step sees prompt + (new - 1) generated tokens as past.
    assert decode["shapes"]["past_key_values.0.key"]["max"] == [4, 2, 119, 32]
    assert decode["shapes"]["attention_mask"]["max"] == [4, 120]


def test_other_graph_profiles_and_unknown_dims():
    lim = Limits(images_batch=5, user_batch=7, max_candidates=9, max_suffix_tokens=10)
    pixels = [{"name": "pixel_values", "shape": ["images", 3, 64, 64]}]
    (v,) = compute_profiles("recommender.vision", "vision", pixels, lim)
    assert v["shapes"]["pixel_values"]["max"] == [5, 3, 64, 64]
    (u,) = compute_profiles("sasrec.user_encoder", "user_encoder", [{"name": "history", "shape": ["batch", 50]}], lim)
    assert u["shapes"]["history"] == {"min": [1, 50], "opt": [7, 50], "max": [7, 50]}
    names = [n for n, _ in dim_ranges("recommender.embed", "embed", lim)]
    assert names == ["prefix", "suffix"]
    with pytest.raises(ValueError, match="no TensorRT range"):
        compute_profiles("sasrec.user_encoder", "user_encoder", [{"name": "history", "shape": ["mystery", 50]}], lim)


def test_provider_shape_strings_repeat_inputs_for_each_profile():
    profs = [{"name": "a", "shapes": {"x": {"min": [1, 2], "opt": [1, 3], "max": [1, 4]}}},
             {"name": "b", "shapes": {"x": {"min": [2, 0], "opt": [5, 3], "max": [9, 4]}}}]
    s = provider_shape_strings(profs)
    assert s["trt_profile_min_shapes"] == "x:1x2,x:2x0"
    assert s["trt_profile_opt_shapes"] == "x:1x3,x:5x3"
    assert s["trt_profile_max_shapes"] == "x:1x4,x:9x4"
