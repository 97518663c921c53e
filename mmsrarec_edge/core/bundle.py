"""Bundle loader and verifier (torch-free): read manifest.json, check every file against it, refuse anything off.

A bundle (layout in mmsrarec_edge/exporter/__init__.py) is trusted only through its manifest: every file it holds is
listed with its SHA-256 and size, and `load_manifest(dir, verify=True)` refuses with a BundleError naming the file and
the problem when a listed file is missing, has another size or hash (truncated, corrupt or tampered), when a file is
present that the manifest does not list, when a file type could carry code (only .onnx, .onnx.data, .json, .parquet,
.safetensors, .hnsw, .bin, .engine are allowed: no pickle), or when the format version is one this code does not know.
`verify=False` skips the hashing (seconds on multi-GB bundles) but still checks presence, sizes and file types.

Also here: safetensors I/O through `safetensors.numpy` (no torch) for the cached features and item embeddings.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import BundleError
from .io_utils import sha256_file

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


def _read_manifest(root: Path) -> dict:
    if not root.is_dir():
        raise BundleError(f"bundle {root} not found (not a directory)",
                          "pass the directory `mmsrarec-edge export` wrote")
    path = root / MANIFEST
    if not path.is_file():
        raise BundleError(f"{path}: missing", "this is not a bundle, or its export was interrupted; re-export it")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
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
    return data


def _safe_rel(root: Path, rel: str) -> Path:
    p = Path(rel)
    if p.is_absolute() or ".." in p.parts or not rel:
        raise BundleError(f"{root / MANIFEST}: file entry {rel!r} points outside the bundle")
    return root / p


def load_manifest(bundle_dir: Path, verify: bool = True) -> Manifest:
    """Load and check a bundle's manifest (module docstring). Raises BundleError naming the file and the problem."""
    root = Path(bundle_dir)
    data = _read_manifest(root)
    listed = data["files"]
    for rel, meta in listed.items():
        path = _safe_rel(root, rel)
        if not isinstance(meta, dict):
            raise BundleError(f"{root / MANIFEST}: file entry {rel!r} is not an object", "re-export the bundle")
        if not allowed_file(path.name):
            raise BundleError(f"{path}: file type not allowed in a bundle", f"allowed: {', '.join(ALLOWED_SUFFIXES)}")
        if path.is_symlink() or not path.is_file():
            raise BundleError(f"{path}: missing" if not path.exists() else f"{path}: not a regular file",
                              "the bundle is incomplete; re-export it")
        size = path.stat().st_size
        if size != meta.get("bytes"):
            raise BundleError(f"{path}: size {size} bytes, manifest says {meta.get('bytes')} (truncated or modified)",
                              "re-export the bundle")
        if verify and sha256_file(path) != meta.get("sha256"):
            raise BundleError(f"{path}: SHA-256 does not match the manifest (corrupt or tampered)",
                              "re-export the bundle")
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root).as_posix()
        if rel == MANIFEST or path.is_dir() and not path.is_symlink():
            continue
        if rel not in listed:
            raise BundleError(f"{path}: unexpected file, not listed in the manifest",
                              "remove it; a bundle holds only the files its manifest lists")
    return Manifest(root, data)


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
