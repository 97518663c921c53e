"""`mmsrarec-edge recommend` / `summarize-item` as subprocesses, and the runtime with torch/transformers blocked."""

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from PIL import Image
from runtime_support import copy_bundle, shared_tiny_bundle

CLI = [sys.executable, "-m", "mmsrarec_edge.cli"]


@pytest.fixture(scope="module")
def bundle():
    return shared_tiny_bundle()


def run(*args, ok=True):
    r = subprocess.run([*CLI, *map(str, args)], capture_output=True, text=True, timeout=300)
    if ok:
        assert r.returncode == 0, r.stderr
    return r


def test_recommend_known_user_json(bundle):
    user = sorted(bundle.dataset.sequences())[1]
    out = json.loads(run("recommend", bundle.dir, "--user", user, "--top-k", 4, "--json", "--provider", "cpu").stdout)
    assert out["user"] == user and len(out["items"]) == 4 and out["provider"] == "cpu"
    assert [it["rank"] for it in out["items"]] == [1, 2, 3, 4]
    assert all(0 < it["score"] < 1 and it["explanation"] for it in out["items"])
    assert out["items"][0]["score"] >= out["items"][-1]["score"]


def test_recommend_ad_hoc_history_json_and_table(bundle):
    out = json.loads(run("recommend", bundle.dir, "--history", "1,2,3", "--candidates", "4,5,6,7", "--top-k", 2,
                         "--json").stdout)
    assert out["history"] == [1, 2, 3] and out["candidate_mode"] == "list"
    assert [s["item_id"] for s in out["scored"]] == [4, 5, 6, 7] and len(out["items"]) == 2
    table = run("recommend", bundle.dir, "--history", "1,2,3", "--candidates", "sampled:5", "--top-k", 3).stdout
    assert "Top 3 for ad-hoc history" in table and "score" in table


def test_threads_beyond_the_cpu_count_are_capped_with_a_warning(bundle):
    from mmsrarec_edge.core.config import cpu_count

    r = run("recommend", bundle.dir, "--history", "1,2", "--candidates", "3,4", "--threads", 1000, "--json",
            "--provider", "CPU")  # choices are case-insensitive
    assert json.loads(r.stdout)["candidate_mode"] == "list"
    assert r.stderr.strip() == f"warning: --threads 1000 is more than the {cpu_count()} CPUs available here: using " \
                               f"{cpu_count()}"


@pytest.mark.parametrize("args, needle", [  # one per layer: CLI parsing, sessions, recommender (the rest in-process)
    (["--history", "1,x"], "comma-separated integer item ids"),
    (["--history", "1", "--candidates", "sampled:x"], "--candidates 'sampled:x': sampled:N needs an integer N >= 1"),
    (["--history", "1", "--provider", "gpu"], "'gpu' is not one of"),
    (["--history", "1", "--provider", "tensorrt"], "execution provider 'tensorrt'"),
    (["--user", 10**6], "unknown user id 1000000"),
])
def test_recommend_errors_are_one_line(bundle, args, needle):
    if "tensorrt" in args:
        import onnxruntime

        if "TensorrtExecutionProvider" in onnxruntime.get_available_providers():
            pytest.skip("TensorRT is available here")
    r = run("recommend", bundle.dir, *args, ok=False)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert needle in r.stderr.replace("\n", " ") and len(r.stderr.strip().splitlines()) <= 2  # rich wraps at 80


def test_summarize_item_png_and_add_to_catalog(bundle, tmp_path):
    d = copy_bundle(bundle, tmp_path / "b")
    rgb = (np.random.default_rng(1).random((72, 90, 3)) * 255).astype(np.uint8)
    Image.fromarray(rgb).save(tmp_path / "new.png")
    text = "Zephyr kite. A purple checked kite made of nylon, sporty."
    out = json.loads(run("summarize-item", d, "--image", tmp_path / "new.png", "--text", text, "--json").stdout)
    assert set(out) >= {"image_keywords", "text_keywords", "keywords", "image_output", "text_output"}
    assert out["image_keywords"] and out["text_keywords"] and "added" not in out
    added = json.loads(run("summarize-item", d, "--image", tmp_path / "new.png", "--text", text, "--add-to-catalog",
                           "--item-id", 777, "--title", "Zephyr kite", "--json").stdout)
    assert added["added"]["item_id"] == 777 and added["added"]["keywords"] == out["keywords"]  # greedy: deterministic
    rec = json.loads(run("recommend", d, "--history", "1,2", "--candidates", "777,3", "--json").stdout)
    assert {s["item_id"] for s in rec["scored"]} == {777, 3}
    again = run("summarize-item", d, "--text", text, "--add-to-catalog", "--item-id", 777, ok=False)
    assert again.returncode == 2 and "already in the catalog" in again.stderr


BLOCKED = textwrap.dedent("""
    import importlib, json, pkgutil, sys

    class Block:
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in ("torch", "transformers"):
                raise ImportError(f"{name} is blocked in this test")
            return None

    sys.meta_path.insert(0, Block())
    import mmsrarec_edge.core as core
    import mmsrarec_edge.runtime as rt
    names = []
    for pkg in (core, rt):
        for m in pkgutil.iter_modules(pkg.__path__):
            importlib.import_module(f"{pkg.__name__}.{m.name}")
            names.append(m.name)
    import mmsrarec_edge.commands.runtime
    from mmsrarec_edge.runtime.recommender import Recommender

    res = Recommender(sys.argv[1], provider="cpu").recommend(history=[1, 2, 3], top_k=3)
    sys.argv = ["mmsrarec-edge", "recommend", sys.argv[1], "--history", "4,5", "--json"]
    from mmsrarec_edge.cli import main
    try:
        main()
    except SystemExit as exc:
        assert not exc.code, exc.code
    loaded = sorted(k for k in sys.modules if k.split(".")[0] in ("torch", "transformers"))
    print(json.dumps({"modules": names, "top": [it.item_id for it in res.items], "loaded": loaded}))
""")


def test_runtime_runs_with_torch_and_transformers_blocked(bundle):
    r = subprocess.run([sys.executable, "-c", BLOCKED, str(bundle.dir)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.strip().splitlines()
    cli_out = json.loads("\n".join(lines[:-1]))
    summary = json.loads(lines[-1])
    assert {"recommender", "scorer", "sessions", "summarizer", "bundle", "catalog", "prompt", "keyword_store",
            "candidates", "scores"} <= set(summary["modules"])
    assert len(summary["top"]) == 3 and summary["loaded"] == []
    assert cli_out["history"] == [4, 5] and len(cli_out["items"]) == 8  # n_rescore of the bundle < top_k 10
