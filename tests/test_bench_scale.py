"""The scale ladder end to end on its smallest size (toy: the embedded default, 2 layers): checkpoint -> `train
recommender --init` -> `export` -> GGUF (F32, Q8_0, Q4_0 by llama.cpp's quantizer) -> onnxruntime-genai builds ->
optimum export -> one worker timing every engine interleaved -> cold start -> report JSON/Markdown/PNG. Every peer's
scores must match PyTorch fp32 on the same token ids within a tolerance of its precision. A peer whose package is not
installed is skipped with the reason; the rest of the run does not depend on it.

(toy, not toy with one layer: a one-layer decoder's scorer graph loses its unused `suffix_mask` input in the ONNX export
and the runtime then refuses it -- an exporter edge case reported to the integrator.)"""

from __future__ import annotations

import importlib.util
import json
import time

import numpy as np
import pytest

pytestmark = pytest.mark.slow

PACKAGES = {"llama.cpp": "llama_cpp", "ort-genai": "onnxruntime_genai", "optimum": "optimum.onnxruntime"}


def _installed(engine: str) -> bool:
    mod = PACKAGES.get(engine)
    if mod is None:
        return True
    try:
        return importlib.util.find_spec(mod) is not None
    except ModuleNotFoundError:
        return False


def _need(engine: str) -> None:
    if not _installed(engine):
        pytest.skip(f"{engine} peer: package {PACKAGES[engine]} is not installed (pip install 'mmsrarec-edge[bench]')")


@pytest.fixture(scope="module")
def scale_run(tmp_path_factory):
    from mmsrarec_edge.bench import scale

    root = tmp_path_factory.mktemp("scale")
    engines = tuple(e for e in scale.ENGINES if _installed(e))
    cfg = scale.ScaleConfig(sizes=("toy",), threads=(1,), engines=engines, repeats=2, max_seconds=3.0, cases=2,
                            layers=None)
    t0 = time.perf_counter()
    report = scale.run(cfg, root / "out", root / "work")
    return {"report": report, "cfg": cfg, "root": root, "seconds": time.perf_counter() - t0}


def _row(report, engine, precision):
    rows = [r for r in report["rows"] if r["engine"] == engine and r["precision"] == precision]
    assert rows, f"no row for {engine} {precision}: {[(r['engine'], r['precision']) for r in report['rows']]}"
    return rows[0]


# (engine, precision, max |delta score| against PyTorch fp32, minimum mean top-5 overlap)
TOLERANCES = [
    ("ours", "fp32", 1e-4, 0.8),
    ("ours", "int8", 0.1, 0.0),
    ("pytorch", "bf16", 0.05, 0.0),
    ("optimum", "fp32", 1e-4, 0.8),
    ("llama.cpp", "f32", 2e-3, 0.8),  # fp32 weights and KV; ggml's own kernels (and a reused prefix cache)
    ("llama.cpp", "q8_0", 0.05, 0.0),
    ("llama.cpp", "q4_0", 0.2, 0.0),
    ("ort-genai", "fp32", 1e-4, 0.8),
    ("ort-genai", "int8", 0.1, 0.0),
    ("ort-genai", "int4", 0.2, 0.0),
]


@pytest.mark.parametrize("engine,precision,tol,overlap", TOLERANCES, ids=[f"{e}-{p}" for e, p, _, _ in TOLERANCES])
def test_engine_scores_match_pytorch_fp32(scale_run, engine, precision, tol, overlap):
    _need(engine)
    row = _row(scale_run["report"], engine, precision)
    assert not row.get("error"), row.get("error")
    assert row["max_abs_score_diff"] is not None
    assert row["max_abs_score_diff"] <= tol, (engine, precision, row["max_abs_score_diff"])
    assert row["top5_overlap"] >= overlap
    assert row["p50_ms"] > 0 and row["p95_ms"] >= row["p50_ms"]
    assert row["n"] >= 1


def test_reference_row_and_fields(scale_run):
    report = scale_run["report"]
    ref = _row(report, "pytorch", "fp32")
    assert ref["max_abs_score_diff"] == 0.0 and ref["top5_overlap"] == 1.0
    fields = ("size", "params", "engine", "precision", "threads", "p50_ms", "p95_ms", "max_abs_score_diff",
              "top5_overlap")
    for r in report["rows"]:
        assert not r.get("error"), r
        for f in fields:
            assert f in r, (f, r)
        assert r["size"] == "toy" and r["threads"] == 1 and r["params"] > 1e6
        assert r["ratio_to_floor_fp32"] > 0 and r["ratio_to_floor_int8"] > 0
    measured = {(r["engine"], r["precision"]) for r in report["rows"]}
    for e, p, _, _ in TOLERANCES:
        if _installed(e):
            assert (e, p) in measured


