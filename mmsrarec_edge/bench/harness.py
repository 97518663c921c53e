"""Timing harness for the latency benchmarks: repeated measurements, percentiles, the machine's matmul rate.

Everything is torch-free (numpy only) so the same harness times the runtime on a slim edge install. The "floor" of a
recommendation is its FLOPs divided by the matmul rate this machine measures in the same run: a bound no
implementation on this CPU can beat, which puts every peer's median in context.
"""

from __future__ import annotations

import gc
import os
import platform
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np


@dataclass
class Timing:
    name: str
    samples_ms: list[float] = field(default_factory=list)

    def stats(self) -> dict[str, float]:
        a = np.asarray(self.samples_ms, dtype=np.float64)
        if a.size == 0:
            return {"n": 0}
        return {"n": int(a.size), "p50_ms": float(np.percentile(a, 50)), "p95_ms": float(np.percentile(a, 95)),
                "p99_ms": float(np.percentile(a, 99)), "mean_ms": float(a.mean()), "min_ms": float(a.min())}


def measure_interleaved(fns: dict[str, Callable[[], object]], repeats: int = 20, warmup: int = 1,
                        max_seconds: float = 60.0, blocks: int = 3) -> dict[str, Timing]:
    """Like `measure`, for several peers at once, in `blocks` rounds: each round gives every peer one untimed call
    (to re-warm its caches after the other peers ran) and then a block of timed calls, the peer order rotating from
    round to round. A burst of load from a neighbour on a shared machine then lands on every peer alike instead of on
    whichever ran at that moment, and no peer is timed right after another peer's working set evicted its own.
    A peer stops after `repeats` samples or once its timed calls add up to `max_seconds`."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    out = {name: Timing(name) for name in fns}
    spent = dict.fromkeys(fns, 0.0)
    names = list(fns)
    per_block = max(1, -(-repeats // max(1, blocks)))
    gc_was = gc.isenabled()
    gc.disable()
    try:
        rnd = 0
        while True:
            active = [n for n in names if len(out[n].samples_ms) < repeats and spent[n] < max_seconds]
            if not active:
                break
            k = rnd % len(active)
            for name in active[k:] + active[:k]:
                fns[name]()  # re-warm
                for _ in range(per_block):
                    if len(out[name].samples_ms) >= repeats or spent[name] >= max_seconds:
                        break
                    t0 = time.perf_counter_ns()
                    fns[name]()
                    ms = (time.perf_counter_ns() - t0) / 1e6
                    out[name].samples_ms.append(ms)
                    spent[name] += ms / 1000
            rnd += 1
    finally:
        if gc_was:
            gc.enable()
    return out


def measure(fn: Callable[[], object], repeats: int = 20, warmup: int = 2, name: str = "",
            min_seconds: float = 0.0, max_seconds: float = 60.0) -> Timing:
    """Call fn() warmup times untimed, then at least `repeats` times (or until min_seconds), each timed alone.

    Stops early after max_seconds so a slow peer cannot stall a report; the sample count is in the stats.
    """
    for _ in range(warmup):
        fn()
    t = Timing(name)
    gc_was = gc.isenabled()
    gc.disable()  # a collection inside one sample would be charged to whichever peer was unlucky
    try:
        start = time.perf_counter()
        while True:
            t0 = time.perf_counter_ns()
            fn()
            t.samples_ms.append((time.perf_counter_ns() - t0) / 1e6)
            elapsed = time.perf_counter() - start
            if (len(t.samples_ms) >= repeats and elapsed >= min_seconds) or elapsed >= max_seconds:
                break
    finally:
        if gc_was:
            gc.enable()
    return t


def matmul_gflops(n: int = 512, repeats: int = 20, dtype=np.float32, threads: int | None = None) -> float:
    """Best GFLOP/s of an n x n float32 matmul through numpy's BLAS on this machine, now, on `threads` BLAS threads
    (None: BLAS's own default, usually every core).

    The best, not the median: the floor is a lower bound on time, so it takes the highest rate this machine showed
    (on a shared machine the median would understate the hardware and let the floor rise above real timings).
    The thread count must be the peers': measured here, OpenBLAS on 2 cores reached 160-185 GFLOP/s against 96 on
    one thread, so a floor at the default would sit 2x too low for single-thread peers."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n)).astype(dtype)
    b = rng.standard_normal((n, n)).astype(dtype)
    if threads is None:
        tm = measure(lambda: a @ b, repeats=repeats, warmup=2)
    else:
        try:
            from threadpoolctl import threadpool_limits
        except ImportError as exc:
            from ..core.errors import UserError

            raise UserError("the FLOP floor at a fixed thread count needs threadpoolctl",
                            "pip install 'mmsrarec-edge[bench]'") from exc
        with threadpool_limits(limits=threads, user_api="blas"):
            tm = measure(lambda: a @ b, repeats=repeats, warmup=2)
    return 2 * n**3 / (tm.stats()["min_ms"] / 1e3) / 1e9


def host_info() -> dict:
    info = {"machine": platform.machine(), "python": platform.python_version(), "cpus": os.cpu_count(),
            "processor": platform.processor() or platform.machine()}
    try:
        import onnxruntime as ort

        info["onnxruntime"] = ort.__version__
        info["providers"] = ort.get_available_providers()
    except ImportError:
        pass
    return info


def rss_mb() -> float:
    """Resident set size of this process in MiB (Linux /proc; psutil elsewhere)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    import psutil

    return psutil.Process().memory_info().rss / 2**20

