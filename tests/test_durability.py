"""Concurrent `summarize-item --add-to-catalog` writers serialize on the bundle's lock; a SIGKILL during an export or
an add-to-catalog leaves the old bundle or the new one, and it verifies; signed bundles and add-to-catalog."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from runtime_support import copy_bundle, shared_tiny_bundle
from signing_support import isolated  # noqa: F401 - autouse: no user keys, a private cache

from mmsrarec_edge.core import signing
from mmsrarec_edge.core.bundle import MANIFEST, load_manifest

ROOT = Path(__file__).resolve().parents[1]
CLI = [sys.executable, "-m", "mmsrarec_edge.cli"]


@pytest.fixture(scope="module")
def bundle():
    return shared_tiny_bundle()


def cli(*args, env=None) -> list[str]:
    return [*CLI, *map(str, args)]


def env(**extra) -> dict:
    return {**os.environ, "MMSRAREC_QUIET": "1", "OMP_NUM_THREADS": "1", **extra}


def add_args(d: Path, item_id: int, *more) -> list[str]:
    return cli("summarize-item", d, "--text", f"Item {item_id}. A green striped scarf made of wool, casual.",
               "--add-to-catalog", "--item-id", item_id, "--json", "--provider", "cpu", "--threads", 1, *more)


def catalog_ids(d: Path) -> tuple[set[int], set[int]]:
    """(catalog item ids, keyword store item ids) of a bundle."""
    from mmsrarec_edge.core.keyword_store import read_keyword_store
    from mmsrarec_edge.runtime.catalog import Catalog

    man = load_manifest(d, verify="full")
    store = read_keyword_store(man.path(man.config()["keywords"]["file"]))
    return set(Catalog.load(man).items), set(store)


def test_concurrent_writers_all_land_in_catalog_and_keyword_store(bundle, tmp_path):
    d = copy_bundle(bundle, tmp_path / "b")
    before, _ = catalog_ids(d)
    new = [901, 902, 903, 904]
    procs = [subprocess.Popen(add_args(d, i), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env())
             for i in new]
    for p in procs:
        out, err = p.communicate(timeout=300)
        assert p.returncode == 0, err
    items, store = catalog_ids(d)
    assert items == before | set(new) and set(new) <= store
    assert not [p for p in tmp_path.glob(".b.*") if p.is_dir()], list(tmp_path.iterdir())  # no temporary dir left


def test_a_held_lock_times_out_with_one_line(bundle, tmp_path):
    from mmsrarec_edge.runtime.catalog import bundle_lock

    d = copy_bundle(bundle, tmp_path / "b")
    with bundle_lock(d):
        r = subprocess.run(add_args(d, 905), capture_output=True, text=True, timeout=300,
                           env=env(MMSRAREC_LOCK_TIMEOUT="0.5"))
    assert r.returncode == 2 and "another writer holds" in r.stderr and ".b.lock" in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) <= 2
    assert 905 not in catalog_ids(d)[0]


def test_signed_bundle_add_to_catalog_needs_the_signing_key(bundle, tmp_path):
    d = copy_bundle(bundle, tmp_path / "b")
    priv, pub, kid = signing.generate_keypair(tmp_path / "k")
    signing.sign_manifest(d, signing.load_private_key(priv))
    trust = ("--trust-key", pub)
    r = subprocess.run(add_args(d, 906, *trust), capture_output=True, text=True, timeout=300, env=env())
    assert r.returncode == 2 and "the bundle is signed" in r.stderr and "--sign-key" in r.stderr, r.stderr
    other, _, _ = signing.generate_keypair(tmp_path / "other")
    r = subprocess.run(add_args(d, 906, *trust, "--sign-key", other), capture_output=True, text=True, timeout=300,
                       env=env())
    assert r.returncode == 2 and f"signed by key {kid}" in r.stderr, r.stderr
    r = subprocess.run(add_args(d, 906, *trust, "--sign-key", priv), capture_output=True, text=True, timeout=300,
                       env=env())
    assert r.returncode == 0, r.stderr
    signing.add_cli_trust_keys([pub])
    assert load_manifest(d, verify="full").signed_by == kid  # re-signed
    assert 906 in catalog_ids(d)[0]


def test_add_to_catalog_errors_come_before_hashing(bundle, tmp_path, monkeypatch):
    """A taken item id is reported without hashing the bundle (the first open of a big bundle takes seconds)."""
    d = copy_bundle(bundle, tmp_path / "b")
    existing = min(catalog_ids(d)[0])
    graph = d / "recommender" / "decoder.onnx"
    data = bytearray(graph.read_bytes())
    data[len(data) // 2] ^= 1  # corrupt, same size: only hashing would notice
    graph.write_bytes(bytes(data))
    r = subprocess.run(add_args(d, existing), capture_output=True, text=True, timeout=300, env=env())
    assert r.returncode == 2 and "already in the catalog" in r.stderr, r.stderr
    for args, needle in ((("--history", "1,999999"), "unknown item id 999999 in the history"),
                         (("--history", "1", "--candidates", "2,999"), "unknown candidate item id 999"),
                         (("--user", "1000000"), "unknown user id 1000000")):
        r = subprocess.run(cli("recommend", d, *args), capture_output=True, text=True, timeout=300, env=env())
        assert r.returncode == 2 and needle in r.stderr, r.stderr
    r = subprocess.run(cli("recommend", d, "--history", "1,2"), capture_output=True, text=True, timeout=300,
                       env=env())
    assert r.returncode == 2 and "decoder.onnx: SHA-256 does not match" in r.stderr, r.stderr


# ------------------------------------------------------------------------------------------------ kill -9 at random


def assert_old_or_new(d: Path, old_manifest: bytes, old_ids: set[int], new_id: int | None) -> str:
    assert (d / MANIFEST).is_file(), f"no bundle at {d} after the kill: {list(d.parent.iterdir())}"
    items, store = catalog_ids(d)  # verifies every file's SHA-256
    if (d / MANIFEST).read_bytes() == old_manifest:
        assert items == old_ids
        return "old"
    assert new_id is not None and items == old_ids | {new_id} and new_id in store
    return "new"


def kill_when(p: subprocess.Popen, ready, delay: float, limit: float = 120) -> None:
    """SIGKILL `p` `delay` seconds after `ready()` holds (or when it exits first)."""
    end = time.monotonic() + limit
    while p.poll() is None and not ready() and time.monotonic() < end:
        time.sleep(0.002)
    time.sleep(delay)
    p.send_signal(signal.SIGKILL)
    p.wait()


def temp_dir_of(target: Path, inner: str | None = None):
    """ready(): a new temporary sibling directory of `target` exists (atomic_dir's), holding `inner` if given; those
    an earlier kill left behind do not count."""
    def ready() -> bool:
        return any(p.is_dir() and p not in ready.left and (inner is None or (p / inner).exists())
                   for p in target.parent.glob(f".{target.name}.*"))
    ready.left = set()
    return ready


def test_sigkill_during_add_to_catalog_leaves_old_or_new(bundle, tmp_path):
    d = copy_bundle(bundle, tmp_path / "b")
    rng = random.Random(7)
    outcomes = []
    # random points of the whole run, then random points inside the rewrite (its temporary directory exists)
    plans = [(lambda: True, rng.uniform(0.3, 2.0)) for _ in range(2)]
    plans += [(temp_dir_of(d), rng.uniform(0, 0.03)) for _ in range(3)]
    plans += [(temp_dir_of(d, MANIFEST), rng.uniform(0, 0.01))]
    for k, (ready, delay) in enumerate(plans):
        old, old_ids = (d / MANIFEST).read_bytes(), catalog_ids(d)[0]
        if hasattr(ready, "left"):
            ready.left = set(tmp_path.glob(".b.*"))
        p = subprocess.Popen(add_args(d, 960 + k), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env())
        kill_when(p, ready, delay)
        outcomes.append(assert_old_or_new(d, old, old_ids, 960 + k))
    print("add-to-catalog kills:", outcomes)  # which were old or new depends on timing; every one verified


def sasrec_export_args(tiny_synth, tmp_path: Path, out: Path, *more) -> list[str]:
    """`export` of a SASRec-only bundle (seconds), the cheapest real export."""
    import torch

    from mmsrarec_edge.models.sasrec import SASRec, SASRecConfig, SASRecModel

    if not (tmp_path / "sas").exists():
        torch.manual_seed(0)
        SASRecModel(SASRec(len(tiny_synth.items), SASRecConfig(hidden=16, layers=1, max_len=8)),
                    sorted(tiny_synth.items)).save(tmp_path / "sas")
    prof = tmp_path / "sas.toml"
    prof.write_text('name = "sas"\nprecision = "fp32"\ngraphs = ["sasrec.user_encoder"]\n[parity]\ncases = 1\n')
    return cli("export", "--profile", prof, "--sasrec", tmp_path / "sas", "--dataset", tiny_synth.root, "--out", out,
               "--threads", 1, *more)


def test_export_sign_key_signs_the_bundle(tiny_synth, tmp_path):
    priv, pub, kid = signing.generate_keypair(tmp_path / "k")
    out = tmp_path / "bundle"
    r = subprocess.run(sasrec_export_args(tiny_synth, tmp_path, out, "--sign-key", priv), capture_output=True,
                       text=True, timeout=300, env=env(), cwd=ROOT)
    assert r.returncode == 0, r.stderr
    assert f"signed by key {kid}" in r.stdout
    signing.add_cli_trust_keys([pub])
    assert load_manifest(out, verify="full").signed_by == kid
    r = subprocess.run(sasrec_export_args(tiny_synth, tmp_path, tmp_path / "never", "--sign-key", pub),
                       capture_output=True, text=True, timeout=300, env=env(), cwd=ROOT)
    assert r.returncode == 2 and "not an unencrypted PEM private key" in r.stderr, r.stderr
    assert not (tmp_path / "never").exists()


def test_sigkill_during_export_leaves_old_or_new(tiny_synth, tmp_path):
    out = tmp_path / "bundle"
    args = sasrec_export_args(tiny_synth, tmp_path, out)
    r = subprocess.run(args, capture_output=True, text=True, timeout=300, env=env(), cwd=ROOT)
    assert r.returncode == 0, r.stderr
    rng = random.Random(11)
    outcomes = []
    for ready, delay in ((lambda: True, rng.uniform(1.0, 4.0)), (temp_dir_of(out), rng.uniform(0, 0.5)),
                         (temp_dir_of(out, MANIFEST), rng.uniform(0, 0.02))):
        old = (out / MANIFEST).read_bytes()
        if hasattr(ready, "left"):
            ready.left = set(tmp_path.glob(".bundle.*"))
        p = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env(), cwd=ROOT)
        kill_when(p, ready, delay)
        man = load_manifest(out, verify="full")  # old or new, and it verifies
        new = (out / MANIFEST).read_bytes() != old
        assert not new or json.loads(old)["created"] <= man.data["created"]
        outcomes.append("new" if new else "old")
    print("export kills:", outcomes)


def test_no_verify_warns_on_stderr_and_in_the_json(bundle):
    r = subprocess.run(cli("recommend", bundle.dir, "--history", "1,2", "--no-verify", "--json"), capture_output=True,
                       text=True, timeout=300, env=env())
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["warnings"][0].startswith("--no-verify: file contents are not hashed")
    assert r.stderr.count("--no-verify") == 1


def test_atomic_writes_fsync_files_then_the_parent_directory(tmp_path, monkeypatch):
    from mmsrarec_edge.core import io_utils

    synced: list[str] = []
    real = io_utils.os.fsync

    def fsync(fd):
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        return real(fd)

    monkeypatch.setattr(io_utils.os, "fsync", fsync)
    with io_utils.atomic_dir(tmp_path / "out") as tmp:
        (tmp / "sub").mkdir()
        (tmp / "sub" / "a.json").write_text("{}")
        (tmp / "b.json").write_text("{}")
    names = [Path(p).name for p in synced]
    assert {"a.json", "b.json"} <= set(names[:2]) and names[-1] == tmp_path.name  # files first, the parent last
    assert "sub" in names and names.index("sub") < names.index(tmp.name)  # deepest directories first
    synced.clear()
    with io_utils.atomic_dir(tmp_path / "out") as tmp2:  # replacing: one atomic exchange, old copy removed
        (tmp2 / "c.json").write_text("{}")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"] and (tmp_path / "out" / "c.json").exists()
    synced.clear()
    io_utils.write_json(tmp_path / "x.json", {"a": 1})
    assert [Path(p).name for p in synced][-1] == tmp_path.name and len(synced) == 2
