"""Thread scaling of the torch-free runtime: one bundle's scorer at 1..N intra-op threads, interleaved, same cases.

    python benchmarks/thread_scaling.py BUNDLE --cases CASES.json [--threads 1,2] [--precision int8] --model "..."

CASES.json: the scale report's cases (benchmarks/scale_report.py writes <work>/<size>/cases.json: prompt token ids of
one recommendation each, 21 candidates). Every thread count gets its own Recommender (own onnxruntime sessions and
thread pool); the calls are interleaved in rotating blocks (bench/harness.measure_interleaved), so a burst of load
lands on every thread count alike. Reports p50 per thread count and the speed-up against 1 thread, with the host's
load average before and after (a quiet run is one with nothing else runnable; the report says what the caller
declared with --beside). Writes <out>/<label>.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("bundle", type=Path)
    ap.add_argument("--cases", type=Path, required=True)
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--precision", default=None)
    ap.add_argument("--repeats", type=int, default=12)
    ap.add_argument("--model", required=True, help="what the bundle holds (its size), for the report")
    ap.add_argument("--beside", default="nothing", help="what else ran on the machine meanwhile")
    ap.add_argument("--label", default="threads")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "scale" / "threads")
    a = ap.parse_args()
    from mmsrarec_edge.bench.harness import host_info, measure_interleaved
    from mmsrarec_edge.core.io_utils import ensure_writable_dir, write_json, write_text
    from mmsrarec_edge.runtime.recommender import Recommender

    threads = [int(t) for t in a.threads.split(",")]
    case = json.loads(a.cases.read_text())[0]
    prefix, suffixes = case["prefix"], case["suffixes"]
    load_before = os.getloadavg()
    recs = {t: Recommender(a.bundle, precision=a.precision, threads=t, verify=False) for t in threads}
    fns = {str(t): (lambda r=r: r.scorer.score(prefix, suffixes)) for t, r in recs.items()}
    print(f"timing {len(suffixes)} candidates at {threads} threads ...", file=sys.stderr)
    timings = measure_interleaved(fns, repeats=a.repeats, warmup=2, max_seconds=120)
    p50 = {t: timings[str(t)].stats()["p50_ms"] for t in threads}
    base = p50[threads[0]]
    report = {"model": a.model, "bundle": str(a.bundle), "precision": a.precision, "beside": a.beside,
              "candidates": len(suffixes), "prefix_tokens": len(prefix),
              "suffix_tokens": sum(len(s) for s in suffixes), "load_average_before": load_before,
              "load_average_after": os.getloadavg(), "host": host_info(),
              "p50_ms": {str(t): p50[t] for t in threads},
              "samples_ms": {str(t): timings[str(t)].samples_ms for t in threads},
              "speedup_vs_first": {str(t): base / p50[t] for t in threads}}
    lines = [f"# Thread scaling: {a.model}", "",
             f"{len(suffixes)} candidates, {len(prefix)} prefix + {report['suffix_tokens']} suffix tokens, precision "
             f"{a.precision or 'the bundle default'}, {a.repeats} timed calls per thread count, interleaved. Beside "
             f"it: {a.beside}. Load average before {load_before[0]:.2f}.", "",
             "| threads | p50 ms | speed-up vs " + str(threads[0]) + " |", "|---|---|---|"]
    lines += [f"| {t} | {p50[t]:.0f} | {base / p50[t]:.2f}x |" for t in threads]
    out = ensure_writable_dir(a.out)
    write_json(out / f"{a.label}.json", report)
    write_text(out / f"{a.label}.md", "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
