"""Shared fixtures: tiny synthetic datasets (session-scoped, so they are drawn once) and the real set's location."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("MMSRAREC_QUIET", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
if "MMSRAREC_CACHE_DIR" not in os.environ:  # stamps and engines go to a throwaway cache, not the user's ~/.cache
    import tempfile

    os.environ["MMSRAREC_CACHE_DIR"] = tempfile.mkdtemp(prefix="mmsrarec-test-cache-")

ROOT = Path(__file__).resolve().parents[1]
ML100K_MM = ROOT.parent / "shared" / "data" / "ml100k_mm"


def require_ml100k_mm() -> Path:
    if not (ML100K_MM / "interactions.csv").exists():
        pytest.skip(f"the real ml100k_mm set is not at {ML100K_MM} (its licence forbids shipping it; see README)")
    return ML100K_MM


@pytest.fixture(scope="session")
def tiny_synth(tmp_path_factory):
    """A small synthetic dataset: 60 items, 120 users."""
    from mmsrarec_edge.data.synth import SynthConfig, generate

    out = tmp_path_factory.mktemp("synth_tiny")
    return generate(SynthConfig(seed=3, n_items=60, n_users=120, min_len=8, max_len=20), out)


@pytest.fixture(scope="session")
def tiny_protocol(tiny_synth):
    from mmsrarec_edge.data.protocol import ProtocolConfig, build_protocol

    return build_protocol(tiny_synth, ProtocolConfig(seed=1, max_cases_per_user=4))
