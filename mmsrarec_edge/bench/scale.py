"""The scale report: every ladder size (ladder.py) measured against llama.cpp, onnxruntime-genai, optimum and PyTorch
on the same job, in one report (benchmarks/scale_report.py writes benchmarks/results/scale/).

The job: one recommendation = one shared prefix (history n=5 + collaborative keywords) and 21 candidate suffixes,
p(yes)/(p(yes)+p(no)) at each suffix's last token. The cases are the exported bundle's own (`Recommender.build_case`:
the token ids the runtime scores), saved once per size (cases.json) and fed to every engine; text-only prompts, so
image tokens are not part of this comparison. Engines (ENGINES), each loaded in a worker process:
- "ours": the bundle's runtime Recommender/CandidateScorer (torch-free), fp32 and every other variant the bundle has;
- "pytorch": eager with prefix sharing (recommend/scoring.py TorchScorer.score_shared), fp32 (the reference every
  engine's scores are compared with) and bf16;
- "optimum": ORTModelForCausalLM, one full prompt per candidate (decoders up to OPTIMUM_MAX_PARAMS);
- "llama.cpp": F32/Q8_0/Q4_0 GGUF (gguf_export.py + llama.cpp's quantizer), prefix once + seq_cp + one batch;
- "ort-genai": onnxruntime-genai's builder graphs fp32/int8/int4, prefix once + append/rewind per candidate.
Timing is measure_interleaved (harness.py) over the engines of one worker at one thread count; when the engines of a
size do not fit in memory together they are split into groups (`plan_groups`), each group its own worker, and every
group also runs an anchor engine (ours, int8 when the bundle has it) so the drift between groups shows in the report.

Per size and thread count the worker also measures this machine's fp32 and int8 GEMM rates with ONNX Runtime on the
scorer's MLP shape ([prefix + suffix tokens, hidden] x [hidden, intermediate]: MatMul vs DynamicQuantizeLinear +
MatMulInteger, best of the repeats): the FLOP floor of a recommendation (latency.floor_ms) at each rate.
"""

from __future__ import annotations

import gc
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from ..core.errors import UserError
from ..core.io_utils import save_figure

ENGINES: dict[str, tuple[str, ...]] = {
    "ours": ("fp32", "int8", "int4"),
    "pytorch": ("fp32", "bf16"),
    "optimum": ("fp32",),
    "llama.cpp": ("f32", "q8_0", "q4_0"),
    "ort-genai": ("fp32", "int8", "int4"),
}
LABELS = {"ours": "ours (ONNX Runtime scorer graph)", "pytorch": "PyTorch eager, prefix sharing",
          "optimum": "optimum ORTModelForCausalLM, per candidate", "llama.cpp": "llama.cpp (prefix + seq_cp + 1 batch)",
          "ort-genai": "onnxruntime-genai (prefix + append/rewind)"}
REFERENCE = ("pytorch", "fp32")
OPTIMUM_MAX_PARAMS = 650e6  # decoder parameters: optimum per candidate runs up to the 0.5B rungs
CANDIDATES, HISTORY = 21, 5


@dataclass
class ScaleConfig:
    sizes: tuple[str, ...] = ("toy",)
    threads: tuple[int, ...] = (1, 2)
    engines: tuple[str, ...] = tuple(ENGINES)
    repeats: int = 10
    max_seconds: float = 60.0  # per engine and worker: a slow engine gets fewer samples (n is reported)
    cases: int = 3  # requests per size: case 0 is timed, all are compared with PyTorch fp32
    layers: int | None = None  # override every size's depth (tests)
    mem_budget_gb: float | None = None  # None: 80% of the memory available when a size starts
    keep_artifacts: bool = False  # False: a measured size's checkpoints, bundle, GGUF and genai folders are deleted
    seed: int = 0

    def to_dict(self) -> dict:
        return asdict(self)


