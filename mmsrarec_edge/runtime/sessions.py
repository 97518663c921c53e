"""ONNX Runtime sessions for the torch-free runtime: execution provider, precision variant, session options.

Provider choice: TensorRT, then CUDA, then CPU -- the first that `onnxruntime.get_available_providers()` offers --
unless the user names one (`--provider cpu|cuda|tensorrt`); naming one that this onnxruntime build lacks is a
UserError that says what is available. A session on TensorRT or CUDA keeps the slower providers behind it, so a node
TensorRT cannot take still runs.

Precision: a bundle holds each graph in one or more variants (fp32, int8, int4, fp16). The default is each graph's
default variant (the precision of the export profile the bundle was made with); `--precision` picks another; a graph
shipped in fp32 only (profiles pin numerically fragile graphs to fp32) stays fp32, and any other missing variant is a
UserError naming what the bundle has. Two provider-specific rules:
- TensorRT builds its own fp16 engine from the fp32 graph (`trt_fp16_enable`): feeding it the onnxruntime-converted
  fp16 graph would add Cast nodes TensorRT cannot fuse, so `fp16` on TensorRT means fp32 graph + fp16 engine when
  the bundle has the fp32 graph.
- int8 variants are dynamic-quantization graphs (MatMulInteger, DynamicQuantizeLinear) and int4 variants weight-only
  block-quantized graphs (MatMulNBits, GatherBlockQuantized): CPU kernels. They run on GPU providers only by falling
  back to the CPU, which is accepted but slow.

Optimization level: ORT_ENABLE_EXTENDED on the CPU provider, ORT_ENABLE_ALL on the GPU ones. Level ALL adds only
layout (NCHWc) transformations to EXTENDED's fusions (DynamicQuantizeMatMul, attention, GELU, ...), which transformer
graphs do not use, and costs time at every start: measured on the 0.47B int8 scorer graph, 2 threads, same kernels
and bit-identical outputs (p50 1.60 s vs 1.64 s at ALL), session opened in 1.66 s instead of 2.22 s. Level ALL also
crashed (segfault) while building the session of some fp16 graphs on the CPU with ONNX Runtime 1.32 (the SASRec user
encoder). The export's parity gate opens every graph through `open_session` with the variant it checks, so it
measures these same options.

TensorRT options come from the bundle manifest (runtime/tensorrt.py: optimization profiles from the export limits,
engine and timing caches under a user cache directory -- `$MMSRAREC_CACHE_DIR`, else `$XDG_CACHE_HOME/mmsrarec-edge`,
else `~/.cache/mmsrarec-edge` -- keyed by the graph's SHA-256): never inside the bundle, which is verified read-only.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..core.errors import BundleError, UserError

PROVIDERS = {"tensorrt": "TensorrtExecutionProvider", "cuda": "CUDAExecutionProvider", "cpu": "CPUExecutionProvider"}
PREFERENCE = ("tensorrt", "cuda", "cpu")
PRECISIONS = ("fp32", "fp16", "int8", "int4")


def _ort():
    try:
        import onnxruntime
    except ImportError as exc:  # pragma: no cover - the cpu or gpu extra provides it
        raise UserError("onnxruntime is not installed", "install the package's cpu extra (or its gpu extra)") from exc
    return onnxruntime


def available_providers() -> list[str]:
    """Short names (tensorrt, cuda, cpu) of the providers this onnxruntime build offers, fastest first."""
    offered = set(_ort().get_available_providers())
    return [short for short in PREFERENCE if PROVIDERS[short] in offered]


def tensorrt_present() -> bool:
    """Whether TensorRT's runtime can be found: its Python wheels, or libnvinfer on the library path."""
    import ctypes.util
    import importlib.util

    return any(importlib.util.find_spec(m) is not None for m in ("tensorrt", "tensorrt_libs")) or bool(
        ctypes.util.find_library("nvinfer"))


def resolve_provider(requested: str | None = None, available: list[str] | None = None) -> str:
    """The provider to run on (a short name). `requested` accepts cpu/cuda/tensorrt or the full ORT name."""
    available = available_providers() if available is None else list(available)
    if requested is None or requested == "auto":
        if not available:  # pragma: no cover - every onnxruntime build has the CPU provider
            raise UserError("onnxruntime offers no execution provider")
        # onnxruntime-gpu lists TensorRT whether or not TensorRT's libraries are installed; without them a session
        # would only fall back to CUDA after an error, so the automatic choice skips it (`--provider tensorrt` asks)
        usable = [p for p in available if p != "tensorrt" or tensorrt_present()]
        return (usable or available)[0]
    key = requested.strip().lower()
    by_full = {v.lower(): k for k, v in PROVIDERS.items()}
    key = by_full.get(key, key.removesuffix("executionprovider"))
    if key not in PROVIDERS:
        raise UserError(f"unknown execution provider {requested!r}", f"choose one of: {', '.join(PREFERENCE)}")
    if key not in available:
        hint = f"available here: {', '.join(available) or 'none'}"
        if key in ("cuda", "tensorrt"):
            hint += "; GPU providers need the onnxruntime-gpu build (the package's gpu extra) instead of onnxruntime"
            if key == "tensorrt":
                hint += " and TensorRT libraries"
        raise UserError(f"execution provider {key!r} ({PROVIDERS[key]}) is not available", hint)
    return key


def resolve_precision(requested: str | None) -> str | None:
    """A validated precision name, or None for "what the bundle's export profile chose"."""
    if requested is None or requested == "auto":
        return None
    precision = requested.strip().lower()
    if precision not in PRECISIONS:
        raise UserError(f"unknown precision {requested!r}", f"choose one of: {', '.join(PRECISIONS)}")
    return precision


