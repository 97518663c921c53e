"""Catalog summarization throughput (items/s) against the number of Ray workers, beside the single-process path.

    python benchmarks/ray_scale.py [--bundle DIR --items ITEMS.parquet] [--workers 1,2] [--out benchmarks/results/ray]

Each run summarizes the whole table into a fresh store with `mmsrarec-edge summarize-catalog` (its own process, as a
user runs it): once without Ray, then with `--ray local --workers N` for each N (a private local Ray cluster with N
CPUs, one ONNX Runtime summarizer per actor, one intra-op thread each). Wall time includes Ray's start-up; the
report also gives the time inside the workers (sum of per-part times) and checks every store equals the
single-process one. Without --bundle it exports the tiny test bundle and uses its 40-item table.
Writes report.json, report.md and throughput.png into --out.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tiny_bundle import build_tiny_bundle  # noqa: E402

from mmsrarec_edge.bench.harness import host_info  # noqa: E402
from mmsrarec_edge.core.io_utils import ensure_writable_dir, save_figure, write_json, write_text  # noqa: E402
from mmsrarec_edge.core.keyword_store import read_keyword_store  # noqa: E402


def run_job(bundle: Path, items: Path, out: Path, part_size: int, workers: int | None) -> dict:
    cmd = [sys.executable, "-m", "mmsrarec_edge.cli", "summarize-catalog", str(bundle), str(items), "--out", str(out),
           "--part-size", str(part_size), "--json"]
    if workers:
        cmd += ["--ray", "local", "--workers", str(workers)]
    t = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=3600, env={"MMSRAREC_QUIET": "1",
                                                                              **__import__("os").environ})
    wall = time.perf_counter() - t
    if r.returncode != 0:
        sys.exit(f"summarize-catalog failed: {r.stderr[-3000:]}")
    res = json.loads(r.stdout)
    steady = res["seconds"] - res.get("startup_seconds", 0.0)
    return {"mode": "ray" if workers else "single process", "workers": workers or 1, "items": res["items"],
            "job_seconds": res["seconds"], "startup_seconds": res.get("startup_seconds", 0.0),
            "worker_seconds": res.get("worker_seconds"), "process_seconds": round(wall, 3),
            "items_per_s": round(res["items"] / res["seconds"], 3),
            "items_per_s_after_startup": round(res["items"] / steady, 3)}


def enlarge(items: Path, repeat: int, out: Path) -> Path:
    """The table `repeat` times over with new item ids (same texts and images, image paths made absolute)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = pq.read_table(items).to_pylist()
    step = max(r["item_id"] for r in rows) + 1
    big = []
    for k in range(repeat):
        for r in rows:
            img = r.get("image")
            big.append({**r, "item_id": r["item_id"] + k * step,
                        "image": str((items.parent / img).resolve()) if img else None})
    pq.write_table(pa.Table.from_pylist(big), out)
    return out


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    ray_rows = [r for r in rows if r["mode"] == "ray"]
    ax.plot([r["workers"] for r in ray_rows], [r["items_per_s"] for r in ray_rows], marker="o",
            label="Ray, whole job")
    ax.plot([r["workers"] for r in ray_rows], [r["items_per_s_after_startup"] for r in ray_rows], marker="s",
            label="Ray, after cluster start")
    single = next(r for r in rows if r["mode"] == "single process")
    ax.axhline(single["items_per_s"], color="grey", linewidth=1, label="single process")
    ax.set(xlabel="Ray workers (actors)", ylabel="items/s",
           title="Catalog summarization throughput", xticks=[r["workers"] for r in ray_rows])
    ax.grid(alpha=0.3)
    ax.legend()
    save_figure(fig, path)


def markdown(rep: dict) -> str:
    s = rep["settings"]
    lines = ["# Catalog summarization on Ray", "",
             f"`mmsrarec-edge summarize-catalog` over {s['items']} items ({s['repeat']}x the item table, new ids; "
             f"bundle profile {s['profile']}, summarizer "
             f"hidden {s['hidden']} x {s['layers']} layers, up to {s['max_new_tokens']} new tokens per prompt, image "
             f"and text prompts per item), parts of {s['part_size']}, one onnxruntime thread per summarizer. Host: "
             f"{rep['host']['cpus']} CPUs, shared with other jobs (figures are noisy). Ray runs start a private local "
             "cluster, included in the job time.", "",
             "| mode | workers | items | job s | of which cluster start s | time in workers s (sum) | items/s | "
             "items/s after start | same keywords as single process |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rep["runs"]:
        lines.append(f"| {r['mode']} | {r['workers']} | {r['items']} | {r['job_seconds']:.1f} | "
                     f"{r['startup_seconds']:.1f} | {r['worker_seconds']:.1f} | {r['items_per_s']:.1f} | "
                     f"{r['items_per_s_after_startup']:.1f} | "
                     f"{r.get('identical', '-')} |")
    lines += ["", "Time in workers: the summed time actors spent summarizing parts (the single process: its own loop). "
              "The rest of a Ray job is the cluster start, actor start (each actor loads the bundle's summarizer), "
              "Ray Data scheduling and the driver writing parts.", "", "![throughput](throughput.png)", ""]
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--bundle", type=Path)
    p.add_argument("--items", type=Path)
    p.add_argument("--workers", default="1,2")
    p.add_argument("--part-size", type=int, default=32)
    p.add_argument("--repeat", type=int, default=1, help="summarize the table this many times over (new ids)")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "ray")
    a = p.parse_args()
    work = Path(tempfile.mkdtemp(prefix="ray_scale_"))
    bundle, items = a.bundle, a.items
    if bundle is None:
        bundle = work / "bundle"
        build_tiny_bundle(bundle)
        items = work / "bundle_parts" / "data" / "items.parquet"
    if items is None:
        sys.exit("--items is required with --bundle")
    if a.repeat > 1:
        items = enlarge(items, a.repeat, work / "items.parquet")
    runs = [run_job(bundle, items, work / "single", a.part_size, None)]
    reference = read_keyword_store(work / "single" / "keywords.parquet")
    print(f"single process: {runs[0]['items_per_s']:.2f} items/s", flush=True)
    for w in (int(x) for x in a.workers.split(",") if x.strip()):
        run = run_job(bundle, items, work / f"ray{w}", a.part_size, w)
        run["identical"] = read_keyword_store(work / f"ray{w}" / "keywords.parquet") == reference
        runs.append(run)
        print(f"ray {w} workers: {run['items_per_s']:.2f} items/s, identical={run['identical']}", flush=True)
    cfg = json.loads((bundle / "config.json").read_text())
    man = json.loads((bundle / "manifest.json").read_text())
    sc = cfg["summarizer"]
    rep = {"settings": {"items": runs[0]["items"], "profile": man["profile"]["name"], "hidden": sc.get("hidden_size"),
                        "layers": sc.get("num_layers"), "max_new_tokens": min(int(sc.get("max_new_tokens", 20)),
                                                                              int(cfg["limits"]["max_new_tokens"])),
                        "part_size": a.part_size, "workers": a.workers, "repeat": a.repeat},
           "host": host_info(), "runs": runs}
    out = ensure_writable_dir(a.out)
    write_json(out / "report.json", rep)
    write_text(out / "report.md", markdown(rep))
    plot(runs, out / "throughput.png")
    print(f"wrote {out}/report.json, report.md, throughput.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
