"""Exported graphs in ONNX Runtime vs PyTorch: tiny random LLaVA (qwen2 + clip, llama + siglip) and SASRec.

Graphs are exported once per module (the slow part) and shared by the tests.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch

from mmsrarec_edge.exporter.graphs import export_graph, kv_shape
from mmsrarec_edge.exporter.kinds import export_kind
from mmsrarec_edge.exporter.parity import DEFAULT_TOLERANCES, ExportError, check, gate, session
from mmsrarec_edge.exporter.variants import FP32_OPS, quantized_node_count, to_fp16, to_int8
from mmsrarec_edge.models.mllm import IMAGE_TOKEN, MLLMConfig, build_mllm, build_tokenizer, num_image_tokens
from mmsrarec_edge.models.sasrec import SASRec, SASRecConfig

COMBOS = [("qwen2", "clip"), ("llama", "siglip")]


def spec(kind: str, graph: str, model, yes_no=None):
    """The GraphSpec of `graph` from its kind's class (exporter/kinds.py), as the bundle writer builds it."""
    return export_kind(kind, graph, model).spec(model, yes_no)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    prev = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models: threads only contend on a shared 2-core machine
    yield
    torch.set_num_threads(prev)


@pytest.fixture(scope="module")
def tok():
    return build_tokenizer()


@pytest.fixture(scope="module")
def yes_no(tok):
    return tuple(tok.convert_tokens_to_ids(["yes", "no"]))


@pytest.fixture(scope="module", params=COMBOS, ids=["qwen2-clip", "llama-siglip"])
def exported(request, tok, yes_no, tmp_path_factory):
    decoder, vision = request.param
    model = build_mllm(MLLMConfig(decoder=decoder, vision=vision, seed=7), tok)
    out = tmp_path_factory.mktemp(f"graphs-{decoder}")
    specs = {"vision": spec("vision", "x.vision", model), "embed": spec("embed", "x.embed", model),
             "decoder_last": spec("decoder_last", "summarizer.decoder", model),
             "decoder_yes_no": spec("decoder_yes_no", "recommender.decoder", model, yes_no)}
    paths = {k: export_graph(s, out / f"{k}.onnx") for k, s in specs.items()}
    return model, paths, specs


@pytest.fixture(scope="module")
def sasrec(tmp_path_factory):
    torch.manual_seed(3)
    net = SASRec(40, SASRecConfig(hidden=32, layers=2, heads=2, max_len=12)).eval()
    path = export_graph(spec("user_encoder", "sasrec.user_encoder", net),
                        tmp_path_factory.mktemp("sasrec") / "user_encoder.onnx")
    return net, path


def test_fp32_graphs_match_pytorch(exported, yes_no):
    model, paths, _ = exported
    for kind, path in paths.items():
        res = check(kind, kind, path, "fp32", model, cases=2, yes_no_ids=yes_no)
        assert res.passed, res.failures
        for name, value in res.metrics.items():
            assert value < 1e-5, (kind, name, value)  # measured ~1e-7: far inside the 1e-4 gate
    gate([])


def test_graph_io_names_and_dynamic_axes(exported):
    model, paths, _ = exported
    layers, kv_heads, head_dim = kv_shape(model)
    dec = onnx.load(str(paths["decoder_yes_no"]))
    names = [i.name for i in dec.graph.input]
    assert names[:3] == ["inputs_embeds", "attention_mask", "position_ids"]
    assert names[3:5] == ["past_key_values.0.key", "past_key_values.0.value"]
    assert names[-1] == "logits_index" and len(names) == 4 + 2 * layers
    outs = [o.name for o in dec.graph.output]
    assert outs[0] == "yes_no_logits" and outs[1] == "present.0.key"
    dims = [d.dim_param or d.dim_value for d in dec.graph.input[3].type.tensor_type.shape.dim]
    assert dims == ["batch", kv_heads, "past_sequence", head_dim]
    assert max(o.dims[0] for o in dec.graph.initializer if len(o.dims) == 2) < 30000, \
        "the yes/no head must not carry the full vocabulary projection"


