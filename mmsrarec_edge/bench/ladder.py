"""The model ladder: LLaVA checkpoints of real sizes (random weights), and a bundle of each without long training.

There is no model hub here, so every size is built from transformers config classes and written with
`save_pretrained`, exactly like a user's checkpoint: a Qwen2 or Llama decoder of a real model's shape behind a CLIP
ViT-B/16 tower at 224 px (196 image tokens), the embedded MiniLM WordPiece tokenizer (models/mllm.py). `0.5b-qwenvocab`
pads the embedding/LM-head rows to Qwen's 151,936 (ids beyond the tokenizer are never used: what a real Qwen checkpoint
costs in embedding and head bytes). `toy` is the embedded default (hidden 128 x 2 layers, its tiny 64 px tower).

Initialisation (`init_realistic`): transformers' default (every Linear N(0, 0.02)) leaves a deep random decoder
an identity on the residual stream: every prompt's last hidden state is its last token's embedding, so all candidates
get the same score. Here every decoder Linear is N(0, 1/fan_in) (unit-variance activations in each block) and the two
projections that write into the residual stream (o_proj, down_proj) are scaled by 1/sqrt(2 x layers) (GPT-2 style), so
the stream grows moderately over depth and the last position reads its context. Token embeddings (tied to the LM
head) are N(0, 0.7 / sqrt(hidden)) -- 0.018-0.031 for the real shapes, about what Qwen2's are -- so l_yes - l_no has
the same spread at every size (std about 1 over random directions) instead of growing with sqrt(hidden). Measured on
the bundles' own prompts (3 requests x 21 candidates): with transformers' default init the toy's scores varied by
0.009 (std) within a request; with this init by 0.02-0.04, within 0.5-0.95 overall at toy and 0.1B (no saturation).
The report records the spread of the PyTorch fp32 scores per size (`score_spread`).

Bundling without training: the ladder runs the user's own path, `train recommender --init CKPT` on a small synthetic
scaffold (`build_scaffold`: 60 items, 120 users, a tiny SASRec, ground-truth keywords) capped at one optimizer step of
LoRA rank 8 at batch 1 (`TRAIN_ARGS`), then `export` with a recommender-only CPU profile (`PROFILE`: embed, scorer,
vision, SASRec, the merged decoder only for a model without a scorer; fp32, int8 and int4). Both run as CLI
subprocesses; the export's wall time and peak RSS (the process tree's, sampled every 0.1 s) go into the report.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from ..core.errors import UserError

QWEN_VOCAB = 151_936


@dataclass(frozen=True)
class LadderSize:
    name: str
    decoder: str  # qwen2 | llama
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    intermediate: int
    vocab: int | None = None  # None: the embedded tokenizer's size
    vision: str = "vit-b16"  # vit-b16 (CLIP ViT-B/16, 224 px) | tiny (the embedded default's 64 px tower)
    max_positions: int = 4096
    rope_theta: float = 1_000_000.0
    rms_eps: float = 1e-6
    note: str = ""

    def to_dict(self) -> dict:
        return asdict(self)


SIZES: dict[str, LadderSize] = {s.name: s for s in (
    LadderSize("toy", "qwen2", 128, 2, 4, 2, 256, vision="tiny", max_positions=512, rope_theta=10_000.0,
               note="the embedded default (models/mllm.py MLLMConfig)"),
    LadderSize("toy-llama", "llama", 128, 2, 4, 2, 256, vision="tiny", max_positions=512, rope_theta=10_000.0,
               rms_eps=1e-5, note="toy with a Llama decoder: checks the Llama paths (GGUF q/k permutation, genai)"),
    LadderSize("0.1b", "qwen2", 512, 12, 8, 2, 2048),
    LadderSize("0.5b", "qwen2", 896, 24, 14, 2, 4864, note="Qwen2-0.5B shape, tokenizer vocabulary"),
    LadderSize("0.5b-qwenvocab", "qwen2", 896, 24, 14, 2, 4864, vocab=QWEN_VOCAB,
               note="Qwen2-0.5B shape and vocabulary size (rows past the tokenizer unused)"),
    LadderSize("smollm2-360m", "llama", 960, 32, 15, 5, 2560, rope_theta=100_000.0, rms_eps=1e-5,
               note="SmolLM2-360M shape (Llama), tokenizer vocabulary"),
    LadderSize("1.5b", "qwen2", 1536, 28, 12, 2, 8960, note="Qwen2-1.5B shape, tokenizer vocabulary"),
)}
LADDER = ("toy", "0.1b", "0.5b", "smollm2-360m", "0.5b-qwenvocab", "1.5b")


def get_size(name: str, layers: int | None = None) -> LadderSize:
    """A ladder size by name; `layers` overrides its depth (tests run `toy` with one layer)."""
    if name not in SIZES:
        raise UserError(f"unknown ladder size {name!r}", f"sizes: {', '.join(SIZES)}")
    s = SIZES[name]
    if layers is None or layers == s.layers:
        return s
    d = s.to_dict()
    d.update(layers=int(layers), name=f"{name}-{layers}l")
    return LadderSize(**d)


# ----------------------------------------------------------------------------------------------- checkpoints


def build_llava(size: LadderSize, tokenizer, seed: int = 0):
    """A LlavaForConditionalGeneration of `size` with realistic random weights (see the module docstring)."""
    import torch
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration, Qwen2Config

    from ..core.prompt import IMAGE_TOKEN
    from ..models.mllm import MLLMConfig

    torch.manual_seed(seed)
    vocab = size.vocab or len(tokenizer)
    if vocab < len(tokenizer):
        raise UserError(f"size {size.name}: vocabulary {vocab} is smaller than the tokenizer's {len(tokenizer)}")
    text_kw = dict(vocab_size=vocab, hidden_size=size.hidden, num_hidden_layers=size.layers,
                   num_attention_heads=size.heads, num_key_value_heads=size.kv_heads,
                   intermediate_size=size.intermediate, max_position_embeddings=size.max_positions,
                   rope_theta=size.rope_theta, rms_norm_eps=size.rms_eps, tie_word_embeddings=True,
                   bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                   pad_token_id=tokenizer.pad_token_id)
    text_config = Qwen2Config(**text_kw) if size.decoder == "qwen2" else LlamaConfig(**text_kw)
    if size.vision == "vit-b16":
        vis = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                   image_size=224, patch_size=16, projection_dim=512)
    else:  # the embedded default's tower
        d = MLLMConfig()
        vis = dict(hidden_size=d.vision_hidden_size, intermediate_size=2 * d.vision_hidden_size,
                   num_hidden_layers=d.vision_layers, num_attention_heads=d.vision_heads, image_size=d.image_size,
                   patch_size=d.patch_size, projection_dim=d.vision_hidden_size)
    config = LlavaConfig(vision_config=CLIPVisionConfig(**vis), text_config=text_config,
                         image_token_index=tokenizer.convert_tokens_to_ids(IMAGE_TOKEN),
                         vision_feature_select_strategy="default", vision_feature_layer=-1,
                         projector_hidden_act="gelu", tie_word_embeddings=True)
    config.mmsrarec = {"ladder": size.to_dict(), "seed": seed}
    model = LlavaForConditionalGeneration(config)
    for key in ("bos_token_id", "eos_token_id", "pad_token_id"):
        setattr(model.generation_config, key, getattr(tokenizer, key))
    init_realistic(model, seed)
    return model.eval()


def init_realistic(model, seed: int = 0, embed_std: float | None = None) -> None:
    """Decoder Linears N(0, 1/fan_in), residual-writing projections / sqrt(2L), biases N(0, 0.02), norms 1,
    token embeddings (tied LM head) N(0, embed_std), by default 0.7 / sqrt(hidden). In place."""
    import torch

    lm = model.model.language_model
    n_layers = len(lm.layers)
    g = torch.Generator().manual_seed(seed + 1)
    if embed_std is None:
        embed_std = 0.7 / math.sqrt(lm.embed_tokens.weight.shape[1])
    with torch.no_grad():
        lm.embed_tokens.weight.normal_(0.0, embed_std, generator=g)
        for name, p in lm.layers.named_parameters():
            if p.dim() == 2:
                std = 1.0 / math.sqrt(p.shape[1])
                if name.endswith(("o_proj.weight", "down_proj.weight")):
                    std /= math.sqrt(2 * n_layers)
                p.normal_(0.0, std, generator=g)
            elif name.endswith("bias"):
                p.normal_(0.0, 0.02, generator=g)
            else:  # RMSNorm weights
                p.fill_(1.0)
        lm.norm.weight.fill_(1.0)
        if model.lm_head.weight.data_ptr() != lm.embed_tokens.weight.data_ptr():
            model.lm_head.weight.copy_(lm.embed_tokens.weight)


def param_counts(model) -> dict:
    """Parameters (shared tensors once): total, decoder (embeddings + layers + norm + head), vision (tower +
    projector)."""
    def count(params) -> int:
        seen, n = set(), 0
        for p in params:
            if p.data_ptr() not in seen:
                seen.add(p.data_ptr())
                n += p.numel()
        return n

    lm = model.model.language_model
    decoder = count(list(lm.parameters()) + list(model.lm_head.parameters()))
    return {"params": count(model.parameters()), "decoder_params": decoder,
            "vision_params": count(list(model.model.vision_tower.parameters())
                                   + list(model.model.multi_modal_projector.parameters())),
            "embedding_params": int(lm.embed_tokens.weight.numel())}


def write_checkpoint(size: LadderSize, out: Path, seed: int = 0) -> dict:
    """Build and `save_pretrained` the size's checkpoint (model + tokenizer) into `out`; returns its parameter counts
    and build seconds (skips the build when `out/ladder.json` exists)."""
    from ..core.io_utils import atomic_dir
    from ..models.mllm import build_tokenizer, save_mllm

    out = Path(out)
    if (out / "ladder.json").is_file():
        return json.loads((out / "ladder.json").read_text())
    t0 = time.perf_counter()
    tok = build_tokenizer()
    model = build_llava(size, tok, seed)
    info = {"size": size.to_dict(), **param_counts(model)}
    with atomic_dir(out) as tmp:
        save_mllm(model, tok, tmp)
        info["build_s"] = round(time.perf_counter() - t0, 2)
        (tmp / "ladder.json").write_text(json.dumps(info, indent=1) + "\n")
    return info


def extract_decoder_folder(llava_dir: Path, out: Path, genai_compat: bool = False) -> Path:
    """The LLaVA's language model + LM head as a plain Qwen2ForCausalLM / LlamaForCausalLM HF folder (peers.py
    `extract_text_lm`) with the tokenizer beside. `genai_compat` also writes `rope_scaling = {"rope_type":
    "default"}` into config.json: onnxruntime-genai 0.18's builder iterates `config.rope_scaling`, which transformers
    4.57 leaves None for the default rope (same rope, same model)."""
    from ..core.io_utils import atomic_dir
    from ..models.mllm import load_mllm
    from .peers import extract_text_lm

    out = Path(out)
    if (out / "config.json").is_file():
        return out
    model, tok = load_mllm(llava_dir)
    lm = extract_text_lm(model)
    del model
    with atomic_dir(out) as tmp:
        lm.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
        if genai_compat:
            cfg = json.loads((tmp / "config.json").read_text())
            if not cfg.get("rope_scaling"):
                cfg["rope_scaling"] = {"rope_type": "default", "rope_theta": cfg.get("rope_theta", 10000.0)}
            (tmp / "config.json").write_text(json.dumps(cfg, indent=1) + "\n")
    return out


# ----------------------------------------------------------------------------------------------- scaffold


@dataclass
class Scaffold:
    root: Path

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def protocol(self) -> Path:
        return self.root / "protocol"

    @property
    def sasrec(self) -> Path:
        return self.root / "sasrec"

    @property
    def keywords(self) -> Path:
        return self.root / "keywords.parquet"


def build_scaffold(root: Path, seed: int = 0) -> Scaffold:
    """The small synthetic world every ladder size is bundled in: dataset, protocol, SASRec, keyword store (the
    synthetic catalog's ground-truth attributes). Built once, reused (about 10 s)."""
    sc = Scaffold(Path(root))
    if (sc.root / "scaffold.json").is_file():
        return sc
    from ..core.keyword_store import ItemKeywords, write_keyword_store
    from ..data.protocol import ProtocolConfig, build_protocol, save_protocol
    from ..data.schema import load_dataset
    from ..data.synth import SynthConfig, generate
    from ..models.sasrec import SASRecConfig
    from ..models.sasrec_train import SASRecTrainConfig, train_sasrec

    sc.root.mkdir(parents=True, exist_ok=True)
    if not (sc.data / "items.parquet").is_file():
        generate(SynthConfig(seed=seed, n_items=60, n_users=120, min_len=8, max_len=16), sc.data)
    ds = load_dataset(sc.data)
    p = build_protocol(ds, ProtocolConfig(seed=seed, max_cases_per_user=2))
    save_protocol(p, sc.protocol)
    model, _ = train_sasrec(p, SASRecConfig(hidden=32, layers=1, heads=1, max_len=20, dropout=0.1, seed=seed),
                            SASRecTrainConfig(epochs=8, patience=8, seed=seed, threads=1))
    model.save(sc.sasrec)
    rows = []
    for iid, item in ds.items.items():
        a = item.attributes or {}
        rows.append(ItemKeywords(iid, [a[k] for k in ("colour", "pattern", "category") if k in a],
                                 [a[k] for k in ("material", "style") if k in a], bool(item.image)))
    write_keyword_store(sc.keywords, rows)
    (sc.root / "scaffold.json").write_text(json.dumps({"seed": seed}) + "\n")
    return sc


# ----------------------------------------------------------------------------------------------- CLI steps

# One LoRA step at batch 1 on a handful of windows: enough to run the real `train recommender` path (retrieval
# index, prompts, rank hint, recommender.json) without minutes of training; the weights move by ~1e-3 relative.
TRAIN_ARGS = ["--lora-r", "8", "--max-steps", "1", "--batch-size", "1", "--epochs", "1", "--val-cases", "4",
              "--windows-per-user", "1", "--negatives-per-window", "1", "--items-per-neighbour", "2", "--lr", "1e-4"]

# A recommender-only CPU bundle: fp32 and int8 side by side. The int8 gates are opened (score 0.5, logits 1.0):
# random weights are not what the default gates were calibrated on, and the scale report measures every variant's
# scores against PyTorch fp32 itself (max |delta score|, top-5 overlap) instead of refusing to write the bundle.
PROFILE = """name = "ladder-cpu"
description = "scale ladder: recommender graphs on CPU, fp32, int8 and int4"
precision = "fp32"
variants = ["fp32", "int8", "int4"]
merged_decoder = "fallback"
providers = ["CPUExecutionProvider"]
graphs = ["recommender.vision", "recommender.embed", "recommender.decoder", "recommender.scorer", "sasrec.user_encoder"]
fp32_graphs = ["sasrec.user_encoder", "recommender.vision"]
exporter = "legacy"

[limits]
max_candidates = 21
max_prefix_tokens = 384
max_suffix_tokens = 96

[parity]
cases = 2
seed = 0
only = "int8,int4"
score = 0.5  # random weights: the score is what is gated (the yes/no kinds report their logits only)
"""


def cli() -> list[str]:
    """The `mmsrarec-edge` command of this interpreter's environment."""
    exe = Path(sys.executable).with_name("mmsrarec-edge")
    return [str(exe)] if exe.is_file() else [sys.executable, "-m", "mmsrarec_edge.cli"]


def run_monitored(cmd: list[str], log: Path | None = None, env: dict | None = None,
                  first_line: bool = False, timeout: float | None = None) -> dict:
    """Run `cmd`, sampling the RSS of its whole process tree every 0.1 s. Returns rc, wall_s, peak_rss_mb, and with
    `first_line` the seconds to the first line on stdout (first_line_s) and stdout itself."""
    import psutil

    t0 = time.perf_counter()
    out_f = open(log, "w") if log is not None else subprocess.DEVNULL
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE if first_line else out_f,
                            stderr=subprocess.STDOUT if not first_line else out_f, env=env, text=True)
    peak, stop = [0.0], threading.Event()

    def sample():
        try:
            root = psutil.Process(proc.pid)
        except psutil.Error:
            return
        while not stop.is_set():
            try:
                procs = [root] + root.children(recursive=True)
                peak[0] = max(peak[0], sum(p.memory_info().rss for p in procs if p.is_running()) / 2**20)
            except psutil.Error:
                pass
            stop.wait(0.1)

    th = threading.Thread(target=sample, daemon=True)
    th.start()
    res: dict = {}
    try:
        if first_line:
            line = proc.stdout.readline()
            res["first_line_s"] = time.perf_counter() - t0
            rest = proc.stdout.read()
            res["stdout"] = line + rest
        rc = proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        rc = proc.wait()
    finally:
        stop.set()
        th.join()
        if log is not None:
            out_f.close()
    res.update(rc=rc, wall_s=round(time.perf_counter() - t0, 2), peak_rss_mb=round(peak[0], 1))
    return res


