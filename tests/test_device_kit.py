"""The GPU check kit (benchmarks/device/, issue 19) without a GPU: the parts round-trip byte for byte through split,
pack, receive and join; the README's device commands fit the tool's 2,000 characters and match the kit; the whole
check dry-runs on the CPU provider at the smallest ladder size."""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
DEVICE = ROOT / "benchmarks" / "device"


def _kit():
    spec = importlib.util.spec_from_file_location("device_kit", DEVICE / "kit.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_split_join_round_trip(tmp_path):
    kit = _kit()
    rng = np.random.default_rng(0)
    src = tmp_path / "src"
    src.mkdir()
    files = {"big.whl": rng.bytes(10_000), "exact.whl": rng.bytes(2048), "small.tar.gz": rng.bytes(300),
             "empty.whl": b""}
    for name, data in files.items():
        (src / name).write_bytes(data)
    stage = tmp_path / "stage"
    man = kit.build_manifest(sorted(src.iterdir()), stage, part_bytes=1024)
    by_name = {e["name"]: e for e in man["files"]}
    assert len(by_name["big.whl"]["parts"]) == 10 and len(by_name["exact.whl"]["parts"]) == 2
    assert len(by_name["empty.whl"]["parts"]) == 1
    for k in range(1, man["calls"] + 1):  # every call fits a part's size, and carries the manifest
        call = stage / f"call-{k}"
        assert sum(p.stat().st_size for p in call.iterdir() if p.name != "manifest.json") <= 1024
        assert json.loads((call / "manifest.json").read_text()) == man
    assert man["call_bytes"] == [sum(p.stat().st_size for p in (stage / f"call-{k}").iterdir()
                                     if p.name != "manifest.json") for k in range(1, man["calls"] + 1)]

    dest = tmp_path / "received"
    for k in range(1, man["calls"]):
        kit.main(["receive", str(k), "--stage", str(stage), "--dest", str(dest)])
    assert kit.missing_calls(man, dest / "parts") == [man["calls"]]
    with pytest.raises(SystemExit, match="not here"):
        kit.join_all(man, dest / "parts", dest / "files")
    kit.main(["receive", str(man["calls"]), "--stage", str(stage), "--dest", str(dest)])
    joined = kit.join_all(man, dest / "parts", dest / "files")
    assert {p.name: p.read_bytes() for p in joined} == files

    # a damaged part is refused on arrival
    part = next(p for p in (stage / "call-1").iterdir() if p.name != "manifest.json")
    part.write_bytes(b"x" + part.read_bytes()[1:])
    with pytest.raises(SystemExit, match="damaged"):
        kit.main(["receive", "1", "--stage", str(stage), "--dest", str(dest)])


def test_pack_calls_first_fit():
    kit = _kit()
    parts = [{"name": f"p{i}", "bytes": b} for i, b in enumerate([60, 60, 50, 30, 10, 5])]
    calls = kit.pack_calls(parts, 64)
    sizes = {p["name"]: p["bytes"] for p in parts}
    assert sorted(n for c in calls for n in c) == sorted(sizes)
    assert all(sum(sizes[n] for n in c) <= 64 for c in calls) and len(calls) == 4
    with pytest.raises(ValueError):
        kit.pack_calls([{"name": "x", "bytes": 65}], 64)


def test_readme_run_commands():
    kit = _kit()
    text = (DEVICE / "README.md").read_text()
    block = re.search(r"<!-- run-commands -->\s*```text\n(.*?)```", text, re.S)
    assert block, "README.md lists the device calls between <!-- run-commands --> and a ```text block"
    lines = [line for line in block.group(1).splitlines() if line.strip()]
    assert lines == kit.run_commands(len(lines) - 1)  # the kit's own commands for that many part calls
    for line in lines:
        carry, command = line.split(" | ", 1)
        assert len(command) <= kit.RUN_LIMIT
        assert carry.startswith("carry=[")
    assert kit.PART_BYTES < 60 * kit.MIB


def test_parity_provider_option(tmp_path):
    from mmsrarec_edge.core.errors import UserError
    from mmsrarec_edge.exporter.parity import GraphParity
    from mmsrarec_edge.exporter.profile import parse_profile
    from mmsrarec_edge.runtime.sessions import available_providers

    assert parse_profile({}).parity.provider == "cpu"
    assert parse_profile({"parity": {"provider": "cuda"}}).parity.provider == "cuda"
    with pytest.raises(UserError, match="parity.provider"):
        parse_profile({"parity": {"provider": "tensorrt"}})
    # a CPU-gated manifest entry is unchanged; another provider is recorded
    g = GraphParity("recommender.scorer", "fp16", {"score": 1e-3}, {"score": 1e-2}, 2)
    assert "provider" not in g.to_dict()
    g.provider = "CUDAExecutionProvider"
    assert g.to_dict()["provider"] == "CUDAExecutionProvider"
    if "cuda" not in available_providers():  # the CPU build: naming cuda is a UserError, not a silent CPU gate
        from mmsrarec_edge.exporter.parity import session

        with pytest.raises(UserError, match="cuda"):
            session(tmp_path / "g.onnx", "fp16", 1, provider="cuda")


@pytest.mark.slow
def test_gpu_check_dry_run_on_cpu(tmp_path):
    from mmsrarec_edge.bench.gpu_check import CheckConfig, markdown, profile_text, run_check
    from mmsrarec_edge.exporter.profile import parse_profile

    try:
        import tomllib
    except ImportError:  # pragma: no cover - Python 3.10
        import tomli as tomllib
    prof = parse_profile(tomllib.loads(profile_text("cuda")))
    assert prof.parity.provider == "cuda" and prof.graph_variants("recommender.scorer") == ["fp16", "fp32"]
    assert prof.providers[0] == "CUDAExecutionProvider"

    cfg = CheckConfig(sizes=("toy",), provider="cpu", calls=2, warmup=1, rounds=1, cases=2, threads=2,
                      budget_s=300)
    out = tmp_path / "out"
    report = run_check(cfg, out, tmp_path / "work")
    saved = json.loads((out / "report.json").read_text())
    assert saved["sizes"].keys() == report["sizes"].keys() == {"toy"}
    e = saved["sizes"]["toy"]
    assert e["status"] == "done", e.get("errors")
    assert set(e["steps_s"]) == {"checkpoint", "train", "export", "measure"}
    engines = e["engines"]
    assert set(engines) == {"ours/fp16/iobinding", "ours/fp16/run", "ours/fp32/iobinding", "pytorch/fp16",
                            "pytorch/fp32"}, e["errors"]
    for key, r in engines.items():
        assert r["n"] == 2 and 0 < r["p50_ms"] <= r["p95_ms"], key
    assert engines["ours/fp16/iobinding"]["session_provider"] == "CPUExecutionProvider"
    assert engines["ours/fp16/iobinding"]["chained_on_device"] is True
    # IO binding scores what the runtime's own path scores; fp32 matches PyTorch fp32
    assert e["comparisons"]["iobinding_vs_run"]["max_abs_score_diff"] < 1e-6
    assert engines["ours/fp32/iobinding"]["vs_reference"]["max_abs_score_diff"] < 1e-4
    assert 0 <= e["comparisons"]["ours_fp16_vs_fp32"]["top5_overlap"] <= 1
    parity = {(r["graph"], r["precision"]): r for r in e["parity"]}
    assert {("recommender.scorer", "fp16"), ("recommender.scorer", "fp32"), ("recommender.embed", "fp16")} \
        <= set(parity)
    assert all(r["provider"] == "CPUExecutionProvider" for r in parity.values())
    assert parity[("recommender.scorer", "fp32")]["default_gate"]
    t = saved["targets"]
    assert t["evaluated"] and t["size"] == "toy" and not t["target_size"]
    md = (out / "report.md").read_text()
    assert md == markdown(saved)
    for needle in ("## Targets", "## toy (done", "| ours/fp16/iobinding |", "| recommender.scorer | fp16 |",
                   "ours_fp16_vs_fp32"):
        assert needle in md
