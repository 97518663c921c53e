"""Soak benchmark: many recommendations on one loaded bundle, watching memory (RSS) and latency over time.

    python benchmarks/soak.py [--bundle DIR] [--requests 10000] [--out benchmarks/results/soak]

Without --bundle it exports the tiny test bundle (tests/runtime_support.py) in a child process first, so this process
stays torch-free and its RSS is the runtime's alone. The requests cycle deterministically through what users send:
known users with the default first stage + LLM rescoring, ad-hoc histories of 1-12 items (the longer ones truncated
with a warning), explicit candidate lists, sampled:N, and one bad request (an unknown user, a UserError) in 50, so
the error path is soaked too. RSS is sampled at process start, after loading the bundle, after the warm-up and every
--sample-every requests; the report gives the growth after warm-up, the slope of a line fitted to the post-warm-up
samples, the Python object count, and latency percentiles overall and per request kind.
Writes report.json, report.md and rss.png (atomically) into --out.
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tiny_bundle import build_tiny_bundle  # noqa: E402

from mmsrarec_edge.bench.harness import host_info, rss_mb  # noqa: E402
from mmsrarec_edge.core.errors import UserError  # noqa: E402
from mmsrarec_edge.core.io_utils import ensure_writable_dir, save_figure, write_json, write_text  # noqa: E402

KINDS = ("user", "history", "long_history", "list", "sampled", "unknown_user")


def build_default_bundle(work: Path) -> Path:
    out = work / "bundle"
    print(f"exporting the tiny test bundle to {out} (child process, torch) ...", flush=True)
    build_tiny_bundle(out)
    return out


def request_plan(rec, n: int, seed: int) -> list[tuple[str, dict]]:
    """n (kind, kwargs) pairs, a fixed mix drawn with `seed`."""
    rng = np.random.default_rng(seed)
    users, items = rec.known_users(), [int(i) for i in rec.catalog.ids]
    plan = []
    for k in range(n):
        if k % 50 == 49:
            plan.append(("unknown_user", {"user": -1 - k}))
            continue
        kind = KINDS[int(rng.integers(0, 5))]
        if kind == "user":
            kw = {"user": int(rng.choice(users)), "top_k": 5}
        elif kind in ("history", "long_history"):
            size = int(rng.integers(1, 6)) if kind == "history" else int(rng.integers(9, 13))
            kw = {"history": [int(i) for i in rng.choice(items, size=min(size, len(items) - 1), replace=False)],
                  "top_k": 5}
        elif kind == "list":
            kw = {"history": [int(rng.choice(items))],
                  "candidates": [int(i) for i in rng.choice(items, size=int(rng.integers(1, 11)), replace=False)]}
        else:
            kw = {"user": int(rng.choice(users)), "candidates": f"sampled:{int(rng.integers(1, 11))}",
                  "seed": int(rng.integers(0, 1000))}
        plan.append((kind, kw))
    return plan


def percentiles(ms: list[float]) -> dict:
    a = np.asarray(ms, np.float64)
    if a.size == 0:
        return {"n": 0}
    return {"n": int(a.size), "p50_ms": float(np.percentile(a, 50)), "p90_ms": float(np.percentile(a, 90)),
            "p99_ms": float(np.percentile(a, 99)), "p999_ms": float(np.percentile(a, 99.9)),
            "max_ms": float(a.max()), "mean_ms": float(a.mean())}


def soak(bundle: Path, n: int, warmup: int, sample_every: int, threads: int, seed: int,
         precision: str | None = None) -> dict:
    rss_start = rss_mb()
    from mmsrarec_edge.runtime.recommender import Recommender

    t0 = time.perf_counter()
    rec = Recommender(bundle, provider="cpu", precision=precision, threads=threads)
    load_s = time.perf_counter() - t0
    rss_loaded = rss_mb()
    plan = request_plan(rec, warmup + n, seed)
    outcomes = {"ok": 0, "user_error": 0, "warnings": 0}

    def one(kind, kw):
        t = time.perf_counter()
        try:
            res = rec.recommend(**kw)
            outcomes["ok"] += 1
            outcomes["warnings"] += bool(res.warnings)
        except UserError:
            outcomes["user_error"] += 1
        return (time.perf_counter() - t) * 1e3

    for kind, kw in plan[:warmup]:
        one(kind, kw)
    gc.collect()
    rss_warm, objects_warm = rss_mb(), len(gc.get_objects())
    outcomes = {k: 0 for k in outcomes}
    lat: dict[str, list[float]] = {k: [] for k in KINDS}
    series, lat_series, window = [(0, rss_warm)], [], []
    started = time.perf_counter()
    for k, (kind, kw) in enumerate(plan[warmup:], start=1):
        ms = one(kind, kw)
        lat[kind].append(ms)
        window.append(ms)
        if k % sample_every == 0 or k == n:
            series.append((k, rss_mb()))
            lat_series.append([k, float(np.percentile(window, 50)), float(np.percentile(window, 99))])
            window = []
            if k % (sample_every * 20) == 0:
                print(f"  {k}/{n} requests, RSS {series[-1][1]:.1f} MiB", file=sys.stderr, flush=True)
    wall = time.perf_counter() - started
    gc.collect()
    rss_end, objects_end = rss_mb(), len(gc.get_objects())
    xs, ys = np.array([s[0] for s in series], np.float64), np.array([s[1] for s in series])
    half = xs >= xs[-1] / 2  # the slope over the second half: whatever is still growing once caches are warm
    slope = float(np.polyfit(xs, ys, 1)[0]) * 1000 if len(xs) > 1 else 0.0
    slope_late = float(np.polyfit(xs[half], ys[half], 1)[0]) * 1000 if half.sum() > 1 else 0.0
    everything = [x for v in lat.values() for x in v]
    return {
        "config": {"bundle": str(bundle), "requests": n, "warmup": warmup, "sample_every": sample_every,
                   "intra_op_threads": threads, "seed": seed, "provider": rec.provider,
                   "variants": dict(rec.variants), "catalog_items": len(rec.catalog),
                   "known_users": len(rec.known_users())},
        "host": host_info(),
        "load_seconds": round(load_s, 3),
        "rss_mib": {"process_start": rss_start, "after_load": rss_loaded, "after_warmup": rss_warm, "end": rss_end,
                    "growth_after_warmup": rss_end - rss_warm, "max": float(ys.max()),
                    "slope_per_1k_requests": slope, "slope_per_1k_requests_second_half": slope_late},
        "python_objects": {"after_warmup": objects_warm, "end": objects_end, "growth": objects_end - objects_warm},
        "outcomes": outcomes,
        "wall_seconds": round(wall, 2),
        "throughput_rps": n / wall,
        "latency": {"all": percentiles(everything), **{k: percentiles(v) for k, v in lat.items()}},
        "rss_series": [[int(x), float(y)] for x, y in series],
        "latency_series": lat_series,  # [requests, p50 ms, p99 ms] of each sample window
        "torch_loaded": any(m.split(".")[0] in ("torch", "transformers") for m in sys.modules),
    }


def markdown(r: dict) -> str:
    rss, cfg, lat = r["rss_mib"], r["config"], r["latency"]
    lines = [
        "# Soak: recommendations on one loaded bundle", "",
        f"Model: {cfg.get('model') or 'see config.bundle'}. "
        f"{cfg['requests']} requests after {cfg['warmup']} warm-up ones, one stream, {cfg['intra_op_threads']} "
        f"intra-op thread(s), {cfg['provider']} ({', '.join(f'{g} {p}' for g, p in cfg['variants'].items())}); "
        f"catalog of {cfg['catalog_items']} items, {cfg['known_users']} known users. Host: {r['host'].get('cpus')} "
        f"CPUs (shared with other jobs: latencies are noisy, memory figures are not). Torch loaded: "
        f"{'yes' if r['torch_loaded'] else 'no'}.", "",
        "## Memory (RSS, MiB)", "",
        "| process start | after loading the bundle | after warm-up | end | growth after warm-up | max | "
        "slope per 1k requests (all / second half) |", "|---|---|---|---|---|---|---|",
        f"| {rss['process_start']:.1f} | {rss['after_load']:.1f} | {rss['after_warmup']:.1f} | {rss['end']:.1f} | "
        f"{rss['growth_after_warmup']:+.1f} ({100 * rss['growth_after_warmup'] / rss['after_warmup']:+.1f}%) | "
        f"{rss['max']:.1f} | {rss['slope_per_1k_requests']:+.3f} / "
        f"{rss['slope_per_1k_requests_second_half']:+.3f} |", "",
        f"Python objects after warm-up {r['python_objects']['after_warmup']}, at the end "
        f"{r['python_objects']['end']} ({r['python_objects']['growth']:+d}).", "",
        "## Latency (ms)", "",
        "| requests | n | p50 | p90 | p99 | p99.9 | max |", "|---|---|---|---|---|---|---|"]
    for kind, s in lat.items():
        if s.get("n"):
            lines.append(f"| {kind} | {s['n']} | {s['p50_ms']:.2f} | {s['p90_ms']:.2f} | {s['p99_ms']:.2f} | "
                         f"{s['p999_ms']:.2f} | {s['max_ms']:.2f} |")
    o = r["outcomes"]
    lines += ["", f"Outcomes: {o['ok']} recommendations ({o['warnings']} with a truncation warning), "
                  f"{o['user_error']} UserErrors (the unknown-user requests). Wall {r['wall_seconds']} s, "
                  f"{r['throughput_rps']:.1f} requests/s.", "",
              "Kinds: `user` = a known user, first stage + LLM rescoring of the bundle's n_rescore; `history` = an "
              "ad-hoc history of 1-5 items; `long_history` = 9-12 items (truncated to SASRec's max_len, with a "
              "warning); `list` = 1-10 explicit candidates; `sampled` = sampled:1-10; `unknown_user` = a UserError.",
              "", "![RSS over requests](rss.png)"]
    return "\n".join(lines) + "\n"


def plot(r: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    xs, ys = zip(*r["rss_series"])
    fig, (a, c, b) = plt.subplots(1, 3, figsize=(16, 4))
    a.plot(xs, ys, lw=1.2)
    a.axhline(r["rss_mib"]["after_load"], ls=":", c="grey", label="after loading the bundle")
    a.set_xlabel("requests after warm-up")
    a.set_ylabel("RSS (MiB)")
    a.set_title(f"RSS: {r['rss_mib']['after_warmup']:.1f} -> {r['rss_mib']['end']:.1f} MiB")
    lo = min(min(ys), r["rss_mib"]["after_load"])
    a.set_ylim(lo - 5, max(ys) + 5)
    a.legend(loc="lower right")
    ks, p50, p99 = zip(*r["latency_series"])
    c.plot(ks, p50, lw=1, label="p50")
    c.plot(ks, p99, lw=1, label="p99")
    c.set_xlabel("requests after warm-up")
    c.set_ylabel(f"latency (ms), per {r['config']['sample_every']} requests")
    c.set_title("latency over the run")
    c.set_ylim(0, None)
    c.legend()
    kinds = [k for k, s in r["latency"].items() if k != "all" and s.get("n")]
    for q, m in (("p50_ms", "o"), ("p90_ms", "s"), ("p99_ms", "^")):
        b.plot(kinds, [r["latency"][k][q] for k in kinds], m + "-", label=q.replace("_ms", ""))
    b.set_ylabel("latency (ms)")
    b.set_yscale("log")
    b.set_title("latency percentiles by request kind")
    b.legend()
    b.tick_params(axis="x", rotation=20)
    save_figure(fig, path)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bundle", type=Path, help="bundle directory (default: export the tiny test bundle)")
    ap.add_argument("--requests", type=int, default=10_000)
    ap.add_argument("--warmup", type=int, default=200)
    ap.add_argument("--sample-every", type=int, default=50, help="RSS sample interval (requests)")
    ap.add_argument("--threads", type=int, default=1, help="onnxruntime intra-op threads")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--precision", default=None, help="the bundle's precision variant (default: the bundle's own)")
    ap.add_argument("--model", default=None, help="what the bundle holds, for the report (e.g. its size)")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "soak")
    a = ap.parse_args(argv)
    if a.requests < 1 or a.warmup < 0 or a.sample_every < 1:
        ap.error("--requests and --sample-every must be >= 1, --warmup >= 0")
    out = ensure_writable_dir(a.out)
    with tempfile.TemporaryDirectory(prefix="soak_") as work:
        bundle = a.bundle or build_default_bundle(Path(work))
        report = soak(bundle, a.requests, a.warmup, a.sample_every, a.threads, a.seed, a.precision)
        report["config"]["model"] = a.model or ("embedded default (2 layers, 128 wide)" if a.bundle is None else None)
        if a.bundle is None:
            report["config"]["bundle"] = "tiny test bundle (tests/runtime_support.py, exported for this run)"
    write_json(out / "report.json", report)
    write_text(out / "report.md", markdown(report))
    plot(report, out / "rss.png")
    rss = report["rss_mib"]
    print(f"RSS start {rss['process_start']:.1f} / loaded {rss['after_load']:.1f} / warm {rss['after_warmup']:.1f} / "
          f"end {rss['end']:.1f} MiB (growth {rss['growth_after_warmup']:+.1f}); p50 "
          f"{report['latency']['all']['p50_ms']:.2f} ms, p99 {report['latency']['all']['p99_ms']:.2f} ms; "
          f"wrote {out}/report.{{json,md}}, rss.png")


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    main()
