"""Export profiles: small declarative TOML files (packaged ones in mmsrarec_edge/profiles/), parsed into a dataclass.

A profile says which graphs go into a bundle, at which precision, for which execution providers, the shape limits that
size TensorRT optimization profiles, parity tolerances, and TensorRT build settings. Unknown keys and bad values are
errors naming the file and the key (a typo must not silently fall back to a default). Torch-free.
"""

from __future__ import annotations

import sys
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from ..core.config import check_value
from ..core.errors import UserError
from ..core.graph_kinds import known_graphs

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

PRECISIONS = ("fp32", "int8", "int4", "fp16")
# every graph a bundle can hold, in export order (each has a kind in core/graph_kinds.py): the default `graphs`
ALL_GRAPHS = ("summarizer.vision", "summarizer.embed", "summarizer.decoder",
              "recommender.vision", "recommender.embed", "recommender.decoder", "recommender.scorer",
              "sasrec.user_encoder")
PROVIDERS = ("CPUExecutionProvider", "CUDAExecutionProvider", "TensorrtExecutionProvider")
EXPORTERS = ("legacy", "dynamo")
PARITY_PROVIDERS = ("cpu", "cuda")
# recommender.decoder beside recommender.scorer: "always" ships both (Triton BLS and TensorRT serve the merged decoder);
# "fallback" ships the merged decoder only when the model has no scorer graph, so each recommender weight is stored
# once per precision (the scorer serves every path `recommend` takes: the prompt's prefix is never empty).
MERGED_DECODER = ("always", "fallback")


@dataclass
class Limits:
    """Shape limits the runtime promises to stay within (TensorRT profiles are built from them)."""

    max_candidates: int = 21  # 1 positive + 20 negatives (the paper's protocol)
    max_prefix_tokens: int = 384  # recommender shared prefix (instruction + history + collaborative keywords)
    max_suffix_tokens: int = 96  # recommender per-candidate part (+ image tokens when the prompt has them)
    max_prompt_tokens: int = 256  # summarizer prompt (+ image tokens)
    max_new_tokens: int = 32  # summarizer generation
    summarizer_batch: int = 8
    user_batch: int = 64  # SASRec user encoder batch
    images_batch: int = 8  # vision graphs


@dataclass
class Parity:
    """Parity gate settings; tolerances left at 0 use parity.DEFAULT_TOLERANCES of the precision."""

    cases: int = 3  # random cases per graph (real prompts are added when the export gets a dataset)
    seed: int = 0
    features: float = 0.0  # vision/embed/user-encoder outputs: max|diff| / max|reference|
    logits: float = 0.0  # decoder logits: max|diff| / max|reference|
    score: float = 0.0  # recommender p(yes)/(p(yes)+p(no)), absolute
    only: str = ""  # the precisions the overrides above apply to, comma-separated ("" = every variant shipped)
    # The execution provider the gate's sessions run on: cpu (default; every export machine has it) or cuda (a GPU
    # profile gated on the GPU it targets: the onnxruntime-gpu build and a CUDA device; benchmarks/device/).
    provider: str = "cpu"


@dataclass
class Vision:
    """Vision towers with a dynamic patch grid (Qwen2-VL, Qwen2.5-VL) export at one fixed input resolution."""

    image_size: int = 0  # square side in pixels, a multiple of patch x merge size; 0 = the checkpoint's own


@dataclass
class TensorRT:
    enabled: bool = False  # write profiles either way; `enabled` marks bundles meant for `build-engine`
    fp16: bool = True
    workspace_mb: int = 2048
    builder_optimization_level: int = 3


@dataclass
class ExportProfile:
    name: str = "cpu-fp32"
    description: str = ""
    precision: str = "fp32"
    providers: list[str] = field(default_factory=lambda: ["CPUExecutionProvider"])
    graphs: list[str] = field(default_factory=lambda: list(ALL_GRAPHS))
    # ONNX variants shipped per graph (default: [precision]). TensorRT profiles ship fp32 and let TensorRT build fp16.
    variants: list[str] = field(default_factory=list)
    fp32_graphs: list[str] = field(default_factory=list)  # graphs shipped fp32 only, whatever `precision` says
    exporter: str = "legacy"
    merged_decoder: str = "always"  # MERGED_DECODER
    limits: Limits = field(default_factory=Limits)
    parity: Parity = field(default_factory=Parity)
    tensorrt: TensorRT = field(default_factory=TensorRT)
    vision: Vision = field(default_factory=Vision)

    def graph_variants(self, graph: str) -> list[str]:
        """The ONNX precision variants written for `graph`."""
        return ["fp32"] if graph in self.fp32_graphs else list(self.variants or [self.precision])

    def default_variant(self, graph: str) -> str:
        v = self.graph_variants(graph)
        return self.precision if self.precision in v else v[0]

    def to_dict(self) -> dict:
        return asdict(self)


