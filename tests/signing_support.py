"""Helpers for the README troubleshooting rows on signatures and the writer lock (tests/test_reliability_cli.py):
key pairs, signed and tampered copies of the tiny bundle, and a writer that meets a held lock."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

CLI = [sys.executable, "-m", "mmsrarec_edge.cli"]


def keypair(w, name: str) -> tuple[Path, Path]:
    """(private, public) key files under the work dir; one name per case (cases run in parallel threads)."""
    from mmsrarec_edge.core.signing import PRIVATE_NAME, PUBLIC_NAME, generate_keypair

    d = w.root / "keys" / name
    if not (d / PUBLIC_NAME).exists():
        generate_keypair(d)
    return d / PRIVATE_NAME, d / PUBLIC_NAME


def pubkey(w, name: str) -> Path:
    return keypair(w, name)[1]


def privkey(w, name: str) -> Path:
    return keypair(w, name)[0]


def signed(w, name: str, key: str) -> Path:
    """A copy of the tiny bundle signed with key `key`."""
    from mmsrarec_edge.core.signing import load_private_key, sign_manifest

    d = w.root / "bundles" / name
    shutil.copytree(w.b, d)
    sign_manifest(d, load_private_key(privkey(w, key)))
    return d


def tampered_signed(w, name: str, key: str) -> Path:
    """Signed, then one graph changed and the manifest re-hashed: what checksums alone accept."""
    d = signed(w, name, key)
    graph = d / "recommender" / "decoder.onnx"
    data = bytearray(graph.read_bytes())
    data[len(data) // 2] ^= 1
    graph.write_bytes(bytes(data))
    m = json.loads((d / "manifest.json").read_text())
    m["files"]["recommender/decoder.onnx"] = {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
    (d / "manifest.json").write_text(json.dumps(m))
    return d


@dataclass
class LockResult:
    rc: int
    stdout: str
    stderr: str
    after: dict


def locked_add(env: dict, cwd: Path):
    """A runner: `summarize-item --add-to-catalog` while another writer holds the bundle's lock (0.5 s timeout)."""
    def run(w) -> LockResult:
        from mmsrarec_edge.runtime.catalog import bundle_lock

        d = w.root / "bundles" / "locked"
        shutil.copytree(w.b, d)
        with bundle_lock(d):
            r = subprocess.run([*CLI, "summarize-item", str(d), "--text", "a red kite", "--add-to-catalog",
                                "--item-id", "5002"], capture_output=True, text=True, timeout=300,
                               env={**env, "MMSRAREC_LOCK_TIMEOUT": "0.5"}, cwd=cwd)
        left = [p.name for p in d.parent.iterdir() if p.name.startswith(".locked.") and p.is_dir()]
        return LockResult(r.returncode, r.stdout, r.stderr, {"left": left})
    return run


__all__ = ["keypair", "pubkey", "privkey", "signed", "tampered_signed", "locked_add"]


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    """No trusted keys of the machine's user, and a private stamp cache (autouse where imported)."""
    from mmsrarec_edge.core import signing

    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    monkeypatch.setenv("MMSRAREC_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv(signing.TRUST_ENV, raising=False)
    signing.clear_cli_trust_keys()
    yield
    signing.clear_cli_trust_keys()
