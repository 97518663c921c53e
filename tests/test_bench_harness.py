import time

import numpy as np
import pytest

from mmsrarec_edge.bench.harness import Timing, matmul_gflops, measure, rss_mb


def test_percentiles_from_known_samples():
    t = Timing("x", [float(v) for v in range(1, 101)])
    s = t.stats()
    assert s["n"] == 100 and s["p50_ms"] == pytest.approx(50.5) and s["p99_ms"] == pytest.approx(99.01)
    assert s["min_ms"] == 1.0


def test_measure_counts_calls_and_respects_time_cap():
    calls = []
    t = measure(lambda: calls.append(1), repeats=7, warmup=3)
    assert len(calls) == 10 and t.stats()["n"] == 7
    slow = measure(lambda: time.sleep(0.02), repeats=1000, warmup=0, max_seconds=0.2)
    assert 3 <= slow.stats()["n"] < 20 and slow.stats()["p50_ms"] >= 19


def test_matmul_rate_and_rss_are_plausible():
    from threadpoolctl import threadpool_info

    g = matmul_gflops(n=256, repeats=3)
    assert 0.1 < g < 1e5
    blas = [p["num_threads"] for p in threadpool_info() if p["user_api"] == "blas"]
    g1 = matmul_gflops(n=256, repeats=3, threads=1)  # the floor's rate at the peers' thread count
    assert 0.1 < g1 < 1e5
    assert [p["num_threads"] for p in threadpool_info() if p["user_api"] == "blas"] == blas  # limit lifted after
    before = rss_mb()
    block = np.ones((64, 2**20 // 8), dtype=np.float64)  # 64 MiB, touched
    assert rss_mb() - before > 40
    del block


def test_interleaved_peers_rotate_in_blocks_and_a_slow_peer_stops_at_its_cap():
    import time

    from mmsrarec_edge.bench.harness import measure_interleaved

    calls = []
    fns = {"fast": lambda: calls.append("fast"), "slow": lambda: (calls.append("slow"), time.sleep(0.02))}
    out = measure_interleaved(fns, repeats=6, warmup=1, max_seconds=0.05, blocks=3)
    assert len(out["fast"].samples_ms) == 6
    assert 2 <= len(out["slow"].samples_ms) < 6  # ~20 ms per call, 50 ms budget
    # after one warm-up call each: round 1 = fast (re-warm + 2 timed), slow (re-warm + 2 timed); round 2 starts
    # with slow, the rotation
    assert calls[2:8] == ["fast"] * 3 + ["slow"] * 3
    assert calls[8] == "slow"
    assert min(out["slow"].samples_ms) > 15 > max(out["fast"].samples_ms)
