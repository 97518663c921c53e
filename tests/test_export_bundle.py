"""A whole bundle (cpu-int8 profile, tiny random models, tiny synthetic catalog): contents, verification, tampering,
atomicity. The bundle is exported once per module."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from mmsrarec_edge.core.bundle import MANIFEST, load_manifest, read_safetensors
from mmsrarec_edge.core.config import PROFILES_DIR
from mmsrarec_edge.core.errors import BundleError, UserError
from mmsrarec_edge.exporter.bundle import ExportInputs, MLLMInput, export_bundle
from mmsrarec_edge.exporter.parity import ExportError
from mmsrarec_edge.exporter.profile import load_profile
from mmsrarec_edge.models.mllm import MLLMConfig, build_mllm, build_tokenizer
from mmsrarec_edge.models.sasrec import SASRec, SASRecConfig, SASRecModel

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    prev = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(prev)


def _retrieval_dir(path: Path, sasrec: SASRecModel, ds) -> Path:
    """A real hnswlib index over SASRec user embeddings + a user table, like the recommender's retrieval dir."""
    import hnswlib
    import pyarrow as pa
    import pyarrow.parquet as pq

    seqs = ds.sequences()
    users = sorted(seqs)
    emb = sasrec.user_embeddings([seqs[u] for u in users])
    index = hnswlib.Index(space="cosine", dim=emb.shape[1])
    index.init_index(max_elements=len(users), M=8, ef_construction=50, random_seed=0)
    index.add_items(emb, np.arange(len(users)))
    path.mkdir(parents=True)
    index.save_index(str(path / "users.hnsw"))
    pq.write_table(pa.table({"row": np.arange(len(users)), "user_id": np.asarray(users, np.int64)}),
                   path / "users.parquet")
    (path / "retrieval.json").write_text(json.dumps({"k": 3, "dim": int(emb.shape[1])}))
    return path


@pytest.fixture(scope="module")
def inputs(tiny_synth, tmp_path_factory):
    from mmsrarec_edge.core.keyword_store import ItemKeywords, write_keyword_store

    work = tmp_path_factory.mktemp("export-inputs")
    tok = build_tokenizer()
    ds = tiny_synth
    kw = write_keyword_store(work / "kw.parquet", [
        ItemKeywords(i, [it.attributes["colour"]], [it.attributes["category"], "item"], True)
        for i, it in ds.items.items()])
    torch.manual_seed(0)
    sas = SASRecModel(SASRec(len(ds.items), SASRecConfig(hidden=16, layers=1, max_len=10)), sorted(ds.items))
    return ExportInputs(
        summarizer=MLLMInput(build_mllm(MLLMConfig(seed=1), tok), tok, {"max_new_tokens": 20}, "summ-dir"),
        recommender=MLLMInput(build_mllm(MLLMConfig(decoder="llama", vision="siglip", seed=2), tok), tok,
                              {"answer_words": ["yes", "no"]}, "rec-dir"),
        sasrec=sas, keywords=kw, retrieval=_retrieval_dir(work / "retrieval", sas, ds), dataset=ds,
        yes_no_ids=tuple(tok.convert_tokens_to_ids(["yes", "no"])))


@pytest.fixture(scope="module")
def profile():
    prof = load_profile(PROFILES_DIR / "cpu-int8.toml")
    return replace(prof, parity=replace(prof.parity, cases=1))


@pytest.fixture(scope="module")
def bundle(inputs, profile, tmp_path_factory):
    out = tmp_path_factory.mktemp("bundles") / "b"
    export_bundle(inputs, profile, out, profile_source="cpu-int8")
    return out


