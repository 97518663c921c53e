"""The bundle writer: export every graph, gate it, add tokenizer, keywords, index and catalog, write the manifest.

Everything is written into a temporary directory next to the target and renamed into place only when every graph has
passed its parity gate and the manifest is complete (io_utils.atomic_dir): an interrupted or failed export leaves no
bundle and no half-written one. The layout and every key are documented in exporter/__init__.py.
"""

from __future__ import annotations

import platform
import shutil
import time
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

import numpy as np
import onnx
import torch

from ..core.bundle import FORMAT, FORMAT_VERSION, MANIFEST, allowed_file, write_safetensors
from ..core.errors import UserError
from ..core.graph_kinds import kind_of as core_kind_of
from ..core.io_utils import atomic_dir, sha256_file, write_json
from . import catalog as catalog_mod
from .graphs import export_graph, kv_shape
from .kinds import ExportKind, plan_graph
from .parity import check, gate
from .profile import ExportProfile
from .variants import FP32_OPS, make_variant, onnx_files, release_memory

META_EXCLUDED = ("inputs", "training", "ablations", "import")
_NP = {1: "float32", 10: "float16", 7: "int64", 6: "int32", 9: "bool", 11: "float64"}


@dataclass
class MLLMInput:
    model: object  # LlavaForConditionalGeneration
    tokenizer: object  # PreTrainedTokenizerFast
    meta: dict = field(default_factory=dict)  # stage settings kept in config.json (prompt spec, answer words, ...)
    source: str | None = None


@dataclass
class ExportInputs:
    summarizer: MLLMInput | None = None
    recommender: MLLMInput | None = None
    sasrec: object | None = None  # SASRecModel
    keywords: Path | None = None  # keyword store (Parquet)
    retrieval: Path | None = None  # the recommender's retrieval dir (hnswlib index + collaborative tables)
    dataset: object | None = None  # data.schema.Dataset: catalog + real parity inputs
    yes_no_ids: tuple[int, int] | None = None
    image_features: bool = True  # precompute the recommender's per-item image features into the catalog
    real_prompts: dict = field(default_factory=dict)  # graph -> real parity inputs (see parity.check)
    catalog: str = "known"  # catalog_mod.CATALOG_MODES: the items the models know, or every dataset item
    vision_graphs: bool = False  # export vision graphs even for a text-only dataset
    warnings: list[str] = field(default_factory=list)  # what loading the inputs noticed (the CLI prints them)


def _io(model: onnx.ModelProto) -> tuple[list[dict], list[dict]]:
    def one(v):
        t = v.type.tensor_type
        shape = [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in t.shape.dim]
        return {"name": v.name, "dtype": _NP.get(t.elem_type, str(t.elem_type)), "shape": shape}

    return [one(v) for v in model.graph.input], [one(v) for v in model.graph.output]


