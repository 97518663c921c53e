"""A standard Triton model repository from a bundle, for clusters running NVIDIA's Triton containers. Torch-free.

  REPO/
    <graph>/config.pbtxt + 1/model.onnx   every bundle graph ("recommender.decoder" -> model recommender_decoder) as
                                          an `onnxruntime_onnx` model, or 1/model.plan as `tensorrt_plan` where
                                          `mmsrarec-edge build-engine` built an engine (gpu repositories only)
    recommend/config.pbtxt + 1/model.py   Python backend: retrieval, prompt building and shared-prefix scoring (the
             + 1/bundle/                  torch-free runtime's Recommender over its own copy of the bundle, hard
                                          links where the file system allows); with `bls` its decoder, embedding and
                                          SASRec calls go to the ONNX models above as BLS requests
    mmsrarec_repo.json                    what was written, from which bundle (Triton ignores files at the root)

Each config has instance groups (KIND_GPU or KIND_CPU), dynamic batching, and on gpu ONNX models the TensorRT
execution accelerator (FP16 when the bundle's profile asks for it). Tensor names, types and shapes come from the
bundle manifest, which the exporter wrote from the graphs; the graph's kind (manifest `kind`, core/graph_kinds.py)
says which axis is Triton's batch axis (max_batch_size > 0, dims without it; a kind without one, e.g. the scorer
whose prefix inputs keep batch 1, gets max_batch_size 0) and which of the bundle's limits bounds it: max_batch_size is
the larger of the requested one and that limit (the runtime's scorer sends up to `limits.max_candidates` rows per
decoder call). A kind this code does not know falls back to the shapes: a symbolic axis that every input and output
starts with is the batch axis, with no limit of its own. The Python model's stub must find `mmsrarec_edge` and its
runtime dependencies (`pip install mmsrarec-edge[cpu]` in the serving image, or an EXECUTION_ENV_PATH environment).
"""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

from ..core.bundle import load_manifest
from ..core.errors import UserError
from ..core.graph_kinds import GRAPH_KINDS, TritonIO, shared_batch_axis, triton_io
from ..core.io_utils import atomic_dir, link_or_copy
from . import protocol

MARKER = "mmsrarec_repo.json"
PYTHON_MODEL = Path(__file__).with_name("triton_python_model.py")
TRITON_TYPES = {"float32": "TYPE_FP32", "float16": "TYPE_FP16", "float64": "TYPE_FP64", "int64": "TYPE_INT64",
                "int32": "TYPE_INT32", "int8": "TYPE_INT8", "uint8": "TYPE_UINT8", "bool": "TYPE_BOOL"}


@dataclass
class RepoConfig:
    device: str = "gpu"  # gpu | cpu
    instances: int = 1
    max_batch_size: int = 8
    max_queue_delay_us: int = 2000
    bls: bool = False
    precision: str | None = None  # graph variant (default: each graph's default variant)

    def check(self) -> None:
        if self.device not in ("gpu", "cpu"):
            raise UserError(f"--device must be gpu or cpu, got {self.device!r}")
        if self.instances < 1 or self.max_batch_size < 1 or self.max_queue_delay_us < 0:
            raise UserError("--instances and --max-batch must be >= 1, --queue-delay-us >= 0")


def model_name(graph: str) -> str:
    return graph.replace(".", "_")


def _q(s: str) -> str:
    return json.dumps(s)  # a protobuf text-format string literal (JSON escaping is a subset it accepts)


def _tensor(name: str, dtype: str, dims) -> str:
    return f"  {{ name: {_q(name)} data_type: {dtype} dims: [ {', '.join(str(d) for d in dims)} ] }}"


def graph_tensors(graph: str, entry: dict, limits: dict) -> tuple[TritonIO, int]:
    """(Triton's tensors of a manifest graph entry, the bundle's limit on its batch axis), from the graph's kind."""
    cls = GRAPH_KINDS.get(entry.get("kind", ""))
    if cls is None:  # a kind this code does not know: the shapes alone decide
        return triton_io(entry, shared_batch_axis(entry)), 0
    kind = cls(graph)
    return kind.triton_io(entry), kind.max_batch(limits)


def _common(name: str, cfg: RepoConfig, max_batch: int, kind: str, extra: str = "") -> list[str]:
    lines = [f"name: {_q(name)}", *([extra] if extra else []), f"max_batch_size: {max_batch}"]
    return lines + [f"instance_group [ {{ count: {cfg.instances} kind: {kind} }} ]"] + \
        ([f"dynamic_batching {{ max_queue_delay_microseconds: {cfg.max_queue_delay_us} }}"] if max_batch > 0 else [])


