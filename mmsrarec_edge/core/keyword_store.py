"""The keyword store: item id -> image keywords, text keywords and their reward terms, one Parquet file. Torch-free.

Written by `mmsrarec-edge summarize` (atomically), read by the recommender stage, the exporter and the runtime:

    item_id        int64
    image_keywords list<string>   [] when the item has no image
    text_keywords  list<string>
    has_image      bool
    image_r_info, image_r_recon, image_r_len, image_reward   float64, null when not scored
    text_r_info,  text_r_recon,  text_r_len,  text_reward    float64, null when not scored

The file's schema metadata key b"mmsrarec" holds JSON: format, version, the model, the reward weights.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

import pyarrow as pa
import pyarrow.parquet as pq

from .errors import DataError
from .io_utils import atomic_path

FORMAT = "mmsrarec-keyword-store"
VERSION = 1
META_KEY = b"mmsrarec"
TERMS = ("r_info", "r_recon", "r_len", "reward")
SCHEMA = pa.schema(
    [("item_id", pa.int64()), ("image_keywords", pa.list_(pa.string())), ("text_keywords", pa.list_(pa.string())),
     ("has_image", pa.bool_())]
    + [(f"{task}_{t}", pa.float64()) for task in ("image", "text") for t in TERMS]
)


@dataclass(frozen=True)
class RewardTerms:
    r_info: float
    r_recon: float
    r_len: float
    reward: float  # a * r_info + b * r_recon + c * r_len


@dataclass
class ItemKeywords:
    item_id: int
    image_keywords: list[str] = field(default_factory=list)
    text_keywords: list[str] = field(default_factory=list)
    has_image: bool = False
    image_rewards: RewardTerms | None = None
    text_rewards: RewardTerms | None = None

    @property
    def keywords(self) -> list[str]:
        """Text keywords, then the image keywords not already among them."""
        return list(dict.fromkeys([*self.text_keywords, *self.image_keywords]))


def write_keyword_store(path: Path, rows: Iterable[ItemKeywords], meta: dict | None = None) -> Path:
    rows = sorted(rows, key=lambda r: r.item_id)
    cols: dict[str, list] = {name: [] for name in SCHEMA.names}
    for r in rows:
        cols["item_id"].append(int(r.item_id))
        cols["image_keywords"].append(list(r.image_keywords))
        cols["text_keywords"].append(list(r.text_keywords))
        cols["has_image"].append(bool(r.has_image))
        for task, terms in (("image", r.image_rewards), ("text", r.text_rewards)):
            for t in TERMS:
                cols[f"{task}_{t}"].append(None if terms is None else float(getattr(terms, t)))
    ids = cols["item_id"]
    if len(set(ids)) != len(ids):
        raise ValueError("duplicate item ids in a keyword store")
    schema = SCHEMA.with_metadata({META_KEY: json.dumps({"format": FORMAT, "version": VERSION, **(meta or {})})})
    table = pa.table(cols, schema=schema)
    path = Path(path)
    with atomic_path(path, ".parquet") as tmp:
        pq.write_table(table, tmp)
    return path


def read_store_meta(path: Path) -> dict:
    path = Path(path)
    try:
        md = pq.read_schema(path).metadata or {}
    except FileNotFoundError as exc:
        raise DataError(path, "keyword store is missing", hint="create it with `mmsrarec-edge summarize`") from exc
    except Exception as exc:
        raise DataError(path, f"not a readable Parquet file ({type(exc).__name__}: {exc})") from exc
    if META_KEY not in md:
        raise DataError(path, "not a keyword store (no mmsrarec metadata)",
                        hint="create it with `mmsrarec-edge summarize`")
    meta = json.loads(md[META_KEY])
    if meta.get("format") != FORMAT:
        raise DataError(path, f"format is {meta.get('format')!r}, expected {FORMAT!r}")
    if int(meta.get("version", 0)) > VERSION:
        raise DataError(path, f"keyword store version {meta.get('version')} is newer than supported ({VERSION})",
                        hint="upgrade mmsrarec-edge")
    return meta


def _terms(row: dict, task: str) -> RewardTerms | None:
    vals = [row.get(f"{task}_{t}") for t in TERMS]
    if any(v is None or (isinstance(v, float) and math.isnan(v)) for v in vals):
        return None
    return RewardTerms(*[float(v) for v in vals])


def read_keyword_store(path: Path) -> dict[int, ItemKeywords]:
    """item id -> ItemKeywords. Raises DataError naming the file (and row) when it is missing or malformed."""
    path = Path(path)
    read_store_meta(path)
    table = pq.read_table(path)
    missing = [n for n in ("item_id", "image_keywords", "text_keywords") if n not in table.column_names]
    if missing:
        raise DataError(path, f"missing column(s) {', '.join(missing)}")
    out: dict[int, ItemKeywords] = {}
    for i, row in enumerate(table.to_pylist()):
        iid = row["item_id"]
        if iid is None or iid in out:
            raise DataError(path, f"item_id {iid!r} is missing or duplicated", row=i)
        image_kw, text_kw = row["image_keywords"] or [], row["text_keywords"] or []
        if not all(isinstance(k, str) for k in [*image_kw, *text_kw]):
            raise DataError(path, "keywords must be strings", row=i)
        out[int(iid)] = ItemKeywords(int(iid), list(image_kw), list(text_kw), bool(row.get("has_image") or image_kw),
                                     _terms(row, "image"), _terms(row, "text"))
    return out
