"""Helpers for the runtime tests: a tiny random LLaVA and one tiny bundle exported with the exporter's public
`export_bundle`, built once per test process and shared by the runtime test modules (no pytest fixtures here: the
modules wrap these in module-scoped fixtures)."""

from __future__ import annotations

import atexit
import functools
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass
class TinyGraphs:
    model: object  # LlavaForConditionalGeneration (torch)
    tokenizer: object  # PreTrainedTokenizerFast
    yes_id: int
    no_id: int
    image_token_id: int

    def path(self, name: str) -> Path:
        """vision, embed, decoder_last, decoder_yes_no, scorer: the graphs of the shared bundle (exported with the
        exporter's public export_bundle, parity-gated)."""
        root = shared_tiny_bundle().dir
        return {"vision": root / "summarizer" / "vision.onnx", "embed": root / "summarizer" / "embed.onnx",
                "decoder_last": root / "summarizer" / "decoder.onnx",
                "decoder_yes_no": root / "recommender" / "decoder.onnx",
                "scorer": root / "recommender" / "scorer.onnx"}[name]

    @property
    def tokenizer_json(self) -> Path:
        return shared_tiny_bundle().dir / "tokenizer.json"


def tiny_llava(seed: int = 0, hidden: int = 64) -> TinyGraphs:
    """A random tiny LLaVA (CLIP 64 px / patch 16 -> 16 image tokens, Qwen2 hidden `hidden` x 2 layers)."""
    import torch

    from mmsrarec_edge.models.mllm import IMAGE_TOKEN, MLLMConfig, build_mllm, build_tokenizer

    torch.set_num_threads(1)  # tiny models: threads only contend with the other tests
    tok = build_tokenizer()
    model = build_mllm(MLLMConfig(hidden_size=hidden, intermediate_size=2 * hidden, seed=seed), tok)
    # At the default init (std 0.02) the residual stream carries the last prompt token through and every prompt
    # generates ":" forever; larger decoder weights make rows differ, so the tests can tell them apart.
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.model.language_model.layers.parameters():
            if p.dim() == 2:
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    yes, no = tok.convert_tokens_to_ids("yes"), tok.convert_tokens_to_ids("no")
    return TinyGraphs(model, tok, yes, no, tok.convert_tokens_to_ids(IMAGE_TOKEN))


def torch_yes_probability(model, ids: list[int], pixel_values: np.ndarray | None, yes_id: int, no_id: int) -> float:
    """PyTorch reference: the full LLaVA forward over one unpadded prompt, sigmoid(l_yes - l_no) at its last token."""
    import torch

    with torch.no_grad():
        pv = None if pixel_values is None else torch.from_numpy(np.asarray(pixel_values, np.float32))
        logits = model(input_ids=torch.tensor([ids]), pixel_values=pv).logits[0, -1].double()
        return float(torch.sigmoid(logits[yes_id] - logits[no_id]))


@functools.lru_cache(maxsize=None)
def shared_tiny_llava() -> TinyGraphs:
    return tiny_llava()


@dataclass
class TinyBundle:
    dir: Path
    dataset: object  # data.schema.Dataset
    graphs: TinyGraphs
    sasrec: object  # SASRecModel


def tiny_dataset(out: Path, seed: int = 3):
    from mmsrarec_edge.data.synth import SynthConfig, generate

    return generate(SynthConfig(seed=seed, n_items=40, n_users=60, min_len=6, max_len=14), Path(out))


def ground_truth_keywords(ds) -> list:
    """Keyword store rows from the synthetic catalog's attributes (what a perfect summarizer would write)."""
    from mmsrarec_edge.core.keyword_store import ItemKeywords

    rows = []
    for iid, item in ds.items.items():
        a = item.attributes or {}
        rows.append(ItemKeywords(iid, [a[k] for k in ("colour", "pattern", "category") if k in a],
                                 [a[k] for k in ("material", "style") if k in a], bool(item.image)))
    return rows