def test_vision_graph_keeps_the_image_count_dynamic(exported):
    model, paths, _ = exported
    sess = session(paths["vision"])
    s = model.config.vision_config.image_size
    px = np.random.default_rng(0).standard_normal((5, 3, s, s)).astype(np.float32)
    (feats,) = sess.run(None, {"pixel_values": px})
    assert feats.shape == (5, num_image_tokens(model), model.config.text_config.hidden_size)


@torch.no_grad()
def test_split_graphs_reproduce_llava_forward_with_an_image(exported, tok):
    """vision -> embed -> splice at <image> slots -> decoder == LlavaForConditionalGeneration(input_ids, pixels)."""
    model, paths, _ = exported
    n_img = num_image_tokens(model)
    ids = tok.encode("a photo of", add_special_tokens=False) + [tok.convert_tokens_to_ids(IMAGE_TOKEN)] * n_img \
        + tok.encode("red striped lamp keywords :", add_special_tokens=False)
    s = model.config.vision_config.image_size
    px = np.random.default_rng(1).standard_normal((1, 3, s, s)).astype(np.float32)
    ref = model(input_ids=torch.tensor([ids]), pixel_values=torch.from_numpy(px)).logits[0, -1].numpy()

    (feats,) = session(paths["vision"]).run(None, {"pixel_values": px})
    (emb,) = session(paths["embed"]).run(None, {"input_ids": np.array([ids], np.int64)})
    slots = np.flatnonzero(np.array(ids) == tok.convert_tokens_to_ids(IMAGE_TOKEN))
    emb[0, slots] = feats[0]
    dec = session(paths["decoder_last"])
    layers, kv_heads, head_dim = kv_shape(model)
    feeds = {"inputs_embeds": emb, "attention_mask": np.ones((1, len(ids)), np.int64),
             "position_ids": np.arange(len(ids), dtype=np.int64)[None]}
    feeds.update({f"past_key_values.{i}.{kv}": np.zeros((1, kv_heads, 0, head_dim), np.float32)
                  for i in range(layers) for kv in ("key", "value")})
    logits = dec.run(["logits"], feeds)[0][0]
    assert np.abs(logits - ref).max() < 1e-4 * max(1.0, np.abs(ref).max())


def test_int8_variant_really_quantizes_and_passes(exported, yes_no, tmp_path):
    model, paths, _ = exported
    for kind in ("embed", "decoder_yes_no", "decoder_last"):
        dst = tmp_path / f"{kind}.int8.onnx"
        info = to_int8(paths[kind], dst)
        assert info["quantized_nodes"] > 0
        assert quantized_node_count(onnx.load(str(dst))) == info["quantized_nodes"]
        assert dst.stat().st_size < 0.5 * paths[kind].stat().st_size
        res = check(kind, kind, dst, "int8", model, cases=2, yes_no_ids=yes_no)
        assert res.passed, res.failures
        assert 0 < max(res.metrics.values()), "an int8 graph identical to fp32 did not quantize"


def test_int8_summarizer_decoder_is_gated_on_real_prompts_when_it_has_them(exported, tmp_path):
    """The gated logits figure is the real prompts' alone; the random prompts' figure is reported beside it."""
    model, paths, _ = exported
    dst = tmp_path / "last.int8.onnx"
    to_int8(paths["decoder_last"], dst)
    rng = np.random.default_rng(4)
    real = [rng.integers(1000, 29000, size=n).tolist() for n in (9, 14, 20)]
    res = check("summarizer.decoder", "decoder_last", dst, "int8", model, cases=2, real=real)
    real_only = check("summarizer.decoder", "decoder_last", dst, "int8", model, cases=0, real=real)
    random_only = check("summarizer.decoder", "decoder_last", dst, "int8", model, cases=2)
    assert res.metrics["logits"] == real_only.metrics["logits"] > 0
    assert res.info["random_logits"] == random_only.metrics["logits"] > 0
    assert res.real_cases == 3 and "random_logits" not in random_only.info and "random_logits" not in real_only.info
    fp32 = check("summarizer.decoder", "decoder_last", paths["decoder_last"], "fp32", model, cases=2, real=real)
    assert "random_logits" not in fp32.info  # fp32 (the structure) is still gated on random + real prompts


