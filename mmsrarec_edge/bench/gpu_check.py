"""The GPU check (issue 19): the CUDA path of the toolkit measured in one run on a lent GPU machine
(benchmarks/device/README.md carries the wheels there; benchmarks/device/gpu_check.py is the command).

Per ladder size (ladder.py; 0.5B first, the target, then 0.1B while the time budget lasts):
1. checkpoint (random weights, ladder init) -> `train recommender --init` with the ladder's TRAIN_ARGS on the ladder's
   scaffold -> `export` with PROFILE: the cuda-fp16 profile's fp16 variant beside fp32, recommender graphs only, the
   parity gates on the CUDA execution provider (`[parity] provider = "cuda"`; the gates are opened like the ladder's,
   score 0.5 / logits and features 1.0, because random weights and TF32 may miss the defaults: each graph's measured
   figures are reported against the DEFAULT tolerances instead (`default_gate`), so a miss is a finding, not a missing
   report);
2. in a worker process (clean GPU memory readings; a crash costs one size, not the report): 8 requests of the bundle
   (scale.build_cases: history n=5, 21 sampled candidates), scored by
   - ours fp16 / fp32 with IO binding (`BoundScorer`: token ids up, the embed graph's output stays on the device and
     is bound as the scorer graph's input, only the [C, 1, 2] yes/no logits come down),
   - ours fp16 through the runtime's plain `CandidateScorer.score` (numpy in and out of every session),
   - PyTorch eager with prefix sharing (recommend/scoring.TorchScorer.score_shared) in fp16 and fp32 on the GPU;
   scores compared with PyTorch fp32 (max |Δscore|, top-5 overlap), ours fp16 against ours fp32 (the target's top-5
   overlap); request 0 timed interleaved (warm-up, then rounds of every engine) for p50/p95; GPU memory: PyTorch's
   max_memory_allocated per engine, nvidia-smi's figure for the worker process after the ONNX Runtime engines ran
   (before PyTorch touched the GPU) and at the end.
Targets (issue 19): 0.5B fp16 CUDA EP with IO binding p50 <= 5 ms, faster than PyTorch fp16 in the same run, fp16 vs
fp32 top-5 overlap >= 0.99. report.json + report.md go into the output folder.

`provider="cpu"` runs the same steps on the CPU (tests/test_device_kit.py's dry run at the `toy` size).
"""

from __future__ import annotations

import gc
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from ..core.errors import UserError

TARGET_P50_MS = 5.0
TARGET_OVERLAP = 0.99
REFERENCE = "pytorch/fp32"

# cuda-fp16 (mmsrarec_edge/profiles/cuda-fp16.toml) for the ladder: recommender graphs only (the ladder's list),
# fp16 default with fp32 beside it, the merged decoder only as the scorer graph's fallback, gates on {provider}.
PROFILE = """name = "gpu-check"
description = "issue 19: cuda-fp16 with fp32 beside, recommender graphs, parity on the CUDA provider"
precision = "fp16"
variants = ["fp16", "fp32"]
merged_decoder = "fallback"
providers = [{providers}]
graphs = ["recommender.vision", "recommender.embed", "recommender.decoder", "recommender.scorer", "sasrec.user_encoder"]
fp32_graphs = ["sasrec.user_encoder"]
exporter = "legacy"

[limits]
max_candidates = 21
max_prefix_tokens = 512
max_suffix_tokens = 128

[parity]
cases = 2
seed = 0
provider = "{provider}"
score = 0.5
logits = 1.0
features = 1.0
"""


def profile_text(provider: str) -> str:
    providers = '"CUDAExecutionProvider", "CPUExecutionProvider"' if provider == "cuda" else '"CPUExecutionProvider"'
    return PROFILE.format(provider=provider, providers=providers)


@dataclass
class CheckConfig:
    sizes: tuple[str, ...] = ("0.5b", "0.1b")
    provider: str = "cuda"  # cuda | cpu (dry run)
    calls: int = 60  # timed calls per engine (after warm-up), in `rounds` interleaved rounds
    warmup: int = 10
    rounds: int = 5
    cases: int = 8  # requests compared (top-5 overlap is their mean); request 0 is timed
    budget_s: float = 450.0  # the whole check; a size is not started with less than min_size_s left
    min_size_s: float = 60.0
    layers: int | None = None  # override every size's depth (the dry run)
    threads: int | None = None  # None: every core
    torch_low: str = "fp16"  # PyTorch's low-precision engine
    seed: int = 0

    def to_dict(self) -> dict:
        return asdict(self)