def build_tiny_bundle(out: Path, graphs: TinyGraphs, profile_overrides: dict | None = None) -> TinyBundle:
    """A complete bundle from tiny parts with the exporter's public `export_bundle`: the tiny LLaVA as both summarizer
    and recommender, a random SASRec, ground-truth keywords and a tiny synthetic catalog."""
    import torch

    from mmsrarec_edge.core.keyword_store import write_keyword_store
    from mmsrarec_edge.exporter.bundle import ExportInputs, MLLMInput, export_bundle
    from mmsrarec_edge.exporter.profile import parse_profile
    from mmsrarec_edge.models.sasrec import SASRec, SASRecConfig, SASRecModel

    out = Path(out)
    work = out.parent / (out.name + "_parts")
    ds = tiny_dataset(work / "data")
    torch.manual_seed(0)
    ids = sorted(ds.items)
    sas = SASRecModel(SASRec(len(ids), SASRecConfig(hidden=16, layers=1, heads=2, max_len=8, dropout=0.0)), ids)
    kws = ground_truth_keywords(ds)
    kw_path = write_keyword_store(work / "keywords.parquet", kws)
    retrieval = build_retrieval(work / "retrieval", ds, sas, {k.item_id: k.keywords for k in kws})
    # fp32 by default, with int8 variants beside (as cpu-int8 pins them, SASRec and the vision towers stay fp32)
    profile = parse_profile({"parity": {"cases": 1}, "variants": ["fp32", "int8"],
                             "fp32_graphs": ["sasrec.user_encoder", "summarizer.vision", "recommender.vision"],
                             **(profile_overrides or {})})
    from mmsrarec_edge.core.summary_prompts import PromptSpec

    tok = graphs.tokenizer
    spec = PromptSpec(eos_id=tok.eos_token_id, pad_id=tok.pad_token_id, image_token_id=graphs.image_token_id,
                      num_image_tokens=16, bos_id=tok.bos_token_id, max_text_tokens=48)
    meta = {"prompt_spec": spec.to_dict(), "max_new_tokens": 8, "max_keywords": 8}  # as summarizer.json has them
    rec_meta = {"prompt": {"history_len": 5, "candidate_image": True}, "n_image_tokens": 16, "n_rescore": 8,
                "retrieval": {"enabled": True, "k": 3, "items_per_neighbour": 2}}
    export_bundle(ExportInputs(summarizer=MLLMInput(graphs.model, graphs.tokenizer, meta),
                               recommender=MLLMInput(graphs.model, graphs.tokenizer, rec_meta), sasrec=sas,
                               keywords=kw_path, retrieval=retrieval, dataset=ds,
                               yes_no_ids=(graphs.yes_id, graphs.no_id)),
                  profile, out)
    return TinyBundle(out, ds, graphs, sas)


def build_retrieval(out: Path, ds, sas, keywords: dict) -> Path:
    """The recommender stage's retrieval dir (retrieval.build_retrieval) over the synthetic users."""
    from mmsrarec_edge.core.retrieval import RetrievalConfig
    from mmsrarec_edge.core.retrieval import build_retrieval as build

    build(out, ds.sequences(), sas.user_embeddings, lambda i: keywords[i],
          RetrievalConfig(k=3, items_per_neighbour=2, stride=3, min_history=2))
    return Path(out)


@functools.lru_cache(maxsize=None)
def shared_tiny_bundle() -> TinyBundle:
    """One bundle per test process (about 10 s to export); tests that modify a bundle copy it first."""
    out = Path(tempfile.mkdtemp(prefix="mmsrarec_rtb_"))
    atexit.register(shutil.rmtree, out, True)
    return build_tiny_bundle(out / "bundle", shared_tiny_llava())


def copy_bundle(bundle: TinyBundle, dst: Path) -> Path:
    shutil.copytree(bundle.dir, dst)
    return Path(dst)
