"""Scoring models under the saved protocol and writing the comparison report (JSON + Markdown + bar plot).

A scorer is any callable `(cases) -> scores [cases, 1 + negatives]`; every model is scored on the same saved
candidates. Every model's scores are also saved, in one `scores.parquet` beside the report, so rankings can be
compared later.
"""

from __future__ import annotations

import platform
import time
from pathlib import Path
from typing import Callable

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from .core import metrics
from .core.io_utils import atomic_path, ensure_writable_dir, save_figure, write_json, write_text
from .data.protocol import Cases, Protocol

Scorer = Callable[[Cases], np.ndarray]
REPORT_METRICS = ["HR@1", "HR@5", "HR@10", "NDCG@5", "NDCG@10", "AUC"]


def run_evaluation(protocol: Protocol, scorers: dict[str, Scorer], split: str = "test", progress=None,
                   n_boot: int = 1000) -> dict:
    cases = protocol.test if split == "test" else protocol.val
    results, all_scores = {}, {}
    for name, fn in scorers.items():
        t = time.perf_counter()
        scores = np.asarray(fn(cases), dtype=np.float64)
        if scores.shape != cases.candidates.shape:
            raise ValueError(f"scorer {name} returned shape {scores.shape}, expected {cases.candidates.shape}")
        res = metrics.summarize(scores, cases.user_id, n_boot=n_boot)
        res["_seconds"] = time.perf_counter() - t
        results[name] = res
        all_scores[name] = scores
        if progress:
            progress(1, model=name)
    return {"split": split, "n_cases": len(cases), "n_users": int(len(np.unique(cases.user_id))),
            "protocol": {"history_len": protocol.config.history_len, "n_negatives": protocol.config.n_negatives,
                         "max_cases_per_user": protocol.config.max_cases_per_user, "kcore": protocol.config.kcore,
                         "seed": protocol.config.seed, "dataset_fingerprint": protocol.dataset_fingerprint},
            "host": {"python": platform.python_version(), "machine": platform.machine()},
            "results": results, "_scores": all_scores, "_case_ids": cases.case_id}


def markdown_table(report: dict, title: str = "") -> str:
    lines = [f"## {title}" if title else "", "",
             f"Split `{report['split']}`: {report['n_cases']} cases from {report['n_users']} users; "
             f"1 positive + {report['protocol']['n_negatives']} sampled negatives; "
             f"history n={report['protocol']['history_len']}. Values in %, with 95% bootstrap CIs "
             "(users resampled).", "",
             "| model | " + " | ".join(REPORT_METRICS) + " |", "|---" * (len(REPORT_METRICS) + 1) + "|"]
    for name, res in report["results"].items():
        cells = [f"{100 * res[m]['mean']:.2f} [{100 * res[m]['lo']:.1f}, {100 * res[m]['hi']:.1f}]"
                 for m in REPORT_METRICS]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def bar_plot(report: dict, path: Path, metrics_to_plot=("HR@5", "NDCG@5", "AUC"), title: str = "") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(report["results"])
    fig, ax = plt.subplots(figsize=(max(6, 1.3 * len(names) * len(metrics_to_plot) / 2), 4))
    width = 0.8 / len(names)
    for k, name in enumerate(names):
        res = report["results"][name]
        means = [100 * res[m]["mean"] for m in metrics_to_plot]
        err = [[100 * (res[m]["mean"] - res[m]["lo"]) for m in metrics_to_plot],
               [100 * (res[m]["hi"] - res[m]["mean"]) for m in metrics_to_plot]]
        ax.bar(np.arange(len(metrics_to_plot)) + k * width, means, width, yerr=err, capsize=3, label=name)
    ax.set_xticks(np.arange(len(metrics_to_plot)) + width * (len(names) - 1) / 2, metrics_to_plot)
    ax.set_ylabel("%")
    ax.set_title(title or f"{report['split']} split, {report['n_cases']} cases")
    ax.legend(fontsize=8)
    save_figure(fig, Path(path), dpi=120)


def write_report(report: dict, out_dir: Path, title: str = "", plot: bool = True) -> Path:
    out_dir = ensure_writable_dir(Path(out_dir))
    public = {k: v for k, v in report.items() if not k.startswith("_")}
    write_json(out_dir / "report.json", public)
    write_text(out_dir / "report.md", f"# {title or 'Evaluation'}\n" + markdown_table(report))
    scores = report.get("_scores", {})
    if scores:
        cols = {"case_id": report["_case_ids"]}
        cols.update({name: pa.array(s.tolist(), type=pa.list_(pa.float64())) for name, s in scores.items()})
        with atomic_path(out_dir / "scores.parquet", ".parquet") as tmp:
            pq.write_table(pa.table(cols), tmp)
    if plot:
        bar_plot(report, out_dir / "report.png", title=title)
    return out_dir
