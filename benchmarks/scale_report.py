"""The scale report: the model ladder (toy -> 1.5B, random weights) measured against llama.cpp, onnxruntime-genai,
optimum and PyTorch on the same job. Writes benchmarks/results/scale/{report.json,report.md,*.png}; see
benchmarks/SCALE.md.

    .venv/bin/python benchmarks/scale_report.py                      # the whole ladder, 1 and 2 threads
    .venv/bin/python benchmarks/scale_report.py --sizes toy --threads 1 --repeats 3

Sizes already "done" in the report's JSON are skipped (resume); `--redo` measures them again. Progress goes to stderr.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mmsrarec_edge.bench import ladder, scale  # noqa: E402


def _list(s: str) -> tuple[str, ...]:
    return tuple(x.strip() for x in s.split(",") if x.strip())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--sizes", default=",".join(ladder.LADDER), help=f"comma-separated, of: {', '.join(ladder.SIZES)}")
    ap.add_argument("--threads", default="1,2", help="intra-op thread counts, comma-separated")
    ap.add_argument("--engines", default=",".join(scale.ENGINES), help=f"of: {', '.join(scale.ENGINES)}")
    ap.add_argument("--repeats", type=int, default=10, help="timed calls per engine (fewer past --max-seconds)")
    ap.add_argument("--max-seconds", type=float, default=60.0, help="time cap per engine and worker")
    ap.add_argument("--cases", type=int, default=3, help="requests per size compared with PyTorch fp32")
    ap.add_argument("--layers", type=int, default=None, help="override every size's depth (quick checks)")
    ap.add_argument("--mem-budget-gb", type=float, default=None,
                    help="memory for the engines of one worker (default: 80%% of what is available)")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "scale")
    ap.add_argument("--work", type=Path, default=ROOT / "work" / "scale")
    ap.add_argument("--keep-artifacts", action="store_true", help="keep checkpoints, bundles, GGUF and genai folders")
    ap.add_argument("--redo", action="store_true", help="measure sizes the report already has again")
    a = ap.parse_args(argv)
    sizes = _list(a.sizes)
    for s in sizes:
        ladder.get_size(s)
    engines = _list(a.engines)
    unknown = [e for e in engines if e not in scale.ENGINES]
    if unknown:
        ap.error(f"unknown engine {unknown[0]!r}; engines: {', '.join(scale.ENGINES)}")
    threads = tuple(int(t) for t in _list(a.threads))
    cfg = scale.ScaleConfig(sizes=sizes, threads=threads, engines=engines, repeats=a.repeats,
                            max_seconds=a.max_seconds, cases=a.cases, layers=a.layers, mem_budget_gb=a.mem_budget_gb,
                            keep_artifacts=a.keep_artifacts)
    if a.redo:
        rep = scale.load_report(a.out / "report.json")
        for s in sizes:
            rep.get("sizes", {}).pop(ladder.get_size(s, a.layers).name, None)
        if rep.get("sizes") is not None and (a.out / "report.json").is_file():
            scale.write_report(rep, a.out)
    scale.run(cfg, a.out, a.work)
    print((a.out / "report.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
