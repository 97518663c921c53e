"""The bundle's data parts: catalog (items.parquet + cached image features), keyword store copy, retrieval index copy.

Catalog items never change between requests, so everything the runtime would otherwise recompute per request is done
here once: each item's keywords (from the keyword store), the candidate part's token ids when the recommender's prompt
builder offers them, and the recommender's projected image features (PyTorch fp32) for items with an image.

Which items: the catalog matches the models (`catalog_ids`). By default (`known`) it holds the dataset's items that
SASRec knows -- the protocol's items after the k-core filter, the only ones the user encoder and the first stage can
rank; the dataset's other items are left out and counted (`left_out_items`). With `all` they are kept as cold-start
items (`cold_start_items`): the runtime cannot rank them and rescores at most its budget of them per request
(runtime/first_stage.py). Without SASRec every dataset item is in the catalog.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ..core.bundle import allowed_file, write_safetensors
from ..core.errors import UserError

# Above this, caching per-item image features would bloat the bundle (a 7B LLaVA: 576 x 4096 floats per item); the
# runtime then runs recommender.vision per candidate instead.
MAX_FEATURE_BYTES = 1 << 30
CATALOG_MODES = ("known", "all")  # export --catalog: the items the models know, or every dataset item


def copy_keyword_store(src: Path, dst: Path) -> dict:
    from ..core.keyword_store import read_keyword_store, read_store_meta

    src = Path(src)
    if not src.is_file():
        raise UserError(f"keyword store {src} not found", "write one with `mmsrarec-edge summarize`")
    n = len(read_keyword_store(src))  # validates the file (DataError naming it when malformed)
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, dst)
    return {"file": "keywords/keywords.parquet", "items": n, "meta": read_store_meta(src)}


def copy_retrieval(src: Path, dst: Path) -> dict:
    """Copy the recommender's retrieval dir (hnswlib index, user table, collaborative keywords) into index/."""
    src = Path(src)
    if not src.is_dir():
        raise UserError(f"retrieval directory {src} not found", "it is written by `mmsrarec-edge train recommender`")
    files = []
    for path in sorted(src.rglob("*")):
        if path.is_dir():
            continue
        rel = path.relative_to(src).as_posix()
        if not allowed_file(path.name):
            raise UserError(f"{path}: file type not allowed in a bundle",
                            "retrieval data must be .hnsw/.bin/.parquet/.json/.safetensors (no pickle)")
        (dst / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, dst / rel)
        files.append(f"index/{rel}")
    if not files:
        raise UserError(f"retrieval directory {src} is empty")
    return {"dir": "index", "files": files}


def _item_keywords(keywords_path: Path | None) -> dict:
    if keywords_path is None:
        return {}
    from ..core.keyword_store import read_keyword_store

    return read_keyword_store(keywords_path)


def catalog_ids(inputs) -> tuple[list[int], dict]:
    """(the catalog's item ids, its counts for config.json) under `inputs.catalog` (module docstring)."""
    mode = getattr(inputs, "catalog", "known")
    if mode not in CATALOG_MODES:
        raise UserError(f"--catalog must be one of {', '.join(CATALOG_MODES)}, got {mode!r}")
    every = sorted(inputs.dataset.items)
    if inputs.sasrec is None:
        return every, {"mode": mode, "known_items": None, "cold_start_items": 0, "left_out_items": 0}
    known = set(int(i) for i in inputs.sasrec.item_ids)
    kept = [i for i in every if i in known]
    if not kept:
        raise UserError(f"none of the {len(every)} items of dataset {inputs.dataset.name} is known to the SASRec "
                        "model", "pass the dataset the models were trained on")
    ids = every if mode == "all" else kept
    return ids, {"mode": mode, "known_items": len(kept), "cold_start_items": len(ids) - len(kept),
                 "left_out_items": len(every) - len(ids)}


