"""ONNX Runtime sessions for the torch-free runtime: execution provider, precision variant, session options.

Provider choice: TensorRT, then CUDA, then CPU -- the first that `onnxruntime.get_available_providers()` offers --
unless the user names one (`--provider cpu|cuda|tensorrt`); naming one that this onnxruntime build lacks is a
UserError that says what is available. A session on TensorRT or CUDA keeps the slower providers behind it, so a node
TensorRT cannot take still runs.

Precision: a bundle holds each graph in one or more variants (fp32, int8, fp16). The default is the precision of the
export profile the bundle was made with; `--precision` picks another, and a graph that lacks the asked variant runs in
fp32 (profiles may pin numerically fragile graphs to fp32). Two provider-specific rules:
- TensorRT builds its own fp16 engine from the fp32 graph (`trt_fp16_enable`): feeding it the onnxruntime-converted
  fp16 graph would add Cast nodes TensorRT cannot fuse, so `fp16` on TensorRT means fp32 graph + fp16 engine.
- int8 variants are dynamic-quantization graphs (MatMulInteger, DynamicQuantizeLinear): CPU kernels. They run on GPU
  providers only by falling back to the CPU, which is accepted but slow.

TensorRT engines are cached under a user cache directory (`$MMSRAREC_CACHE_DIR`, else `$XDG_CACHE_HOME/mmsrarec-edge`,
else `~/.cache/mmsrarec-edge`), in a folder keyed by the graph's SHA-256: never inside the bundle, which is verified
read-only.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from ..errors import BundleError, UserError

PROVIDERS = {"tensorrt": "TensorrtExecutionProvider", "cuda": "CUDAExecutionProvider", "cpu": "CPUExecutionProvider"}
PREFERENCE = ("tensorrt", "cuda", "cpu")
PRECISIONS = ("fp32", "fp16", "int8")


def _ort():
    try:
        import onnxruntime
    except ImportError as exc:  # pragma: no cover - the cpu or gpu extra provides it
        raise UserError("onnxruntime is not installed", "pip install 'mmsrarec-edge[cpu]' (or [gpu])") from exc
    return onnxruntime


def available_providers() -> list[str]:
    """Short names (tensorrt, cuda, cpu) of the providers this onnxruntime build offers, fastest first."""
    offered = set(_ort().get_available_providers())
    return [short for short in PREFERENCE if PROVIDERS[short] in offered]


def resolve_provider(requested: str | None = None, available: list[str] | None = None) -> str:
    """The provider to run on (a short name). `requested` accepts cpu/cuda/tensorrt or the full ORT name."""
    available = available_providers() if available is None else list(available)
    if requested is None or requested == "auto":
        if not available:  # pragma: no cover - every onnxruntime build has the CPU provider
            raise UserError("onnxruntime offers no execution provider")
        return available[0]
    key = requested.strip().lower()
    by_full = {v.lower(): k for k, v in PROVIDERS.items()}
    key = by_full.get(key, key.removesuffix("executionprovider"))
    if key not in PROVIDERS:
        raise UserError(f"unknown execution provider {requested!r}", f"choose one of: {', '.join(PREFERENCE)}")
    if key not in available:
        hint = f"available here: {', '.join(available) or 'none'}"
        if key in ("cuda", "tensorrt"):
            hint += "; GPU providers need the onnxruntime-gpu build (pip install 'mmsrarec-edge[gpu]')"
            if key == "tensorrt":
                hint += " and TensorRT libraries"
        raise UserError(f"execution provider {key!r} ({PROVIDERS[key]}) is not available", hint)
    return key


def resolve_precision(requested: str | None, default: str, provider: str) -> str:
    """The precision to load graphs in. `default` is the bundle's export-profile precision."""
    precision = (requested or default or "fp32").lower()
    if precision not in PRECISIONS:
        raise UserError(f"unknown precision {requested!r}", f"choose one of: {', '.join(PRECISIONS)}")
    return precision


def user_cache_dir() -> Path:
    env = os.environ.get("MMSRAREC_CACHE_DIR")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "mmsrarec-edge"


