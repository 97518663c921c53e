"""ONNX Runtime TensorRT execution provider options for one graph of a bundle, from its manifest. Torch-free.

The manifest carries each graph's optimization profiles (exporter/tensorrt.py); ONNX Runtime's TensorRT EP takes them as
`trt_profile_{min,opt,max}_shapes` strings, where an input named a second time starts the next profile. Engines are
cached outside the bundle (the bundle is verified read-only): by default under the runtime's user cache dir, in a
folder keyed by the graph file's SHA-256 so a re-exported graph never reuses a stale engine.
"""

from __future__ import annotations

from pathlib import Path

from ..core.bundle import Manifest, cache_dir, load_manifest


def provider_shape_strings(profiles: list[dict]) -> dict[str, str]:
    """ORT TensorRT EP options trt_profile_{min,opt,max}_shapes; an input named again starts the next profile."""
    out = {}
    for key in ("min", "opt", "max"):
        parts = [f"{name}:{'x'.join(str(d) for d in dims[key])}"
                 for p in profiles for name, dims in p["shapes"].items()]
        out[f"trt_profile_{key}_shapes"] = ",".join(parts)
    return out


def _default_cache() -> Path:
    return cache_dir() / "tensorrt"


def tensorrt_provider_options(bundle: Path | Manifest, graph: str, cache_dir: Path | None = None,
                              fp16: bool | None = None, profile: str | None = None) -> dict[str, str]:
    """Options for ("TensorrtExecutionProvider", options). `profile` picks one named profile (default: all of them)."""
    man = bundle if isinstance(bundle, Manifest) else load_manifest(bundle, verify=False)
    trt = man.profile.get("tensorrt", {})
    profiles = man.tensorrt_profiles(graph)
    if profile is not None:
        profiles = [p for p in profiles if p["name"] == profile]
        if not profiles:
            from ..core.errors import BundleError

            names = ", ".join(p["name"] for p in man.tensorrt_profiles(graph))
            raise BundleError(f"graph {graph} has no TensorRT profile {profile!r}", f"it has: {names}")
    sha = man.files[man.graphs[graph]["variants"]["fp32"]["file"]]["sha256"] if "fp32" in man.graph_variants(graph) \
        else "no-fp32"
    cache = Path(cache_dir) if cache_dir else _default_cache()
    cache = cache / f"{graph}-{sha[:16]}"
    cache.mkdir(parents=True, exist_ok=True)
    opts = {
        "trt_engine_cache_enable": "True",
        "trt_engine_cache_path": str(cache),
        "trt_timing_cache_enable": "True",
        "trt_timing_cache_path": str(cache),
        "trt_fp16_enable": str(bool(trt.get("fp16", True) if fp16 is None else fp16)),
        # ORT's own switch for keeping LayerNorm-pattern layers (Pow, ReduceMean) in fp32 under fp16.
        "trt_layer_norm_fp32_fallback": "True",
        "trt_max_workspace_size": str(int(trt.get("workspace_mb", 2048)) << 20),
        "trt_builder_optimization_level": str(int(trt.get("builder_optimization_level", 3))),
    }
    if profiles:
        opts.update(provider_shape_strings(profiles))
    return opts