def log(msg: str) -> None:
    print(f"[scale {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------------------------ sizes on disk


@dataclass
class SizeDirs:
    root: Path

    def __post_init__(self):
        self.root = Path(self.root)

    ckpt = property(lambda self: self.root / "ckpt")
    rec = property(lambda self: self.root / "rec")
    bundle = property(lambda self: self.root / "bundle")
    decoder = property(lambda self: self.root / "decoder_hf")
    gguf = property(lambda self: self.root / "gguf")
    genai = property(lambda self: self.root / "genai")
    optimum = property(lambda self: self.root / "optimum")
    logs = property(lambda self: self.root / "logs")
    cases = property(lambda self: self.root / "cases.json")
    reference = property(lambda self: self.root / "reference.npz")
    info = property(lambda self: self.root / "prepared.json")


def _dir_bytes(path: Path) -> int:
    path = Path(path)
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.is_dir() else 0


def available_precisions(engine: str, d: SizeDirs, info: dict) -> list[str]:
    if engine == "ours":
        if not (d.bundle / "manifest.json").is_file():
            return []
        man = json.loads((d.bundle / "manifest.json").read_text())
        graph = "recommender.scorer" if "recommender.scorer" in man["graphs"] else "recommender.decoder"
        return sorted(man["graphs"][graph]["variants"], key=lambda p: (p != "fp32", p))
    if engine == "optimum" and info.get("decoder_params", 0) > OPTIMUM_MAX_PARAMS:
        return []
    return list(ENGINES[engine])


def prepare(size, d: SizeDirs, scaffold, engines: tuple[str, ...], threads: int, seed: int = 0,
            keep: bool = False) -> dict:
    """Everything a size's engines load: checkpoint -> recommender dir -> bundle, and the decoder's plain HF folder ->
    GGUF files (F32, Q8_0, Q4_0), onnxruntime-genai folders, the optimum export. Steps already done are skipped;
    a failed step is recorded in info["errors"] and the engines that needed it are left out. Without `keep`, the
    checkpoint goes once the recommender directory (which holds the trained copy) exists, and the decoder folder
    once the peers' files are built: the 1.5B rung needs ~15 GB less disk."""
    from . import ladder

    d.root.mkdir(parents=True, exist_ok=True)
    d.logs.mkdir(exist_ok=True)
    info = json.loads(d.info.read_text()) if d.info.is_file() else {}
    info.setdefault("errors", {})
    info.setdefault("steps_s", {})

    def step(name, fn):
        if name in info["steps_s"] and name not in info["errors"]:
            return
        t0 = time.perf_counter()
        log(f"{size.name}: {name} ...")
        try:
            fn()
            info["errors"].pop(name, None)
        except Exception as exc:  # recorded: the report shows which step failed and the engines it cost
            info["errors"][name] = f"{type(exc).__name__}: {str(exc)[:400]}"
            log(f"{size.name}: {name} FAILED: {info['errors'][name]}")
        info["steps_s"][name] = round(time.perf_counter() - t0, 2)
        d.info.write_text(json.dumps(info, indent=1) + "\n")

    def checkpoint():
        info.update(ladder.write_checkpoint(size, d.ckpt, seed))

    def train():
        if (d.rec / "recommender.json").is_file():
            return
        if not (d.ckpt / "ladder.json").is_file():
            raise UserError("no checkpoint")
        res = ladder.train_recommender(d.ckpt, scaffold, d.rec, threads=threads, log=d.logs / "train.log")
        info["train"] = {k: res.get(k) for k in ("wall_s", "peak_rss_mb")}

    def export():
        res = ladder.export_bundle(d.rec, scaffold, d.bundle, threads=threads, log=d.logs / "export.log")
        if not res.get("skipped"):
            info["export"] = {"wall_s": res["wall_s"], "peak_rss_mb": res["peak_rss_mb"], "rc": res["rc"]}
        if res["rc"] != 0:
            tail = (d.logs / "export.log").read_text()[-600:] if (d.logs / "export.log").is_file() else ""
            killed = " (killed: out of memory?)" if res["rc"] in (-9, 137) else ""
            raise RuntimeError(f"export exited {res['rc']}{killed}: {tail}")
        info["bundle_bytes"] = ladder.bundle_bytes(d.bundle)

    def decoder():
        ladder.extract_decoder_folder(d.rec / "model", d.decoder, genai_compat=True)

    def gguf():
        from .gguf_export import write_gguf
        from .peers import quantize_gguf

        f32 = d.gguf / "f32.gguf"
        if not f32.is_file():
            from transformers import AutoModelForCausalLM

            lm = AutoModelForCausalLM.from_pretrained(d.decoder, dtype="float32")
            write_gguf(lm, f32)
            del lm
            gc.collect()
        for kind in ("q8_0", "q4_0"):
            quantize_gguf(f32, d.gguf / f"{kind}.gguf", kind, threads=max(2, threads))

    def genai():
        from .peers import build_genai

        build_genai(d.decoder, {p: d.genai / p for p in ENGINES["ort-genai"]}, d.root / ".genai_cache",
                    d.logs / "genai.log")
        shutil.rmtree(d.root / ".genai_cache", ignore_errors=True)

    def optimum():
        from .peers import export_optimum

        export_optimum(d.decoder, d.optimum)

    step("checkpoint", checkpoint)
    step("train", train)
    if (d.rec / "recommender.json").is_file():
        info["artifact_bytes_checkpoint"] = info.get("artifact_bytes_checkpoint") or _dir_bytes(d.ckpt)
        if not keep:
            shutil.rmtree(d.ckpt, ignore_errors=True)
    if "ours" in engines:
        step("export", export)
    peers = {name: fn for name, fn in {"llama.cpp": gguf, "ort-genai": genai, "optimum": optimum}.items()
             if name in engines and (name != "optimum" or info.get("decoder_params", 0) <= OPTIMUM_MAX_PARAMS)}
    pending = [n for n in peers if n not in info["steps_s"] or n in info["errors"]]
    if pending and not (d.decoder / "config.json").is_file():
        info["steps_s"].pop("decoder", None)  # deleted after an earlier run's peers were built: extract it again
    if pending:
        step("decoder", decoder)
    for name, fn in peers.items():
        step(name, fn)
    if not keep:
        shutil.rmtree(d.decoder, ignore_errors=True)
    info["artifact_bytes"] = {
        "checkpoint": info.get("artifact_bytes_checkpoint") or _dir_bytes(d.ckpt), "bundle": _dir_bytes(d.bundle),
        **{f"llama.cpp/{p}": _dir_bytes(d.gguf / f"{p}.gguf") for p in ENGINES["llama.cpp"]},
        **{f"ort-genai/{p}": _dir_bytes(d.genai / p) for p in ENGINES["ort-genai"]},
        "optimum/fp32": _dir_bytes(d.optimum)}
    d.info.write_text(json.dumps(info, indent=1) + "\n")
    return info


# ------------------------------------------------------------------------------------------------ memory planning


def engine_memory_mb(engine: str, precision: str, info: dict) -> float:
    """Rough resident memory of one loaded engine (weights x bytes per weight x copies), for grouping only."""
    D, T, E = info.get("decoder_params", 0), info.get("params", 0), info.get("embedding_params", 0)
    per = {"fp32": 4.0, "f32": 4.0, "bf16": 2.0, "int8": 1.1, "q8_0": 1.07, "int4": 0.6, "q4_0": 0.57, "fp16": 2.0}
    b = per.get(precision, 4.0)
    if engine == "pytorch":
        mb = (2.0 if precision == "bf16" else 4.0) * T
    elif engine == "ours":
        mb = 2 * b * D + 4.0 * E  # the merged decoder and the scorer graph each hold every weight
    elif engine == "optimum":
        mb = 4.0 * D * 1.3
    elif engine == "ort-genai":
        mb = b * D + (4.0 * E if precision != "fp32" else 0)  # embeddings stay fp32 beside quantized weights
    else:
        mb = b * D
    return mb / 2**20 + 150


def plan_groups(engines: list[tuple[str, str]], info: dict, budget_mb: float) -> list[list[tuple[str, str]]]:
    """Engines packed greedily into groups that fit `budget_mb`; with more than one group, an anchor (ours, int8 if
    the bundle has it) joins every group. The reference (PyTorch fp32) is in the first group."""
    engines = sorted(engines, key=lambda e: (e != REFERENCE, e[0] != "ours"))
    total = sum(engine_memory_mb(*e, info) for e in engines)
    if total <= budget_mb:
        return [engines]
    ours = [e for e in engines if e[0] == "ours"]
    anchor = next((e for e in ours if e[1] == "int8"), ours[0] if ours else None)
    rest = [e for e in engines if e != anchor]
    base = engine_memory_mb(*anchor, info) if anchor else 0.0
    groups: list[list[tuple[str, str]]] = []
    cur, used = [], base
    for e in rest:
        m = engine_memory_mb(*e, info)
        if cur and used + m > budget_mb:
            groups.append(cur)
            cur, used = [], base
        cur.append(e)
        used += m
    if cur:
        groups.append(cur)
    return [([anchor] if anchor else []) + g for g in groups]


# ------------------------------------------------------------------------------------------------ the worker


def build_cases(d: SizeDirs, n: int, seed: int = 0, provider: str | None = None) -> list[dict]:
    """`n` requests (history n=5 of known users, 21 sampled candidates) from the bundle's own Recommender (on
    `provider`, default the fastest onnxruntime offers; the requests are token ids, the same on any provider)."""
    from ..runtime.recommender import Recommender
    from .ladder import pick_history

    rec = Recommender(d.bundle, provider=provider, precision="fp32", threads=1, verify=False)
    cases = []
    users = sorted(u for u, h in rec.retrieval.histories.items() if len(h) >= HISTORY)
    rng = np.random.default_rng(seed)
    for k in range(n):
        hist = (list(rec.retrieval.histories[users[int(rng.integers(len(users)))]][-HISTORY:]) if users
                else pick_history(d.rec / "retrieval", HISTORY, seed + k))
        case = rec.build_case(history=hist, candidates=f"sampled:{CANDIDATES}", seed=seed + k)
        if any(f is not None for f in case.features):
            raise UserError("the ladder compares text-only prompts; this bundle's candidates carry images")
        cases.append({"history": [int(i) for i in hist], "candidates": [int(c) for c in case.candidates],
                      "prefix": [int(t) for t in case.prefix],
                      "suffixes": [[int(t) for t in s] for s in case.suffixes]})
    del rec
    gc.collect()
    return cases


def build_cases_from_recdir(d: SizeDirs, n: int, seed: int = 0) -> list[dict]:
    """The same kind of requests from the `train recommender` directory, for a size whose export failed: the
    recommender stage's PromptMaker (the one the runtime uses) over its retrieval index and SASRec (PyTorch), the
    candidates sampled from its items. Every engine still scores the same ids; ours is absent from such a size."""
    from transformers import PreTrainedTokenizerFast

    from ..core.context import PromptMaker
    from ..core.prompt import PromptConfig
    from ..core.retrieval import RetrievalIndex
    from ..models.sasrec import SASRecModel
    from ..recommend.model_dir import read_items, sasrec_ranks

    meta = json.loads((d.rec / "recommender.json").read_text())
    items, _ = read_items(d.rec / "items.parquet")
    sas = SASRecModel.load(d.rec / "sasrec")
    r = meta["retrieval"]
    retrieval = RetrievalIndex(d.rec / "retrieval") if r.get("enabled") else None
    tok = PreTrainedTokenizerFast.from_pretrained(d.rec / "model")
    pc = PromptConfig.from_dict(meta["prompt"])
    maker = PromptMaker(items, lambda s: tok(s, add_special_tokens=False)["input_ids"], meta.get("bos_id"), pc,
                        retrieval, r.get("items_per_neighbour"), r.get("k"),
                        sasrec_ranks(sas) if pc.rank_hint else None, int(meta.get("n_image_tokens", 0)))
    users = sorted(u for u, h in retrieval.histories.items() if len(h) >= HISTORY) if retrieval else []
    if not users:
        raise UserError(f"{d.rec}: no retrieval histories to draw requests from")
    rng = np.random.default_rng(seed)
    cases = []
    for k in range(n):
        hist = [int(i) for i in retrieval.histories[users[int(rng.integers(len(users)))]][-HISTORY:]]
        emb = sas.user_embeddings([hist])[0]
        groups = maker.collab(emb[None])[0]
        pool = [i for i in sorted(items) if i not in set(hist)]
        cands = [pool[j] for j in sorted(np.random.default_rng(seed + k).choice(len(pool), CANDIDATES, replace=False))]
        cases.append({"history": hist, "candidates": cands, "prefix": [int(t) for t in maker.prefix(hist, groups)],
                      "suffixes": [[int(t) for t in s] for s in maker.suffixes(cands, emb)], "source": "recommender"})
    return cases


def _yes_no_pad(d: SizeDirs) -> tuple[int, int, int]:
    meta = json.loads((d.rec / "recommender.json").read_text())
    return int(meta["yes_token_id"]), int(meta["no_token_id"]), int(meta["pad_id"])


_IMPORTS = {"ours": ("onnxruntime", "tokenizers", "hnswlib"), "pytorch": ("torch", "transformers"),
            "optimum": ("torch", "onnxruntime", "optimum.onnxruntime"), "llama.cpp": ("llama_cpp",),
            "ort-genai": ("onnxruntime_genai",)}


def _preimport(engine: str) -> None:
    """Import an engine's libraries before its RSS is sampled: `rss_delta_mb` is then the engine's model and
    sessions, not the first import of a shared library (which would be charged to whichever engine came first)."""
    import importlib

    for mod in _IMPORTS.get(engine, ()):
        try:
            importlib.import_module(mod)
        except ImportError:
            pass


def load_engine(engine: str, precision: str, d: SizeDirs, threads: int, cases: list[dict]):
    """-> score(prefix, suffixes) -> float64 [C]."""
    yes, no, pad = _yes_no_pad(d)
    n_tokens = max(len(c["prefix"]) + sum(len(s) for s in c["suffixes"]) for c in cases)
    longest = max(len(c["prefix"]) + max(len(s) for s in c["suffixes"]) for c in cases)
    if engine == "ours":
        from ..runtime.recommender import Recommender

        rec = Recommender(d.bundle, precision=precision, threads=threads, verify=False)  # cold start verifies
        if rec.scorer.path != "suffix-scorer":
            log(f"note: {d.root.name} ours {precision} scores with the {rec.scorer.path} path")
        return lambda p, s, r=rec: r.scorer.score(p, s)
    if engine == "pytorch":
        import torch

        from ..models.mllm import load_mllm
        from ..recommend.scoring import TorchScorer

        torch.set_num_threads(threads)
        if precision == "bf16":  # loaded as bf16 tensor by tensor: no transient fp32 copy of the whole model
            from transformers import LlavaForConditionalGeneration

            model = LlavaForConditionalGeneration.from_pretrained(d.rec / "model", local_files_only=True,
                                                                  use_safetensors=True, dtype=torch.bfloat16)
            model = model.eval()
        else:
            model = load_mllm(d.rec / "model")[0].float().eval()
        ts = TorchScorer(model, yes, no, pad, max_batch=CANDIDATES)
        return lambda p, s, t=ts: t.score_shared(p, s)
    if engine == "optimum":
        from .peers import OptimumPerCandidate

        opt = OptimumPerCandidate.load(d.optimum, yes, no, threads)
        return lambda p, s, o=opt: o.score(p, s)
    if engine == "llama.cpp":
        from .peers import LlamaCppScorer

        n_ctx = int(np.ceil((n_tokens + 64) / 256) * 256)
        sc = LlamaCppScorer(d.gguf / f"{precision}.gguf", yes, no, threads, n_ctx=n_ctx, n_seq_max=CANDIDATES + 1,
                            kv_f32=precision == "f32")
        return lambda p, s, x=sc: x.score(p, s)
    if engine == "ort-genai":
        from .peers import OrtGenaiScorer

        sc = OrtGenaiScorer(d.genai / precision, yes, no, threads, max_length=longest + 8)
        return lambda p, s, x=sc: x.score(p, s)
    raise UserError(f"unknown engine {engine!r}", f"engines: {', '.join(ENGINES)}")


def gemm_rates(m: int, k: int, n: int, threads: int, repeats: int = 20) -> dict:
    """Best GFLOP/s (GOP/s) of ONNX Runtime fp32 MatMul and int8 DynamicQuantizeLinear + MatMulInteger (+ the
    rescale to float, as quantize_dynamic writes it) on [m, k] x [k, n], `threads` intra-op threads."""
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    w = (rng.standard_normal((k, n)) / np.sqrt(k)).astype(np.float32)
    x = rng.standard_normal((m, k)).astype(np.float32)
    inp = helper.make_tensor_value_info("x", TensorProto.FLOAT, [m, k])
    out = helper.make_tensor_value_info("y", TensorProto.FLOAT, [m, n])
    fp32 = helper.make_model(helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "fp32", [inp], [out],
                                              [numpy_helper.from_array(w, "w")]),
                             opset_imports=[helper.make_opsetid("", 17)])
    scale = float(np.abs(w).max() / 127)
    wq = np.clip(np.round(w / scale), -127, 127).astype(np.int8)
    nodes = [helper.make_node("DynamicQuantizeLinear", ["x"], ["xq", "xs", "xz"]),
             helper.make_node("MatMulInteger", ["xq", "wq", "xz", "wz"], ["acc"]),
             helper.make_node("Cast", ["acc"], ["accf"], to=TensorProto.FLOAT),
             helper.make_node("Mul", ["xs", "ws"], ["s"]),
             helper.make_node("Mul", ["accf", "s"], ["y"])]
    init = [numpy_helper.from_array(wq, "wq"), numpy_helper.from_array(np.array(0, np.int8), "wz"),
            numpy_helper.from_array(np.array(scale, np.float32), "ws")]
    int8 = helper.make_model(helper.make_graph(nodes, "int8", [inp], [out], init),
                             opset_imports=[helper.make_opsetid("", 17)])
    so = ort.SessionOptions()
    so.intra_op_num_threads, so.inter_op_num_threads = int(threads), 1
    res = {}
    for name, model in (("fp32", fp32), ("int8", int8)):
        onnx.checker.check_model(model)
        sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
        for _ in range(2):
            sess.run(None, {"x": x})
        best = min(_timed(lambda s=sess: s.run(None, {"x": x})) for _ in range(repeats))
        res[name] = 2.0 * m * k * n / best / 1e9
    return res


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def top5_overlap(a: np.ndarray, b: np.ndarray) -> float:
    k = min(5, len(a))
    ta = set(np.argsort(-a, kind="stable")[:k].tolist())
    tb = set(np.argsort(-b, kind="stable")[:k].tolist())
    return len(ta & tb) / k