def _versions() -> dict:
    out = {"python": platform.python_version()}
    for pkg in ("mmsrarec-edge", "torch", "transformers", "onnx", "onnxruntime", "numpy", "tokenizers"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = None
    return out


def _graph_plan(inputs: ExportInputs, profile: ExportProfile,
                skipped: dict | None = None) -> list[tuple[str, ExportKind, object]]:
    """(graph name, its kind (exporter/kinds.py), the PyTorch object it is exported from) for every graph the profile
    asks for. Optional graphs the model cannot have (recommender.scorer for an unsupported decoder) and vision graphs
    of a text-only dataset (`_text_only`) go into `skipped` with the reason."""
    plan = []
    skipped = {} if skipped is None else skipped
    text_only = _text_only(inputs)
    for graph in profile.graphs:
        if text_only and core_kind_of(graph) == "vision":
            skipped[graph] = text_only
            continue
        kind, model, why = plan_graph(graph, inputs)
        if kind is None:
            skipped[graph] = why
            continue
        plan.append((graph, kind, model))
    names = [g for g, _, _ in plan]
    if profile.merged_decoder == "fallback" and "recommender.scorer" in names and "recommender.decoder" in names:
        plan = [p for p in plan if p[0] != "recommender.decoder"]
        skipped["recommender.decoder"] = ("not needed: recommender.scorer serves every scoring path "
                                          "(profile merged_decoder = \"fallback\"; each weight stored once)")
    return plan


def _text_only(inputs: ExportInputs) -> str | None:
    """Why the vision graphs are left out (the export's dataset has no item image, so they could only be gated on
    random pixels and no catalog item needs them), or None: no dataset, an image in it, or `vision_graphs` asked."""
    ds = inputs.dataset
    if ds is None or inputs.vision_graphs or any(it.image for it in ds.items.values()):
        return None
    return (f"the dataset {ds.name} has no item images (text-only): a vision graph would be gated on random pixels "
            "only; export --vision-graphs keeps it (for cold-start items with images)")


def export_graphs(inputs: ExportInputs, profile: ExportProfile, root: Path, scratch: Path, progress=None,
                  skipped: dict | None = None) -> dict:
    """Export, convert and gate every graph into `root`; returns the manifest's `graphs` section (optional graphs
    the model cannot have are named in `skipped` with the reason)."""
    graphs = {}
    for graph, kind, obj in _graph_plan(inputs, profile, skipped):
        stage, part = graph.split(".")
        spec = kind.spec(obj, inputs.yes_no_ids)
        # Same base name as in the bundle: an external-data graph refers to its .onnx.data file by name.
        fp32 = export_graph(spec, scratch / stage / f"{part}.onnx", profile.exporter)
        del spec
        release_memory()
        model = onnx.load(str(fp32), load_external_data=False)
        ins, outs = _io(model)
        variants, results = {}, []
        for precision in profile.graph_variants(graph):
            rel = f"{stage}/{part}.onnx" if precision == "fp32" else f"{stage}/{part}.{precision}.onnx"
            dst = root / rel
            dst.parent.mkdir(parents=True, exist_ok=True)
            extra = {}
            if precision == "fp32":
                for f in onnx_files(fp32):
                    shutil.copyfile(f, dst.with_name(dst.name + f.name[len(fp32.name):]))
            else:
                extra = make_variant(fp32, precision, dst, profile.exporter)
            release_memory()
            res = check(graph, kind, dst, precision, obj, cases=profile.parity.cases, seed=profile.parity.seed,
                        tol_overrides=profile.parity, yes_no_ids=inputs.yes_no_ids,
                        real=kind.real_inputs(inputs.real_prompts), provider=profile.parity.provider)
            results.append(res)
            release_memory()
            variants[precision] = {"file": rel, **extra, "parity": res.to_dict()}
            if progress:
                progress(graph=f"{graph}:{precision}", **{k: v for k, v in res.metrics.items()})
        gate(results)  # fail at the first graph that misses, before spending time on the rest
        fp32_nodes = sorted(n.name for n in model.graph.node if n.op_type in FP32_OPS and n.name)
        graphs[graph] = {
            "kind": kind.name, "default_variant": profile.default_variant(graph), "variants": variants,
            "inputs": ins, "outputs": outs,
            "tensorrt": {"profiles": kind.tensorrt_profiles(ins, profile.limits), "fp32_nodes": fp32_nodes},
        }
    return graphs


# ---------------------------------------------------------------- config.json sections


def _mllm_config(m: MLLMInput, graphs: dict, stage: str) -> dict:
    from ..models import families
    from ..models.mllm import IMAGE_TOKEN, image_preprocess, image_size, num_image_tokens

    layers, kv_heads, head_dim = kv_shape(m.model)
    tc = m.model.config.text_config
    return {
        "graphs": sorted(g for g in graphs if g.startswith(stage + ".")),
        "decoder": tc.model_type, "vision": m.model.config.vision_config.model_type,
        "hidden_size": tc.hidden_size, "num_layers": layers, "num_kv_heads": kv_heads, "head_dim": head_dim,
        "vocab_size": int(m.model.get_input_embeddings().weight.shape[0]),
        "max_position_embeddings": tc.max_position_embeddings,
        "image_size": image_size(m.model), "num_image_tokens": num_image_tokens(m.model),
        "image_preprocess": image_preprocess(m.model).to_dict(),
        "image_token_id": m.tokenizer.convert_tokens_to_ids(IMAGE_TOKEN),
        **families.config_section(m.model),  # family; rope (multimodal positions, core/rope_index.py)
        # The stage's own settings (prompt config, answer tokens, ...), without its provenance and training log:
        # paths and training-user lists of the machine that trained it do not belong in a shipped bundle.
        **{k: v for k, v in m.meta.items() if k not in META_EXCLUDED},
    }


def _tokenizer_json(tok) -> str:
    """The fast tokenizer's JSON without the padding/truncation the source file may carry (MiniLM pads to 128):
    `Tokenizer.from_file(...).encode(text)` at runtime must give exactly the ids training saw."""
    from tokenizers import Tokenizer

    t = Tokenizer.from_str(tok.backend_tokenizer.to_str())
    t.no_padding()
    t.no_truncation()
    return t.to_str()


def _special_ids(tok) -> dict:
    return {"bos_id": tok.bos_token_id, "eos_id": tok.eos_token_id, "pad_id": tok.pad_token_id,
            "unk_id": tok.unk_token_id}


def write_config(inputs: ExportInputs, profile: ExportProfile, root: Path, graphs: dict) -> dict:
    from ..core.imaging import CLIP_MEAN, CLIP_STD

    cfg: dict = {"format_version": FORMAT_VERSION, "limits": profile.to_dict()["limits"],
                 "image_preprocess": {"mean": list(CLIP_MEAN), "std": list(CLIP_STD)}}
    first = inputs.recommender or inputs.summarizer
    if first is not None:  # top level: the recommender's (else the summarizer's); each stage has its own below
        from ..models.mllm import image_preprocess

        cfg["image_preprocess"] = image_preprocess(first.model).to_dict()
    toks = {}
    for stage in ("recommender", "summarizer"):
        m = getattr(inputs, stage)
        if m is None:
            continue
        text = _tokenizer_json(m.tokenizer)
        rel = "tokenizer.json" if not toks or toks.get("tokenizer.json") == text else f"{stage}/tokenizer.json"
        toks.setdefault(rel, text)
        cfg[stage] = {**_mllm_config(m, graphs, stage), "tokenizer": rel, "special_tokens": _special_ids(m.tokenizer)}
    for rel, text in toks.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text, encoding="utf-8")
    if "recommender" in cfg and inputs.yes_no_ids:
        cfg["recommender"]["yes_token_id"], cfg["recommender"]["no_token_id"] = map(int, inputs.yes_no_ids)
    if inputs.sasrec is not None:
        s = inputs.sasrec
        (root / "sasrec").mkdir(exist_ok=True)
        write_json(root / "sasrec" / "item_ids.json", {"item_ids": [int(i) for i in s.item_ids]})
        # The item embedding table (row k+1 = item_ids[k], row 0 = padding): the runtime's cheap first stage ranks the
        # whole catalog by its dot product with the user embedding.
        write_safetensors(root / "sasrec" / "item_embeddings.safetensors",
                          {"item_embeddings": s.net.item_emb.weight.detach().float().numpy()})
        cfg["sasrec"] = {"graph": "sasrec.user_encoder", "max_len": s.cfg.max_len, "hidden": s.cfg.hidden,
                         "item_ids": "sasrec/item_ids.json", "padding_index": 0,
                         "item_embeddings": "sasrec/item_embeddings.safetensors",
                         "note": "history row = SASRec indices (item_ids[k] -> k + 1), left-padded with 0"}
    if inputs.keywords is not None:
        cfg["keywords"] = catalog_mod.copy_keyword_store(inputs.keywords, root / "keywords" / "keywords.parquet")
    if inputs.retrieval is not None:
        cfg["retrieval"] = catalog_mod.copy_retrieval(inputs.retrieval, root / "index")
    if inputs.dataset is not None:
        cfg["catalog"] = catalog_mod.write_catalog(inputs, root / "catalog")
    write_json(root / "config.json", cfg)
    return cfg