def log(msg: str) -> None:
    print(f"[gpu-check {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------------------------ device facts


def nvidia_smi(query: str, kind: str = "gpu") -> list[list[str]]:
    """Rows of `nvidia-smi --query-{kind}=QUERY` (csv, no header/units); [] where nvidia-smi is missing or fails."""
    exe = shutil.which("nvidia-smi")
    if not exe:
        return []
    try:
        out = subprocess.run([exe, f"--query-{kind}={query}", "--format=csv,noheader,nounits"], capture_output=True,
                             text=True, timeout=20)
    except (OSError, subprocess.SubprocessError):
        return []
    if out.returncode != 0:
        return []
    return [[c.strip() for c in line.split(",")] for line in out.stdout.splitlines() if line.strip()]


def gpu_info() -> dict:
    rows = nvidia_smi("name,memory.total,memory.used,driver_version,clocks.sm,clocks.max.sm,temperature.gpu")
    if not rows:
        return {}
    r = rows[0] + [""] * 7
    return {"name": r[0], "memory_total_mib": _num(r[1]), "memory_used_mib": _num(r[2]), "driver": r[3],
            "sm_clock_mhz": _num(r[4]), "sm_clock_max_mhz": _num(r[5]), "temperature_c": _num(r[6])}


def _num(s):
    try:
        return float(s)
    except (TypeError, ValueError):
        return None


def process_gpu_mib(pid: int | None = None) -> float | None:
    """GPU memory nvidia-smi charges to `pid` (this process by default), or None where it cannot say."""
    pid = os.getpid() if pid is None else pid
    for row in nvidia_smi("pid,used_memory", "compute-apps"):
        if row and row[0] == str(pid):
            return _num(row[1])
    return None


def versions() -> dict:
    from importlib import metadata

    out: dict = {}
    try:
        import onnxruntime as ort

        out["onnxruntime"] = ort.__version__
        out["onnxruntime_file"] = ort.__file__
        out["onnxruntime_providers"] = ort.get_available_providers()
    except ImportError:
        out["onnxruntime"] = None
    for pkg in ("torch", "transformers", "tokenizers", "huggingface_hub", "onnx", "numpy", "hnswlib"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = None
    try:
        import torch

        out["torch_cuda"] = torch.version.cuda
    except ImportError:
        pass
    return out


# ------------------------------------------------------------------------------------------------ IO binding


class BoundScorer:
    """One recommendation through a Recommender's embed and scorer sessions with ONNX Runtime IO binding: the token
    ids go up, the embed graph's output stays on the device and is bound as the scorer graph's input, the empty
    past KV lives there once, and only the yes/no logits [C, 1, 2] come down. Torch-free; the suffix-scorer path
    with 1-D positions (the ladder's Qwen2 decoders), all candidates in one call (the graph's batch is dynamic)."""

    def __init__(self, scorer, device: str = "cuda", device_id: int = 0):
        import onnxruntime as ort

        if scorer.suffix_scorer is None or scorer.rope is not None:
            raise UserError("BoundScorer needs the suffix-scorer graph with 1-D positions")
        self.ort, self.device, self.device_id = ort, device, int(device_id)
        self.embed = scorer.embedder.sess
        self.suffix = scorer.suffix_scorer
        self.sess = scorer.suffix_scorer.sess
        self.pad_id = int(scorer.pad_id)
        out_type = self.embed.get_outputs()[0].type
        in_type = {i.name: i.type for i in self.sess.get_inputs()}["inputs_embeds"]
        self.chained = out_type == in_type  # fp32 I/O on both (the fp16 converter keeps I/O types)
        self.empty = self.suffix.empty_past()  # zero-sized: bound from the host, as the runtime's own run feeds it

    def _embed(self, ids: np.ndarray):
        io = self.embed.io_binding()
        io.bind_cpu_input("input_ids", np.ascontiguousarray(ids, np.int64))
        io.bind_output("inputs_embeds", self.device, self.device_id)
        self.embed.run_with_iobinding(io)
        value = io.get_outputs()[0]
        if not self.chained:
            value = value.numpy().astype(self.suffix.float_type)
        return value

    def _bind(self, io, name: str, value) -> None:
        if isinstance(value, np.ndarray):
            io.bind_cpu_input(name, value)
        else:
            io.bind_ortvalue_input(name, value)

    def logits(self, prefix, suffixes) -> np.ndarray:
        C, S = len(suffixes), max(len(s) for s in suffixes)
        ids = np.full((C, S), self.pad_id, np.int64)
        mask = np.zeros((C, S), np.int64)
        for r, s in enumerate(suffixes):
            ids[r, :len(s)] = s
            mask[r, :len(s)] = 1
        index = np.array([[len(s) - 1] for s in suffixes], np.int64)
        pre = self._embed(np.asarray([list(prefix)], np.int64))
        suf = self._embed(ids)
        io = self.sess.io_binding()
        self._bind(io, "inputs_embeds", suf)
        self._bind(io, "prefix_embeds", pre)
        io.bind_cpu_input("suffix_mask", mask)
        io.bind_cpu_input("logits_index", index)
        for name, value in self.empty.items():
            self._bind(io, name, value)
        io.bind_output("yes_no_logits", "cpu")
        self.sess.run_with_iobinding(io)
        return np.asarray(io.copy_outputs_to_cpu()[0], np.float32)

    def score(self, prefix, suffixes) -> np.ndarray:
        from ..core.scores import yes_probability

        yn = self.logits(prefix, suffixes)
        return yes_probability(yn[:, 0, 0], yn[:, 0, 1])


# ------------------------------------------------------------------------------------------------ the worker


def top5_overlap(a, b) -> float:
    from .scale import top5_overlap as overlap

    return overlap(np.asarray(a), np.asarray(b))


def _session_provider(sess) -> str:
    return sess.get_providers()[0]


def measure(spec: dict) -> dict:
    """Load every engine of one size, compare scores, time request 0 (runs in a worker process)."""
    from .scale import SizeDirs, _yes_no_pad, build_cases

    d = SizeDirs(Path(spec["size_dir"]))
    provider, threads = spec["provider"], spec.get("threads")
    cases = build_cases(d, spec["cases"], spec["seed"], provider="cpu")
    out: dict = {"cases": len(cases), "prefix_tokens": len(cases[0]["prefix"]),
                 "suffix_tokens": [len(s) for s in cases[0]["suffixes"]], "engines": {}, "errors": {}, "memory": {}}
    fns, scores = {}, {}

    def add(key, fn, load_s, extra=None):
        t0 = time.perf_counter()
        scores[key] = [np.asarray(fn(c["prefix"], c["suffixes"]), np.float64) for c in cases]
        fns[key] = fn
        out["engines"][key] = {"load_s": round(load_s, 2), "first_cases_s": round(time.perf_counter() - t0, 2),
                               **(extra or {})}

    from ..runtime.recommender import Recommender

    device = "cuda" if provider == "cuda" else "cpu"
    keep = []

    def failed(key, exc):  # recorded: the report says which engine failed and why
        out["errors"][key] = f"{type(exc).__name__}: {str(exc)[:500]}"
        log(f"{key} failed: {out['errors'][key]}")

    for precision in ("fp16", "fp32"):
        try:
            t0 = time.perf_counter()
            rec = Recommender(d.bundle, provider=provider, precision=precision, threads=threads, verify=False)
            sc = rec.scorer
            if sc.path != "suffix-scorer":
                raise UserError(f"the bundle scores with the {sc.path} path, not the scorer graph")
            info = {"session_provider": _session_provider(sc.suffix_scorer.sess),
                    "embed_provider": _session_provider(sc.embedder.sess), "variants": dict(rec.variants)}
            load_s = time.perf_counter() - t0
            keep.append(rec)
        except Exception as exc:
            failed(f"ours/{precision}", exc)
            continue
        if precision == "fp16":
            try:
                add("ours/fp16/run", lambda p, s, x=sc: x.score(p, s), load_s, dict(info))
            except Exception as exc:
                failed("ours/fp16/run", exc)
        try:
            bound = BoundScorer(sc, device)
            add(f"ours/{precision}/iobinding", bound.score, load_s, {**info, "chained_on_device": bound.chained})
        except Exception as exc:
            failed(f"ours/{precision}/iobinding", exc)
    out["memory"]["ours_process_mib"] = process_gpu_mib()  # before PyTorch touches the GPU

    import torch

    from ..models.mllm import load_mllm
    from ..recommend.scoring import TorchScorer

    if threads:
        torch.set_num_threads(int(threads))
    yes, no, pad = _yes_no_pad(d)
    low = {"fp16": torch.float16, "bf16": torch.bfloat16}[spec.get("torch_low", "fp16")]
    for precision, dtype in ((spec.get("torch_low", "fp16"), low), ("fp32", torch.float32)):
        key = f"pytorch/{precision}"
        try:
            if device == "cuda":
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
                before = torch.cuda.memory_allocated()
            t0 = time.perf_counter()
            model = load_mllm(d.rec / "model")[0].to(device=device, dtype=dtype).eval()
            ts = TorchScorer(model, yes, no, pad, max_batch=len(cases[0]["suffixes"]))
            load_s = time.perf_counter() - t0
            add(key, lambda p, s, t=ts: t.score_shared(p, s), load_s, {"device": device, "dtype": str(dtype)})
            if device == "cuda":
                torch.cuda.synchronize()
                out["engines"][key]["max_memory_allocated_mib"] = round(
                    (torch.cuda.max_memory_allocated() - before) / 2**20, 1)
            keep.append(ts)
        except Exception as exc:
            failed(key, exc)

    # scores: every engine against PyTorch fp32, ours fp16 against ours fp32, IO binding against the plain path
    def compare(a: str, b: str) -> dict:
        return {"max_abs_score_diff": float(max(np.abs(x - y).max() for x, y in zip(scores[a], scores[b]))),
                "top5_overlap": float(np.mean([top5_overlap(x, y) for x, y in zip(scores[a], scores[b])])),
                "top5_overlap_min": float(min(top5_overlap(x, y) for x, y in zip(scores[a], scores[b])))}

    ref = REFERENCE if REFERENCE in scores else None
    for key in scores:
        if ref and key != ref:
            out["engines"][key]["vs_reference"] = compare(key, ref)
    pairs = {"ours_fp16_vs_fp32": ("ours/fp16/iobinding", "ours/fp32/iobinding"),
             "iobinding_vs_run": ("ours/fp16/iobinding", "ours/fp16/run"),
             "pytorch_low_vs_fp32": (f"pytorch/{spec.get('torch_low', 'fp16')}", "pytorch/fp32")}
    out["comparisons"] = {name: compare(a, b) for name, (a, b) in pairs.items() if a in scores and b in scores}
    flat = np.concatenate(scores[ref]) if ref else None
    out["score_spread"] = ({"std": float(flat.std()), "min": float(flat.min()), "max": float(flat.max())}
                           if flat is not None else None)

    # timing: request 0, warm-up, then interleaved rounds
    c0 = cases[0]
    for fn in fns.values():
        for _ in range(spec["warmup"]):
            fn(c0["prefix"], c0["suffixes"])
    per_round = max(1, -(-spec["calls"] // spec["rounds"]))
    samples: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(spec["rounds"]):
        for key, fn in fns.items():
            for _ in range(per_round):
                t0 = time.perf_counter()
                fn(c0["prefix"], c0["suffixes"])
                samples[key].append((time.perf_counter() - t0) * 1e3)
    for key, ms in samples.items():
        a = np.asarray(ms)
        out["engines"][key].update(n=len(a), p50_ms=float(np.percentile(a, 50)), p95_ms=float(np.percentile(a, 95)),
                                   mean_ms=float(a.mean()), min_ms=float(a.min()))
    out["memory"]["process_end_mib"] = process_gpu_mib()
    out["memory"]["gpu_used_end_mib"] = (gpu_info() or {}).get("memory_used_mib")
    del keep
    gc.collect()
    return out


def _worker_main(argv: list[str]) -> int:
    spec = json.loads(Path(argv[0]).read_text())
    res = measure(spec)
    tmp = Path(argv[1]).with_name(Path(argv[1]).name + ".partial")
    tmp.write_text(json.dumps(res, default=float) + "\n")
    tmp.replace(Path(argv[1]))
    return 0


# ------------------------------------------------------------------------------------------------ the run


def parity_table(bundle: Path) -> list[dict]:
    """Each graph variant's parity figures from the bundle manifest, with the verdict under the DEFAULT tolerances."""
    from ..exporter.parity import DEFAULT_TOLERANCES

    man = json.loads((Path(bundle) / "manifest.json").read_text())
    rows = []
    for graph, entry in man["graphs"].items():
        for precision, v in entry["variants"].items():
            p = v.get("parity") or {}
            metrics = p.get("metrics", {})
            gated = list(p.get("tolerances", {}))
            default = DEFAULT_TOLERANCES.get(precision, {})
            misses = [f"{k} {metrics[k]:.3g} > {default[k]:.3g}" for k in gated
                      if k in default and not (metrics.get(k, float("nan")) <= default[k])]
            rows.append({"graph": graph, "precision": precision, "provider": p.get("provider", "CPUExecutionProvider"),
                         "metrics": metrics, "gated": gated, "default_gate": not misses, "misses": misses})
    return rows


def check_size(name: str, cfg: CheckConfig, work: Path, scaffold, deadline: float, on_step=None) -> dict:
    """One size's checkpoint, training, export and measurement; `on_step(entry)` after each step (the report is
    rewritten then, so a run stopped at the command's limit still leaves what it measured)."""
    from . import ladder
    from .scale import SizeDirs

    size = ladder.get_size(name, cfg.layers)
    d = SizeDirs(work / size.name)
    d.root.mkdir(parents=True, exist_ok=True)
    d.logs.mkdir(exist_ok=True)
    threads = cfg.threads or os.cpu_count() or 1
    entry: dict = {"size": size.name, "status": "started", "steps_s": {}, "errors": {}}
    t_size = time.perf_counter()

    def step(label, fn):
        t0 = time.perf_counter()
        log(f"{size.name}: {label} ...")
        try:
            fn()
        finally:
            entry["steps_s"][label] = round(time.perf_counter() - t0, 1)
            if on_step is not None:
                on_step(entry)

    try:
        def checkpoint():
            info = dict(ladder.write_checkpoint(size, d.ckpt, cfg.seed))
            entry["ladder"] = info.pop("size", None)
            entry.update(info)

        step("checkpoint", checkpoint)

        def left() -> float:
            return max(30.0, deadline - time.perf_counter())

        def train():
            res = ladder.train_recommender(d.ckpt, scaffold, d.rec, threads=threads, log=d.logs / "train.log",
                                           timeout=left())
            if res.get("rc", 0) != 0:
                raise RuntimeError(f"train exited {res['rc']}")

        step("train", train)

        def export():
            res = ladder.export_bundle(d.rec, scaffold, d.bundle, threads=threads, log=d.logs / "export.log",
                                       profile_text=profile_text(cfg.provider), timeout=left())
            entry["export"] = {k: res.get(k) for k in ("rc", "wall_s", "peak_rss_mb")}
            if res.get("rc", 0) != 0:
                tail = (d.logs / "export.log").read_text()[-1500:] if (d.logs / "export.log").is_file() else ""
                raise RuntimeError(f"export exited {res['rc']}: {tail}")

        step("export", export)
        entry["parity"] = parity_table(d.bundle)
        spec = {"size_dir": str(d.root), "provider": cfg.provider, "threads": cfg.threads, "cases": cfg.cases,
                "seed": cfg.seed, "calls": cfg.calls, "warmup": cfg.warmup, "rounds": cfg.rounds,
                "torch_low": cfg.torch_low}
        spec_path, res_path = d.root / "measure-spec.json", d.root / "measure.json"
        spec_path.write_text(json.dumps(spec) + "\n")
        res_path.unlink(missing_ok=True)

        def worker():
            proc = subprocess.run([sys.executable, "-m", "mmsrarec_edge.bench.gpu_check", "measure", str(spec_path),
                                   str(res_path)], timeout=left(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                  text=True)
            (d.logs / "measure.log").write_text(proc.stdout)
            if proc.returncode != 0 or not res_path.is_file():
                raise RuntimeError(f"measure worker exited {proc.returncode}: {proc.stdout[-1500:]}")
            entry.update(json.loads(res_path.read_text()))

        step("measure", worker)
        entry["status"] = "done"
    except Exception as exc:  # recorded, the next size still runs
        entry["status"] = "failed"
        entry["errors"]["step"] = f"{type(exc).__name__}: {str(exc)[-1500:]}"
        log(f"{size.name} failed: {entry['errors']['step']}")
    entry["wall_s"] = round(time.perf_counter() - t_size, 1)
    return entry


def targets(report: dict) -> dict:
    """The issue's targets at the 0.5B size (or the largest size measured, flagged)."""
    sizes = [s for s in report["sizes"].values() if s.get("status") == "done"]
    if not sizes:
        return {"evaluated": False}
    e = next((s for s in sizes if s["size"] == "0.5b"), sizes[0])
    eng = e.get("engines", {})
    ours = eng.get("ours/fp16/iobinding", {})
    torch_low = next((v for k, v in eng.items() if k.startswith("pytorch/") and k != REFERENCE), {})
    ov = e.get("comparisons", {}).get("ours_fp16_vs_fp32", {}).get("top5_overlap")
    out = {"evaluated": True, "size": e["size"], "target_size": e["size"] == "0.5b",
           "provider": report["config"]["provider"], "p50_ms": ours.get("p50_ms"),
           "pytorch_p50_ms": torch_low.get("p50_ms"), "fp16_fp32_top5_overlap": ov}
    out["p50_ok"] = ours.get("p50_ms") is not None and ours["p50_ms"] <= TARGET_P50_MS
    out["faster_than_pytorch"] = (ours.get("p50_ms") is not None and torch_low.get("p50_ms") is not None
                                  and ours["p50_ms"] < torch_low["p50_ms"])
    out["overlap_ok"] = ov is not None and ov >= TARGET_OVERLAP
    out["parity_on_provider"] = all(r["provider"] != "CPUExecutionProvider" for r in e.get("parity", [])
                                    if r["graph"] != "sasrec.user_encoder") if report["config"]["provider"] == "cuda" \
        else None
    return out


def run_check(cfg: CheckConfig, out_dir: Path, work: Path) -> dict:
    from . import ladder
    from .harness import host_info

    t0 = time.perf_counter()
    deadline = t0 + cfg.budget_s
    out_dir, work = Path(out_dir), Path(work)
    out_dir.mkdir(parents=True, exist_ok=True)
    work.mkdir(parents=True, exist_ok=True)
    report = {"config": cfg.to_dict(), "host": host_info(), "gpu": gpu_info(), "versions": versions(),
              "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "sizes": {}, "skipped": {}}
    if cfg.provider == "cuda" and "CUDAExecutionProvider" not in (report["versions"].get("onnxruntime_providers")
                                                                   or []):
        report["fatal"] = "onnxruntime offers no CUDAExecutionProvider (is /tmp/mmsrarec-site first on PYTHONPATH?)"
        write_report(report, out_dir)
        raise UserError(report["fatal"])
    write_report(report, out_dir)
    log("scaffold ...")
    scaffold = ladder.build_scaffold(work / "scaffold", cfg.seed)
    report["scaffold_s"] = round(time.perf_counter() - t0, 1)
    need = cfg.min_size_s
    for name in cfg.sizes:
        left = deadline - time.perf_counter()
        if left < need:
            report["skipped"][name] = f"{left:.0f} s of the {cfg.budget_s:.0f} s budget left, {need:.0f} s needed"
            log(f"{name}: skipped ({report['skipped'][name]})")
            continue
        def on_step(entry, key=ladder.get_size(name, cfg.layers).name):
            report["sizes"][key] = entry
            report["wall_s"] = round(time.perf_counter() - t0, 1)
            write_report(report, out_dir)

        entry = check_size(name, cfg, work, scaffold, deadline, on_step)
        report["sizes"][entry["size"]] = entry
        # the next (smaller) size is started only with about half this one's time left: the ladder's 0.1B took 60%
        # of the 0.5B's export time on the CPU (benchmarks/results/scale)
        need = max(cfg.min_size_s, 0.5 * entry["wall_s"])
        report["targets"] = targets(report)
        report["wall_s"] = round(time.perf_counter() - t0, 1)
        write_report(report, out_dir)
    report["targets"] = targets(report)
    report["gpu_end"] = gpu_info()
    report["wall_s"] = round(time.perf_counter() - t0, 1)
    write_report(report, out_dir)
    return report


# ------------------------------------------------------------------------------------------------ the report


def _f(v, spec=".2f", none="–"):
    return none if v is None else format(v, spec)


def _yes(v) -> str:
    return "–" if v is None else ("yes" if v else "**no**")


def markdown(report: dict) -> str:
    cfg, h, g, v = report["config"], report.get("host", {}), report.get("gpu") or {}, report.get("versions", {})
    lines = ["# GPU check (issue 19): the CUDA path on hardware", "",
             f"Device: {g.get('name') or 'no GPU (dry run)'}"
             + (f", {g.get('memory_total_mib'):.0f} MiB, driver {g.get('driver')}" if g.get("name") else "")
             + f"; host {h.get('processor')} x{h.get('cpus')}, Python {h.get('python')}; provider `{cfg['provider']}`.",
             f"Versions: onnxruntime {v.get('onnxruntime')} ({v.get('onnxruntime_file')}), torch {v.get('torch')} "
             f"(CUDA {v.get('torch_cuda')}), transformers {v.get('transformers')}, tokenizers {v.get('tokenizers')}.",
             f"Started {report.get('started')}; wall {_f(report.get('wall_s'), '.0f')} s of a {cfg['budget_s']:.0f} s "
             "budget.", ""]
    if report.get("fatal"):
        lines += [f"**Fatal:** {report['fatal']}", ""]
    t = report.get("targets") or {}
    if t.get("evaluated"):
        lines += ["## Targets (0.5B-shaped scorer, 21 candidates, fp16, IO binding)", "",
                  "| target | measured | met |", "|---|---|---|",
                  f"| p50 <= {TARGET_P50_MS:g} ms | {_f(t.get('p50_ms'))} ms | {_yes(t.get('p50_ok'))} |",
                  f"| faster than PyTorch eager fp16 (prefix sharing), same run | {_f(t.get('pytorch_p50_ms'))} ms | "
                  f"{_yes(t.get('faster_than_pytorch'))} |",
                  f"| fp16 vs fp32 top-5 overlap >= {TARGET_OVERLAP} | {_f(t.get('fp16_fp32_top5_overlap'), '.3f')} | "
                  f"{_yes(t.get('overlap_ok'))} |",
                  f"| parity gates ran on the GPU provider | | {_yes(t.get('parity_on_provider'))} |", ""]
        if not t.get("target_size"):
            lines += [f"(Evaluated at {t.get('size')}: the 0.5B size was not measured.)", ""]
    for name, why in report.get("skipped", {}).items():
        lines.append(f"- {name}: skipped, {why}")
    for name, e in report.get("sizes", {}).items():
        lines += ["", f"## {name} ({e.get('status')}, {_f(e.get('wall_s'), '.0f')} s)", ""]
        if e.get("params"):
            lines.append(f"{e['params'] / 1e6:.1f}M parameters ({(e.get('decoder_params') or 0) / 1e6:.1f}M decoder); "
                         "steps " + ", ".join(f"{k} {s:.0f} s" for k, s in e.get("steps_s", {}).items())
                         + (f"; prefix {e.get('prefix_tokens')} tokens, {len(e.get('suffix_tokens', []))} suffixes of "
                            f"{_f(np.mean(e['suffix_tokens']) if e.get('suffix_tokens') else None, '.1f')} tokens"
                            if e.get("suffix_tokens") else "") + ".")
            lines.append("")
        for k, why in e.get("errors", {}).items():
            lines.append(f"- error `{k}`: {why[:600]}")
        if e.get("engines"):
            lines += ["| engine | p50 ms | p95 ms | n | PyTorch fp16 p50 / this p50 | max abs Δscore vs PyTorch fp32 | "
                      "top-5 overlap vs PyTorch fp32 | GPU MiB (PyTorch max allocated) | session provider |",
                      "|---|---:|---:|---:|---:|---:|---:|---:|---|"]
            low = e["engines"].get(f"pytorch/{cfg.get('torch_low', 'fp16')}", {}).get("p50_ms")
            for k, r in sorted(e["engines"].items(), key=lambda kv: kv[1].get("p50_ms") or 1e18):
                vs = r.get("vs_reference", {})
                ratio = low / r["p50_ms"] if low and r.get("p50_ms") else None
                lines.append(f"| {k} | {_f(r.get('p50_ms'))} | {_f(r.get('p95_ms'))} | {r.get('n', '–')} | "
                             f"{_f(ratio)}x | {_f(vs.get('max_abs_score_diff'), '.2e')} | "
                             f"{_f(vs.get('top5_overlap'), '.3f')} | {_f(r.get('max_memory_allocated_mib'), '.0f')} | "
                             f"{r.get('session_provider') or r.get('device', '–')} |")
            lines.append("")
            for name_c, c in e.get("comparisons", {}).items():
                lines.append(f"- {name_c}: max abs Δscore {c['max_abs_score_diff']:.2e}, top-5 overlap "
                             f"{c['top5_overlap']:.3f} (min {c['top5_overlap_min']:.2f}) over {e.get('cases')} "
                             "requests")
            m = e.get("memory", {})
            lines.append(f"- GPU memory (nvidia-smi, this worker): {_f(m.get('ours_process_mib'), '.0f')} MiB after "
                         f"the ONNX Runtime engines, {_f(m.get('process_end_mib'), '.0f')} MiB at the end; device "
                         f"total used {_f(m.get('gpu_used_end_mib'), '.0f')} MiB")
            sp = e.get("score_spread")
            if sp:
                lines.append(f"- PyTorch fp32 score spread: std {sp['std']:.3f}, {sp['min']:.3f}-{sp['max']:.3f}")
        if e.get("parity"):
            lines += ["", "| graph | variant | gate provider | score | logits | features | default gate |",
                      "|---|---|---|---:|---:|---:|---|"]
            for r in e["parity"]:
                mt = r["metrics"]
                lines.append(f"| {r['graph']} | {r['precision']} | {r['provider']} | {_f(mt.get('score'), '.2e')} | "
                             f"{_f(mt.get('logits'), '.2e')} | {_f(mt.get('features'), '.2e')} | "
                             + ("pass" if r["default_gate"] else "**miss**: " + "; ".join(r["misses"])) + " |")
    lines += ["", "Timing: request 0 (history n=5, 21 candidates), every engine warmed up, then interleaved rounds; "
              "wall clock per call (each ends with the scores on the host). `ours/*/iobinding`: embed and scorer "
              "sessions with IO binding (embeddings stay on the device); `ours/fp16/run`: the runtime's plain "
              "`CandidateScorer.score`. Parity: the export's gates on the named provider, opened for random weights; "
              "`default gate` applies the DEFAULT tolerances (exporter/parity.py) to the same figures.", ""]
    return "\n".join(lines)


def write_report(report: dict, out_dir: Path) -> None:
    out_dir = Path(out_dir)
    tmp = out_dir / "report.json.partial"
    tmp.write_text(json.dumps(report, indent=1, default=float) + "\n")
    tmp.replace(out_dir / "report.json")
    (out_dir / "report.md").write_text(markdown(report))


if __name__ == "__main__":  # python -m mmsrarec_edge.bench.gpu_check measure SPEC.json OUT.json
    if len(sys.argv) >= 4 and sys.argv[1] == "measure":
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        sys.exit(_worker_main(sys.argv[2:]))
    print("usage: python -m mmsrarec_edge.bench.gpu_check measure SPEC.json OUT.json "
          "(the check: benchmarks/device/gpu_check.py)", file=sys.stderr)
    sys.exit(2)
