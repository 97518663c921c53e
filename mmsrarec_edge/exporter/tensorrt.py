"""TensorRT: optimization profiles and precision constraints for each graph, and `build-engine`. Torch-free.

Profiles are derived from the export profile's [limits] and written into the manifest, so an engine built on the device
(here with the TensorRT Python API, or by ONNX Runtime's TensorRT EP through runtime.tensorrt.tensorrt_provider_options)
covers exactly the shapes the runtime will feed. Each graph kind owns its ranges (core/graph_kinds.py, which lists
every kind's profiles and dims); `dim_ranges` and `compute_profiles` below look the kind up.

Precision constraints for fp16 engines: layers computing normalisation statistics and softmax stay fp32 -- the ONNX
nodes listed under `fp32_nodes` (the ops in variants.FP32_OPS) and TensorRT layers of the types in FP32_LAYER_TYPES --
with OBEY_PRECISION_CONSTRAINTS, mirroring what the ONNX fp16 variant keeps in fp32.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..core.errors import UserError
from ..core.graph_kinds import graph_kind

FP32_LAYER_TYPES = ["NORMALIZATION", "SOFTMAX", "REDUCE"]


def dim_ranges(graph: str, kind: str, limits) -> list[tuple[str, dict[str, dict]]]:
    """(profile name, {dim name: {min, opt, max}}) for one graph, from Limits (dataclass or dict)."""
    return graph_kind(kind, graph).dim_ranges(limits)


def compute_profiles(graph: str, kind: str, inputs: list[dict], limits) -> list[dict]:
    """TensorRT optimization profiles for a graph, [{"name", "shapes": {input: {"min": dims, "opt": dims, "max":
    dims}}}] (GraphKind.tensorrt_profiles; `inputs` as in the manifest)."""
    return graph_kind(kind, graph).tensorrt_profiles(inputs, limits)


# ---------------------------------------------------------------- engine building (needs TensorRT)


def _tensorrt():
    try:
        import tensorrt
    except ImportError as exc:
        raise UserError("TensorRT is not installed (python module `tensorrt`)",
                        "build engines on the target device, where JetPack or NVIDIA's pip index provides it; "
                        "or run with onnxruntime's TensorRT provider, which builds and caches engines itself") from exc
    return tensorrt


def build_engine(onnx_path: Path, profiles: list[dict], out_path: Path, fp16: bool = True, workspace_mb: int = 2048,
                 fp32_nodes: list[str] | None = None, optimization_level: int = 3) -> dict:
    """Parse an ONNX graph, add its optimization profiles and precision constraints, write a serialized engine."""
    trt = _tensorrt()
    from ..core.io_utils import atomic_path

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = 0
    if hasattr(trt.NetworkDefinitionCreationFlag, "EXPLICIT_BATCH"):  # TensorRT < 10; implied from 10 on
        flags = 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise UserError(f"TensorRT cannot parse {onnx_path}: {errors[:500]}",
                        "check the TensorRT version's ONNX opset support")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_mb) << 20)
    if hasattr(config, "builder_optimization_level"):
        config.builder_optimization_level = int(optimization_level)
    kept = 0
    if fp16:
        config.set_flag(trt.BuilderFlag.FP16)
        config.set_flag(trt.BuilderFlag.OBEY_PRECISION_CONSTRAINTS)
        types = {getattr(trt.LayerType, t) for t in FP32_LAYER_TYPES if hasattr(trt.LayerType, t)}
        nodes = set(fp32_nodes or [])
        floats = (trt.float32, trt.float16)
        for i in range(network.num_layers):
            layer = network.get_layer(i)
            named = any(layer.name == n or layer.name.startswith((n + "_", n + " ")) for n in nodes)
            # Only float layers: shape arithmetic (int Reduce, ...) must keep its own types.
            if not (layer.type in types or named) or layer.num_outputs == 0 \
                    or layer.get_output(0).dtype not in floats:
                continue
            layer.precision = trt.float32
            for o in range(layer.num_outputs):
                if layer.get_output(o).dtype in floats:
                    layer.set_output_type(o, trt.float32)
            kept += 1
    for prof in profiles:
        p = builder.create_optimization_profile()
        for name, dims in prof["shapes"].items():
            p.set_shape(name, dims["min"], dims["opt"], dims["max"])
        config.add_optimization_profile(p)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise UserError(f"TensorRT failed to build an engine for {onnx_path}", "rerun with a larger --workspace")
    with atomic_path(Path(out_path), ".engine") as tmp:
        tmp.write_bytes(bytes(serialized))
    return {"tensorrt_version": trt.__version__, "fp16": fp16, "workspace_mb": workspace_mb, "fp32_layers": kept,
            "profiles": [p["name"] for p in profiles]}


def build_bundle_engines(bundle_dir: Path, fp16: bool | None = None, workspace_mb: int | None = None,
                         graphs: list[str] | None = None, progress=None) -> dict:
    """Build an engine per graph of a verified bundle into BUNDLE/engines/ and record them in its manifest."""
    from ..core.bundle import MANIFEST, load_manifest
    from ..core.io_utils import sha256_file, write_json

    _tensorrt()  # fail before verifying a large bundle
    man = load_manifest(bundle_dir, verify=True)
    trt_cfg = man.profile.get("tensorrt", {})
    fp16 = trt_cfg.get("fp16", True) if fp16 is None else fp16
    workspace_mb = int(workspace_mb or trt_cfg.get("workspace_mb", 2048))
    if workspace_mb < 16:
        raise UserError(f"--workspace must be >= 16 MB, got {workspace_mb}")
    names = graphs or [g for g, e in man.graphs.items() if "fp32" in e["variants"]]
    unknown = [g for g in names if g not in man.graphs]
    if unknown:
        raise UserError(f"bundle has no graph {unknown[0]!r}", f"it has: {', '.join(man.graphs)}")
    data = json.loads((man.root / MANIFEST).read_text())
    for g in names:
        entry = man.graphs[g]
        if "fp32" not in entry["variants"]:
            raise UserError(f"graph {g} has no fp32 variant to build an engine from",
                            "export with a profile that ships fp32 graphs (tensorrt-fp16, jetson-orin, cpu-fp32)")
        rel = f"engines/{g}.{'fp16' if fp16 else 'fp32'}.engine"
        info = build_engine(man.graph_file(g, "fp32"), entry["tensorrt"]["profiles"], man.root / rel, fp16,
                            workspace_mb, entry["tensorrt"].get("fp32_nodes"),
                            trt_cfg.get("builder_optimization_level", 3))
        data["files"][rel] = {"sha256": sha256_file(man.root / rel), "bytes": (man.root / rel).stat().st_size}
        data.setdefault("engines", {})[g] = {"file": rel, **info}
        if progress:
            progress(graph=g)
    write_json(man.root / MANIFEST, data)
    return data["engines"]