def test_fp16_variant_keeps_norms_and_softmax_fp32(exported, yes_no, tmp_path):
    model, paths, _ = exported
    dst = tmp_path / "dec.fp16.onnx"
    info = to_fp16(paths["decoder_yes_no"], dst)
    assert info["fp32_nodes_kept"] > 0
    m = onnx.load(str(dst))
    fp16_inits = [t for t in m.graph.initializer if t.data_type == onnx.TensorProto.FLOAT16]
    assert fp16_inits, "weights were not converted"
    # Graph I/O stays fp32, so the runtime feeds every variant alike.
    assert all(i.type.tensor_type.elem_type in (onnx.TensorProto.FLOAT, onnx.TensorProto.INT64) for i in m.graph.input)
    softmax_or_norm = [n for n in m.graph.node if n.op_type in FP32_OPS]
    assert softmax_or_norm
    res = check("d", "decoder_yes_no", dst, "fp16", model, cases=2, yes_no_ids=yes_no)
    assert res.passed, res.failures
    assert res.metrics["logits"] < DEFAULT_TOLERANCES["fp16"]["logits"] / 3


def test_gate_fails_loudly_on_a_graph_of_another_model(exported, tok, yes_no):
    model, paths, _ = exported
    vision = "clip" if model.config.vision_config.model_type.startswith("clip") else "siglip"
    other = build_mllm(MLLMConfig(decoder=model.config.text_config.model_type, vision=vision, seed=99), tok)
    res = check("recommender.decoder", "decoder_yes_no", paths["decoder_yes_no"], "int8", other, cases=1,
                yes_no_ids=yes_no)
    assert not res.passed
    assert res.metrics["logits"] > 0.5  # a wrong function is far from every tolerance
    with pytest.raises(ExportError, match=r"recommender\.decoder \(int8\): score"):  # the yes/no head gates its score
        gate([res])


def test_sasrec_user_encoder_matches_and_batch_is_dynamic(sasrec):
    net, path = sasrec
    res = check("sasrec.user_encoder", "user_encoder", path, "fp32", net, cases=2)
    assert res.passed and res.metrics["features"] < 1e-5
    assert res.info["min_cosine"] > 0.99999
    hist = np.zeros((11, 12), np.int64)
    hist[:, -4:] = (np.arange(44) % 40 + 1).reshape(11, 4)
    (emb,) = session(path).run(None, {"history": hist})
    ref = net.user_embedding(torch.from_numpy(hist)).detach().numpy()
    assert emb.shape == (11, 32) and np.abs(emb - ref).max() < 1e-5


def test_quantizing_a_graph_without_weights_is_an_error(tmp_path):
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 4])
    g = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g", [x], [y])
    src = tmp_path / "relu.onnx"
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), str(src))
    with pytest.raises(ExportError, match="no quantized nodes"):
        to_int8(src, tmp_path / "relu.int8.onnx")
    assert not (tmp_path / "relu.int8.onnx").exists()


def test_dynamo_exporter_gives_the_same_decoder(tok, yes_no, tmp_path):
    model = build_mllm(MLLMConfig(seed=2), tok)
    path = export_graph(spec("decoder_yes_no", "recommender.decoder", model, yes_no), tmp_path / "d.onnx", "dynamo")
    res = check("d", "decoder_yes_no", path, "fp32", model, cases=1, yes_no_ids=yes_no)
    assert res.passed and res.metrics["logits"] < 1e-5
