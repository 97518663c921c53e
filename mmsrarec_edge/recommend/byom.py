"""Bring your own model (`mmsrarec-edge import-model`): a recommender trained elsewhere -> a recommender directory that
`export` bundles and the runtime serves like one `train recommender` wrote (model_dir.py's layout).

Inputs: an HF checkpoint folder (any architecture models/mllm.load_mllm takes; an unsupported one is one line listing
the supported ones), an optional peft LoRA adapter (safetensors; merged into the weights with peft's
merge_and_unload and recorded), an optional prompt template (core/prompt_template.py; without one, the prompt text of
core/prompt.py), a SASRec (our `train sasrec` directory, or a state dict with RecBole's key names:
models/recbole_sasrec.py), a keyword store (CSV, JSONL or our Parquet: data/keyword_files.py) and the catalog as a
canonical dataset (`data import` reads the other formats), optionally with its protocol (the retrieval index then holds
its training users only).

    OUT/model/            the merged checkpoint (save_mllm: safetensors, tokenizer, preprocessor_config.json)
    OUT/sasrec/           the SASRec (ours, or RecBole's layout as "sasrec-recbole")
    OUT/keywords.parquet  the keyword store (export reads it when --keywords is left out)
    OUT/retrieval/        the hnswlib index of the users' SASRec embeddings (absent with retrieval off)
    OUT/items.parquet     the catalog as the prompts show it
    OUT/recommender.json  prompt config (the template included), answer token ids, retrieval settings, and `import`:
                          what was imported (paths, SHA-256s, the adapter's LoRA settings); export copies it into the
                          manifest's sources
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from ..core import prompt as P
from ..core.candidates import DEFAULT_RESCORE
from ..core.errors import UserError
from ..core.io_utils import atomic_dir, sha256_file
from ..core.outputs import RECOMMENDER
from .model_dir import FORMAT, META, VERSION, write_items


@dataclass
class ImportSpec:
    model: Path
    sasrec: Path
    keywords: Path
    dataset: Path
    out: Path
    adapter: Path | None = None
    template: Path | None = None
    protocol: Path | None = None
    sasrec_item_ids: Path | None = None  # RecBole state dict: internal id k+1 -> item_ids[k] (default: k+1 itself)
    sasrec_heads: int = 2  # RecBole's default; not recorded in a state dict
    retrieval: bool = True
    neighbours: int = 3
    items_per_neighbour: int = 2
    history_len: int = 5
    rank_hint: bool = False  # our prompt text only; a template asks for the rank with {rank}
    candidate_image: bool = False  # our prompt text only; a template asks with {image}
    n_rescore: int = DEFAULT_RESCORE


def merge_lora(model, adapter: Path):
    """Merge a peft LoRA adapter directory (adapter_config.json + adapter_model.safetensors) into `model` with
    merge_and_unload. Returns (the merged model, the record for recommender.json)."""
    adapter = Path(adapter)
    cfg_file, weights = adapter / "adapter_config.json", adapter / "adapter_model.safetensors"
    if not cfg_file.is_file():
        raise UserError(f"{adapter} is not a peft adapter directory (no adapter_config.json)",
                        "pass the directory peft's save_pretrained wrote")
    if not weights.is_file():
        pickled = (adapter / "adapter_model.bin").is_file()
        raise UserError(f"{adapter} has no adapter_model.safetensors"
                        + (" (adapter_model.bin needs pickle, which is refused)" if pickled else ""),
                        "save the adapter with save_pretrained(..., safe_serialization=True)")
    try:
        conf = json.loads(cfg_file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"{cfg_file}: not valid JSON ({exc})") from None
    if conf.get("peft_type") != "LORA":
        raise UserError(f"{cfg_file}: peft_type {conf.get('peft_type')!r} is not LORA", "only LoRA adapters merge")
    from peft import PeftModel

    try:
        merged = PeftModel.from_pretrained(model, str(adapter), is_trainable=False).merge_and_unload()
    except UserError:
        raise
    except Exception as exc:
        raise UserError(f"cannot apply the adapter {adapter} to the model: {type(exc).__name__}: "
                        f"{str(exc).strip().splitlines()[0][:200]}",
                        "was it trained on this base checkpoint (same module names and shapes)?") from None
    tm = conf.get("target_modules")
    record = {"path": str(adapter.resolve()), "sha256": sha256_file(weights), "peft_type": "LORA",
              "r": conf.get("r"), "lora_alpha": conf.get("lora_alpha"),
              "target_modules": sorted(tm) if isinstance(tm, list) else tm,
              "base_model_name_or_path": conf.get("base_model_name_or_path"), "merged_with": "merge_and_unload"}
    return merged.eval(), record


def load_sasrec(path: Path, item_ids_file: Path | None = None, heads: int = 2):
    """Our SASRec directory, or a RecBole SASRec state dict file (safetensors / weights-only torch file)."""
    from ..models.recbole_sasrec import build, config_from_state_dict, read_state_dict
    from ..models.sasrec import SASRecModel

    path = Path(path)
    if path.is_dir():
        if item_ids_file is not None:
            raise UserError("--sasrec-item-ids is for a state dict file", "our SASRec directory has its own item ids")
        return SASRecModel.load(path)
    sd = read_state_dict(path)
    net = build(sd, config_from_state_dict(sd, heads, where=str(path)), str(path))
    n = net.n_items
    if item_ids_file is None:
        ids = list(range(1, n + 1))  # internal id k = item id k
    else:
        ids = read_item_ids(Path(item_ids_file))
        if len(ids) != n:
            raise UserError(f"{item_ids_file} lists {len(ids)} item ids, the SASRec's item table has {n} (+ padding)",
                            "list one item id per internal id 1..N, in order ([PAD] first may be kept)")
    return SASRecModel(net, ids)


def read_item_ids(path: Path) -> list[int]:
    """Item ids by internal id (1-based): a JSON list or {"item_ids": [...]}, or a text file, one id a line; a
    leading "[PAD]" (RecBole's field2id_token) is dropped."""
    if not path.is_file():
        raise UserError(f"item id file {path} does not exist")
    text = path.read_text(encoding="utf-8")
    try:
        data = json.loads(text)
        data = data.get("item_ids") if isinstance(data, dict) else data
    except json.JSONDecodeError:
        data = [ln.strip() for ln in text.splitlines() if ln.strip()]
    if not isinstance(data, list):
        raise UserError(f"{path}: expected a list of item ids")
    if data and str(data[0]) == "[PAD]":
        data = data[1:]
    try:
        ids = [int(x) for x in data]
    except (TypeError, ValueError):
        raise UserError(f"{path}: item ids must be integers", "map string ids with `data import` first") from None
    if len(set(ids)) != len(ids):
        raise UserError(f"{path}: duplicate item ids")
    return ids


def prompt_config(spec: ImportSpec, template: dict | None) -> P.PromptConfig:
    from ..core.config import apply
    from ..core.prompt_template import uses

    cfg = P.PromptConfig(history_len=spec.history_len, rank_hint=spec.rank_hint,
                         candidate_image=spec.candidate_image)
    if template is None:
        return cfg
    settings = {k: v for k, v in template["settings"].items()}
    for k in ("template", "rank_hint", "candidate_image"):
        if k in settings:
            raise UserError(f"{spec.template}: [settings] {k} is set by the template itself",
                            "use {rank} / {image} in the suffix")
    cfg = apply(cfg, settings, f"{spec.template} [settings]")
    cfg.rank_hint, cfg.candidate_image = uses(template, "rank"), uses(template, "image")
    cfg.template = template
    return cfg


def answer_ids(tok, words) -> tuple[int, int]:
    ids = []
    for w in words:
        enc = tok(w, add_special_tokens=False)["input_ids"]
        if len(enc) != 1:
            raise UserError(f"answer word {w!r} is {len(enc)} tokens for the model's tokenizer",
                            "the yes/no head needs single-token answers: set answer_words in the template")
        ids.append(int(enc[0]))
    if ids[0] == ids[1]:
        raise UserError(f"answer words {list(words)!r} are the same token")
    return ids[0], ids[1]


def _fingerprint(path: Path) -> dict:
    path = Path(path)
    return {"path": str(path.resolve()), "sha256": sha256_file(path) if path.is_file() else None}


def import_model(spec: ImportSpec, echo=print) -> dict:
    """Build the recommender directory at spec.out (atomically). Returns recommender.json's content."""
    from ..core.keyword_store import write_keyword_store
    from ..core.prompt_template import load_template
    from ..core.retrieval import RetrievalConfig, build_retrieval
    from ..data.keyword_files import read_keyword_file
    from ..data.schema import load_dataset
    from ..models.mllm import load_mllm, num_image_tokens, save_mllm

    if spec.history_len < 1 or spec.neighbours < 1 or spec.items_per_neighbour < 1 or spec.n_rescore < 1:
        raise UserError("--history-len, --neighbours, --items-per-neighbour and --rescore must be >= 1")
    template = load_template(spec.template) if spec.template else None
    cfg = prompt_config(spec, template)
    model, tok = load_mllm(spec.model)  # first: an unsupported architecture is the first thing to know
    ds = load_dataset(spec.dataset)
    rows = read_keyword_file(spec.keywords)
    sasrec = load_sasrec(spec.sasrec, spec.sasrec_item_ids, spec.sasrec_heads)
    record: dict = {"model": str(Path(spec.model).resolve())}
    if spec.adapter is not None:
        model, record["adapter"] = merge_lora(model, spec.adapter)
        echo(f"merged LoRA adapter {spec.adapter} (r={record['adapter']['r']})")
    model = model.float().eval()
    words = template["answer_words"] if template else list(P.ANSWER_WORDS)
    yes_id, no_id = answer_ids(tok, words)

    kws = {r.item_id: r for r in rows}
    universe = sorted(ds.items)
    covered = sum(1 for i in universe if i in kws)
    if covered < 0.5 * len(universe):
        raise UserError(f"the keyword file {spec.keywords} covers only {covered} of the catalog's {len(universe)} "
                        "items", "give keywords for the catalog's item ids")
    unknown = [i for i in sasrec.item_ids if i not in ds.items]
    if len(unknown) == len(sasrec.item_ids):
        raise UserError(f"none of the SASRec's item ids is in the catalog {spec.dataset}",
                        "pass --sasrec-item-ids (RecBole's internal id -> item id)")
    sequences = ds.sequences()
    if spec.protocol is not None:
        from ..data.protocol import load_protocol

        sequences = load_protocol(spec.protocol).train_sequences()
    from ..core.context import item_texts

    items = item_texts({i: ds.items[i].title for i in universe}, kws,
                       {i: bool(ds.items[i].image) and ds.image_path(i) is not None for i in universe})
    images = {i: ds.items[i].image for i in universe if items[i].has_image}
    bos = tok.bos_token_id if (template is None or template.get("bos", True)) else None
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    record.update({"template": _fingerprint(spec.template) if spec.template else None,
                   "sasrec": {**_fingerprint(spec.sasrec), "layout": "recbole" if Path(spec.sasrec).is_file()
                              else "mmsrarec"},
                   "keywords": _fingerprint(spec.keywords), "dataset": str(Path(spec.dataset).resolve())})
    meta = {
        "format": FORMAT, "version": VERSION, "answer_words": list(words), "yes_token_id": yes_id,
        "no_token_id": no_id, "bos_id": bos, "pad_id": pad, "eos_id": tok.eos_token_id,
        "n_image_tokens": num_image_tokens(model), "prompt": cfg.to_dict(), "history_len": cfg.history_len,
        "n_rescore": spec.n_rescore,
        "retrieval": {"enabled": spec.retrieval, "dir": "retrieval" if spec.retrieval else None,
                      "k": spec.neighbours, "items_per_neighbour": spec.items_per_neighbour},
        "rank_hint": {"enabled": cfg.rank_hint, "crossfit": None}, "init": "import",
        "inputs": {"dataset": {"path": str(Path(spec.dataset).resolve())},
                   "protocol": {"path": str(Path(spec.protocol).resolve()) if spec.protocol else None,
                                "train_users": sorted(int(u) for u in sequences)}},
        "import": record,
    }
    with atomic_dir(Path(spec.out), marker=RECOMMENDER) as tmp:
        if spec.retrieval:
            build_retrieval(tmp / "retrieval", sequences, sasrec.user_embeddings,
                            lambda i: items[i].keywords if i in items else [],
                            RetrievalConfig(k=spec.neighbours, items_per_neighbour=spec.items_per_neighbour,
                                            max_next=max(10, spec.items_per_neighbour)))
        save_mllm(model, tok, tmp / "model")
        sasrec.save(tmp / "sasrec")
        write_keyword_store(tmp / "keywords.parquet", rows, {"source": str(spec.keywords)})
        write_items(tmp / "items.parquet", items, images)
        (tmp / META).write_text(json.dumps(meta, indent=1) + "\n")
    return meta
