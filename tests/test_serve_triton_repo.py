"""`mmsrarec-edge triton-repo BUNDLE --out DIR`: every config.pbtxt parses and its tensors match the ONNX graph
(onnx.load) it serves; instance groups, dynamic batching and the TensorRT accelerator are where they belong; the
Python model's bundle copy verifies; and PyTriton's own tritonserver loads the Python-backend model from the
repository and answers as the CLI does (skipped without a serving environment)."""

import json
import re
import subprocess
import sys
from pathlib import Path

import onnx
import pytest
from runtime_support import shared_tiny_bundle
from serve_support import ServerProcess, client_answers, free_ports, require_serve_python, wait_group_gone

CLI = [sys.executable, "-m", "mmsrarec_edge.cli"]
ONNX_TYPES = {onnx.TensorProto.FLOAT: "TYPE_FP32", onnx.TensorProto.INT64: "TYPE_INT64",
              onnx.TensorProto.FLOAT16: "TYPE_FP16", onnx.TensorProto.INT32: "TYPE_INT32"}


def parse_pbtxt(text: str) -> dict:
    """Protobuf text format (the subset Triton configs use) -> {field: [values]}; messages are dicts."""
    tokens = re.findall(r'"(?:[^"\\]|\\.)*"|[{}\[\]:,]|[^\s{}\[\]:,"]+', text)
    pos = 0

    def scalar(tok):
        if tok.startswith('"'):
            return json.loads(tok)
        return int(tok) if re.fullmatch(r"-?\d+", tok) else tok

    def value():
        nonlocal pos
        tok = tokens[pos]
        pos += 1
        return message("}") if tok == "{" else scalar(tok)

    def message(end):
        nonlocal pos
        out = {}
        while pos < len(tokens) and tokens[pos] != end:
            name = tokens[pos]
            pos += 1
            if tokens[pos] == ":":
                pos += 1
            if tokens[pos] == "[":
                pos += 1
                while tokens[pos] != "]":
                    out.setdefault(name, []).append(value())
                    if tokens[pos] == ",":
                        pos += 1
                pos += 1
                out.setdefault(name, [])
            else:
                out.setdefault(name, []).append(value())
        pos += 1  # the closing brace (or past the end)
        return out

    return message(None)


def one(msg, key):
    return msg[key][0]


