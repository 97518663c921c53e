"""Load benchmark of `mmsrarec-edge serve` (Triton through PyTriton) on loopback: p50/p99 latency and throughput
against client concurrency, over HTTP and gRPC, beside the same requests answered in-process (no server).

    python benchmarks/serve_load.py [--bundle DIR] [--total 200] [--concurrency 1,2,4,8]
        [--out benchmarks/results/serve]

Run it with the training venv's python (matplotlib for the plot); the server and the tritonclient side run in the
serving environment (MMSRAREC_SERVE_PYTHON or .venv-serve, see `make serve-env`). Without --bundle it exports the
tiny test bundle first. Requests: known users, the bundle's default candidates (first stage + LLM rescoring), top 10,
cycled. Each level sends exactly --total requests (closed loop) and stops; the server is stopped at the end.
Writes report.json, report.md and latency.png into --out.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tiny_bundle import build_tiny_bundle  # noqa: E402

from mmsrarec_edge.bench.harness import host_info  # noqa: E402
from mmsrarec_edge.core.io_utils import ensure_writable_dir, save_figure, write_json, write_text  # noqa: E402


def serve_python() -> str:
    py = os.environ.get("MMSRAREC_SERVE_PYTHON") or str(ROOT / ".venv-serve" / "bin" / "python")
    if not Path(py).exists():
        sys.exit(f"no serving environment at {py}: run `make serve-env` or set MMSRAREC_SERVE_PYTHON")
    return py


def free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def direct_level(bundle: Path, requests: list[dict], total: int, threads: int) -> dict:
    """The same requests answered in this process, serially: what the server adds on top."""
    from mmsrarec_edge.runtime.recommender import Recommender

    rec = Recommender(bundle, provider="cpu", threads=threads)
    for r in requests[:5]:
        rec.recommend(**r)
    lat = []
    t0 = time.perf_counter()
    for i in range(total):
        t = time.perf_counter()
        rec.recommend(**requests[i % len(requests)])
        lat.append((time.perf_counter() - t) * 1e3)
    wall = time.perf_counter() - t0
    lat = np.asarray(lat)
    return {"concurrency": 1, "protocol": "in-process", "requests": total, "errors": 0, "wall_s": round(wall, 3),
            "throughput_rps": round(total / wall, 3), "p50_ms": round(float(np.percentile(lat, 50)), 3),
            "p95_ms": round(float(np.percentile(lat, 95)), 3), "p99_ms": round(float(np.percentile(lat, 99)), 3),
            "mean_ms": round(float(lat.mean()), 3)}


def plot(levels: list[dict], direct: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 4))
    for proto, marker in (("http", "o"), ("grpc", "s")):
        ls = [lv for lv in levels if lv["protocol"] == proto]
        c = [lv["concurrency"] for lv in ls]
        a1.plot(c, [lv["p50_ms"] for lv in ls], marker=marker, label=f"{proto} p50")
        a1.plot(c, [lv["p99_ms"] for lv in ls], marker=marker, linestyle="--", label=f"{proto} p99")
        a2.plot(c, [lv["throughput_rps"] for lv in ls], marker=marker, label=proto)
    a1.axhline(direct["p50_ms"], color="grey", linewidth=1, label="in-process p50")
    a2.axhline(direct["throughput_rps"], color="grey", linewidth=1, label="in-process (1 stream)")
    a1.set(xlabel="concurrent clients", ylabel="latency (ms)", title="Latency", xscale="log", xticks=c)
    a2.set(xlabel="concurrent clients", ylabel="requests/s", title="Throughput", xscale="log", xticks=c)
    from matplotlib.ticker import NullLocator

    a1.set_ylim(bottom=0)
    a2.set_ylim(bottom=0)
    for ax in (a1, a2):
        ax.xaxis.set_minor_locator(NullLocator())
        ax.set_xticklabels([str(x) for x in c])
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    save_figure(fig, path)


def markdown(rep: dict) -> str:
    s = rep["settings"]
    lines = ["# Serving on Triton (PyTriton) over loopback", "",
             f"Bundle `{s['bundle_name']}` (profile {s['profile']}, {s['catalog_items']} catalog items, recommender "
             f"hidden {s['hidden']} x {s['layers']} layers); requests: known users, default candidates (first stage + "
             f"LLM rescoring of {s['n_rescore']}), top 10. Server: `mmsrarec-edge serve --instances {s['instances']} "
             f"--threads {s['threads']} --max-batch {s['max_batch']} --queue-delay-us {s['queue_delay_us']}`. "
             f"{s['total']} requests per level, closed loop. Host: {rep['host']['cpus']} CPUs shared by the server, "
             "the clients and other jobs: absolute figures are noisy, the shape is the point.", "",
             "| protocol | clients | requests | errors | p50 ms | p95 ms | p99 ms | req/s | Triton executions |",
             "|---|---|---|---|---|---|---|---|---|"]
    d = rep["direct"]
    lines.append(f"| in-process (no server) | 1 | {d['requests']} | 0 | {d['p50_ms']:.2f} | {d['p95_ms']:.2f} | "
                 f"{d['p99_ms']:.2f} | {d['throughput_rps']:.1f} | - |")
    for lv in rep["levels"]:
        ex = lv.get("triton", {}).get("nv_inference_exec_count")
        lines.append(f"| {lv['protocol']} | {lv['concurrency']} | {lv['requests']} | {lv['errors']} | "
                     f"{lv['p50_ms']:.2f} | {lv['p95_ms']:.2f} | {lv['p99_ms']:.2f} | {lv['throughput_rps']:.1f} | "
                     f"{'-' if ex is None else int(ex)} |")
    lines += ["", "Triton executions: model executions for the level's requests; fewer executions than requests "
              "means the dynamic batcher merged concurrent requests into one call of the model.", "",
              "![latency and throughput](latency.png)", ""]
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--bundle", type=Path)
    p.add_argument("--total", type=int, default=200)
    p.add_argument("--concurrency", default="1,2,4,8")
    p.add_argument("--instances", type=int, default=2)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--max-batch", type=int, default=8)
    p.add_argument("--queue-delay-us", type=int, default=2000)
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "serve")
    a = p.parse_args()
    py = serve_python()
    work = Path(tempfile.mkdtemp(prefix="serve_load_"))
    bundle = a.bundle
    if bundle is None:
        bundle = work / "bundle"
        build_tiny_bundle(bundle)
    from mmsrarec_edge.runtime.recommender import Recommender

    rec = Recommender(bundle, provider="cpu", threads=a.threads)
    users = rec.known_users()
    rng = np.random.default_rng(0)
    requests = [{"user": int(u), "top_k": 10} for u in rng.choice(users, size=min(64, len(users)), replace=False)]
    conf = rec.rec_conf
    del rec
    req_path = work / "requests.json"
    req_path.write_text(json.dumps(requests))
    direct = direct_level(bundle, requests, a.total, a.threads)
    http, grpc, metrics = free_ports(3)
    log = open(work / "server.log", "w")
    srv = subprocess.Popen([py, "-m", "mmsrarec_edge.cli", "serve", str(bundle), "--http-port", str(http),
                            "--grpc-port", str(grpc), "--metrics-port", str(metrics), "--instances", str(a.instances),
                            "--threads", str(a.threads), "--max-batch", str(a.max_batch), "--queue-delay-us",
                            str(a.queue_delay_us)], stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                           env={**os.environ, "MMSRAREC_QUIET": "1"})
    levels = []
    try:
        for proto, port in (("http", http), ("grpc", grpc)):
            r = subprocess.run([py, "-m", "mmsrarec_edge.serving.loadtest", "--url", f"127.0.0.1:{port}",
                                "--protocol", proto, "--requests", str(req_path), "--concurrency", a.concurrency,
                                "--total", str(a.total), "--metrics-url", f"127.0.0.1:{metrics}"],
                               capture_output=True, text=True, timeout=1800)
            if r.returncode != 0:
                sys.exit(f"load test failed: {r.stderr[-2000:]}\n"
                         f"server log: {(work / 'server.log').read_text()[-2000:]}")
            levels += json.loads(r.stdout)["levels"]
            print(f"{proto}: " + ", ".join(f"c={lv['concurrency']} p50={lv['p50_ms']:.1f} ms "
                                          f"{lv['throughput_rps']:.0f} req/s" for lv in levels[-4:]), flush=True)
    finally:
        srv.terminate()
        try:
            srv.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(srv.pid, 9)
        log.close()
    man = json.loads((bundle / "manifest.json").read_text())
    cfg = json.loads((bundle / "config.json").read_text())
    rep = {"settings": {"bundle_name": bundle.name, "profile": man["profile"]["name"],
                        "catalog_items": cfg["catalog"]["count"], "hidden": conf.get("hidden_size"),
                        "layers": conf.get("num_layers"), "n_rescore": conf.get("n_rescore", 50),
                        "instances": a.instances, "threads": a.threads, "max_batch": a.max_batch,
                        "queue_delay_us": a.queue_delay_us, "total": a.total, "concurrency": a.concurrency},
           "host": host_info(), "direct": direct, "levels": levels}
    out = ensure_writable_dir(a.out)
    write_json(out / "report.json", rep)
    write_text(out / "report.md", markdown(rep))
    plot(levels, direct, out / "latency.png")
    print(f"wrote {out}/report.json, report.md, latency.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