def _file_table(root: Path) -> dict:
    files = {}
    for path in sorted(root.rglob("*")):
        if path.is_dir():
            continue
        rel = path.relative_to(root).as_posix()
        if rel == MANIFEST:
            continue
        if not allowed_file(path.name):
            raise UserError(f"refusing to put {rel} into a bundle (file type not allowed)")
        files[rel] = {"sha256": sha256_file(path), "bytes": path.stat().st_size}
    return files


def fix_image_size(inputs: ExportInputs, profile: ExportProfile) -> None:
    """Fix the input resolution of towers with a dynamic patch grid (Qwen2-VL family) at the profile's
    [vision] image_size (0: the checkpoint's own); the recommender's image slots must stay what it was trained with."""
    from ..models import families

    changed = False
    for stage in ("summarizer", "recommender"):
        m = getattr(inputs, stage)
        if m is None or not families.is_qwen(m.model):
            continue
        before = families.num_image_tokens(m.model)
        if profile.vision.image_size:
            families.set_image_size(m.model, profile.vision.image_size)
        after = families.num_image_tokens(m.model)
        trained = m.meta.get("n_image_tokens") or (m.meta.get("prompt_spec") or {}).get("num_image_tokens")
        if trained and int(trained) != after:
            raise UserError(f"[vision] image_size {families.image_size(m.model)} gives {after} image tokens per "
                            f"image, the {stage} was trained with {trained}",
                            "set the profile's [vision] image_size to the training resolution (or 0)")
        changed |= before != after
    if changed and inputs.dataset is not None:  # real parity images at the new size
        from .inputs import real_parity_inputs

        inputs.real_prompts = real_parity_inputs(inputs)