_SECTIONS = {"limits": Limits, "parity": Parity, "tensorrt": TensorRT, "vision": Vision}


def _build(cls, data: dict, path, prefix: str = ""):
    obj = cls()
    known = {f.name for f in fields(cls)}
    for key, value in data.items():
        where = f"{prefix}{key}"
        if key not in known:
            allowed = ", ".join(sorted(known))
            section = ("in [" + prefix[:-1] + "]") if prefix else "keys"
            raise UserError(f"{path}: unknown key {where!r}", f"allowed {section}: {allowed}")
        default = getattr(obj, key)
        if key in _SECTIONS and cls is ExportProfile:
            if not isinstance(value, dict):
                raise UserError(f"{path}: {key} must be a [{key}] table")
            setattr(obj, key, _build(_SECTIONS[key], value, path, f"{key}."))
        else:
            setattr(obj, key, check_value(default, value, path, where))
    return obj


def parse_profile(data: dict, path: str | Path = "<profile>") -> ExportProfile:
    prof = _build(ExportProfile, data, path)
    if prof.precision not in PRECISIONS:
        raise UserError(f"{path}: precision must be one of {', '.join(PRECISIONS)}, got {prof.precision!r}")
    if prof.exporter not in EXPORTERS:
        raise UserError(f"{path}: exporter must be one of {', '.join(EXPORTERS)}, got {prof.exporter!r}")
    if prof.merged_decoder not in MERGED_DECODER:
        raise UserError(f"{path}: merged_decoder must be one of {', '.join(MERGED_DECODER)}, "
                        f"got {prof.merged_decoder!r}")
    if prof.parity.only and not set(prof.parity.only.split(",")) <= set(PRECISIONS):
        raise UserError(f"{path}: parity.only must be one of {', '.join(PRECISIONS)}, got {prof.parity.only!r}")
    bad = [v for v in prof.variants if v not in PRECISIONS]
    if bad:
        raise UserError(f"{path}: unknown variant {bad[0]!r}", f"variants are among {', '.join(PRECISIONS)}")
    known = list(dict.fromkeys([*ALL_GRAPHS, *known_graphs()]))  # a registered kind's graphs are known too
    for key in ("graphs", "fp32_graphs"):
        bad = [g for g in getattr(prof, key) if g not in known]
        if bad:
            raise UserError(f"{path}: unknown graph {bad[0]!r} in {key}", f"known graphs: {', '.join(known)}")
    bad = [p for p in prof.providers if p not in PROVIDERS]
    if bad or not prof.providers:
        raise UserError(f"{path}: unknown execution provider {bad[0] if bad else '(none given)'!r}",
                        f"known providers: {', '.join(PROVIDERS)}")
    for name, value in asdict(prof.limits).items():
        if value < 1:
            raise UserError(f"{path}: limits.{name} must be >= 1, got {value}")
    if prof.tensorrt.workspace_mb < 16:
        raise UserError(f"{path}: tensorrt.workspace_mb must be >= 16, got {prof.tensorrt.workspace_mb}")
    if prof.vision.image_size < 0:
        raise UserError(f"{path}: vision.image_size must be >= 0 (0 = the checkpoint's own), got "
                        f"{prof.vision.image_size}")
    if prof.parity.provider not in PARITY_PROVIDERS:
        raise UserError(f"{path}: parity.provider must be one of {', '.join(PARITY_PROVIDERS)}, "
                        f"got {prof.parity.provider!r}")
    if prof.parity.cases < 1:
        raise UserError(f"{path}: parity.cases must be >= 1")
    return prof


def load_profile(path: Path) -> ExportProfile:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"export profile {path} not found",
                        "pass a packaged profile by name (e.g. cpu-int8) or an existing TOML file")
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"{path}: not valid TOML: {exc}") from exc
    return parse_profile(data, path)