def _shape_list(shapes: dict[str, list[int]]) -> str:
    return ",".join(f"{name}:{'x'.join(str(int(d)) for d in dims)}" for name, dims in shapes.items())


def tensorrt_options(cache_dir: Path, fp16: bool, profile: dict | None = None, workspace_mb: int = 2048,
                     optimization_level: int = 3) -> dict:
    """TensorRT EP options. `profile`: {input: {"min": dims, "opt": dims, "max": dims}} (from the bundle manifest)."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    opts = {
        "trt_engine_cache_enable": "True",
        "trt_engine_cache_path": str(cache_dir),
        "trt_timing_cache_enable": "True",
        "trt_timing_cache_path": str(cache_dir),
        "trt_fp16_enable": "True" if fp16 else "False",
        "trt_max_workspace_size": str(int(workspace_mb) << 20),
        "trt_builder_optimization_level": str(int(optimization_level)),
    }
    if profile:
        for key in ("min", "opt", "max"):
            opts[f"trt_profile_{key}_shapes"] = _shape_list({n: p[key] for n, p in profile.items()})
    return opts


@dataclass
class SessionConfig:
    """How to open every session of one Recommender/Summarizer."""

    provider: str = "cpu"  # a short name from resolve_provider
    precision: str = "fp32"
    threads: int | None = None  # intra-op threads; None = onnxruntime's default (one per physical core)
    tensorrt_workspace_mb: int = 2048
    tensorrt_optimization_level: int = 3

    @classmethod
    def resolve(cls, provider: str | None = None, precision: str | None = None, threads: int | None = None,
                default_precision: str = "fp32", **kw) -> "SessionConfig":
        if threads is not None and int(threads) < 1:
            raise UserError(f"threads must be >= 1, got {threads}")
        p = resolve_provider(provider)
        return cls(p, resolve_precision(precision, default_precision, p), threads, **kw)


def session_options(threads: int | None = None):
    ort = _ort()
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads:
        so.intra_op_num_threads = int(threads)
    so.inter_op_num_threads = 1  # the decoder is one chain of ops: parallel branches would only contend for cores
    so.log_severity_level = 3
    return so


def provider_chain(cfg: SessionConfig, cache_key: str = "default", trt_profile: dict | None = None) -> list:
    """The `providers` argument of InferenceSession for `cfg.provider`, with slower fallbacks behind it."""
    offered = available_providers()
    chain: list = []
    if cfg.provider == "tensorrt":
        cache = user_cache_dir() / "tensorrt" / cache_key
        chain.append((PROVIDERS["tensorrt"], tensorrt_options(
            cache, cfg.precision == "fp16", trt_profile, cfg.tensorrt_workspace_mb, cfg.tensorrt_optimization_level)))
    if cfg.provider in ("tensorrt", "cuda") and "cuda" in offered:
        chain.append(PROVIDERS["cuda"])
    chain.append(PROVIDERS["cpu"])
    return chain


def graph_precision_for(cfg: SessionConfig, variants: list[str]) -> str:
    """Which stored variant of a graph to load, given the session config and the variants the bundle holds."""
    if cfg.provider == "tensorrt" and cfg.precision == "fp16":
        return "fp32"  # TensorRT makes its own fp16 engine (module docstring)
    return cfg.precision if cfg.precision in variants else "fp32"


def open_session(path: Path, cfg: SessionConfig, cache_key: str | None = None, trt_profile: dict | None = None):
    """An InferenceSession for one graph file; a graph onnxruntime cannot load is a BundleError."""
    path = Path(path)
    if not path.is_file():
        raise BundleError(f"graph {path} is missing", "re-export the bundle")
    ort = _ort()
    try:
        return ort.InferenceSession(str(path), session_options(cfg.threads),
                                    providers=provider_chain(cfg, cache_key or path.stem, trt_profile))
    except Exception as exc:  # onnxruntime raises its own exception types (Fail, InvalidGraph, ...)
        raise BundleError(f"onnxruntime cannot load {path.name}: {type(exc).__name__}: {str(exc).strip()[:300]}",
                          "the graph is corrupt or needs a newer onnxruntime; re-export the bundle") from exc


def session_providers(sess) -> list[str]:
    return [p for p in sess.get_providers()]