@dataclass
class WorkerSpec:
    size_dir: str
    engines: list[tuple[str, str]]
    threads: int
    repeats: int = 10
    max_seconds: float = 60.0
    n_cases: int = 3
    gemm_shape: tuple[int, int, int] | None = None  # (m, k, n): measure the GEMM rates in this worker
    group: int = 0
    seed: int = 0
    extra: dict = field(default_factory=dict)


def run_worker(spec: WorkerSpec) -> dict:
    """Load the group's engines, check their scores against PyTorch fp32, time them interleaved on case 0."""
    from .harness import measure_interleaved, rss_mb

    d = SizeDirs(Path(spec.size_dir))
    if d.cases.is_file():
        cases = json.loads(d.cases.read_text())
    else:
        bundle = (d.bundle / "manifest.json").is_file()
        cases = (build_cases if bundle else build_cases_from_recdir)(d, spec.n_cases, spec.seed)
        d.cases.write_text(json.dumps(cases) + "\n")
    out: dict = {"threads": spec.threads, "group": spec.group, "engines": {}, "errors": {}}
    fns = {}
    for engine, precision in spec.engines:
        key = f"{engine}/{precision}"
        _preimport(engine)
        gc.collect()
        before = rss_mb()
        t0 = time.perf_counter()
        try:
            fn = load_engine(engine, precision, d, spec.threads, cases)
            scores = [np.asarray(fn(c["prefix"], c["suffixes"]), np.float64) for c in cases]
        except Exception as exc:
            out["errors"][key] = f"{type(exc).__name__}: {str(exc)[:400]}"
            log(f"{d.root.name} t={spec.threads}: {key} failed: {out['errors'][key]}")
            continue
        fns[key] = fn
        out["engines"][key] = {"load_s": round(time.perf_counter() - t0, 2),
                               "rss_delta_mb": round(rss_mb() - before, 1), "scores": [s.tolist() for s in scores]}
        if (engine, precision) == REFERENCE and not d.reference.is_file():
            np.savez(d.reference, *scores)
        log(f"{d.root.name} t={spec.threads}: loaded {key} ({out['engines'][key]['load_s']} s, "
            f"+{out['engines'][key]['rss_delta_mb']:.0f} MB)")
    if d.reference.is_file():
        ref = np.load(d.reference)
        ref = [ref[f"arr_{k}"] for k in range(len(ref.files))]
        for e in out["engines"].values():
            got = [np.asarray(s) for s in e["scores"]]
            e["max_abs_score_diff"] = float(max(np.max(np.abs(g - r)) for g, r in zip(got, ref)))
            e["top5_overlap"] = float(np.mean([top5_overlap(g, r) for g, r in zip(got, ref)]))
    case = cases[0]
    # no extra warm-up call: every engine has just scored the cases (and each block re-warms it anyway)
    timed = measure_interleaved({k: (lambda f=f: f(case["prefix"], case["suffixes"])) for k, f in fns.items()},
                                repeats=spec.repeats, warmup=0, max_seconds=spec.max_seconds)
    for key, t in timed.items():
        out["engines"][key]["timing"] = t.stats()
        log(f"{d.root.name} t={spec.threads}: {key} p50 {t.stats().get('p50_ms', float('nan')):.1f} ms")
    out["rss_mb"] = round(rss_mb(), 1)
    if spec.gemm_shape:  # m = 0: the timed request's token count (prefix + every suffix)
        m, k, n = spec.gemm_shape
        spec.gemm_shape = (m or len(case["prefix"]) + sum(len(s) for s in case["suffixes"]), k, n)
        out["gemm"] = gemm_rates(*spec.gemm_shape, threads=spec.threads)
        out["gemm_shape"] = list(spec.gemm_shape)
        log(f"{d.root.name} t={spec.threads}: GEMM {spec.gemm_shape}: fp32 {out['gemm']['fp32']:.1f} GFLOP/s, "
            f"int8 {out['gemm']['int8']:.1f} GOP/s")
    out["prefix_tokens"] = len(case["prefix"])
    out["suffix_tokens"] = [len(s) for s in case["suffixes"]]
    return out