def test_size_entry(scale_run):
    e = scale_run["report"]["sizes"]["toy"]
    assert e["status"] == "done", e.get("errors")
    assert not e["errors"], e["errors"]
    for f in ("cold_start_s", "rss_mb", "export_s", "export_peak_rss_mb", "floor_fp32_ms", "floor_int8_ms"):
        assert e[f] is not None and e[f] > 0, f
    assert e["bundle_bytes"]["fp32"] > e["bundle_bytes"]["int8"] > 0
    assert e["bundle_bytes"]["total"] >= e["bundle_bytes"]["fp32"]
    per = e["threads"]["1"]
    assert per["gemm_gflops"]["fp32"] > 0 and per["gemm_gflops"]["int8"] > 0
    assert per["cold_start"]["fp32"]["rc"] == 0 and per["cold_start"]["int8"]["rc"] == 0
    # realistic init: the yes/no scores spread and do not saturate
    sp = e["score_spread"]
    assert 0.01 < sp["min"] and sp["max"] < 0.99, sp
    assert sp["within_case_std"] > 2e-3, sp
    # artifacts are deleted after measuring (only the small records stay)
    work = scale_run["root"] / "work" / "toy"
    assert not (work / "bundle").exists() and not (work / "gguf").exists()


def test_report_files_and_resume(scale_run):
    from mmsrarec_edge.bench import scale

    out = scale_run["root"] / "out"
    for name in ("report.json", "report.md", "latency_vs_params.png", "rss_vs_params.png", "bytes_vs_params.png"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    md = (out / "report.md").read_text()
    assert "toy" in md
    if _installed("llama.cpp"):
        assert "llama.cpp" in md
    before = json.loads((out / "report.json").read_text())["sizes"]["toy"]
    t0 = time.perf_counter()
    again = scale.run(scale_run["cfg"], out, scale_run["root"] / "work")  # resume: the size is done, nothing runs
    assert time.perf_counter() - t0 < 30
    assert again["sizes"]["toy"]["wall_s"] == before["wall_s"]


def test_llama_gguf_writer_matches_pytorch(tmp_path):
    """The Llama path of the GGUF writer (q/k permuted to llama.cpp's rotary layout), F32 weights and KV: llama.cpp's
    shared-prefix scores equal a full PyTorch forward per candidate."""
    _need("llama.cpp")
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from mmsrarec_edge.bench.gguf_export import write_gguf
    from mmsrarec_edge.bench.peers import LlamaCppScorer, quantize_gguf

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                      tie_word_embeddings=True, rms_norm_eps=1e-5, rope_theta=10000.0)
    lm = LlamaForCausalLM(cfg).eval()
    with torch.no_grad():
        for p in lm.model.layers.parameters():
            if p.dim() == 2:
                p.normal_(0, 1 / np.sqrt(p.shape[1]))
    path = write_gguf(lm, tmp_path / "f32.gguf")
    rng = np.random.default_rng(0)
    prefix = rng.integers(3, 512, 40).tolist()
    suffixes = [rng.integers(3, 512, int(n)).tolist() for n in rng.integers(3, 9, 5)]
    yes, no = 7, 11
    with torch.no_grad():
        ref = []
        for s in suffixes:
            lg = lm(torch.tensor([prefix + s])).logits[0, -1].double()
            ref.append(float(torch.sigmoid(lg[yes] - lg[no])))
    sc = LlamaCppScorer(path, yes, no, threads=1, n_ctx=256, n_seq_max=4, kv_f32=True)  # 3 candidates per round
    got = sc.score(prefix, suffixes)
    assert np.max(np.abs(got - np.asarray(ref))) < 2e-3, (got, ref)
    assert np.allclose(sc.score(prefix, suffixes), got, atol=1e-6)  # the sequences were removed between requests
    q8 = LlamaCppScorer(quantize_gguf(path, tmp_path / "q8_0.gguf", "q8_0", threads=1), yes, no, threads=1,
                        n_ctx=256, n_seq_max=8)
    assert np.max(np.abs(q8.score(prefix, suffixes) - np.asarray(ref))) < 0.05
