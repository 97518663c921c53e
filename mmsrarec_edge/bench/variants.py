"""Precision variants of one recommender under the evaluation protocol: size on disk and accuracy against PyTorch.

For each bundle (one export profile each: cpu-fp32, cpu-int8, cuda-fp16, ...) and each precision variant its
recommender decoder ships, the torch-free runtime scores the saved test candidates (the same ones `evaluate` uses)
and we report HR@5, NDCG@5 and AUC with user-bootstrap CIs, the change against the PyTorch model it was exported
from, how often the ranking is identical, and the bytes of the graphs a recommendation loads.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from ..core import metrics
from ..core.io_utils import save_figure

REPORTED = ("HR@1", "HR@5", "HR@10", "NDCG@5", "AUC")


def graph_bytes(manifest, graph: str, precision: str) -> int:
    """Bytes of a graph variant on disk, its external-data files included."""
    entry = manifest.graphs[graph]["variants"][precision]
    stem = entry["file"]
    return sum(f["bytes"] for rel, f in manifest.files.items() if rel == stem or rel.startswith(stem + "."))


def same_order(scores: np.ndarray, ref: np.ndarray, tie: float = 1e-5) -> np.ndarray:
    """Per case: every pair of candidates that the reference separates by more than `tie` is ordered alike.

    fp32 graphs reproduce PyTorch's scores to ~1e-6, so candidates whose reference scores lie closer than that (a
    rank-hint recommender gives near-equal scores to candidates with the same hint) can swap on rounding alone."""
    i, j = np.triu_indices(scores.shape[1], 1)
    dr = ref[:, i] - ref[:, j]
    ds = scores[:, i] - scores[:, j]
    return np.all((np.abs(dr) <= tie) | (np.sign(dr) == np.sign(ds)), axis=1)


def agreement(scores: np.ndarray, ref: np.ndarray) -> dict:
    """How the runtime's per-case rankings compare with the reference's (PyTorch) on the same candidates."""
    rank, ref_rank = (np.argsort(-s, axis=1, kind="stable") for s in (scores, ref))
    return {"identical_ranking": float(np.mean(np.all(rank == ref_rank, axis=1))),
            "same_order_beyond_1e-5": float(np.mean(same_order(scores, ref))),
            "top5_overlap": float(np.mean([len(set(a[:5]) & set(b[:5])) / 5 for a, b in zip(rank, ref_rank)])),
            "max_abs_score_diff": float(np.abs(scores - ref).max())}


def _metrics(scores: np.ndarray, users: np.ndarray) -> dict:
    s = metrics.summarize(scores, users)
    return {k: s[k] for k in REPORTED}


def runtime_scores(rec, cases, progress=None) -> np.ndarray:
    scores = np.zeros(cases.candidates.shape, dtype=np.float64)
    for r in range(len(cases)):
        res = rec.recommend(history=[int(i) for i in cases.prefixes[r]],
                            candidates=[int(c) for c in cases.candidates[r]], top_k=1)
        got = dict(res.scored)
        scores[r] = [got[int(c)] for c in cases.candidates[r]]
        if progress:
            progress(1)
    return scores


def variant_report(bundles: dict[str, Path], recommender_dir: Path, protocol_dir: Path, split: str = "test",
                   max_cases: int = 0, threads: int = 1, progress=None, gates: dict | None = None) -> dict:
    """{"reference": PyTorch metrics, "rows": one per (bundle, variant), "refused": exports that failed}; a bundle
    given as a string is such a refusal (its reason). `gates`: bundle label -> the parity-gate refusal a bundle was
    measured despite (exported with the gate opened), kept in its rows as "gate". `progress(n)` counts scored cases."""
    from ..core.bundle import load_manifest
    from ..data.protocol import load_protocol
    from ..recommend.scoring import load_scorer
    from ..runtime.recommender import Recommender

    p = load_protocol(protocol_dir)
    cases = getattr(p, split)
    if max_cases and len(cases) > max_cases:
        cases = cases.subset(np.arange(max_cases))
    users = np.asarray(cases.user_id)
    t = time.perf_counter()
    ref = load_scorer(recommender_dir, p, threads=threads)(cases)
    torch_s = time.perf_counter() - t
    out = {"split": split, "cases": len(cases), "users": int(len(np.unique(users))),
           "reference": {"name": "PyTorch (fp32)", "metrics": _metrics(ref, users), "seconds": round(torch_s, 1)},
           "rows": []}
    out["refused"] = []
    for label, bundle in bundles.items():
        if isinstance(bundle, str):  # the export was refused (a parity gate): the reason, reported as a row
            out["refused"].append({"bundle": label, "reason": bundle})
            continue
        manifest = load_manifest(bundle)
        # the graph that scores: the merged decoder, or the scorer graph of a scorer-only bundle (merged_decoder =
        # "fallback" profiles)
        main = "recommender.decoder" if manifest.has_graph("recommender.decoder") else "recommender.scorer"
        graphs = [g for g in ("recommender.embed", main) if manifest.has_graph(g)]
        # a precision every recommender graph ships; else the bundle's own mix (cpu-int8: int8 embed, fp32 decoder)
        shipped = [p for p in manifest.graph_variants(main)
                   if all(p in manifest.graph_variants(g) for g in graphs)] or [None]
        for precision in shipped:
            rec = Recommender(bundle, precision=precision, threads=threads)
            t = time.perf_counter()
            scores = runtime_scores(rec, cases, progress)
            secs = time.perf_counter() - t
            m = _metrics(scores, users)
            out["rows"].append({
                "bundle": label, **({"gate": gates[label]} if gates and label in gates else {}),
                "precision": precision or "+".join(sorted(set(rec.variants.values()))),
                "graph_variants": dict(rec.variants),
                "bytes": {g: graph_bytes(manifest, g, v) for g, v in rec.variants.items()},
                "bundle_bytes": int(sum(f["bytes"] for f in manifest.files.values())),
                "metrics": m,
                "delta_vs_pytorch": {k: m[k]["mean"] - out["reference"]["metrics"][k]["mean"] for k in REPORTED},
                **agreement(scores, ref), "seconds": round(secs, 1)})
    return out


def markdown(rep: dict, title: str = "Precision variants: size and accuracy") -> str:
    ref = rep["reference"]["metrics"]
    lines = [f"# {title}", "",
             f"{rep['split']} split: {rep['cases']} cases from {rep['users']} users, 1 positive + 20 saved negatives "
             "each. Each row is the torch-free runtime on one bundle variant; the reference is the PyTorch model the "
             "bundles were exported from. Graph MiB: the graphs one recommendation loads (embed, decoder, the "
             "candidate scorer when the bundle has one, SASRec); bundle MiB: the whole bundle as exported for this "
             "report.",
             "", "| bundle | variant | graph MiB | bundle MiB | HR@5 | ΔHR@5 | NDCG@5 | AUC | ΔAUC | "
             "identical ranking | "
             "same order (ties < 1e-5 aside) | top-5 overlap | max |Δscore| |", "|" + "---|" * 13,
             f"| PyTorch | fp32 | | | {ref['HR@5']['mean']:.4f} | | {ref['NDCG@5']['mean']:.4f} | "
             f"{ref['AUC']['mean']:.4f} | | 1 | 1 | 1 | 0 |"]
    for r in rep["rows"]:
        m, d = r["metrics"], r["delta_vs_pytorch"]
        lines.append(
            f"| {r['bundle']}{' (gate refused, measured with it opened)' if r.get('gate') else ''} | "
            f"{r['precision']} | {sum(r['bytes'].values()) / 2**20:.2f} | "
            f"{r['bundle_bytes'] / 2**20:.2f} | "
            f"{m['HR@5']['mean']:.4f} [{m['HR@5']['lo']:.3f}, {m['HR@5']['hi']:.3f}] | "
            f"{d['HR@5']:+.4f} | {m['NDCG@5']['mean']:.4f} | {m['AUC']['mean']:.4f} | {d['AUC']:+.4f} | "
            f"{r['identical_ranking']:.3f} | {r['same_order_beyond_1e-5']:.3f} | {r['top5_overlap']:.3f} | "
            f"{r['max_abs_score_diff']:.2e} |")
    for r in rep.get("refused", []):
        lines.append(f"| {r['bundle']} | refused at export | | | | | | | | | | | {r['reason']} |")
    gated = [r for r in rep["rows"] if r.get("gate")]
    if gated:
        lines += ["", "Refused by their profile's parity gate (the export stops there; these rows come from a bundle "
                  "exported with the gate opened, to show what the variant costs in ranking): " + "; ".join(
                      f"{r['bundle']}: {r['gate']}" for r in gated) + "."]
    lines += ["", "Per-graph variants: " + "; ".join(
        f"{r['bundle']}/{r['precision']}: " + ", ".join(f"{g}={v}" for g, v in r["graph_variants"].items())
        for r in rep["rows"]), ""]
    return "\n".join(lines)


def write(rep: dict, out_dir: Path, title: str | None = None) -> None:
    from ..core.io_utils import write_json, write_text

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json(out_dir / "report.json", rep)
    write_text(out_dir / "report.md", markdown(rep, *([title] if title else [])) + "\n")
    plot(rep, out_dir / "report.png")


def plot(rep: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = rep["rows"]
    labels = ["PyTorch fp32"] + [f"{r['bundle']}\n{r['precision']}" for r in rows]
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    mib = [np.nan] + [sum(r["bytes"].values()) / 2**20 for r in rows]
    a.bar(labels, mib, color="tab:grey")
    a.set_ylabel("MiB (embed + decoder + SASRec graphs)")
    a.set_title("Size on disk")
    x = np.arange(len(labels))
    for k, (name, colour) in enumerate((("HR@5", "tab:blue"), ("AUC", "tab:orange"))):
        vals = [rep["reference"]["metrics"][name]] + [r["metrics"][name] for r in rows]
        mean = np.array([v["mean"] for v in vals])
        err = np.array([[v["mean"] - v["lo"], v["hi"] - v["mean"]] for v in vals]).T
        b.bar(x + (k - 0.5) * 0.38, mean, 0.38, yerr=err, capsize=3, color=colour, label=name)
    b.set_xticks(x, labels)
    b.set_ylim(0, 1)
    b.set_title("Accuracy under the protocol (95% CI, users resampled)")
    b.legend()
    for ax in (a, b):
        ax.tick_params(axis="x", labelsize=8)
    save_figure(fig, path)