def spawn_worker(spec: WorkerSpec, out_json: Path, timeout: float | None = None) -> dict:
    """run_worker in a fresh process (its memory returns to the system afterwards; an OOM kill costs one group)."""
    spec_json = out_json.with_suffix(".spec.json")
    spec_json.write_text(json.dumps(asdict(spec)))
    cmd = [sys.executable, "-m", "mmsrarec_edge.bench.scale", "worker", str(spec_json), str(out_json)]
    rc = subprocess.run(cmd, timeout=timeout).returncode
    if rc != 0 or not out_json.is_file():
        why = " (killed: out of memory?)" if rc in (-9, 137) else ""
        return {"threads": spec.threads, "group": spec.group, "engines": {},
                "errors": {f"{e}/{p}": f"worker exited {rc}{why}" for e, p in spec.engines}}
    return json.loads(out_json.read_text())


# ------------------------------------------------------------------------------------------------ one size


def decoder_dims(size) -> dict:
    """latency.floor_ms's dims from the ladder size (the same numbers decoder_dims reads off the ONNX graph)."""
    H, L, inter = size.hidden, size.layers, size.intermediate
    kv = size.kv_heads * (H // size.heads)
    per_layer = 2 * H * H + 2 * H * kv + 3 * H * inter
    return {"weight_flops_per_token": 2 * L * per_layer, "hidden_size": H, "num_layers": L,
            "kv_flops_per_token": 4 * H * kv}


def measure_size(name: str, cfg: ScaleConfig, work: Path, scaffold, progress_json=None) -> dict:
    import psutil

    from . import ladder
    from .latency import floor_ms

    size = ladder.get_size(name, cfg.layers)
    d = SizeDirs(Path(work) / size.name)
    t_size = time.perf_counter()
    info = prepare(size, d, scaffold, cfg.engines, max(cfg.threads), cfg.seed, cfg.keep_artifacts)
    entry: dict = {"size": size.name, "ladder": size.to_dict(), "status": "measuring",
                   **{k: info.get(k) for k in ("params", "decoder_params", "vision_params", "embedding_params")},
                   "export_s": (info.get("export") or {}).get("wall_s"),
                   "export_peak_rss_mb": (info.get("export") or {}).get("peak_rss_mb"),
                   "train": info.get("train"), "bundle_bytes": info.get("bundle_bytes"),
                   "artifact_bytes": info.get("artifact_bytes"), "prepare_s": info.get("steps_s"),
                   "errors": dict(info.get("errors", {})), "threads": {}}
    wanted = [(e, p) for e in cfg.engines for p in available_precisions(e, d, info)]
    missing = {e: "no artifacts (see errors)" for e in cfg.engines if not available_precisions(e, d, info)}
    if not (d.rec / "recommender.json").is_file():
        entry["status"] = "failed"
        entry["errors"]["measure"] = "no recommender directory: nothing to measure"
        return entry
    if "optimum" in missing and info.get("decoder_params", 0) > OPTIMUM_MAX_PARAMS:
        missing["optimum"] = f"not run above {OPTIMUM_MAX_PARAMS / 1e6:.0f}M decoder parameters"
    entry["skipped_engines"] = missing
    budget = (cfg.mem_budget_gb * 1024 if cfg.mem_budget_gb else 0.8 * psutil.virtual_memory().available / 2**20)
    groups = plan_groups(wanted, info, budget)
    entry["memory_budget_mb"] = round(budget)
    entry["groups"] = [[f"{e}/{p}" for e, p in g] for g in groups]
    log(f"{size.name}: {len(wanted)} engines in {len(groups)} group(s), budget {budget / 1024:.1f} GB")
    rows = []
    for t in cfg.threads:
        per_t: dict = {"groups": [], "errors": {}}
        gemm = None
        for gi, group in enumerate(groups):
            spec = WorkerSpec(str(d.root), group, t, cfg.repeats, cfg.max_seconds, cfg.cases,
                              (0, size.hidden, size.intermediate) if gi == 0 else None, gi, cfg.seed)
            res = spawn_worker(spec, d.root / f"worker_t{t}_g{gi}.json")
            per_t["groups"].append({"engines": res.get("engines", {}), "rss_mb": res.get("rss_mb")})
            per_t["errors"].update(res.get("errors", {}))
            if res.get("gemm"):
                gemm, per_t["gemm_shape"] = res["gemm"], res.get("gemm_shape")
            per_t.setdefault("prefix_tokens", res.get("prefix_tokens"))
            per_t.setdefault("suffix_tokens", res.get("suffix_tokens"))
        if gemm is None:  # the first group failed before measuring: measure here
            gemm = gemm_rates(700, size.hidden, size.intermediate, t)
        per_t["gemm_gflops"] = gemm
        if per_t.get("prefix_tokens"):
            dims = decoder_dims(size)
            per_t["floor_fp32_ms"] = floor_ms(per_t["prefix_tokens"], per_t["suffix_tokens"], dims, gemm["fp32"])
            per_t["floor_int8_ms"] = floor_ms(per_t["prefix_tokens"], per_t["suffix_tokens"], dims, gemm["int8"])
        cs = {}
        if (d.bundle / "manifest.json").is_file():
            hist = json.loads(d.cases.read_text())[0]["history"] if d.cases.is_file() else None
            for prec in available_precisions("ours", d, info):
                if hist:
                    log(f"{size.name}: cold start ({prec}, {t} threads) ...")
                    cs[prec] = ladder.cold_start(d.bundle, hist, t, prec, CANDIDATES)
        per_t["cold_start"] = cs
        rows.extend(_rows(entry, per_t, t))
        entry["threads"][str(t)] = {k: v for k, v in per_t.items() if k != "groups"}
        entry["threads"][str(t)]["group_rss_mb"] = [g["rss_mb"] for g in per_t["groups"]]
    top = max(cfg.threads)
    cold = entry["threads"][str(top)].get("cold_start", {}).get("fp32") or {}
    entry.update(cold_start_s=cold.get("cold_start_s"), rss_mb=cold.get("rss_mb"),
                 floor_fp32_ms=entry["threads"][str(top)].get("floor_fp32_ms"),
                 floor_int8_ms=entry["threads"][str(top)].get("floor_int8_ms"), measured_threads=top)
    ref = _scores_of(rows, REFERENCE)
    if ref is not None:
        flat = np.concatenate([np.asarray(s) for s in ref])
        entry["score_spread"] = {"std": float(flat.std()), "min": float(flat.min()), "max": float(flat.max()),
                                 "within_case_std": float(np.mean([np.std(s) for s in ref]))}
    for r in rows:
        r.pop("_scores", None)
    entry["rows"] = rows
    entry["status"] = "done"
    entry["wall_s"] = round(time.perf_counter() - t_size, 1)
    if not cfg.keep_artifacts:
        for p in (d.ckpt, d.rec, d.bundle, d.decoder, d.gguf, d.genai, d.optimum):
            shutil.rmtree(p, ignore_errors=True)
        for p in d.root.glob("worker_*.json"):
            p.unlink()
        d.info.unlink(missing_ok=True)
    return entry


def _scores_of(rows, key):
    for r in rows:
        if (r["engine"], r["precision"]) == key and r.get("_scores") is not None:
            return r["_scores"]
    return None


def _rows(entry: dict, per_t: dict, threads: int) -> list[dict]:
    """JSON rows of one thread count: one per engine and precision that was measured (anchor rows of later groups
    are kept apart as `group` > 0 duplicates: the first measurement is the row, the others go to `anchor_p50_ms`)."""
    rows, seen = [], {}
    for gi, g in enumerate(per_t["groups"]):
        for key, e in g["engines"].items():
            engine, precision = key.split("/", 1)
            st = e.get("timing", {})
            if key in seen:
                seen[key].setdefault("anchor_p50_ms", []).append(st.get("p50_ms"))
                continue
            row = {"size": entry["size"], "params": entry.get("params"), "decoder_params": entry.get("decoder_params"),
                   "engine": engine, "precision": precision, "threads": threads, "group": gi,
                   "p50_ms": st.get("p50_ms"), "p95_ms": st.get("p95_ms"), "n": st.get("n"),
                   "max_abs_score_diff": e.get("max_abs_score_diff"), "top5_overlap": e.get("top5_overlap"),
                   "rss_delta_mb": e.get("rss_delta_mb"), "load_s": e.get("load_s"), "_scores": e.get("scores")}
            for f in ("fp32", "int8"):
                fl = per_t.get(f"floor_{f}_ms")
                row[f"ratio_to_floor_{f}"] = (row["p50_ms"] / fl) if fl and row["p50_ms"] else None
            seen[key] = row
            rows.append(row)
    for key, why in per_t["errors"].items():
        engine, precision = key.split("/", 1)
        if key not in seen:
            rows.append({"size": entry["size"], "params": entry.get("params"),
                         "decoder_params": entry.get("decoder_params"), "engine": engine, "precision": precision,
                         "threads": threads, "p50_ms": None, "p95_ms": None, "max_abs_score_diff": None,
                         "top5_overlap": None, "error": why})
    ours = {r["precision"]: r["p50_ms"] for r in rows if r["engine"] == "ours" and r.get("p50_ms")}
    for r in rows:
        if r.get("p50_ms"):
            r["ours_fp32_speedup"] = r["p50_ms"] / ours["fp32"] if "fp32" in ours else None
            r["ours_best_speedup"] = r["p50_ms"] / min(ours.values()) if ours else None
    return rows


# ------------------------------------------------------------------------------------------------ the run


def load_report(path: Path) -> dict:
    path = Path(path)
    if path.is_file():
        return json.loads(path.read_text())
    return {"sizes": {}}


def run(cfg: ScaleConfig, out_dir: Path, work: Path) -> dict:
    """Measure every size of cfg.sizes not yet "done" in out_dir/report.json (resume), writing the report after each."""
    from . import ladder
    from .harness import host_info

    out_dir, work = Path(out_dir), Path(work)
    out_dir.mkdir(parents=True, exist_ok=True)
    report = load_report(out_dir / "report.json")
    report["host"] = host_info()
    report["versions"] = _versions()
    report["config"] = cfg.to_dict()
    scaffold = ladder.build_scaffold(work / "scaffold", cfg.seed)
    t0 = time.perf_counter()
    for k, name in enumerate(cfg.sizes):
        key = ladder.get_size(name, cfg.layers).name
        if report["sizes"].get(key, {}).get("status") == "done":
            log(f"{key}: already measured in {out_dir / 'report.json'}, skipped")
            continue
        log(f"size {k + 1}/{len(cfg.sizes)}: {key} (run so far {time.perf_counter() - t0:.0f} s)")
        report["sizes"][key] = measure_size(name, cfg, work, scaffold)
        report["rows"] = [r for e in report["sizes"].values() for r in e.get("rows", [])]
        write_report(report, out_dir)
        log(f"{key}: {report['sizes'][key]['status']} in {report['sizes'][key].get('wall_s', 0):.0f} s")
    report["rows"] = [r for e in report["sizes"].values() for r in e.get("rows", [])]
    write_report(report, out_dir)
    return report


def _versions() -> dict:
    from importlib import metadata

    out = {}
    for pkg in ("onnxruntime", "onnxruntime-genai", "llama-cpp-python", "gguf", "torch", "transformers", "optimum",
                "optimum-onnx"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = None
    return out


# ------------------------------------------------------------------------------------------------ the report


def _fmt(v, spec=".1f", none="–"):
    return none if v is None else format(v, spec)


def _mb(b) -> str:
    return "–" if not b else f"{b / 2**20:,.0f}"


def markdown(report: dict) -> str:
    h = report.get("host", {})
    lines = ["# Scale report: the model ladder against llama.cpp, onnxruntime-genai, optimum and PyTorch", "",
             f"Host: {h.get('processor')} x{h.get('cpus')}, Python {h.get('python')}; "
             + ", ".join(f"{k} {v}" for k, v in report.get("versions", {}).items() if v) + ".", "",
             f"One recommendation: shared prefix (history n={HISTORY}) + {CANDIDATES} candidate suffixes, the same "
             "token ids for every engine (the bundle's own requests), p50/p95 over interleaved repeats. Scores are "
             "compared with PyTorch fp32 (prefix sharing) on every case: max abs Δscore and top-5 overlap. Floors: the "
             "FLOPs of one recommendation at the fp32 and int8 (MatMulInteger) GEMM rates ONNX Runtime reached on "
             "the scorer's MLP shape in the same run and thread count. Random weights (ladder.py init).", ""]
    lines += [f"- {note}" for note in report.get("notes", [])] + ([""] if report.get("notes") else [])
    lines += ["## Sizes", "", "| size | params | decoder | bundle MB fp32 / int8 / int4 | export s | export peak "
              "RSS MB | cold start s fp32 / int8 / int4 | serving RSS MB fp32 / int8 / int4 | floor fp32 ms | "
              "floor int8 ms | score spread (std, min-max) |",
              "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for name, e in report.get("sizes", {}).items():
        bb = e.get("bundle_bytes") or {}
        sp = e.get("score_spread") or {}
        spread = f"{sp['std']:.3f} ({sp['min']:.3f}-{sp['max']:.3f})" if sp else "–"
        top = (e.get("threads") or {}).get(str(e.get("measured_threads")), {}).get("cold_start", {})
        cold = " / ".join(_fmt((top.get(p) or {}).get("cold_start_s"), ".2f") for p in ("fp32", "int8", "int4"))
        rss = " / ".join(_fmt((top.get(p) or {}).get("rss_mb"), ".0f") for p in ("fp32", "int8", "int4"))
        lines.append(f"| {name} | {_fmt((e.get('params') or 0) / 1e6, '.1f')}M | "
                     f"{_fmt((e.get('decoder_params') or 0) / 1e6, '.1f')}M | "
                     + " / ".join(_mb(bb.get(p)) for p in ("fp32", "int8", "int4")) + " | "
                     f"{_fmt(e.get('export_s'))} | {_fmt(e.get('export_peak_rss_mb'), '.0f')} | {cold} | {rss} | "
                     f"{_fmt(e.get('floor_fp32_ms'))} | {_fmt(e.get('floor_int8_ms'))} | {spread} |")
    lines += ["", "Floors, cold start and serving RSS at the largest thread count measured; per thread count in the "
              "JSON (`threads`). Cold start: process start to the first printed answer of `mmsrarec-edge recommend "
              "--candidates sampled:21` (warm page cache, verified stamp in place); serving RSS: that process's peak. "
              "Bundle MB per precision: that variant's graphs plus every fp32-only graph and file (vision tower, "
              "SASRec, catalog); '–' where the size's bundle had no such variant (sizes measured before int4).", ""]
    for name, e in report.get("sizes", {}).items():
        lines += [f"## {name}", ""]
        if e.get("errors"):
            lines += [f"- failed step `{k}`: {v[:300]}" for k, v in e["errors"].items()] + [""]
        if e.get("skipped_engines"):
            lines += [f"- {k}: {v}" for k, v in e["skipped_engines"].items()] + [""]
        if len(e.get("groups", [])) > 1:
            lines += [f"- memory: {len(e['groups'])} worker groups (budget {e.get('memory_budget_mb')} MB): "
                      + "; ".join(", ".join(g) for g in e["groups"]) + ". Rows of later groups were timed in another "
                      "process than ours fp32; the anchor's p50 in each group is in the JSON (anchor_p50_ms).", ""]
        lines += ["| engine | precision | threads | p50 ms | p95 ms | n | vs ours fp32 | / floor fp32 | / floor int8 | "
                  "max abs Δscore | top-5 overlap | +RSS MB |",
                  "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for r in sorted(e.get("rows", []), key=lambda r: (r["threads"], r["p50_ms"] is None, r["p50_ms"] or 0)):
            if r.get("error"):
                lines.append(f"| {r['engine']} | {r['precision']} | {r['threads']} | failed: {r['error'][:80]} "
                             "| | | | | | | | |")
                continue
            lines.append(f"| {r['engine']} | {r['precision']} | {r['threads']} | {_fmt(r['p50_ms'])} | "
                         f"{_fmt(r['p95_ms'])} | {r.get('n') or '–'} | {_fmt(r.get('ours_fp32_speedup'), '.2f')}x | "
                         f"{_fmt(r.get('ratio_to_floor_fp32'), '.2f')} | {_fmt(r.get('ratio_to_floor_int8'), '.2f')} | "
                         f"{_fmt(r.get('max_abs_score_diff'), '.2e')} | {_fmt(r.get('top5_overlap'), '.2f')} | "
                         f"{_fmt(r.get('rss_delta_mb'), '.0f')} |")
        for t, per in e.get("threads", {}).items():
            g = per.get("gemm_gflops") or {}
            shape = per.get("gemm_shape") or ["?", "?", "?"]
            lines.append(f"\n{t} thread(s): GEMM [{shape[0]}, {shape[1]}] x [{shape[1]}, {shape[2]}]: fp32 "
                         f"{_fmt(g.get('fp32'))} GFLOP/s, int8 {_fmt(g.get('int8'))} GOP/s; "
                         f"prefix {per.get('prefix_tokens')} tokens, suffixes "
                         f"{_fmt(np.mean(per['suffix_tokens']) if per.get('suffix_tokens') else None)} tokens on "
                         "average.")
        lines.append("")
    lines += ["`vs ours fp32`: the engine's p50 / ours fp32's p50 at the same thread count (> 1: ours is faster). "
              "`+RSS MB`: the worker's RSS growth while loading the engine and scoring the cases (shared pages and "
              "mmapped files count as they are touched).", ""]
    return "\n".join(lines)


COLORS = {"ours": "#d62728", "pytorch": "#1f77b4", "optimum": "#8c564b", "llama.cpp": "#2ca02c",
          "ort-genai": "#9467bd"}
STYLES = {"fp32": ("o", "-"), "f32": ("o", "-"), "bf16": ("D", "-."), "int8": ("s", "--"), "q8_0": ("s", "--"),
          "int4": ("^", ":"), "q4_0": ("^", ":"), "fp16": ("D", "-.")}


def _style(engine: str, precision: str) -> dict:
    marker, ls = STYLES.get(precision, ("o", "-"))
    return {"color": COLORS.get(engine, "gray"), "marker": marker, "linestyle": ls,
            "linewidth": 2.4 if engine == "ours" else 1.3}


def _log_log(ax, xlabel: str, ylabel: str, title: str, legend_size: int = 6) -> None:
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=legend_size)


def plots(report: dict, out_dir: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in report.get("rows", []) if r.get("p50_ms") and r.get("decoder_params")]
    sizes = report.get("sizes", {})
    written = []
    if rows:
        threads = sorted({r["threads"] for r in rows})
        fig, axes = plt.subplots(1, len(threads), figsize=(6.5 * len(threads), 5), squeeze=False)
        for ax, t in zip(axes[0], threads):
            keys = sorted({(r["engine"], r["precision"]) for r in rows if r["threads"] == t})
            for eng, prec in keys:
                pts = sorted((r["decoder_params"], r["p50_ms"]) for r in rows
                             if r["threads"] == t and (r["engine"], r["precision"]) == (eng, prec))
                ax.plot([p for p, _ in pts], [v for _, v in pts], label=f"{eng} {prec}", **_style(eng, prec))
            for f, mk in (("fp32", "x"), ("int8", "+")):
                fl = sorted((e["decoder_params"], e["threads"][str(t)][f"floor_{f}_ms"]) for e in sizes.values()
                            if e.get("decoder_params") and e.get("threads", {}).get(str(t), {}).get(f"floor_{f}_ms"))
                if fl:
                    ax.plot([p for p, _ in fl], [v for _, v in fl], color="k", marker=mk, markersize=9,
                            linestyle="--" if f == "fp32" else ":", label=f"FLOP floor ({f} GEMM rate)")
            _log_log(ax, "decoder parameters (the vision tower is idle for these text prompts)",
                     "p50 ms per recommendation (21 candidates, n=5)", f"latency vs parameters, {t} thread(s)", 7)
        written.append(out_dir / "latency_vs_params.png")
        save_figure(fig, written[-1])
    pts = sorted((e["params"], e.get("rss_mb"), e.get("export_peak_rss_mb")) for e in sizes.values()
                 if e.get("params"))
    if pts:
        fig, ax = plt.subplots(figsize=(6.5, 5))
        ax.plot([p for p, r, _ in pts if r], [r for _, r, _ in pts if r], color="k", marker="o", linewidth=2.4,
                label="ours serving (recommend process peak, fp32)")
        ax.plot([p for p, _, x in pts if x], [x for _, _, x in pts if x], color="gray", marker="s", linewidth=2.4,
                label="ours export peak")
        t = str(max(report.get("config", {}).get("threads", [1]) or [1]))
        for key in sorted({(r["engine"], r["precision"]) for r in rows if str(r["threads"]) == t}):
            q = sorted((r["params"], r["rss_delta_mb"]) for r in rows if str(r["threads"]) == t
                       and (r["engine"], r["precision"]) == key and r.get("rss_delta_mb"))
            if q:
                st = {**_style(*key), "linewidth": 1}
                ax.plot([p for p, _ in q], [v for _, v in q], label=f"+RSS {key[0]} {key[1]}", **st)
        _log_log(ax, "parameters", "MB", "memory vs parameters")
        written.append(out_dir / "rss_vs_params.png")
        save_figure(fig, written[-1])
        fig, ax = plt.subplots(figsize=(6.5, 5))
        series: dict[str, list] = {}
        for e in sizes.values():
            for k, b in (e.get("bundle_bytes") or {}).items():
                if k != "total" and b:
                    series.setdefault(f"bundle {k}", []).append((e["params"], b / 2**20))
            for k, b in (e.get("artifact_bytes") or {}).items():
                if "/" in k and b:
                    series.setdefault(k, []).append((e["params"], b / 2**20))
        for k, q in sorted(series.items()):
            q.sort()
            eng, prec = k.split("/", 1) if "/" in k else ("ours", k.split()[-1])
            ax.plot([p for p, _ in q], [v for _, v in q], label=k, **_style(eng, prec))
        _log_log(ax, "parameters", "MB on disk", "bundle / model bytes vs parameters")
        written.append(out_dir / "bytes_vs_params.png")
        save_figure(fig, written[-1])
    return written


def write_report(report: dict, out_dir: Path) -> None:
    out_dir = Path(out_dir)
    tmp = out_dir / "report.json.partial"
    tmp.write_text(json.dumps(report, indent=1, default=float) + "\n")
    tmp.replace(out_dir / "report.json")
    (out_dir / "report.md").write_text(markdown(report))
    try:
        plots(report, out_dir)
    except Exception as exc:  # a plotting problem must not lose the measurements
        log(f"plots failed: {type(exc).__name__}: {exc}")


def _worker_main(argv: list[str]) -> int:
    spec_path, out_path = Path(argv[0]), Path(argv[1])
    raw = json.loads(spec_path.read_text())
    raw["engines"] = [tuple(e) for e in raw["engines"]]
    raw["gemm_shape"] = tuple(raw["gemm_shape"]) if raw.get("gemm_shape") else None
    res = run_worker(WorkerSpec(**raw))
    tmp = out_path.with_name(out_path.name + ".partial")
    tmp.write_text(json.dumps(res) + "\n")
    tmp.replace(out_path)
    return 0


if __name__ == "__main__":  # python -m mmsrarec_edge.bench.scale worker SPEC.json OUT.json
    if len(sys.argv) >= 4 and sys.argv[1] == "worker":
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        sys.exit(_worker_main(sys.argv[2:]))
    print("usage: python -m mmsrarec_edge.bench.scale worker SPEC.json OUT.json "
          "(the report: benchmarks/scale_report.py)", file=sys.stderr)
    sys.exit(2)
