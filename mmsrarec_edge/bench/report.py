"""Latency report: JSON (everything), Markdown (the tables people read), PNG plots (latency vs candidates, stages)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..core.io_utils import ensure_writable_dir, save_figure, write_json, write_text
from .latency import OURS


def _fmt(v, nd=2):
    return "—" if v is None else f"{v:.{nd}f}"


def _model_line(model: dict | None) -> list[str]:
    if not model:
        return []
    params = model.get("decoder_matmul_params")
    size = f", {params / 1e6:.2f}M decoder matmul parameters" if params else ""
    regime = (" At this size framework overhead, not matrix multiplication, is most of the cost: the scale report "
              "(benchmarks/results/scale) measures real sizes.") if (model.get("hidden_size") or 0) <= 256 else ""
    return [f"Model: decoder hidden {model.get('hidden_size')} x {model.get('num_layers')} layers{size}.{regime}",
            ""]


def markdown(report: dict) -> str:
    host = report["host"]
    cfg = report["config"]
    lines = ["# Latency benchmark: one recommendation, runtime vs peers", "",
             f"Host: {host.get('processor')} ({host.get('cpus')} CPUs), onnxruntime {host.get('onnxruntime')}, "
             f"{cfg['threads']} intra-op thread(s) for every peer; numpy matmul rate {report['matmul_gflops']:.1f} "
             "GFLOP/s (measured in this run, same thread count). Medians (p50) of repeated calls on identical prompts; "
             "the floor is the FLOPs the score needs (every layer but the last over prefix and suffixes, the last "
             "one's key/value projections too, the rest of the last layer at each candidate's read slot) divided by "
             "that matmul rate.", "", *_model_line(report.get("model")),
             f"## Speedup of our ONNX Runtime scorer ({report.get('ours', OURS)}, shared prefix) over each peer", "",
             "Targets are judged at the method's workload: history n=5 (the paper's) and 20 candidates; the median and "
             "range over every cell of the grid are beside it.", "",
             "| peer | at 20 candidates, history n | median speedup over cells | target | met |",
             "|---|---|---|---|---|"]
    for name, s in report["summary"].items():
        lines.append(f"| {name} | {_fmt(s['speedup_at_20_candidates'], 1)}x (n={s.get('history_len', '?')}) | "
                     f"{s['median_speedup']:.1f}x (range {s['min_speedup']:.1f}–{s['max_speedup']:.1f}) | "
                     f"{_fmt(s['target'], 0)}x | "
                     f"{'yes' if s['meets_target'] else ('no' if s['meets_target'] is False else '—')} |")
    names = list(report["grid"][0]["peers"]) if report["grid"] else []
    lines += ["", "## Scoring latency p50 (ms) by history length and candidate count", "",
              "| history | candidates | prefix tok | floor | " + " | ".join(names) + " |",
              "|---" * (4 + len(names)) + "|"]
    for row in report["grid"]:
        cells = [_fmt(row["peers"][n].get("p50_ms"))
                 + (f" (n={row['peers'][n]['n']})" if row["peers"][n].get("n", 99) < 5 else "")
                 for n in names]
        lines.append(f"| {row['history_len']} | {row['candidates']} | {row['prefix_tokens']} | "
                     f"{_fmt(row['floor_ms'], 3)} | " + " | ".join(cells) + " |")
    for key, what in (("end_to_end", "our runtime"), ("end_to_end_expanded_kv", "the same bundle's expanded-KV path")):
        if key not in report:
            continue
        e2e = report[key]
        lines += ["", f"## End to end, {what}: {e2e['candidates']} candidates, {e2e['requests']} requests "
                  f"(throughput {e2e['throughput_rps']:.1f} requests/s, one stream)", "",
                  "| stage | p50 ms | p95 ms | p99 ms |", "|---|---|---|---|"]
        for name, st in e2e["stages"].items():
            lines.append(f"| {name} | {st['p50_ms']:.3f} | {st['p95_ms']:.3f} | {st['p99_ms']:.3f} |")
    lines += ["", "`score:*` rows are parts of `score` (not added to `total`): token embeddings, and the decoder "
              "calls. With the candidate-scorer graph the prefill runs inside the one call per chunk "
              "(`prefill+candidates`); the expanded-KV path runs it as its own call (`prefill`, then `candidates`)."]
    if "agreement" in report:
        ag = report["agreement"]
        lines += ["",
                  f"## Ranking agreement with PyTorch on {ag['cases']} test cases (21 candidates each)", "",
                  "| scorer | identical ranking | same order (ties < 1e-5 aside) | top-5 overlap | "
                  "max abs score diff | HR@5 | NDCG@5 | AUC |", "|---|---|---|---|---|---|---|---|"]
        for name, v in ag["variants"].items():
            lines.append(f"| {name} | {_fmt(v.get('identical_ranking'), 3)} | "
                         f"{_fmt(v.get('same_order_beyond_1e-5'), 3)} | "
                         f"{_fmt(v.get('top5_overlap'), 3)} | "
                         f"{_fmt(v.get('max_abs_score_diff'), 6)} | {100 * v['HR@5']:.2f} | {100 * v['NDCG@5']:.2f} | "
                         f"{100 * v['AUC']:.2f} |")
    return "\n".join(lines) + "\n"


def plots(report: dict, out_dir: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    files = []
    grid = report["grid"]
    h = max(r["history_len"] for r in grid)
    rows = [r for r in grid if r["history_len"] == h]
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    for name in rows[0]["peers"]:
        xs = [r["candidates"] for r in rows]
        ys = [r["peers"][name].get("p50_ms") for r in rows]
        ax.plot(xs, ys, marker="o", lw=2.5 if name == report.get("ours", OURS) else 1.2, label=name)
    floors = [r["floor_ms"] for r in rows]
    if all(f is not None for f in floors):
        ax.plot([r["candidates"] for r in rows], floors, "k--", label="FLOP floor (matmul rate)")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("candidates scored")
    ax.set_ylabel("p50 latency (ms)")
    ax.set_title(f"Candidate scoring latency, history n={h}")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3, which="both")
    save_figure(fig, out_dir / "latency_vs_candidates.png", dpi=120)
    files.append("latency_vs_candidates.png")

    st = report["end_to_end"]["stages"]
    names = [n for n in st if n != "total" and ":" not in n]  # score's parts are inside score
    fig, ax = plt.subplots(figsize=(6, 3.5))
    x = np.arange(len(names))
    for k, q in enumerate(("p50_ms", "p95_ms", "p99_ms")):
        ax.bar(x + (k - 1) * 0.27, [st[n][q] for n in names], 0.27, label=q.replace("_ms", ""))
    ax.set_xticks(x, names)
    ax.set_ylabel("ms")
    ax.set_title(f"Per-stage latency, {report['end_to_end']['candidates']} candidates")
    ax.legend()
    save_figure(fig, out_dir / "stages.png", dpi=120)
    files.append("stages.png")

    summ = report["summary"]
    fig, ax = plt.subplots(figsize=(8.5, 4))
    names = list(summ)
    at = [summ[n]["speedup_at_20_candidates"] or summ[n]["median_speedup"] for n in names]
    lo = [a - summ[n]["min_speedup"] for a, n in zip(at, names)]
    hi = [summ[n]["max_speedup"] - a for a, n in zip(at, names)]
    ax.barh(names, at, xerr=[np.maximum(lo, 0), np.maximum(hi, 0)], capsize=3)
    for k, n in enumerate(names):
        if summ[n]["target"]:
            ax.plot([summ[n]["target"]] * 2, [k - 0.4, k + 0.4], "r-", lw=2)
    ax.set_xscale("log")
    ax.set_xlabel("speedup of ours at 20 candidates, n=5 (x); whiskers = grid range; red = target")
    save_figure(fig, out_dir / "speedup.png", dpi=120)
    files.append("speedup.png")
    return files


def write(report: dict, out_dir: Path) -> Path:
    out_dir = ensure_writable_dir(Path(out_dir))
    write_json(out_dir / "report.json", report)
    write_text(out_dir / "report.md", markdown(report))
    plots(report, out_dir)
    return out_dir