def export_bundle(inputs: ExportInputs, profile: ExportProfile, out: Path, profile_source: str | None = None,
                  progress=None, sign_key=None) -> dict:
    """Write the bundle at `out` (atomically). Returns the manifest. Raises ExportError when a graph misses its gate.
    With `sign_key` (an Ed25519 private key, core/signing.py) the manifest is signed: manifest.sig beside it."""
    started = time.time()
    out = Path(out)
    fix_image_size(inputs, profile)
    with atomic_dir(out, marker=MANIFEST) as tmp:
        scratch = tmp / ".scratch"
        scratch.mkdir()
        skipped: dict = {}
        graphs = export_graphs(inputs, profile, tmp, scratch, progress, skipped)
        shutil.rmtree(scratch)
        write_config(inputs, profile, tmp, graphs)
        manifest = {
            "format": FORMAT, "format_version": FORMAT_VERSION,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "export_seconds": round(time.time() - started, 2),
            "packages": _versions(),
            "profile": {**profile.to_dict(), "source": profile_source},
            "sources": {k: v for k, v in {
                "summarizer": inputs.summarizer.source if inputs.summarizer else None,
                "recommender": inputs.recommender.source if inputs.recommender else None,
                # a model trained elsewhere (import-model): checkpoint, merged LoRA adapter, template, SASRec, keywords
                "imported": {s: m.meta["import"] for s in ("summarizer", "recommender")
                             for m in [getattr(inputs, s)] if m is not None and m.meta.get("import")} or None,
            }.items() if v},
            "graphs": graphs,
            "graphs_skipped": skipped,
            "files": _file_table(tmp),
            "engines": {},
        }
        write_json(tmp / MANIFEST, manifest)
        if sign_key is not None:
            from ..core.signing import sign_manifest

            sign_manifest(tmp, sign_key)
    return manifest


def parity_summary(manifest: dict) -> list[tuple[str, str, dict]]:
    return [(g, p, v["parity"]["metrics"]) for g, e in manifest["graphs"].items() for p, v in e["variants"].items()]


def image_features_array(llava, pixels: np.ndarray, batch: int = 32) -> np.ndarray:
    """PyTorch fp32 reference features [N, n_img, H] (what the catalog caches; no ONNX variant's rounding)."""
    from ..models import families
    from .graphs import VisionGraph

    mod, outs = (VisionGraph(llava).eval() if families.is_llava(llava)
                 else lambda px: families.image_features(llava, px)), []
    with torch.no_grad():
        for s in range(0, len(pixels), batch):
            outs.append(mod(torch.from_numpy(np.ascontiguousarray(pixels[s:s + batch], np.float32))).numpy())
    return np.concatenate(outs) if outs else np.zeros((0,), np.float32)
