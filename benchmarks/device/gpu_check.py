#!/usr/bin/env python3
"""The GPU check of issue 19 (mmsrarec_edge/bench/gpu_check.py): ladder 0.5B then 0.1B, exported with the cuda-fp16
profile (fp16 + fp32), parity gates on the CUDA provider, one recommendation timed with IO binding beside PyTorch CUDA
eager fp16 with prefix sharing; report.json + report.md into --out. benchmarks/device/README.md says how it gets to a
GPU machine; `--provider cpu --sizes toy` is the dry run (tests/test_device_kit.py)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from mmsrarec_edge.bench.gpu_check import CheckConfig, run_check  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", required=True, help="report folder ($OUT on the device machine)")
    ap.add_argument("--work", default="/tmp/mmsrarec-gpu", help="checkpoints, bundles, logs (outside the checkout)")
    ap.add_argument("--sizes", default="0.5b,0.1b", help="ladder sizes, in order (comma-separated)")
    ap.add_argument("--provider", default="cuda", choices=("cuda", "cpu"))
    ap.add_argument("--calls", type=int, default=60, help="timed calls per engine after warm-up")
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--cases", type=int, default=8, help="requests whose scores are compared")
    ap.add_argument("--budget-s", type=float, default=450.0, help="no size is started with less than --min-size-s left")
    ap.add_argument("--min-size-s", type=float, default=60.0)
    ap.add_argument("--layers", type=int, default=None, help="override every size's depth (dry runs)")
    ap.add_argument("--threads", type=int, default=None)
    a = ap.parse_args(argv)
    cfg = CheckConfig(sizes=tuple(s for s in a.sizes.split(",") if s), provider=a.provider, calls=a.calls,
                      warmup=a.warmup, rounds=a.rounds, cases=a.cases, budget_s=a.budget_s, min_size_s=a.min_size_s,
                      layers=a.layers, threads=a.threads)
    report = run_check(cfg, Path(a.out), Path(a.work))
    print((Path(a.out) / "report.md").read_text())
    bad = [k for k, e in report["sizes"].items() if e.get("status") != "done"]
    return 1 if bad or not report["sizes"] else 0


if __name__ == "__main__":
    sys.exit(main())
