"""The latency benchmark on a tiny bundle: every peer scores the same prompts, the report is complete and readable."""

import json
import subprocess
import sys

import pytest
from runtime_support import shared_tiny_bundle

from mmsrarec_edge.bench import latency, report


@pytest.fixture(scope="module")
def bench_report(tmp_path_factory):
    b = shared_tiny_bundle()
    out = tmp_path_factory.mktemp("bench")
    cfg = latency.BenchConfig(candidate_counts=(1, 8), history_lengths=(2,), repeats=3, max_seconds=2,
                              e2e_requests=4)
    r = latency.run(b.dir, out, None, None, cfg)
    report.write(r, out)
    return r, out


def test_grid_covers_every_cell_and_peer(bench_report):
    r, _ = bench_report
    assert [(row["history_len"], row["candidates"]) for row in r["grid"]] == [(2, 1), (2, 8)]
    for row in r["grid"]:
        assert {"ONNX Runtime fp32 (ours)", "ONNX Runtime fp32, per candidate"} <= set(row["peers"])
        for st in row["peers"].values():
            assert st["n"] >= 1 and 0 < st["p50_ms"] <= st["p99_ms"]
        assert row["floor_ms"] > 0 and row["prefix_tokens"] > 0
    # the floor grows with the work: more candidates, more FLOPs
    assert r["grid"][1]["floor_ms"] > r["grid"][0]["floor_ms"]


def test_summary_ratios_are_medians_of_cells(bench_report):
    r, _ = bench_report
    s = r["summary"]["ONNX Runtime fp32, per candidate"]
    ratios = [row["peers"]["ONNX Runtime fp32, per candidate"]["p50_ms"]
              / row["peers"]["ONNX Runtime fp32 (ours)"]["p50_ms"]
              for row in r["grid"]]
    assert s["median_speedup"] == pytest.approx(sorted(ratios)[0] / 2 + sorted(ratios)[1] / 2)
    assert s["min_speedup"] == pytest.approx(min(ratios))


def test_end_to_end_stages_and_files(bench_report):
    r, out = bench_report
    e2e = r["end_to_end"]
    assert e2e["requests"] == 4 and e2e["throughput_rps"] > 0
    assert {"encode", "retrieve", "prompt", "score", "total"} <= set(e2e["stages"])
    assert e2e["stages"]["total"]["p50_ms"] >= e2e["stages"]["score"]["p50_ms"]
    md = (out / "report.md").read_text()
    assert "Scoring latency p50" in md and "| encode |" in md
    for png in ("latency_vs_candidates.png", "stages.png", "speedup.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads((out / "report.json").read_text())["grid"]


def test_cli_rejects_bad_counts(tmp_path):
    r = subprocess.run([sys.executable, "-m", "mmsrarec_edge.cli", "bench", str(tmp_path), "--candidates", "5,x"],
                       capture_output=True, text=True)
    assert r.returncode == 2 and "comma-separated integers" in r.stderr and "Traceback" not in r.stderr


def test_floor_counts_the_last_layer_at_the_read_slot_only():
    """2 layers, H 4, weights 100 FLOPs/token (50 per layer, 8 of them the key/value projections), prefix 3 tokens,
    two suffixes of 2 and 1 tokens, at 1 GFLOP/s."""
    from mmsrarec_edge.bench.latency import floor_ms

    dims = {"weight_flops_per_token": 100, "hidden_size": 4, "num_layers": 2, "kv_flops_per_token": 8}
    attn = lambda n, past: 16 * n * (past + (n + 1) / 2)  # noqa: E731  one layer: 4 * H * n * mean context
    want = 3 * 58 + attn(3, 0)  # prefix: layer 1 + the last layer's K/V
    for s in (2, 1):  # each suffix: the same over its tokens, then the rest of the last layer at its last token
        want += s * 58 + attn(s, 3) + (50 - 8) + 16 * (3 + s)
    assert floor_ms(3, [2, 1], dims, 1.0) == pytest.approx(want / 1e9 * 1e3)
    full = 3 * 100 + 2 * attn(3, 0) + sum(s * 100 + 2 * attn(s, 3) for s in (2, 1))
    assert floor_ms(3, [2, 1], dims, 1.0) < full / 1e9 * 1e3
