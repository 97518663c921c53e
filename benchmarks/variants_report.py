"""Export report: each shipped CPU/GPU profile's precision variants, their size and their accuracy under the protocol.

Exports the recommender report's full model (benchmarks/recommender_report.sh must have run: it leaves
work/recommender/<dataset>/{data,protocol,sasrec,rec_full,kw_rl.parquet}) with the packaged profiles cpu-fp32-int8,
cpu-int8, cpu-int4 and cuda-fp16 (its fp16 graphs run on the CPU provider here: the accuracy is the
graphs', the speed is not a GPU's), recommendation graphs only, then scores every test case with the torch-free
runtime for each variant.
Writes benchmarks/results/variants/<dataset>/report.{json,md,png}.

Usage: .venv/bin/python benchmarks/variants_report.py [--dataset synthetic] [--work work/recommender]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# fp32 + int8 decoder; int8 hot path (scorer, embeddings); int4 weights (MatMulNBits); fp16
PROFILES = ("cpu-fp32-int8", "cpu-int8", "cpu-int4", "cuda-fp16")
GATE_OPENED = "gate opened: "  # in a measurement-only bundle's profile source, before the refusal it measures


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dataset", default="synthetic")
    ap.add_argument("--work", type=Path, default=ROOT / "work" / "recommender")
    ap.add_argument("--max-cases", type=int, default=0)
    ap.add_argument("--recommender", default="rec_full", help="the recommender directory under <work>/<dataset>")
    args = ap.parse_args()
    sys.path.insert(0, str(ROOT))
    from mmsrarec_edge.bench.variants import variant_report, write
    from mmsrarec_edge.core.progress import progress_bar

    w = (args.work / args.dataset).resolve()
    need = [w / "protocol", w / args.recommender / "recommender.json", w / "kw_rl.parquet"]
    if any(not p.exists() for p in need):
        sys.exit(f"run benchmarks/recommender_report.sh first (missing under {w})")
    import json
    import shutil
    from dataclasses import replace

    from mmsrarec_edge.core.config import profile_path
    from mmsrarec_edge.exporter.bundle import export_bundle
    from mmsrarec_edge.exporter.inputs import load_inputs
    from mmsrarec_edge.exporter.profile import load_profile
    from mmsrarec_edge.exporter.variants import ExportError

    bundles, refused = {}, {}
    for name in PROFILES:
        out = w / "variant_bundles" / name
        # the recommendation path only: the summarizer's graphs play no part in ranking (and its own int8 gate
        # is a separate matter, see NOTES in results/variants)
        prof = load_profile(profile_path(name))
        prof = replace(prof, graphs=[g for g in prof.graphs if not g.startswith("summarizer.")])
        if (out / "manifest.json").exists():  # a bundle from an older profile (e.g. before recommender.scorer)
            man = json.loads((out / "manifest.json").read_text())
            if set(man["graphs"]) | set(man.get("graphs_skipped", {})) != set(prof.graphs):
                shutil.rmtree(out)
        if not (out / "manifest.json").exists():
            inputs = load_inputs(None, w / args.recommender, None, w / "kw_rl.parquet", w / "data")
            try:
                export_bundle(inputs, prof, out, profile_source=f"{name} without summarizer graphs")
            except ExportError as exc:
                # The profile's gate refuses this model: that figure is a finding, and what the variant would cost
                # in ranking is measured anyway on a bundle exported with the gate opened (never shipped).
                reason = str(exc).split(" (the ONNX graph")[0]
                print(f"{name}: {reason}; measuring it with the gate opened", file=sys.stderr)
                opened = replace(prof, parity=replace(prof.parity, score=1.0, logits=1e6, features=1e6))
                try:
                    export_bundle(inputs, opened, out,
                                  profile_source=f"{name} without summarizer graphs, {GATE_OPENED}{reason}")
                except ExportError as again:  # not even the graph's structure: a row saying so
                    bundles[name] = str(again).split(" (the ONNX graph")[0]
                    continue
        # the refusal, also for a bundle an earlier run exported with the gate opened: its manifest says why
        source = json.loads((out / "manifest.json").read_text()).get("profile", {}).get("source") or ""
        if GATE_OPENED in source:
            refused[name] = source.split(GATE_OPENED, 1)[1]
        bundles[name] = out
    from mmsrarec_edge.data.protocol import load_protocol

    n = len(load_protocol(w / "protocol").test)
    n = min(n, args.max_cases) if args.max_cases else n
    with progress_bar("scoring test cases per variant", n * (len(bundles) + 1)) as adv:
        rep = variant_report(bundles, w / args.recommender, w / "protocol", max_cases=args.max_cases,
                             progress=adv, gates=refused)
    rep["dataset"] = args.dataset
    out_dir = ROOT / "benchmarks" / "results" / "variants" / args.dataset
    write(rep, out_dir, f"Precision variants on {args.dataset}: size and accuracy (test split)")
    print((out_dir / "report.md").read_text())


if __name__ == "__main__":
    main()