@pytest.fixture(scope="module")
def repos(tmp_path_factory):
    bundle = shared_tiny_bundle()
    root = tmp_path_factory.mktemp("repos")
    out = {}
    for device in ("gpu", "cpu"):
        r = subprocess.run([*CLI, "triton-repo", str(bundle.dir), "--out", str(root / device), "--device", device,
                            "--instances", "2"], capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stderr
        out[device] = (root / device, json.loads(r.stdout)["models"])
    return bundle, out


def graph_dims(vi) -> list:
    return [d.dim_value if d.HasField("dim_value") else d.dim_param for d in vi.type.tensor_type.shape.dim]


def test_every_config_matches_its_onnx_graph(repos):
    bundle, out = repos
    for device, (repo, models) in out.items():
        graphs = [m for m in models if m != "recommend"]
        assert len(graphs) == 8 and (repo / "recommend" / "config.pbtxt").is_file()
        for name in graphs:
            cfg = parse_pbtxt((repo / name / "config.pbtxt").read_text())
            assert one(cfg, "name") == name and one(cfg, "platform") == "onnxruntime_onnx"
            model = onnx.load(str(repo / name / "1" / "model.onnx"))
            max_batch = one(cfg, "max_batch_size")
            for key, vis in (("input", model.graph.input), ("output", model.graph.output)):
                tensors = cfg[key]
                assert [t["name"][0] for t in tensors] == [v.name for v in vis], (name, key)
                for t, vi in zip(tensors, vis):
                    assert t["data_type"][0] == ONNX_TYPES[vi.type.tensor_type.elem_type], (name, vi.name)
                    dims = graph_dims(vi)
                    if max_batch > 0:  # the first graph axis is Triton's batch axis, not listed in dims
                        assert isinstance(dims[0], str), (name, vi.name)
                        dims = dims[1:]
                    assert t["dims"] == [d if isinstance(d, int) else -1 for d in dims], (name, vi.name)
            group = one(cfg, "instance_group")
            assert one(group, "count") == 2 and one(group, "kind") == ("KIND_GPU" if device == "gpu" else "KIND_CPU")
            # every graph but the scorer has a batch axis (its prefix inputs keep batch 1 while candidates vary)
            batched = name != "recommender_scorer"
            assert (max_batch > 0) == batched and ("dynamic_batching" in cfg) == batched
            accel = cfg.get("optimization", [{}])[0].get("execution_accelerators", [{}])[0]
            trt = accel.get("gpu_execution_accelerator", [])
            assert (device == "gpu") == bool(trt)
            if trt:
                params = {p["key"][0]: p["value"][0] for p in trt[0]["parameters"]}
                assert one(trt[0], "name") == "tensorrt" and params["precision_mode"] in ("FP16", "FP32")
        # the scorer sends up to limits.max_candidates rows per decoder call: the batch limit must admit them
        dec = parse_pbtxt((repo / "recommender_decoder" / "config.pbtxt").read_text())
        assert one(dec, "max_batch_size") >= 21


def test_python_model_config_and_bundle_copy(repos):
    from mmsrarec_edge.core.bundle import load_manifest
    from mmsrarec_edge.serving import protocol

    _, out = repos
    repo, _ = out["cpu"]
    cfg = parse_pbtxt((repo / "recommend" / "config.pbtxt").read_text())
    assert one(cfg, "backend") == "python" and one(cfg, "max_batch_size") == 8
    assert [t["name"][0] for t in cfg["input"]] == [s.name for s in protocol.INPUTS]
    assert [t["data_type"][0] for t in cfg["output"]] == [s.triton_type for s in protocol.OUTPUTS]
    params = {p["key"][0]: one(p["value"][0], "string_value") for p in cfg["parameters"]}
    assert params["mode"] == "local" and json.loads(params["graph_models"])["recommender.decoder"] == \
        "recommender_decoder"
    load_manifest(repo / "recommend" / "1" / "bundle", verify=True)  # a complete, hash-verified copy
    assert (repo / "recommend" / "1" / "model.py").read_text().count("class TritonPythonModel") == 1


def test_refuses_bad_options_and_unrelated_folders(repos, tmp_path):
    bundle, _ = repos
    r = subprocess.run([*CLI, "triton-repo", str(bundle.dir), "--out", str(tmp_path / "x"), "--device", "tpu"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "--device" in r.stderr
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    r = subprocess.run([*CLI, "triton-repo", str(bundle.dir), "--out", str(tmp_path / "mine")],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and (tmp_path / "mine" / "notes.txt").read_text() == "keep me"


def test_pytriton_tritonserver_loads_the_python_model(repos, tmp_path):
    py = require_serve_python()
    bundle, out = repos
    repo, _ = out["cpu"]
    http, grpc, metrics = free_ports(3)
    srv = ServerProcess([py, "-m", "mmsrarec_edge.serving.tritonserver", str(repo), "--http-port", str(http),
                         "--grpc-port", str(grpc), "--metrics-port", str(metrics), "--workdir", str(tmp_path / "w")],
                        tmp_path / "server.log")
    try:
        users = sorted(bundle.dataset.sequences())
        reqs = [{"user": users[3], "top_k": 3}, {"history": [2, 4], "candidates": [7, 8, 9], "top_k": 3}]
        answers = client_answers(py, f"127.0.0.1:{http}", "http", reqs, tmp_path, wait=90)
    finally:
        srv.stop()
    assert wait_group_gone(srv.proc.pid) == []
    for req, ans in zip(reqs, answers):
        args = ["--user", str(req["user"])] if "user" in req else \
            ["--history", ",".join(map(str, req["history"])), "--candidates", ",".join(map(str, req["candidates"]))]
        cli = json.loads(subprocess.run([*CLI, "recommend", str(bundle.dir), "--json", "--top-k", "3", *args],
                                        capture_output=True, text=True, timeout=300, check=True).stdout)["items"]
        assert "error" not in ans, (ans, srv.log()[-3000:])
        assert [i["item_id"] for i in ans["items"]] == [i["item_id"] for i in cli]
        assert [i["explanation"] for i in ans["items"]] == [i["explanation"] for i in cli]
        assert [i["score"] for i in ans["items"]] == pytest.approx([i["score"] for i in cli], abs=1e-9)


def test_built_engines_become_tensorrt_plan_models(tmp_path):
    """A bundle whose manifest lists a built engine (as `build-engine` records it) gets a tensorrt_plan model for
    that graph in a gpu repository (no TensorRT accelerator block: it is an engine already), ONNX in a cpu one."""
    import hashlib
    import shutil

    from mmsrarec_edge.serving.triton_repo import RepoConfig, write_model_repository

    bundle = shutil.copytree(shared_tiny_bundle().dir, tmp_path / "bundle")
    engine = bundle / "engines" / "sasrec.user_encoder.fp16.engine"
    engine.parent.mkdir()
    engine.write_bytes(b"not a real engine: the writer only copies it")
    man = json.loads((bundle / "manifest.json").read_text())
    rel = "engines/sasrec.user_encoder.fp16.engine"
    man["files"][rel] = {"sha256": hashlib.sha256(engine.read_bytes()).hexdigest(), "bytes": engine.stat().st_size}
    man["engines"] = {"sasrec.user_encoder": {"file": rel, "fp16": True}}
    (bundle / "manifest.json").write_text(json.dumps(man))
    write_model_repository(bundle, tmp_path / "gpu", RepoConfig(device="gpu"))
    cfg = parse_pbtxt((tmp_path / "gpu" / "sasrec_user_encoder" / "config.pbtxt").read_text())
    assert one(cfg, "platform") == "tensorrt_plan" and "optimization" not in cfg
    assert (tmp_path / "gpu" / "sasrec_user_encoder" / "1" / "model.plan").read_bytes() == engine.read_bytes()
    assert [t["name"][0] for t in cfg["input"]] == ["history"] and one(cfg["input"][0], "dims") == 8
    write_model_repository(bundle, tmp_path / "cpu", RepoConfig(device="cpu"))
    cfg = parse_pbtxt((tmp_path / "cpu" / "sasrec_user_encoder" / "config.pbtxt").read_text())
    assert one(cfg, "platform") == "onnxruntime_onnx"


def test_bls_mode_calls_the_graph_models_through_triton(tmp_path):
    """--bls against a real tritonserver: the graph models the BLS requests go to run on a Python-backend stand-in
    for the onnxruntime backend (tests/fixtures/triton_ort_python_model.py; PyTriton's server has no ONNX backend),
    with the repository's own config.pbtxt tensors. Answers equal the CLI's, and Triton counts the graph calls."""
    import shutil
    import urllib.request

    from mmsrarec_edge.serving.triton_repo import RepoConfig, write_model_repository

    py = require_serve_python()
    bundle = shared_tiny_bundle()
    repo = tmp_path / "repo"
    write_model_repository(bundle.dir, repo, RepoConfig(device="cpu", bls=True))
    graphs = ["recommender_scorer", "recommender_embed", "sasrec_user_encoder"]  # the decoder: unused (scorer path)
    for name in graphs:
        cfg = repo / name / "config.pbtxt"
        cfg.write_text(cfg.read_text().replace('platform: "onnxruntime_onnx"', 'backend: "python"'))
        shutil.copy(Path(__file__).with_name("fixtures") / "triton_ort_python_model.py", repo / name / "1" / "model.py")
    http, grpc, metrics = free_ports(3)
    srv = ServerProcess([py, "-m", "mmsrarec_edge.serving.tritonserver", str(repo), "--http-port", str(http),
                         "--grpc-port", str(grpc), "--metrics-port", str(metrics), "--workdir", str(tmp_path / "w"),
                         *[a for m in ["recommend", *graphs] for a in ("--model", m)]], tmp_path / "server.log")
    try:
        users = sorted(bundle.dataset.sequences())
        reqs = [{"user": users[4], "top_k": 4}, {"history": [3, 6], "candidates": [1, 8, 9, 10], "top_k": 2}]
        answers = client_answers(py, f"127.0.0.1:{grpc}", "grpc", reqs, tmp_path, wait=120)
        with urllib.request.urlopen(f"http://127.0.0.1:{metrics}/metrics", timeout=10) as r:
            text = r.read().decode()
    finally:
        srv.stop()
    assert wait_group_gone(srv.proc.pid) == []
    calls = {m: sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                    if line.startswith("nv_inference_request_success{") and f'model="{m}"' in line) for m in graphs}
    assert all(calls[m] >= 2 for m in graphs), calls  # each request ran SASRec, embeddings and the scorer via BLS
    for req, ans in zip(reqs, answers):
        args = ["--user", str(req["user"])] if "user" in req else \
            ["--history", ",".join(map(str, req["history"])), "--candidates", ",".join(map(str, req["candidates"]))]
        cli = json.loads(subprocess.run([*CLI, "recommend", str(bundle.dir), "--json", "--top-k", str(req["top_k"]),
                                         *args], capture_output=True, text=True, timeout=300, check=True).stdout)
        assert "error" not in ans, (ans, srv.log()[-3000:])
        assert [i["item_id"] for i in ans["items"]] == [i["item_id"] for i in cli["items"]]
        assert [i["score"] for i in ans["items"]] == pytest.approx([i["score"] for i in cli["items"]], abs=1e-6)