def describe_catalog(section: dict) -> str:
    """The export's line about the catalog: how many items, how many the models know, what was left out."""
    n, known = section.get("count"), section.get("known_items")
    if known is None:
        return f"catalog: {n} items (no SASRec: every dataset item)"
    text = f"catalog: {n} items, {known} known to the models"
    if section.get("cold_start_items"):
        text += (f"; {section['cold_start_items']} cold-start items the models do not know (dropped by the k-core "
                 "filter; the runtime rescores at most its budget of them per request)")
    if section.get("left_out_items"):
        text += (f"; {section['left_out_items']} dataset items left out (dropped by the k-core filter; --catalog all "
                 "keeps them as cold-start items)")
    return text


def write_catalog(inputs, out_dir: Path) -> dict:
    """items.parquet (+ image_features.safetensors) of the items `catalog_ids` picks. Returns the config.json
    `catalog` section."""
    ds = inputs.dataset
    out_dir.mkdir(parents=True, exist_ok=True)
    kws = _item_keywords(inputs.keywords)
    ids, counts = catalog_ids(inputs)
    rows = {"item_id": ids, "title": [ds.items[i].title for i in ids],
            "text_keywords": [list(kws[i].text_keywords) if i in kws else [] for i in ids],
            "image_keywords": [list(kws[i].image_keywords) if i in kws else [] for i in ids],
            "keywords": [list(kws[i].keywords) if i in kws else [] for i in ids],
            "has_image": [bool(ds.items[i].image) for i in ids]}
    section: dict = {"items": "catalog/items.parquet", "count": len(ids), "image_features": None, **counts}
    cand = candidate_token_ids(inputs, ids, kws)
    if cand is not None:
        rows["candidate_token_ids"] = cand
        section["candidate_token_ids"] = True
    if inputs.recommender is not None and inputs.image_features:
        section.update(_write_image_features(inputs, ids, out_dir))
    schema = pa.schema([("item_id", pa.int64()), ("title", pa.string()), ("text_keywords", pa.list_(pa.string())),
                        ("image_keywords", pa.list_(pa.string())), ("keywords", pa.list_(pa.string())),
                        ("has_image", pa.bool_())]
                       + ([("candidate_token_ids", pa.list_(pa.int32()))] if cand is not None else []))
    pq.write_table(pa.table(rows, schema=schema), out_dir / "items.parquet")
    return section


def candidate_token_ids(inputs, ids, kws) -> list[list[int]] | None:
    """Each item's candidate-part (suffix) token ids from the recommender's torch-free prompt builder
    (recommend.prompt.candidate_ids); None when it is unavailable or the suffix depends on the request."""
    if inputs.recommender is None:
        return None
    try:
        from ..core.prompt import candidate_ids
    except ImportError:
        return None
    tok = inputs.recommender.tokenizer

    def encode(s: str) -> list[int]:
        return tok.encode(s, add_special_tokens=False)

    items = inputs.dataset.items
    out = [candidate_ids(encode, items[i].title, kws[i].keywords if i in kws else [], bool(items[i].image),
                         inputs.recommender.meta) for i in ids]
    return None if any(o is None for o in out) else [list(map(int, o)) for o in out]


def _write_image_features(inputs, ids, out_dir: Path) -> dict:
    from ..core.imaging import load_image
    from ..models.mllm import image_preprocess, num_image_tokens
    from .bundle import image_features_array

    ds, m = inputs.dataset, inputs.recommender.model
    with_img = [i for i in ids if ds.items[i].image and ds.image_path(i) is not None]
    hidden = m.config.text_config.hidden_size
    need = len(with_img) * num_image_tokens(m) * hidden * 4
    if not with_img:
        return {}
    if need > MAX_FEATURE_BYTES:
        return {"image_features_skipped": f"{need} bytes > {MAX_FEATURE_BYTES}: run recommender.vision at runtime"}
    pre = image_preprocess(m)
    pixels = np.stack([pre(load_image(ds.image_path(i))) for i in with_img])
    feats = image_features_array(m, pixels).astype(np.float32)
    write_safetensors(out_dir / "image_features.safetensors",
                      {"item_ids": np.asarray(with_img, np.int64), "features": feats},
                      {"source": "recommender vision tower + projector, PyTorch fp32"})
    return {"image_features": "catalog/image_features.safetensors", "image_feature_shape": list(feats.shape[1:])}
