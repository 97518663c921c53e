"""Closed-loop load test of a `recommend` model on a Triton server: for each concurrency level, that many threads (one
tritonclient connection each) send requests back to back until a fixed number of requests has been sent, then stop.
Reports p50/p95/p99 latency, throughput and errors per level. Bounded in count and in time (`max_seconds` per level);
meant for a server on loopback (`python -m mmsrarec_edge.serving.loadtest --url 127.0.0.1:8000 ...`).
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import threading
import time
import urllib.request

import numpy as np

from .client import RecommendClient


def run_level(url: str, protocol: str, requests: list[dict], concurrency: int, total: int,
              max_seconds: float = 120.0) -> dict:
    """`total` requests (cycling through `requests`) from `concurrency` threads; latencies in ms."""
    counter = itertools.count()
    lock = threading.Lock()
    latencies, errors = [], []
    deadline = time.monotonic() + max_seconds

    def worker():
        client = RecommendClient(url, protocol)
        try:
            while time.monotonic() < deadline:
                i = next(counter)
                if i >= total:
                    return
                t = time.perf_counter()
                try:
                    client.recommend(**requests[i % len(requests)])
                    ms = (time.perf_counter() - t) * 1e3
                    with lock:
                        latencies.append(ms)
                except Exception as exc:  # noqa: BLE001 - counted, the run goes on
                    with lock:
                        errors.append(str(exc)[:200])
        finally:
            client.close()

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(concurrency)]
    t0 = time.perf_counter()
    for th in threads:
        th.start()
    for th in threads:
        th.join(max_seconds + 30)
    wall = time.perf_counter() - t0
    lat = np.asarray(latencies, np.float64)
    pct = (lambda q: round(float(np.percentile(lat, q)), 3)) if lat.size else (lambda q: None)
    return {"concurrency": concurrency, "protocol": protocol, "requests": int(lat.size), "errors": len(errors),
            "error_examples": errors[:3], "wall_s": round(wall, 3),
            "throughput_rps": round(lat.size / wall, 3) if wall > 0 else None,
            "p50_ms": pct(50), "p95_ms": pct(95), "p99_ms": pct(99),
            "mean_ms": round(float(lat.mean()), 3) if lat.size else None}


def triton_counters(metrics_url: str, model: str = "recommend") -> dict:
    """Triton's request and execution counters for `model` (exec < requests means the dynamic batcher merged)."""
    with urllib.request.urlopen(f"http://{metrics_url}/metrics", timeout=10) as r:
        text = r.read().decode()
    out = {}
    for name in ("nv_inference_request_success", "nv_inference_exec_count", "nv_inference_count"):
        for line in text.splitlines():
            if line.startswith(name + "{") and f'model="{model}"' in line:
                out[name] = float(line.rsplit(" ", 1)[1])
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description="Closed-loop load test of the recommend model (prints JSON).")
    p.add_argument("--url", default="127.0.0.1:8000")
    p.add_argument("--protocol", choices=["http", "grpc"], default="http")
    p.add_argument("--requests", required=True, help="JSON file: a list of request dicts, cycled")
    p.add_argument("--concurrency", default="1,2,4,8", help="comma-separated levels")
    p.add_argument("--total", type=int, default=200, help="requests per level")
    p.add_argument("--warmup", type=int, default=8)
    p.add_argument("--max-seconds", type=float, default=120.0, help="per level")
    p.add_argument("--metrics-url", help="host:port of Triton's metrics endpoint, to report batching counters")
    a = p.parse_args(argv)
    with open(a.requests, encoding="utf-8") as f:
        requests = json.load(f)
    client = RecommendClient(a.url, a.protocol)
    client.wait_ready(180)
    client.close()
    if a.warmup:
        run_level(a.url, a.protocol, requests, 1, a.warmup, a.max_seconds)
    levels = []
    for c in (int(x) for x in a.concurrency.split(",") if x.strip()):
        before = triton_counters(a.metrics_url) if a.metrics_url else {}
        level = run_level(a.url, a.protocol, requests, c, a.total, a.max_seconds)
        if a.metrics_url:
            after = triton_counters(a.metrics_url)
            level["triton"] = {k: after[k] - before.get(k, 0.0) for k in after}
        levels.append(level)
    json.dump({"url": a.url, "protocol": a.protocol, "total_per_level": a.total, "levels": levels}, sys.stdout,
              indent=2)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
