"""Load what an export needs from the training stages' output directories, and real parity inputs from a dataset.

Directory conventions (written by the training stages):
- summarizer DIR: a summarizer checkpoint (LLaVA `save_mllm` + summarizer.json with its prompt_spec, max_new_tokens,
  ...), or a `train summarizer` output dir holding one in rl/ (else sft/); summarizer.json's keys go into config.json's
  `summarizer` section as they are.
- recommender DIR: DIR/model/ (or DIR itself) holds the checkpoint, DIR/recommender.json its settings (answer words or
  token ids, prompt settings), DIR/retrieval/ the hnswlib index and collaborative keyword tables copied into index/.
- sasrec DIR: `SASRecModel.save` output.

The dataset must be the one the models were trained on: recommender.json (`inputs.dataset.fingerprint`) and the
SASRec directory (`dataset_fingerprint`) record its fingerprint (data.protocol.fingerprint), and a different one is
refused (`check_dataset`); `allow_dataset_mismatch` exports anyway, with a warning.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..core.errors import UserError
from .bundle import ExportInputs, MLLMInput


def _weights_sha(sasrec_dir: Path) -> str | None:
    from ..core.io_utils import sha256_file

    f = sasrec_dir / "model.safetensors"
    return sha256_file(f) if f.is_file() else None


def _read_json(path: Path) -> dict:
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise UserError(f"{path}: not valid JSON ({exc})") from exc


def _checkpoint(path: Path, load):
    """load() of a user-supplied model directory; a corrupt or truncated checkpoint (safetensors, torch and JSON each
    raise their own types) is a UserError naming the directory; --debug keeps the original traceback."""
    try:
        return load()
    except UserError:
        raise
    except Exception as exc:
        raise UserError(f"cannot load the model in {path}: {type(exc).__name__}: {str(exc).strip()[:200]}",
                        "the checkpoint is corrupt or incomplete: copy it again or retrain") from exc


def load_mllm_dir(path: Path, meta_name: str, subdirs: tuple[str, ...] = ("model",)) -> MLLMInput:
    """A checkpoint in `path` or its first subdir (in order) that has one; stage settings from `meta_name` beside
    the checkpoint, else in `path`."""
    from ..models.mllm import load_mllm

    path = Path(path)
    if not path.is_dir():
        raise UserError(f"model directory {path} not found")
    model_dir = path
    if not (path / "config.json").is_file():
        found = [path / d for d in subdirs if (path / d / "config.json").is_file()]
        if not found:
            raise UserError(f"{path} holds no model checkpoint (no config.json in it or in {', '.join(subdirs)}/)")
        model_dir = found[0]
    model, tok = _checkpoint(model_dir, lambda: load_mllm(model_dir))
    meta = _read_json(model_dir / meta_name) or _read_json(path / meta_name)
    return MLLMInput(model.float().eval(), tok, meta, str(model_dir))


def yes_no_ids(rec: MLLMInput) -> tuple[int, int]:
    """Token ids of the two answers: from recommender.json when it names them, else the words "yes"/"no"."""
    meta = rec.meta
    if "yes_token_id" in meta and "no_token_id" in meta:
        return int(meta["yes_token_id"]), int(meta["no_token_id"])
    words = meta.get("answer_words") or meta.get("answers") or ["yes", "no"]
    ids = []
    for w in words[:2]:
        enc = rec.tokenizer.encode(w, add_special_tokens=False)
        if len(enc) != 1:
            raise UserError(f"answer word {w!r} is {len(enc)} tokens for the recommender's tokenizer",
                            "the yes/no head needs single-token answers")
        ids.append(enc[0])
    if len(ids) != 2 or ids[0] == ids[1]:
        raise UserError(f"recommender answers {words!r} do not give two distinct tokens")
    return ids[0], ids[1]


def check_dataset(inp: ExportInputs, dataset: Path, allow_mismatch: bool = False) -> list[str]:
    """Compare the dataset's fingerprint with the ones the recommender and SASRec recorded: a UserError on a
    mismatch, or with `allow_mismatch` the warnings to print."""
    from ..data.protocol import fingerprint

    recorded = []
    if inp.recommender is not None:
        fp = ((inp.recommender.meta.get("inputs") or {}).get("dataset") or {}).get("fingerprint")
        recorded.append(("the recommender", fp))
    if inp.sasrec is not None:
        recorded.append(("the SASRec model", getattr(inp.sasrec, "dataset_fingerprint", "")))
    have = fingerprint(inp.dataset)
    warnings = []
    for who, fp in recorded:
        if fp and fp != have:
            message = (f"--dataset {dataset} (fingerprint {have}) is not the dataset {who} was trained on "
                       f"(fingerprint {fp})")
            if not allow_mismatch:
                raise UserError(message, "pass the dataset its protocol was built from, or --allow-dataset-mismatch "
                                         "to export anyway")
            warnings.append(f"{message}: exporting anyway (--allow-dataset-mismatch); the catalog may hold items the "
                            "models do not know, or miss some they do")
    return warnings


def load_inputs(summarizer: Path | None, recommender: Path | None, sasrec: Path | None, keywords: Path | None,
                dataset: Path | None, catalog: str = "known", vision_graphs: bool = False,
                allow_dataset_mismatch: bool = False) -> ExportInputs:
    """The export's inputs from the stages' directories (module docstring); `catalog`, `vision_graphs`: ExportInputs'
    fields; `allow_dataset_mismatch`: see check_dataset."""
    from ..data.schema import load_dataset
    from ..models.sasrec import SASRecModel

    inp = ExportInputs(catalog=catalog, vision_graphs=vision_graphs)
    if summarizer:
        inp.summarizer = load_mllm_dir(summarizer, "summarizer.json", ("rl", "sft", "model"))
    if recommender:
        inp.recommender = load_mllm_dir(recommender, "recommender.json")
        inp.yes_no_ids = yes_no_ids(inp.recommender)
        prompt = inp.recommender.meta.get("prompt")
        # Cache per-item image features only when the recommender's prompt shows candidate images.
        inp.image_features = bool(prompt.get("candidate_image", False)) if isinstance(prompt, dict) else True
        if (Path(recommender) / "retrieval").is_dir():
            inp.retrieval = Path(recommender) / "retrieval"
    rec_sasrec = Path(recommender) / "sasrec" if recommender else None
    if rec_sasrec is not None and rec_sasrec.is_dir():
        # The retrieval index was built with this SASRec: a different encoder would query it with foreign vectors.
        if sasrec and _weights_sha(Path(sasrec)) != _weights_sha(rec_sasrec):
            raise UserError(f"--sasrec {sasrec} is not the SASRec model the recommender's retrieval index was built "
                            f"with ({rec_sasrec})", "omit --sasrec to use the recommender's own copy")
        sasrec = sasrec or rec_sasrec
    if sasrec:
        inp.sasrec = _checkpoint(Path(sasrec), lambda: SASRecModel.load(sasrec))
    if not keywords and recommender and (Path(recommender) / "keywords.parquet").is_file():
        keywords = Path(recommender) / "keywords.parquet"  # an imported recommender carries its keyword store
    inp.keywords = Path(keywords) if keywords else None
    if dataset:
        inp.dataset = load_dataset(dataset)
        inp.warnings += check_dataset(inp, Path(dataset), allow_dataset_mismatch)
        inp.real_prompts = real_parity_inputs(inp)
    return inp


def real_parity_inputs(inp: ExportInputs, n: int = 8, seed: int = 0) -> dict:
    """A few real inputs per graph from the dataset: images, item texts as prompts, user histories."""
    from ..core.imaging import load_image
    from ..models.mllm import image_preprocess

    ds, rng, out = inp.dataset, np.random.default_rng(seed), {}
    ids = sorted(ds.items)
    pick = [ids[k] for k in rng.choice(len(ids), size=min(n, len(ids)), replace=False)]
    for stage in ("summarizer", "recommender"):
        m = getattr(inp, stage)
        if m is None:
            continue
        enc = lambda s, tok=m.tokenizer: tok.encode(s, add_special_tokens=False)[:64]  # noqa: E731
        imgs = [ds.image_path(i) for i in pick if ds.items[i].image and ds.image_path(i) is not None]
        if imgs:
            out[f"{stage}.vision"] = np.stack([image_preprocess(m.model)(load_image(p)) for p in imgs[:2]])
        texts = [enc(ds.items[i].text) or [m.tokenizer.unk_token_id] for i in pick]
        out[f"{stage}.embed"] = texts
        if stage == "summarizer":
            out["summarizer.decoder"] = _summarizer_prompts(m, ds, pick) or texts
        else:
            out["recommender.decoder"] = _recommender_prompts(inp, pick) or [(
                # Without the prompt builder: shared prefix = a few titles, candidates = titles.
                [t for i in pick[:2] for t in enc(ds.items[i].title)] or [m.tokenizer.unk_token_id],
                [enc(ds.items[i].title) or [m.tokenizer.unk_token_id] for i in pick])]
    if inp.sasrec is not None:
        seqs = list(ds.sequences().values())
        hist = [seqs[k] for k in rng.choice(len(seqs), size=min(8, len(seqs)), replace=False)]
        out["sasrec.user_encoder"] = inp.sasrec.pad_histories(hist)
    return out


def _summarizer_prompts(m: MLLMInput, ds, pick) -> list[list[int]] | None:
    """The summarizer's real prompts (image and text task) when its checkpoint carries a prompt spec."""
    if not isinstance(m.meta.get("prompt_spec"), dict):
        return None
    from ..core.summary_prompts import PromptSpec, image_prompt_ids, text_prompt_ids

    spec = PromptSpec.from_dict(m.meta["prompt_spec"])
    enc = lambda s: m.tokenizer.encode(s, add_special_tokens=False)  # noqa: E731
    # every picked item's text prompt: the summarizer's int8 decoder is gated on these (parity.check)
    prompts = [text_prompt_ids(enc, spec, ds.items[i].text) for i in pick]
    return prompts + [image_prompt_ids(enc, spec)]


