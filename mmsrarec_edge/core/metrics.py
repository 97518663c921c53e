"""Ranking metrics under the protocol: HR@K, NDCG@K and AUC over 1 positive + N negatives, with bootstrap CIs.

Scores are a matrix [cases, 1 + negatives] whose column 0 is the positive. Ties count against the model (the
positive's rank is the number of negatives scoring >= it), so a constant scorer gets HR@K = 0 rather than a lucky
draw; AUC counts ties as half. Confidence intervals resample users, not cases, because one user's windows are
correlated (a case-level bootstrap would give intervals that are too narrow). Torch-free.
"""

from __future__ import annotations

import numpy as np

DEFAULT_KS = (1, 5, 10)


def positive_rank(scores: np.ndarray) -> np.ndarray:
    scores = np.asarray(scores, dtype=np.float64)
    pos = scores[:, :1]
    neg = scores[:, 1:]
    return (neg >= pos).sum(axis=1)


def per_case(scores: np.ndarray, ks=DEFAULT_KS) -> dict[str, np.ndarray]:
    scores = np.asarray(scores, dtype=np.float64)
    if scores.ndim != 2 or scores.shape[1] < 2:
        raise ValueError(f"scores must be [cases, 1 + negatives], got shape {scores.shape}")
    if not np.isfinite(scores).all():
        raise ValueError("scores contain NaN or infinity")
    rank = positive_rank(scores)
    out: dict[str, np.ndarray] = {}
    for k in ks:
        hit = rank < k
        out[f"HR@{k}"] = hit.astype(np.float64)
        out[f"NDCG@{k}"] = np.where(hit, 1.0 / np.log2(rank + 2.0), 0.0)
    pos, neg = scores[:, :1], scores[:, 1:]
    out["AUC"] = ((neg < pos).sum(1) + 0.5 * (neg == pos).sum(1)) / neg.shape[1]
    return out


def summarize(scores: np.ndarray, users: np.ndarray | None = None, ks=DEFAULT_KS, n_boot: int = 1000,
              seed: int = 0, alpha: float = 0.05) -> dict[str, dict[str, float]]:
    """Mean of each metric with a (1 - alpha) percentile bootstrap interval, resampling users."""
    pc = per_case(scores, ks)
    n = len(scores)
    users = np.arange(n) if users is None else np.asarray(users)
    uniq, inv = np.unique(users, return_inverse=True)
    rng = np.random.default_rng(seed)
    # Per-user sums and counts make each bootstrap replicate O(users) instead of O(cases).
    counts = np.bincount(inv, minlength=len(uniq)).astype(np.float64)
    draws = rng.integers(0, len(uniq), size=(n_boot, len(uniq)))
    w = np.stack([np.bincount(d, minlength=len(uniq)) for d in draws]).astype(np.float64)  # [B, U]
    out = {}
    for name, vals in pc.items():
        sums = np.bincount(inv, weights=vals, minlength=len(uniq))
        boot = (w @ sums) / np.maximum(w @ counts, 1.0)
        lo, hi = np.quantile(boot, [alpha / 2, 1 - alpha / 2])
        out[name] = {"mean": float(vals.mean()), "lo": float(lo), "hi": float(hi)}
    out["_n"] = {"cases": int(n), "users": int(len(uniq))}
    return out
