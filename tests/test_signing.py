"""Signed bundles (core/signing.py): keygen, export-time signatures, trusted keys from --trust-key / the environment
/ the config directory, and refusals of unsigned, wrongly signed and tampered bundles; plus the verified stamp
(core/bundle.py) that spares a full rehash on every open."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from signing_support import isolated  # noqa: F401 - autouse: no user keys, a private cache

from mmsrarec_edge.core import signing
from mmsrarec_edge.core.bundle import FORMAT, FORMAT_VERSION, MANIFEST, load_manifest
from mmsrarec_edge.core.errors import BundleError, UserError

ROOT = Path(__file__).resolve().parents[1]


def write_manifest(root: Path) -> None:
    files = {p.relative_to(root).as_posix(): {"sha256": hashlib.sha256(p.read_bytes()).hexdigest(),
                                              "bytes": p.stat().st_size}
             for p in sorted(root.rglob("*")) if p.is_file() and p.name not in (MANIFEST, signing.SIGNATURE)}
    (root / MANIFEST).write_text(json.dumps({"format": FORMAT, "format_version": FORMAT_VERSION, "files": files},
                                            indent=2) + "\n")


def fake_bundle(root: Path) -> Path:
    """A bundle as load_manifest sees it: a 'graph', a config and the manifest (no real ONNX needed here)."""
    (root / "recommender").mkdir(parents=True)
    (root / "recommender" / "decoder.onnx").write_bytes(b"\x08\x07graph-bytes" * 64)
    (root / "config.json").write_text('{"catalog": {}}\n')
    write_manifest(root)
    return root


@pytest.fixture
def keys(tmp_path):
    priv, pub, kid = signing.generate_keypair(tmp_path / "keys")
    return priv, pub, kid


def test_keygen_writes_a_private_and_a_public_key_and_never_overwrites(keys, tmp_path):
    priv, pub, kid = keys
    assert priv.stat().st_mode & 0o777 == 0o600
    assert signing.key_id(signing.load_public_key(pub)) == kid
    assert signing.key_id(signing.load_private_key(priv).public_key()) == kid
    with pytest.raises(UserError, match="already exists"):
        signing.generate_keypair(tmp_path / "keys")
    with pytest.raises(UserError, match="not an Ed25519 public key"):
        signing.load_public_key(tmp_path / "keys" / "bogus.pub") if (tmp_path / "keys" / "bogus.pub").write_text(
            "not a key") else None


def test_signed_bundle_verifies_with_the_trusted_key(keys, tmp_path, monkeypatch):
    priv, pub, kid = keys
    b = fake_bundle(tmp_path / "b")
    signing.sign_manifest(b, signing.load_private_key(priv))
    assert load_manifest(b).signed_by is None  # no trusted key configured: checksums only
    monkeypatch.setenv(signing.TRUST_ENV, str(pub))
    assert load_manifest(b).signed_by == kid
    assert load_manifest(b, verify=False).signed_by == kid  # the signature is checked even without hashing


def test_tampered_graph_with_a_rehashed_manifest_is_refused(keys, tmp_path, monkeypatch):
    """The attack today's checksums cannot catch: change a graph, re-hash the manifest."""
    priv, pub, _ = keys
    b = fake_bundle(tmp_path / "b")
    signing.sign_manifest(b, signing.load_private_key(priv))
    graph = b / "recommender" / "decoder.onnx"
    graph.write_bytes(graph.read_bytes().replace(b"graph", b"evil!"))
    write_manifest(b)
    assert load_manifest(b).files  # checksums alone: passes
    monkeypatch.setenv(signing.TRUST_ENV, str(pub))
    with pytest.raises(BundleError, match="manifest.sig: the signature does not match manifest.json"):
        load_manifest(b)


def test_unsigned_and_untrusted_bundles_are_refused_when_a_key_is_trusted(keys, tmp_path, monkeypatch):
    priv, pub, _ = keys
    b = fake_bundle(tmp_path / "b")
    signing.add_cli_trust_keys([pub])
    with pytest.raises(BundleError, match="manifest.json: the bundle is not signed"):
        load_manifest(b)
    other, _, other_id = signing.generate_keypair(tmp_path / "other")
    signing.sign_manifest(b, signing.load_private_key(other))
    with pytest.raises(BundleError, match=f"signed by key {other_id}, which is not a trusted key"):
        load_manifest(b)


def test_trusted_keys_from_the_config_directory_and_env_directories(keys, tmp_path, monkeypatch):
    priv, pub, kid = keys
    cdir = signing.config_trust_dir()
    cdir.mkdir(parents=True)
    (cdir / "ci.pub").write_bytes(pub.read_bytes())
    assert set(signing.trusted_keys()) == {kid}
    (cdir / "ci.pub").unlink()
    monkeypatch.setenv(signing.TRUST_ENV, str(pub.parent))  # a directory: its *.pub files
    assert set(signing.trusted_keys()) == {kid}
    monkeypatch.setenv(signing.TRUST_ENV, str(tmp_path / "nope.pub"))
    with pytest.raises(UserError, match="nope.pub .from MMSRAREC_TRUST_KEYS. does not exist"):
        signing.trusted_keys()