def _recommender_prompts(inp: ExportInputs, pick) -> list | None:
    """A real (prefix, suffixes) case: a user's last items as history, the picked items as candidates."""
    m = inp.recommender
    if not isinstance(m.meta.get("prompt"), dict):
        return None
    try:
        from ..core import prompt as rp
    except ImportError:
        return None
    from ..models.mllm import num_image_tokens

    cfg = rp.PromptConfig.from_dict(m.meta["prompt"])
    kws = {}
    if inp.keywords is not None:
        from ..core.keyword_store import read_keyword_store

        kws = read_keyword_store(inp.keywords)
    ds = inp.dataset
    kw = lambda i: list(kws[i].keywords) if i in kws else ds.items[i].title.split()  # noqa: E731
    enc = lambda s: m.tokenizer.encode(s, add_special_tokens=False)  # noqa: E731
    seq = max(ds.sequences().values(), key=len)[-cfg.history_len:]
    prefix = rp.prefix_ids(enc, m.tokenizer.bos_token_id, [kw(i) for i in seq], None, cfg)
    n_img = num_image_tokens(m.model) if cfg.candidate_image else 0
    # A rank-hint prompt needs a rank per candidate; any realistic spread of ranks serves the parity check.
    suffixes = [rp.suffix_ids(enc, ds.items[i].title, kw(i), n_img if ds.items[i].image else 0,
                              1 + 7 * k if cfg.rank_hint else None, cfg)
                for k, i in enumerate(pick)]
    return [(prefix, suffixes)]