def test_bundle_verifies_and_every_graph_passed_its_gate(bundle):
    man = load_manifest(bundle, verify=True)
    assert set(man.graphs) == {"summarizer.vision", "summarizer.embed", "summarizer.decoder", "recommender.vision",
                               "recommender.embed", "recommender.scorer", "sasrec.user_encoder"}
    # merged_decoder = "fallback": the scorer serves the recommender, so its weights are not stored a second time
    assert "recommender.scorer serves" in man.data["graphs_skipped"]["recommender.decoder"]
    for graph, entry in man.graphs.items():
        for precision, v in entry["variants"].items():
            assert v["parity"]["passed"], (graph, precision)
            assert v["parity"]["metrics"], graph
    # cpu-int8 runs its hot path in int8: the recommender's scorer, the embedding tables, the summarizer's decoder
    assert man.graph_variants("recommender.scorer") == ["int8"] and man.graph_variants("recommender.embed") == ["int8"]
    assert man.graphs["recommender.scorer"]["variants"]["int8"]["quantized_nodes"] > 0
    assert man.graph_file("recommender.embed").name == "embed.int8.onnx"
    assert man.graphs["recommender.embed"]["variants"]["int8"]["quantized_nodes"] > 0
    assert man.graphs["summarizer.decoder"]["variants"]["int8"]["quantized_nodes"] > 0
    assert man.graph_variants("sasrec.user_encoder") == ["fp32"]
    assert man.data["profile"]["name"] == "cpu-int8" and man.data["packages"]["onnxruntime"]
    for path in bundle.rglob("*"):
        if path.is_file():
            assert path.suffix in {".onnx", ".json", ".parquet", ".safetensors", ".hnsw"}, path


def test_graphs_load_in_onnxruntime_with_the_manifest_io(bundle):
    import onnxruntime as ort

    man = load_manifest(bundle)
    types = {"tensor(float)": "float32", "tensor(int64)": "int64"}
    for graph, entry in man.graphs.items():
        sess = ort.InferenceSession(str(man.graph_file(graph)), providers=["CPUExecutionProvider"])
        got = [(i.name, types[i.type]) for i in sess.get_inputs()]
        assert got == [(i["name"], i["dtype"]) for i in entry["inputs"]], graph
        assert [o.name for o in sess.get_outputs()] == [o["name"] for o in entry["outputs"]]
        assert len(entry["tensorrt"]["profiles"]) >= 1


def test_config_tokenizer_and_catalog(bundle, inputs):
    from tokenizers import Tokenizer

    man = load_manifest(bundle)
    cfg = man.config()
    rec, summ = cfg["recommender"], cfg["summarizer"]
    assert (rec["yes_token_id"], rec["no_token_id"]) == inputs.yes_no_ids
    assert rec["answer_words"] == ["yes", "no"] and summ["max_new_tokens"] == 20
    assert summ["tokenizer"] == rec["tokenizer"] == "tokenizer.json"  # identical tokenizers are stored once
    assert rec["num_image_tokens"] == 16 and rec["decoder"] == "llama" and summ["vision"] == "clip_vision_model"
    tok = Tokenizer.from_file(str(man.path("tokenizer.json")))
    text = "a red striped lamp <image>"
    assert tok.encode(text, add_special_tokens=False).ids == inputs.recommender.tokenizer.encode(
        text, add_special_tokens=False)
    assert cfg["sasrec"]["max_len"] == 10
    emb = read_safetensors(man.path(cfg["sasrec"]["item_embeddings"]))["item_embeddings"]
    assert np.array_equal(emb, inputs.sasrec.net.item_emb.weight.detach().numpy())
    assert json.loads(man.path("sasrec/item_ids.json").read_text())["item_ids"] == inputs.sasrec.item_ids

    import pyarrow.parquet as pq

    items = pq.read_table(man.path("catalog/items.parquet")).to_pylist()
    ds = inputs.dataset
    assert [r["item_id"] for r in items] == sorted(ds.items)
    first = items[0]
    assert first["image_keywords"] == [ds.items[first["item_id"]].attributes["colour"]]
    feats = read_safetensors(man.path(cfg["catalog"]["image_features"]))
    assert feats["features"].shape == (len(ds.items), 16, 128)
    # The cache holds the recommender's fp32 PyTorch features.
    from mmsrarec_edge.core.imaging import load_image, preprocess
    from mmsrarec_edge.exporter.graphs import VisionGraph

    iid = int(feats["item_ids"][3])
    px = torch.from_numpy(preprocess(load_image(ds.image_path(iid)), 64))[None]
    with torch.no_grad():
        ref = VisionGraph(inputs.recommender.model)(px)[0].numpy()
    assert np.abs(feats["features"][3] - ref).max() < 1e-6
    assert set(cfg["retrieval"]["files"]) == {"index/users.hnsw", "index/users.parquet", "index/retrieval.json"}