def test_a_file_tampered_after_signing_is_named(keys, tmp_path, monkeypatch):
    priv, pub, _ = keys
    b = fake_bundle(tmp_path / "b")
    signing.sign_manifest(b, signing.load_private_key(priv))
    monkeypatch.setenv(signing.TRUST_ENV, str(pub))
    graph = b / "recommender" / "decoder.onnx"
    data = bytearray(graph.read_bytes())
    data[5] ^= 1
    graph.write_bytes(bytes(data))
    with pytest.raises(BundleError, match="decoder.onnx: SHA-256 does not match the manifest"):
        load_manifest(b)


# ------------------------------------------------------------------------------------------------ the verified stamp


def test_stamp_spares_the_rehash_and_a_changed_file_is_caught(tmp_path, monkeypatch):
    from mmsrarec_edge.core import bundle as bundle_mod

    b = fake_bundle(tmp_path / "b")
    calls = []
    real = bundle_mod.sha256_file
    monkeypatch.setattr(bundle_mod, "sha256_file", lambda p: calls.append(p) or real(p))
    load_manifest(b)
    assert len(calls) == 2  # first use: full rehash, then a stamp
    load_manifest(b)
    assert len(calls) == 2  # unchanged: sizes + stamp
    load_manifest(b, verify="full")
    assert len(calls) == 4  # --verify full rehashes
    graph = b / "recommender" / "decoder.onnx"
    data = bytearray(graph.read_bytes())
    data[3] ^= 1
    graph.write_bytes(bytes(data))  # same size, new mtime
    with pytest.raises(BundleError, match="decoder.onnx: SHA-256 does not match"):
        load_manifest(b)


def test_a_change_that_keeps_the_mtime_is_caught_by_the_ctime(tmp_path):
    """The stamp also keys on ctime, which user space cannot set back: restoring the mtime (touch -r) is not enough.
    The documented limit is a change that keeps size, mtime and ctime (clock reset by root, raw device writes, media
    corruption): only --verify full catches that."""
    b = fake_bundle(tmp_path / "b")
    load_manifest(b)
    graph = b / "recommender" / "decoder.onnx"
    st = graph.stat()
    data = bytearray(graph.read_bytes())
    data[3] ^= 1
    graph.write_bytes(bytes(data))
    os.utime(graph, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert graph.stat().st_mtime_ns == st.st_mtime_ns
    with pytest.raises(BundleError, match="SHA-256 does not match"):
        load_manifest(b)


def test_a_stamp_for_another_manifest_is_ignored(tmp_path, monkeypatch):
    from mmsrarec_edge.core import bundle as bundle_mod

    b = fake_bundle(tmp_path / "b")
    load_manifest(b)
    stamp = bundle_mod._stamp_path(b)
    record = json.loads(stamp.read_text())
    # Swap in a manifest that lists other hashes, with a stamp that claims everything was checked: the stamp is
    # bound to the manifest's own SHA-256, so the files are hashed (and the forged hash refused).
    man = json.loads((b / MANIFEST).read_text())
    man["files"]["config.json"]["sha256"] = "0" * 64
    (b / MANIFEST).write_text(json.dumps(man))
    record["files"] = {rel: bundle_mod._file_stat(b / rel) for rel in man["files"]}
    stamp.write_text(json.dumps(record))
    with pytest.raises(BundleError, match="config.json: SHA-256 does not match"):
        load_manifest(b)


# ------------------------------------------------------------------------------------------------------------ CLI


def run_cli(*args, env=None):
    env = {**os.environ, "MMSRAREC_QUIET": "1", **(env or {})}
    return subprocess.run([sys.executable, "-m", "mmsrarec_edge.cli", *map(str, args)], capture_output=True,
                          text=True, timeout=120, env=env, cwd=ROOT)


def test_cli_keygen_and_a_tampered_bundle_refused_in_one_line(tmp_path):
    env = {"XDG_CONFIG_HOME": str(tmp_path / "config"), "MMSRAREC_CACHE_DIR": str(tmp_path / "cache")}
    r = run_cli("keygen", "--out", tmp_path / "k", env=env)
    assert r.returncode == 0, r.stderr
    assert "bundle-signing.pub" in r.stdout
    b = fake_bundle(tmp_path / "b")
    signing.sign_manifest(b, signing.load_private_key(tmp_path / "k" / "bundle-signing.key"))
    (b / "config.json").write_text('{"catalog": {"x": 1}}\n')
    write_manifest(b)
    r = run_cli("recommend", b, "--user", "1", "--trust-key", tmp_path / "k" / "bundle-signing.pub", env=env)
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "manifest.sig: the signature does not match manifest.json" in lines[0], r.stderr
    r = run_cli("--trust-key", tmp_path / "k" / "bundle-signing.pub", "summarize-item", b, "--text", "a red shirt",
                env=env)
    assert r.returncode == 2 and "signature does not match" in r.stderr, r.stderr
    r = run_cli("recommend", b, "--user", "1", "--no-verify", "--trust-key", tmp_path / "missing.pub", env=env)
    assert r.returncode == 2 and "missing.pub does not exist" in r.stderr, r.stderr


def test_cli_build_engine_refuses_a_signed_bundle_without_its_key(keys, tmp_path):
    priv, pub, kid = keys
    b = fake_bundle(tmp_path / "b")
    signing.sign_manifest(b, signing.load_private_key(priv))
    env = {"XDG_CONFIG_HOME": str(tmp_path / "config"), "MMSRAREC_CACHE_DIR": str(tmp_path / "cache")}
    r = run_cli("build-engine", b, env=env)
    assert r.returncode == 2 and f"the bundle is signed (key {kid})" in r.stderr, r.stderr