def graph_config(name: str, tensors: TritonIO, cfg: RepoConfig, limit: int, platform: str, fp16: bool,
                 workspace_mb: int) -> str:
    """config.pbtxt of one graph model (`tensors`, `limit`: graph_tensors)."""
    max_batch = max(cfg.max_batch_size, limit) if tensors.batched else 0
    kind = "KIND_GPU" if cfg.device == "gpu" else "KIND_CPU"
    lines = _common(name, cfg, max_batch, kind, f"platform: {_q(platform)}")
    for key, specs in (("input", tensors.inputs), ("output", tensors.outputs)):
        body = ",\n".join(_tensor(n, TRITON_TYPES[dtype], dims) for n, dtype, dims in specs)
        lines.append(f"{key} [\n{body}\n]")
    if platform == "onnxruntime_onnx" and cfg.device == "gpu":
        params = {"precision_mode": "FP16" if fp16 else "FP32", "max_workspace_size_bytes": str(workspace_mb << 20),
                  "trt_engine_cache_enable": "1", "trt_engine_cache_path": "/tmp/triton_trt_cache"}
        ps = " ".join(f"parameters {{ key: {_q(k)} value: {_q(v)} }}" for k, v in params.items())
        lines.append("optimization { execution_accelerators { gpu_execution_accelerator : [ "
                     f"{{ name : \"tensorrt\" {ps} }} ] }} }}")
    return "\n".join(lines) + "\n"


def python_config(cfg: RepoConfig, graph_models: dict[str, str]) -> str:
    """config.pbtxt of the Python-backend `recommend` model (tensors from serving/protocol.py)."""
    lines = _common(protocol.MODEL_NAME, cfg, cfg.max_batch_size, "KIND_CPU", 'backend: "python"')
    for key, specs in (("input", protocol.INPUTS), ("output", protocol.OUTPUTS)):
        body = ",\n".join(_tensor(s.name, s.triton_type, s.shape) for s in specs)
        lines.append(f"{key} [\n{body}\n]")
    params = {"bundle": "bundle", "mode": "bls" if cfg.bls else "local", "graph_models": json.dumps(graph_models)}
    lines += [f"parameters {{ key: {_q(k)} value: {{ string_value: {_q(v)} }} }}" for k, v in params.items()]
    return "\n".join(lines) + "\n"


def write_model_repository(bundle: Path, out: Path, cfg: RepoConfig | None = None) -> list[str]:
    """Write the repository (atomically: a temp dir renamed to `out`); returns the model names written."""
    cfg = cfg or RepoConfig()
    cfg.check()
    man = load_manifest(Path(bundle), verify=True)
    limits = man.config().get("limits", {})
    trt = man.profile.get("tensorrt", {})
    fp16 = bool(trt.get("fp16", True)) or man.precision == "fp16"
    engines = man.data.get("engines", {}) or {}
    written, graph_models = [], {}
    with atomic_dir(Path(out), MARKER) as tmp:
        for graph, entry in man.graphs.items():
            name = model_name(graph)
            vdir = tmp / name / "1"
            vdir.mkdir(parents=True)
            if cfg.device == "gpu" and graph in engines:
                platform = "tensorrt_plan"
                link_or_copy(man.path(engines[graph]["file"]), vdir / "model.plan")
            else:
                platform = "onnxruntime_onnx"
                variants = man.graph_variants(graph)
                src = man.graph_file(graph, cfg.precision if cfg.precision in variants else None)
                link_or_copy(src, vdir / "model.onnx")
                rel_data = str(src.relative_to(man.root)) + ".data"
                if rel_data in man.files:  # external weights keep the file name the graph refers to
                    link_or_copy(man.path(rel_data), vdir / Path(rel_data).name)
            tensors, limit = graph_tensors(graph, entry, limits)
            (tmp / name / "config.pbtxt").write_text(
                graph_config(name, tensors, cfg, limit, platform, fp16, int(trt.get("workspace_mb", 2048))))
            graph_models[graph] = name
            written.append(name)
        pdir = tmp / protocol.MODEL_NAME / "1"
        for rel in dict.fromkeys([*man.files, "manifest.json"]):
            link_or_copy(man.root / rel, pdir / "bundle" / rel)
        shutil.copy2(PYTHON_MODEL, pdir / "model.py")
        (tmp / protocol.MODEL_NAME / "config.pbtxt").write_text(python_config(cfg, graph_models))
        written.append(protocol.MODEL_NAME)
        (tmp / MARKER).write_text(json.dumps({"bundle": str(Path(bundle).resolve()), "models": written,
                                              "config": asdict(cfg)}, indent=2) + "\n")
    return written