def train_recommender(ckpt: Path, scaffold: Scaffold, out: Path, threads: int = 1, log: Path | None = None,
                      timeout: float | None = None) -> dict:
    """`train recommender --init CKPT` with TRAIN_ARGS on the scaffold (skipped when `out` exists); killed after
    `timeout` seconds."""
    out = Path(out)
    if (out / "recommender.json").is_file():
        return {"skipped": True}
    cmd = cli() + ["train", "recommender", "--dataset", str(scaffold.data), "--protocol", str(scaffold.protocol),
                   "--sasrec", str(scaffold.sasrec), "--keywords", str(scaffold.keywords), "--init", str(ckpt),
                   "--out", str(out), "--threads", str(threads)] + TRAIN_ARGS
    res = run_monitored(cmd, log, timeout=timeout)
    if res["rc"] != 0:
        raise UserError(f"train recommender failed for {ckpt} (exit {res['rc']})", f"see {log}")
    return res


def export_bundle(rec_dir: Path, scaffold: Scaffold, out: Path, threads: int = 2, log: Path | None = None,
                  profile_text: str = PROFILE, env: dict | None = None, timeout: float | None = None) -> dict:
    """`export` with PROFILE, or another profile's TOML text (skipped when the bundle exists; killed after `timeout`
    seconds). Returns rc, wall_s, peak_rss_mb."""
    out = Path(out)
    if (out / "manifest.json").is_file():
        return {"skipped": True, "rc": 0}
    profile = out.parent / ("ladder-profile.toml" if profile_text == PROFILE else f"{out.name}-profile.toml")
    profile.write_text(profile_text)
    cmd = cli() + ["export", "--profile", str(profile), "--recommender", str(rec_dir), "--keywords",
                   str(scaffold.keywords), "--dataset", str(scaffold.data), "--out", str(out),
                   "--threads", str(threads)]
    return run_monitored(cmd, log, env=env, timeout=timeout)


