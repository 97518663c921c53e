"""Bundle loader and verifier (torch-free): read manifest.json, check every file against it, refuse anything off.

A bundle (layout in mmsrarec_edge/exporter/__init__.py) is trusted only through its manifest: every file it holds is
listed with its SHA-256 and size, and `load_manifest(dir, verify=True)` refuses with a BundleError naming the file and
the problem when a listed file is missing, has another size or hash (truncated, corrupt or tampered), when a file is
present that the manifest does not list, when a file type could carry code (only .onnx, .onnx.data, .json, .parquet,
.safetensors, .hnsw, .bin, .engine are allowed: no pickle), or when the format version is one this code does not know.
`verify=False` skips the hashing (seconds on multi-GB bundles) but still checks presence, sizes and file types.

Verified stamp: hashing a multi-GB bundle on every open takes seconds, so after a full check `load_manifest` writes a
stamp to <cache_dir()>/verified/<SHA-256 of the bundle's real path>.json (cache_dir: $MMSRAREC_CACHE_DIR, else
$XDG_CACHE_HOME/mmsrarec-edge, else ~/.cache/mmsrarec-edge) holding the manifest's own SHA-256 and each file's (size,
mtime_ns, ctime_ns, inode, device). `verify=True` rehashes every file only when there is no stamp, the stamp is for
another manifest, or any file's stat differs; otherwise sizes + stamp suffice. `verify="full"` always rehashes. The
limit: a change that keeps a file's size, mtime and ctime (root resetting the clock, writes to the raw block device, or
silent media corruption) is only caught by a full check. An unwritable cache directory just means a full check every
time. The stamp is trusted as the user's own files are: whoever can write the user's cache directory can also skip the
hashing (not the signature check).

Signatures (core/signing.py): a bundle may hold one file its manifest does not list, `manifest.sig`, the Ed25519
signature of manifest.json. When trusted keys are configured the signature is checked on every open (also with
`verify=False`): the manifest pins every file's SHA-256, the signature pins the manifest.

Also here: safetensors I/O through `safetensors.numpy` (no torch) for the cached features and item embeddings.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import BundleError, UserError
from .io_utils import atomic_path, sha256_file
from .signing import SIGNATURE, trusted_keys, verify_manifest_signature

FORMAT = "mmsrarec-bundle"
FORMAT_VERSION = 1
SUPPORTED_VERSIONS = (1,)
MANIFEST = "manifest.json"
ALLOWED_SUFFIXES = (".onnx", ".onnx.data", ".json", ".parquet", ".safetensors", ".hnsw", ".bin", ".engine")


def allowed_file(name: str) -> bool:
    return name.endswith(ALLOWED_SUFFIXES)


@dataclass
class Manifest:
    """A verified bundle: `data` is manifest.json, `root` the bundle directory."""

    root: Path
    data: dict
    signed_by: str | None = None  # the trusted key id whose signature was checked, None when none was

    @property
    def format_version(self) -> int:
        return int(self.data["format_version"])

    @property
    def files(self) -> dict[str, dict]:
        return self.data["files"]

    @property
    def graphs(self) -> dict[str, dict]:
        return self.data.get("graphs", {})

    @property
    def profile(self) -> dict:
        return self.data.get("profile", {})

    @property
    def precision(self) -> str:
        return self.profile.get("precision", "fp32")

    def path(self, rel: str) -> Path:
        if rel not in self.files:
            raise BundleError(f"{self.root}: {rel} is not part of this bundle", "re-export the bundle")
        return self.root / rel

    def config(self) -> dict:
        return self.read_json("config.json")

    def read_json(self, rel: str):
        """A listed JSON file of the bundle; unreadable JSON is a BundleError (it matched the manifest, so the
        export that wrote it was broken or the manifest was rewritten by hand)."""
        path = self.path(rel)
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise BundleError(f"{path}: not valid JSON ({exc})", "re-export the bundle") from exc

    def has_graph(self, graph: str) -> bool:
        return graph in self.graphs

    def graph_variants(self, graph: str) -> list[str]:
        return list(self._graph(graph)["variants"])

    def graph_file(self, graph: str, precision: str | None = None) -> Path:
        """Path of a graph's variant; without `precision`, the bundle's default variant of that graph."""
        entry = self._graph(graph)
        precision = precision or entry.get("default_variant") or "fp32"
        if precision not in entry["variants"]:
            raise BundleError(f"{self.root}: graph {graph} has no {precision} variant",
                              f"it has: {', '.join(entry['variants'])}")
        return self.path(entry["variants"][precision]["file"])

    def tensorrt_profiles(self, graph: str) -> list[dict]:
        return self._graph(graph).get("tensorrt", {}).get("profiles", [])

    def _graph(self, graph: str) -> dict:
        if graph not in self.graphs:
            raise BundleError(f"{self.root}: the bundle has no graph {graph!r}",
                              f"it has: {', '.join(self.graphs) or 'none'}")
        return self.graphs[graph]


def _read_manifest(root: Path) -> tuple[dict, bytes]:
    if not root.is_dir():
        raise BundleError(f"bundle {root} not found (not a directory)",
                          "pass the directory `mmsrarec-edge export` wrote")
    path = root / MANIFEST
    if not path.is_file():
        raise BundleError(f"{path}: missing", "this is not a bundle, or its export was interrupted; re-export it")
    raw = path.read_bytes()
    try:
        data = json.loads(raw.decode("utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BundleError(f"{path}: not valid JSON ({exc})", "the manifest is corrupt; re-export the bundle") from exc
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise BundleError(f"{path}: not an mmsrarec bundle manifest "
                          f"(format {data.get('format') if isinstance(data, dict) else None!r})")
    version = data.get("format_version")
    if version not in SUPPORTED_VERSIONS:
        raise BundleError(f"{path}: unknown bundle format version {version!r} (this code reads version "
                          f"{', '.join(map(str, SUPPORTED_VERSIONS))})",
                          "upgrade mmsrarec-edge, or re-export the bundle with this version")
    if not isinstance(data.get("files"), dict):
        raise BundleError(f"{path}: has no file list")
    return data, raw


def _safe_rel(root: Path, rel: str) -> Path:
    p = Path(rel)
    if p.is_absolute() or ".." in p.parts or not rel:
        raise BundleError(f"{root / MANIFEST}: file entry {rel!r} points outside the bundle")
    return root / p


def cache_dir() -> Path:
    """The user cache of verified-bundle stamps and TensorRT engines: $MMSRAREC_CACHE_DIR, else
    $XDG_CACHE_HOME/mmsrarec-edge, else ~/.cache/mmsrarec-edge. Never inside a bundle (a bundle is data)."""
    env = os.environ.get("MMSRAREC_CACHE_DIR")
    if env:
        return Path(env)
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "mmsrarec-edge"


def _stamp_path(root: Path) -> Path:
    key = hashlib.sha256(os.fsencode(os.path.realpath(root))).hexdigest()[:32]
    return cache_dir() / "verified" / f"{key}.json"


def _file_stat(path: Path) -> list[int]:
    st = path.stat()
    return [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, st.st_dev]


def _read_stamp(root: Path) -> dict:
    try:
        stamp = json.loads(_stamp_path(root).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return stamp if isinstance(stamp, dict) else {}


def _write_stamp(root: Path, manifest_sha: str, stats: dict[str, list[int]]) -> None:
    """Best effort: a cache that cannot be written only costs the next open a full check."""
    path = _stamp_path(root)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path, ".json") as tmp:
            tmp.write_text(json.dumps({"bundle": os.path.realpath(root), "manifest_sha256": manifest_sha,
                                       "files": stats}), encoding="utf-8")
    except (OSError, UserError):
        pass


def load_manifest(bundle_dir: Path, verify: bool | str = True) -> Manifest:
    """Load and check a bundle's manifest (module docstring). `verify`: True (hash unless the verified stamp
    matches), "full" (always hash), False (sizes and file types only). Raises BundleError naming the file and the
    problem."""
    if verify not in (True, False, "full", "auto", "none"):
        raise ValueError(f"verify must be True, False, 'auto', 'full' or 'none', got {verify!r}")
    verify = {"auto": True, "none": False}.get(verify, verify) if isinstance(verify, str) else verify
    root = Path(bundle_dir)
    data, raw = _read_manifest(root)
    keys = trusted_keys()
    signed_by = verify_manifest_signature(root, raw, keys) if keys else None
    listed = data["files"]
    stats: dict[str, list[int]] = {}
    for rel, meta in listed.items():
        path = _safe_rel(root, rel)
        if not isinstance(meta, dict):
            raise BundleError(f"{root / MANIFEST}: file entry {rel!r} is not an object", "re-export the bundle")
        if not allowed_file(path.name):
            raise BundleError(f"{path}: file type not allowed in a bundle", f"allowed: {', '.join(ALLOWED_SUFFIXES)}")
        if path.is_symlink() or not path.is_file():
            raise BundleError(f"{path}: missing" if not path.exists() else f"{path}: not a regular file",
                              "the bundle is incomplete; re-export it")
        stats[rel] = _file_stat(path)
        size = stats[rel][0]
        if size != meta.get("bytes"):
            raise BundleError(f"{path}: size {size} bytes, manifest says {meta.get('bytes')} (truncated or modified)",
                              "re-export the bundle")
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root).as_posix()
        if rel in (MANIFEST, SIGNATURE) or path.is_dir() and not path.is_symlink():
            continue
        if rel not in listed:
            raise BundleError(f"{path}: unexpected file, not listed in the manifest",
                              "remove it; a bundle holds only the files its manifest lists")
    if verify:
        manifest_sha = hashlib.sha256(raw).hexdigest()
        stamp = _read_stamp(root) if verify != "full" else {}
        fresh = (stamp.get("manifest_sha256") == manifest_sha and stamp.get("bundle") == os.path.realpath(root)
                 and stamp.get("files") == stats)
        if not fresh:
            for rel, meta in listed.items():
                if sha256_file(root / rel) != meta.get("sha256"):
                    raise BundleError(f"{root / rel}: SHA-256 does not match the manifest (corrupt or tampered)",
                                      "re-export the bundle")
            if {rel: _file_stat(root / rel) for rel in listed} == stats:  # unchanged while hashing
                _write_stamp(root, manifest_sha, stats)
    return Manifest(root, data, signed_by)


# ---------------------------------------------------------------- safetensors (numpy side of the safetensors package)


def read_safetensors(path: Path) -> dict[str, np.ndarray]:
    """A .safetensors file as numpy arrays (safetensors.numpy: no torch); a damaged file is a BundleError."""
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise BundleError(f"{path}: not a readable safetensors file ({exc})", "re-export the bundle") from exc


def write_safetensors(path: Path, tensors: dict[str, np.ndarray], metadata: dict[str, str] | None = None) -> None:
    """Write numpy arrays as safetensors (safetensors.numpy; readable by every safetensors reader)."""
    from safetensors.numpy import save_file

    save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()}, str(path), metadata=metadata)
