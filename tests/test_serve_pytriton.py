"""`mmsrarec-edge serve BUNDLE` on Triton (PyTriton) over loopback: tritonclient answers over HTTP and gRPC equal the
CLI's `recommend --json`, a bad request fails alone, dynamic batching merges concurrent requests, SIGTERM stops the
server and its children. Skips when no serving environment exists (see serve_support)."""

import json
import subprocess
import sys

import pytest
from runtime_support import shared_tiny_bundle
from serve_support import ServerProcess, client_answers, free_ports, require_serve_python, wait_group_gone

CLI = [sys.executable, "-m", "mmsrarec_edge.cli"]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    py = require_serve_python()
    bundle = shared_tiny_bundle()
    http, grpc, metrics = free_ports(3)
    tmp = tmp_path_factory.mktemp("serve")
    srv = ServerProcess([py, "-m", "mmsrarec_edge.cli", "serve", str(bundle.dir), "--http-port", str(http),
                         "--grpc-port", str(grpc), "--metrics-port", str(metrics), "--instances", "2",
                         "--threads", "1", "--max-batch", "8", "--queue-delay-us", "20000"], tmp / "server.log")
    yield {"py": py, "bundle": bundle, "http": f"127.0.0.1:{http}", "grpc": f"127.0.0.1:{grpc}",
           "metrics": f"127.0.0.1:{metrics}", "tmp": tmp, "srv": srv}
    code = srv.stop()
    assert code in (0, 143), srv.log()[-3000:]
    assert wait_group_gone(srv.proc.pid) == []  # tritonserver and the backend stubs are gone with it


def cli_items(bundle_dir, req: dict) -> list[dict]:
    args = ["recommend", str(bundle_dir), "--json", "--top-k", str(req.get("top_k", 10))]
    if req.get("user") is not None:
        args += ["--user", str(req["user"])]
    if req.get("history"):
        args += ["--history", ",".join(map(str, req["history"]))]
    if req.get("candidates"):
        args += ["--candidates", ",".join(map(str, req["candidates"]))]
    elif req.get("candidate_mode"):
        args += ["--candidates", req["candidate_mode"]]
    r = subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)["items"]


def same(served: list[dict], cli: list[dict]) -> None:
    assert [i["item_id"] for i in served] == [i["item_id"] for i in cli]
    assert [i["title"] for i in served] == [i["title"] for i in cli]
    assert [i["explanation"] for i in served] == [i["explanation"] for i in cli]
    assert [i["score"] for i in served] == pytest.approx([i["score"] for i in cli], abs=1e-9)


def test_serve_without_pytriton_is_a_one_line_error():
    r = subprocess.run([sys.executable, "-c", "import pytriton.triton"], capture_output=True)
    if r.returncode == 0:
        pytest.skip("PyTriton is installed in the test interpreter")
    r = subprocess.run([*CLI, "serve", str(shared_tiny_bundle().dir)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "PyTriton is not installed" in r.stderr and "make serve-env" in r.stderr
    assert "Traceback" not in r.stderr


def test_http_and_grpc_answers_equal_the_cli(server):
    users = sorted(server["bundle"].dataset.sequences())
    reqs = [{"user": users[1], "top_k": 3},
            {"history": [1, 2, 3], "candidates": [4, 5, 6, 7], "top_k": 2},
            {"history": [5, 9], "candidate_mode": "sampled:6", "top_k": 4},
            {"user": users[2], "candidate_mode": "all", "top_k": 5}]
    expected = [cli_items(server["bundle"].dir, r) for r in reqs]
    assert all(expected) and len(expected[1]) == 2 and len(expected[3]) == 5
    for proto in ("http", "grpc"):
        answers = client_answers(server["py"], server[proto], proto, reqs, server["tmp"])
        for req, ans, exp in zip(reqs, answers, expected):
            assert "error" not in ans, (proto, req, ans)
            same(ans["items"], exp)


def test_a_bad_request_fails_alone(server):
    users = sorted(server["bundle"].dataset.sequences())
    reqs = [{"user": 987654, "top_k": 2}, {"history": [1, 2], "candidates": [424242], "top_k": 1},
            {"user": users[0], "top_k": 2}]
    answers = client_answers(server["py"], server["grpc"], "grpc", reqs, server["tmp"])
    assert "987654" in answers[0]["error"]
    assert "424242" in answers[1]["error"]
    same(answers[2]["items"], cli_items(server["bundle"].dir, reqs[2]))


def test_load_is_bounded_and_dynamic_batching_merges_requests(server):
    users = sorted(server["bundle"].dataset.sequences())
    path = server["tmp"] / "load.json"
    path.write_text(json.dumps([{"user": u, "top_k": 5, "candidates": [1, 2, 3, 4, 5, 6]} for u in users[:8]]))
    r = subprocess.run([server["py"], "-m", "mmsrarec_edge.serving.loadtest", "--url", server["http"], "--requests",
                        str(path), "--concurrency", "1,6", "--total", "36", "--warmup", "2", "--metrics-url",
                        server["metrics"], "--max-seconds", "90"], capture_output=True, text=True, timeout=400)
    assert r.returncode == 0, r.stderr[-3000:]
    levels = json.loads(r.stdout)["levels"]
    assert [lv["requests"] for lv in levels] == [36, 36] and all(lv["errors"] == 0 for lv in levels)
    assert all(lv["p50_ms"] <= lv["p99_ms"] for lv in levels)
    serial, concurrent = levels
    assert serial["triton"]["nv_inference_request_success"] == 36
    # six clients and a 20 ms queue delay: Triton runs fewer batches than it gets requests
    assert concurrent["triton"]["nv_inference_exec_count"] < concurrent["triton"]["nv_inference_request_success"]


def test_a_taken_port_is_a_one_line_error():
    import socket

    from serve_support import serve_python

    py, why = serve_python()
    if py is None:
        pytest.skip(why)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        port = s.getsockname()[1]
        r = subprocess.run([py, "-m", "mmsrarec_edge.cli", "serve", str(shared_tiny_bundle().dir), "--http-port",
                            str(port)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and f"127.0.0.1:{port} (--http-port)" in r.stderr and "Traceback" not in r.stderr