@dataclass
class SessionConfig:
    """How to open every session of one Recommender/Summarizer."""

    provider: str = "cpu"  # a short name from resolve_provider
    precision: str | None = None  # None: each graph's default variant in the bundle
    threads: int | None = None  # intra-op threads; None = onnxruntime's default (one per physical core)
    tensorrt_workspace_mb: int = 2048  # used only when no bundle manifest gives TensorRT settings

    @classmethod
    def resolve(cls, provider: str | None = None, precision: str | None = None, threads: int | None = None,
                **kw) -> "SessionConfig":
        if threads is not None and int(threads) < 1:
            raise UserError(f"threads must be >= 1, got {threads}")
        p = resolve_provider(provider)
        return cls(p, resolve_precision(precision), threads, **kw)


def optimization_level(provider: str = "cpu", variant: str | None = None) -> str:
    """The GraphOptimizationLevel name for a graph variant on a provider (module docstring: why EXTENDED on the
    CPU). `variant` is kept for callers that pass it; every CPU variant opens alike."""
    return "ORT_ENABLE_EXTENDED" if provider == "cpu" else "ORT_ENABLE_ALL"


def session_options(threads: int | None = None, level: str = "ORT_ENABLE_ALL"):
    ort = _ort()
    so = ort.SessionOptions()
    so.graph_optimization_level = getattr(ort.GraphOptimizationLevel, level)
    if threads:
        so.intra_op_num_threads = int(threads)
    so.inter_op_num_threads = 1  # the decoder is one chain of ops: parallel branches would only contend for cores
    so.log_severity_level = 3
    return so


def provider_chain(cfg: SessionConfig, trt_options: dict | None = None) -> list:
    """The `providers` argument of InferenceSession for `cfg.provider`, with slower fallbacks behind it.
    `trt_options`: TensorRT EP options (runtime.tensorrt.tensorrt_provider_options for a bundle graph)."""
    offered = available_providers()
    chain: list = []
    if cfg.provider == "tensorrt":
        opts = dict(trt_options or {})
        opts.setdefault("trt_fp16_enable", str(cfg.precision == "fp16"))
        opts.setdefault("trt_max_workspace_size", str(int(cfg.tensorrt_workspace_mb) << 20))
        chain.append((PROVIDERS["tensorrt"], opts))
    if cfg.provider in ("tensorrt", "cuda") and "cuda" in offered:
        chain.append(PROVIDERS["cuda"])
    chain.append(PROVIDERS["cpu"])
    return chain


def graph_precision_for(cfg: SessionConfig, variants: list[str], default: str | None = None, graph: str = "graph",
                        bundle_has: bool = True) -> str:
    """Which stored variant of a graph to load: the asked precision if the graph has it; a graph shipped in fp32
    only (pinned by the export profile) stays fp32 when other graphs of the bundle (`bundle_has`) have the asked
    precision; otherwise the asked precision is missing -> UserError."""
    default = default or (variants[0] if variants else "fp32")
    want = cfg.precision
    if cfg.provider == "tensorrt" and (want or default) == "fp16" and "fp32" in variants:
        return "fp32"  # TensorRT makes its own fp16 engine (module docstring)
    if want is None:
        return default
    if want in variants:
        return want
    if list(variants) == ["fp32"] and bundle_has:
        return "fp32"
    raise UserError(f"the bundle has no {want} variant of {graph}", f"it has: {', '.join(variants)}; "
                    "pass another --precision or re-export with a profile that writes it")


def open_session(path: Path, cfg: SessionConfig, trt_options: dict | None = None, variant: str | None = None):
    """An InferenceSession for one graph file; a graph onnxruntime cannot load is a BundleError. `variant`: the
    file's precision variant (fp32, fp16, int8) when known; it picks the optimization level (module docstring)."""
    path = Path(path)
    if not path.is_file():
        raise BundleError(f"graph {path} is missing", "re-export the bundle")
    ort = _ort()
    try:
        return ort.InferenceSession(str(path), session_options(cfg.threads, optimization_level(cfg.provider, variant)),
                                    providers=provider_chain(cfg, trt_options))
    except Exception as exc:  # onnxruntime raises its own exception types (Fail, InvalidGraph, ...)
        raise BundleError(f"onnxruntime cannot load {path.name}: {type(exc).__name__}: {str(exc).strip()[:300]}",
                          "the graph is corrupt or needs a newer onnxruntime; re-export the bundle") from exc


def bundle_graph_variant(manifest, graph: str, cfg: SessionConfig) -> str:
    """The precision variant of `graph` that `cfg` loads from a verified bundle (runtime.bundle.Manifest)."""
    default = manifest.graphs[graph].get("default_variant") if manifest.has_graph(graph) else None
    has = any(cfg.precision in e.get("variants", {}) for e in manifest.graphs.values())
    return graph_precision_for(cfg, manifest.graph_variants(graph), default, graph, has)


def open_bundle_graph(manifest, graph: str, cfg: SessionConfig):
    """A session for one graph of a verified bundle, in the variant `cfg` asks for, with the manifest's TensorRT
    profiles and an engine cache outside the bundle when running on TensorRT."""
    from .tensorrt import tensorrt_provider_options

    variant = bundle_graph_variant(manifest, graph, cfg)
    path = manifest.graph_file(graph, variant)
    trt = None
    if cfg.provider == "tensorrt":
        trt = tensorrt_provider_options(manifest, graph, fp16=cfg.precision == "fp16")
    return open_session(path, cfg, trt, variant)