def test_index_is_copied_and_loads(bundle, inputs):
    import hnswlib

    man = load_manifest(bundle)
    idx = hnswlib.Index(space="cosine", dim=16)
    idx.load_index(str(man.path("index/users.hnsw")))
    assert idx.get_current_count() == len(inputs.dataset.sequences())


@pytest.fixture
def copy(bundle, tmp_path):
    dst = tmp_path / "copy"
    shutil.copytree(bundle, dst)
    return dst


def test_flipped_byte_is_caught_by_sha256(copy):
    target = copy / "summarizer" / "decoder.int8.onnx"
    data = bytearray(target.read_bytes())
    data[len(data) // 2] ^= 0xFF
    target.write_bytes(bytes(data))
    load_manifest(copy, verify=False)  # same size: only the hash can tell
    with pytest.raises(BundleError, match=r"decoder\.int8\.onnx: SHA-256 does not match"):
        load_manifest(copy, verify=True)


def test_truncated_missing_and_extra_files_are_named(copy):
    graph = copy / "summarizer" / "embed.int8.onnx"
    graph.write_bytes(graph.read_bytes()[:1000])
    with pytest.raises(BundleError, match=r"embed\.int8\.onnx: size 1000 bytes"):
        load_manifest(copy, verify=False)
    graph.unlink()
    with pytest.raises(BundleError, match=r"embed\.int8\.onnx: missing"):
        load_manifest(copy)


def test_unlisted_files_and_unsafe_types_are_refused(copy):
    (copy / "catalog" / "extra.pkl").write_bytes(b"\x80\x04K\x01.")
    with pytest.raises(BundleError, match=r"extra\.pkl: unexpected file"):
        load_manifest(copy)
    (copy / "catalog" / "extra.pkl").unlink()
    man = json.loads((copy / MANIFEST).read_text())
    man["files"]["../outside.json"] = {"sha256": "0", "bytes": 1}
    (copy / MANIFEST).write_text(json.dumps(man))
    with pytest.raises(BundleError, match="points outside the bundle"):
        load_manifest(copy)


def test_unknown_format_version_and_missing_manifest(copy):
    man = json.loads((copy / MANIFEST).read_text())
    man["format_version"] = 99
    (copy / MANIFEST).write_text(json.dumps(man))
    with pytest.raises(BundleError, match="unknown bundle format version 99"):
        load_manifest(copy)
    (copy / MANIFEST).unlink()
    with pytest.raises(BundleError, match=r"manifest\.json: missing"):
        load_manifest(copy)


def test_tensorrt_provider_options_come_from_the_manifest(inputs, profile, tmp_path):
    from mmsrarec_edge.runtime.tensorrt import tensorrt_provider_options

    # TensorRT profiles ship the merged decoder beside the scorer (merged_decoder = "always")
    bundle = tmp_path / "trt"
    export_bundle(inputs, replace(profile, merged_decoder="always", precision="fp32", fp32_graphs=[],
                                  graphs=["recommender.decoder", "recommender.scorer"]), bundle)
    opts = tensorrt_provider_options(bundle, "recommender.decoder", cache_dir=tmp_path)
    assert opts["trt_engine_cache_enable"] == "True" and Path(opts["trt_engine_cache_path"]).is_dir()
    # Two profiles (prefix, suffix): every input appears twice; max candidates 21 from the profile's limits.
    assert opts["trt_profile_max_shapes"].count("inputs_embeds:") == 2
    assert "logits_index:21x1" in opts["trt_profile_max_shapes"]
    one = tensorrt_provider_options(bundle, "recommender.decoder", cache_dir=tmp_path, profile="prefix")
    assert one["trt_profile_max_shapes"].count("inputs_embeds:") == 1
    with pytest.raises(BundleError, match="no TensorRT profile 'decode'"):
        tensorrt_provider_options(bundle, "recommender.decoder", cache_dir=tmp_path, profile="decode")


def test_build_engine_without_tensorrt_is_a_clear_error(bundle):
    pytest.importorskip("onnx")
    try:
        import tensorrt  # noqa: F401
        pytest.skip("TensorRT is installed here")
    except ImportError:
        pass
    from mmsrarec_edge.exporter.tensorrt import build_bundle_engines

    with pytest.raises(UserError, match="TensorRT is not installed"):
        build_bundle_engines(bundle)


def test_build_engine_with_tensorrt(copy):
    pytest.importorskip("tensorrt", reason="TensorRT is not installed (NVIDIA device only)")
    from mmsrarec_edge.exporter.tensorrt import build_bundle_engines

    engines = build_bundle_engines(copy, fp16=True, workspace_mb=512, graphs=["sasrec.user_encoder"])
    assert (copy / engines["sasrec.user_encoder"]["file"]).stat().st_size > 0
    load_manifest(copy, verify=True)


def _leftovers(parent: Path, name: str) -> list[Path]:
    return [p for p in parent.iterdir() if p.name.startswith(f".{name}.")]


def test_failed_gate_leaves_no_bundle_and_keeps_the_old_one(inputs, profile, bundle, tmp_path):
    strict = replace(profile, graphs=["recommender.decoder"], parity=replace(profile.parity, logits=1e-12))
    out = tmp_path / "fresh"
    with pytest.raises(ExportError, match=r"recommender\.decoder \(int8\)"):
        export_bundle(inputs, strict, out)
    assert not out.exists() and not _leftovers(tmp_path, "fresh")
    old = tmp_path / "old"
    shutil.copytree(bundle, old)
    before = (old / MANIFEST).read_bytes()
    with pytest.raises(ExportError):
        export_bundle(inputs, strict, old)
    assert (old / MANIFEST).read_bytes() == before and not _leftovers(tmp_path, "old")
    load_manifest(old)


def test_interrupted_export_leaves_nothing(inputs, profile, tmp_path):
    small = replace(profile, graphs=["sasrec.user_encoder", "recommender.embed"])

    def interrupt(**_):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        export_bundle(inputs, small, tmp_path / "b", progress=interrupt)
    assert list(tmp_path.iterdir()) == []


def test_missing_model_for_a_profile_graph_is_a_user_error(inputs, profile, tmp_path):
    partial = replace(inputs, summarizer=None)
    with pytest.raises(UserError, match="no summarizer model was given"):
        export_bundle(partial, profile, tmp_path / "b")
    assert list(tmp_path.iterdir()) == []


def test_large_graphs_keep_weights_in_one_listed_data_file(inputs, profile, tmp_path, monkeypatch):
    """Graphs over protobuf's limit are written as X.onnx + X.onnx.data; the threshold is lowered to see it here."""
    import onnx
    import onnxruntime as ort

    from mmsrarec_edge.exporter import variants

    monkeypatch.setattr(variants, "EXTERNAL_DATA_BYTES", 100_000)
    fp16 = replace(profile, precision="fp16", variants=["fp16", "fp32"], fp32_graphs=[], graphs=["recommender.decoder"])
    export_bundle(inputs, fp16, tmp_path / "b")
    man = load_manifest(tmp_path / "b")
    for precision, suffix in (("fp16", ".fp16"), ("fp32", "")):
        assert f"recommender/decoder{suffix}.onnx.data" in man.files
        assert man.graphs["recommender.decoder"]["variants"][precision]["parity"]["passed"]
        ort.InferenceSession(str(man.graph_file("recommender.decoder", precision)), providers=["CPUExecutionProvider"])
        graph = onnx.load(str(man.graph_file("recommender.decoder", precision)), load_external_data=False)
        offsets = [int(e.value) for t in graph.graph.initializer for e in t.external_data if e.key == "offset"]
        assert offsets and all(o % variants.DATA_ALIGN == 0 for o in offsets)  # page-aligned: memory-mappable
    (tmp_path / "b" / "recommender" / "decoder.fp16.onnx.data").write_bytes(b"")
    with pytest.raises(BundleError, match=r"decoder\.fp16\.onnx\.data: size 0 bytes"):
        load_manifest(tmp_path / "b", verify=False)


def test_cpu_int4_bundle_runs_weight_only_int4_on_the_hot_path(inputs, tmp_path):
    """cpu-int4: MatMulNBits / GatherBlockQuantized graphs, gated, smaller than int8, and `recommend` serves from them
    with scores close to the cpu-int8 bundle's (both are gated against the same PyTorch model)."""
    import onnx

    from mmsrarec_edge.runtime.recommender import Recommender

    rec_only = replace(inputs, summarizer=None, retrieval=None)
    graphs = ["recommender.embed", "recommender.decoder", "recommender.scorer", "sasrec.user_encoder"]
    bundles = {}
    for name in ("cpu-int4", "cpu-int8"):
        prof = load_profile(PROFILES_DIR / f"{name}.toml")
        bundles[name] = tmp_path / name
        export_bundle(rec_only, replace(prof, parity=replace(prof.parity, cases=1), graphs=graphs), bundles[name])
    man = load_manifest(bundles["cpu-int4"], verify=True)
    assert "recommender.decoder" not in man.graphs  # the scorer serves
    for graph in ("recommender.embed", "recommender.scorer"):
        v = man.graphs[graph]["variants"]["int4"]
        assert v["parity"]["passed"] and v["quantized_nodes"] > 0 and v["block_size"] == 32, graph
        model = onnx.load(str(man.graph_file(graph)), load_external_data=False)
        ops = {n.op_type for n in model.graph.node}
        assert ("MatMulNBits" if graph.endswith("scorer") else "GatherBlockQuantized") in ops, (graph, ops)
        if graph.endswith("scorer"):  # every weight quantized, the prefix and suffix paths' shared ones included
            assert "MatMul" not in {n.op_type for n in model.graph.node if any(i.endswith(".weight") for i in n.input)}
            assert not [t for t in model.graph.initializer if t.data_type == onnx.TensorProto.FLOAT and len(t.dims) == 2
                        and min(t.dims) > 8]
    int8 = load_manifest(bundles["cpu-int8"])
    assert man.files["recommender/scorer.int4.onnx"]["bytes"] < int8.files["recommender/scorer.int8.onnx"]["bytes"]
    history = sorted(inputs.dataset.items)[:5]
    res = Recommender(bundles["cpu-int4"], provider="cpu", threads=1)
    assert res.variants["recommender.scorer"] == "int4" and res.scorer.decoder is None
    got = dict(res.recommend(history=history, candidates="sampled:6", seed=1, top_k=6).scored)
    want = dict(Recommender(bundles["cpu-int8"], provider="cpu", threads=1).recommend(
        history=history, candidates="sampled:6", seed=1, top_k=6).scored)
    assert got.keys() == want.keys() and len(got) == 6
    assert max(abs(got[i] - want[i]) for i in got) < 0.1


def test_streamed_quantization_matches_onnxruntimes(inputs, tmp_path, monkeypatch):
    """Large graphs are quantized one weight at a time (variants._stream_int8, the threshold lowered here to reach it
    at toy size): the same op pattern and the same int8 weights as onnxruntime's quantize_dynamic, gated alike, and
    the sessions fuse it into DynamicQuantizeMatMul."""
    import onnx

    from mmsrarec_edge.exporter import variants
    from mmsrarec_edge.exporter.graphs import export_graph
    from mmsrarec_edge.exporter.kinds import export_kind

    model = inputs.recommender.model
    spec = export_kind("decoder_scorer", "recommender.scorer", model).spec(model, inputs.yes_no_ids)
    fp32 = export_graph(spec, tmp_path / "scorer.onnx", "legacy")
    ref = variants.to_int8(fp32, tmp_path / "ref.int8.onnx", legacy=True)  # small: onnxruntime's path
    monkeypatch.setattr(variants, "LIGHT_QUANT_BYTES", 0)
    got = variants.to_int8(fp32, tmp_path / "stream.int8.onnx", legacy=True)
    # every MatMul whose weight is an initializer is quantized; onnxruntime's pre-processing also folds the yes/no
    # head's Cast+Transpose into a weight and quantizes that [hidden, 2] product: it stays fp32 here (one MatMul,
    # one DynamicQuantizeLinear fewer)
    assert got["quantized_nodes"] >= ref["quantized_nodes"] - 2 > 0
    init = {t.name for t in onnx.load(str(tmp_path / "stream.int8.onnx"), load_external_data=False).graph.initializer}
    assert not [n for n in onnx.load(str(tmp_path / "stream.int8.onnx"), load_external_data=False).graph.node
                if n.op_type == "MatMul" and n.input[1] in init]
    a, b = (onnx.load(str(tmp_path / n)) for n in ("ref.int8.onnx", "stream.int8.onnx"))
    int8 = onnx.TensorProto.INT8
    weights = {t.name: onnx.numpy_helper.to_array(t) for t in a.graph.initializer if t.data_type == int8}
    mine = {t.name: onnx.numpy_helper.to_array(t) for t in b.graph.initializer if t.data_type == int8}
    shared = [k for k in weights if k in mine and weights[k].ndim == 2]
    assert shared and all(np.array_equal(weights[k], mine[k]) for k in shared)  # onnxruntime's weight rule
    # int4 likewise: onnxruntime's block quantizer per weight, the same bytes as the whole-graph quantizer
    monkeypatch.setattr(variants, "LIGHT_QUANT_BYTES", 10**12)
    whole = variants.to_int4(fp32, tmp_path / "whole.int4.onnx")
    monkeypatch.setattr(variants, "LIGHT_QUANT_BYTES", 0)
    streamed = variants.to_int4(fp32, tmp_path / "stream.int4.onnx")
    assert streamed["quantized_nodes"] == whole["quantized_nodes"] > 0
    a, b = (onnx.load(str(tmp_path / n)) for n in ("whole.int4.onnx", "stream.int4.onnx"))
    packed = {t.name: onnx.numpy_helper.to_array(t) for t in a.graph.initializer if t.name.endswith("_Q4")}
    mine = {t.name: onnx.numpy_helper.to_array(t) for t in b.graph.initializer if t.name.endswith("_Q4")}
    assert packed.keys() == mine.keys() and all(np.array_equal(packed[k], mine[k]) for k in packed)
    prof = load_profile(PROFILES_DIR / "cpu-int8.toml")
    out = tmp_path / "b"
    graphs = ["recommender.embed", "recommender.scorer"]
    export_bundle(replace(inputs, summarizer=None, retrieval=None),
                  replace(prof, parity=replace(prof.parity, cases=1), graphs=graphs), out)
    man = load_manifest(out)
    assert man.graphs["recommender.scorer"]["variants"]["int8"]["parity"]["passed"]
    ops = {n.op_type for n in onnx.load(str(man.graph_file("recommender.scorer")), load_external_data=False).graph.node}
    assert {"DynamicQuantizeLinear", "MatMulInteger"} <= ops