def bundle_bytes(bundle: Path) -> dict:
    """Bytes of the whole bundle and of a single-precision bundle per variant (that variant's graph files, fp32-only
    graphs and every non-graph file)."""
    man = json.loads((Path(bundle) / "manifest.json").read_text())
    files = {rel: f["bytes"] for rel, f in man["files"].items()}
    graph_files: dict[str, dict[str, list[str]]] = {}
    for g, entry in man["graphs"].items():
        for prec, v in entry["variants"].items():
            rels = [r for r in files if r == v["file"] or r == v["file"] + ".data"]
            graph_files.setdefault(g, {})[prec] = rels
    in_graphs = {r for per in graph_files.values() for rels in per.values() for r in rels}
    common = sum(b for r, b in files.items() if r not in in_graphs)
    precisions = sorted({p for per in graph_files.values() for p in per})
    out = {"total": sum(files.values())}
    for prec in precisions:
        b = common
        for per in graph_files.values():
            rels = per.get(prec) or per.get("fp32") or next(iter(per.values()))
            b += sum(files[r] for r in rels)
        out[prec] = b
    return out


def pick_history(root: Path, n: int = 5, seed: int = 0) -> list[int]:
    """A training user's last `n` items from a recommender/bundle retrieval table, for the cold-start command."""
    import numpy as np

    from ..core.retrieval import RetrievalIndex

    idx = RetrievalIndex(root)
    users = sorted(u for u, h in idx.histories.items() if len(h) >= n)
    if not users:
        raise UserError(f"no user with {n} items in {root}")
    u = users[int(np.random.default_rng(seed).integers(len(users)))]
    return [int(i) for i in idx.histories[u][-n:]]


def cold_start(bundle: Path, history: list[int], threads: int, precision: str | None = None,
               candidates: int = 21) -> dict:
    """Process start -> first printed answer of `mmsrarec-edge recommend` (warm page cache), its peak RSS."""
    cmd = cli() + ["recommend", str(bundle), "--history", ",".join(map(str, history)), "--candidates",
                   f"sampled:{candidates}", "--top-k", "5", "--threads", str(threads), "--json"]
    if precision:
        cmd += ["--precision", precision]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    res = run_monitored(cmd, env=env, first_line=True)
    ok = res["rc"] == 0
    out = {"cold_start_s": round(res["first_line_s"], 3) if ok else None, "rss_mb": res["peak_rss_mb"] if ok else None,
           "rc": res["rc"]}
    if not ok:
        out["error"] = res.get("stdout", "")[-400:]
    return out
