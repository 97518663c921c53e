"""Reader for Amazon Reviews 2023 JSONL files: `meta_<Category>.jsonl` (items) and `<Category>.jsonl` (reviews).

Either file may be gzip-compressed (`.jsonl.gz`). Item text: the title (or "Item <parent_asin>" when it is empty), and a
description made of the `description` paragraphs followed by "Features: a; b; c." from `features`. Attributes kept:
`main_category`, `categories` (joined with " > ") and `store`. Images cannot be downloaded here: the URL of each item's
main image (large, else hi_res, else thumb) is kept, and a local folder of `<parent_asin>.jpg/.png` files can be passed.

String ids become int64 ids: items are numbered 1..N in meta-file order, users 1..U in sorted order of their ids. The
mapping (and the image URLs) go to `id_map.parquet` (kind, id, source_id, url); `importers.load_id_map` reads it back.
Review timestamps are milliseconds; they are stored in seconds, with interactions ordered by the exact milliseconds.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa

from ..core.errors import UserError
from .importers import ID_MAP_FILE, ID_MAP_SCHEMA, RawImport, SourceLineError, add_item, find_images, iter_lines
from .schema import Item

_SUFFIXES = (".jsonl", ".jsonl.gz")
# the keys each file's objects are read for; any other key is named in the import's "not imported" warning
META_KEYS = {"parent_asin", "title", "description", "features", "main_category", "categories", "store", "images"}
REVIEW_KEYS = {"user_id", "parent_asin", "asin", "timestamp", "rating"}


def _stem(name: str) -> str | None:
    for s in _SUFFIXES:
        if name.endswith(s):
            return name[: -len(s)]
    return None


def amazon_files(source: Path) -> tuple[Path, Path, str]:
    """(meta file, reviews file, category) in a source directory."""
    files = {p.name: p for p in source.iterdir() if _stem(p.name) is not None}
    metas = [n for n in files if n.startswith("meta_")]
    if len(metas) != 1:
        raise UserError(f"expected exactly one meta_<Category>.jsonl file in {source}, found {len(metas)}",
                        "keep one category per directory")
    category = _stem(metas[0])[len("meta_"):]
    others = [n for n in files if not n.startswith("meta_")]
    named = [n for n in others if _stem(n) == category]
    reviews = named or others
    if len(reviews) != 1:
        raise UserError(f"expected one reviews file {category}.jsonl next to {metas[0]} in {source}, "
                        f"found {len(reviews)}",
                        "keep one category per directory")
    return files[metas[0]], files[reviews[0]], category


def _json_objects(path: Path):
    for n, line in iter_lines(path, "utf-8"):
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise SourceLineError(path, n, f"not valid JSON ({exc.msg} at column {exc.colno})") from None
        if not isinstance(obj, dict):
            raise SourceLineError(path, n, f"expected a JSON object, got {type(obj).__name__}")
        yield n, obj


def _text_list(obj: dict, key: str, path: Path, n: int) -> list[str]:
    v = obj.get(key)
    if v is None:
        return []
    if isinstance(v, str):
        v = [v]
    if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
        raise SourceLineError(path, n, f"'{key}' must be a list of strings, got {json.dumps(v)[:60]}")
    return [" ".join(x.split()) for x in v if x.strip()]


def _string(obj: dict, key: str, path: Path, n: int, required: bool = False) -> str:
    v = obj.get(key)
    if v is None and not required:
        return ""
    if not isinstance(v, str) or (required and not v.strip()):
        raise SourceLineError(path, n, f"'{key}' must be a non-empty string, got {json.dumps(v)[:60]}")
    return v.strip()


def _image_url(obj: dict) -> str | None:
    imgs = [x for x in obj.get("images") or [] if isinstance(x, dict)]
    imgs.sort(key=lambda x: x.get("variant") != "MAIN")  # stable: the MAIN image first, else the first listed
    for img in imgs:
        for key in ("large", "hi_res", "thumb"):
            if isinstance(img.get(key), str) and img[key]:
                return img[key]
    return None


def read_amazon(source: Path, images: Path | None = None) -> RawImport:
    meta_path, reviews_path, category = amazon_files(source)
    items: dict[int, Item] = {}
    item_lines: dict[int, int] = {}
    asin_to_id: dict[str, int] = {}
    urls: dict[int, str | None] = {}
    meta_keys: set[str] = set()
    for n, obj in _json_objects(meta_path):
        meta_keys.update(obj)
        asin = _string(obj, "parent_asin", meta_path, n, required=True)
        iid = asin_to_id.get(asin, len(asin_to_id) + 1)
        title = " ".join(_string(obj, "title", meta_path, n).split()) or f"Item {asin}"
        desc = " ".join(_text_list(obj, "description", meta_path, n))
        features = _text_list(obj, "features", meta_path, n)
        if features:
            desc = f"{desc} Features: {'; '.join(f.rstrip('.') for f in features)}.".strip()
        attrs = {"main_category": _string(obj, "main_category", meta_path, n),
                 "categories": " > ".join(_text_list(obj, "categories", meta_path, n)),
                 "store": _string(obj, "store", meta_path, n)}
        if asin in asin_to_id:
            raise SourceLineError(meta_path, n, f"duplicate parent_asin {asin} (first on line {item_lines[iid]})",
                                  hint="item ids must be unique")
        add_item(items, item_lines, Item(iid, title, desc, None, {k: v for k, v in attrs.items() if v} or None),
                 meta_path, n)
        asin_to_id[asin] = iid
        urls[iid] = _image_url(obj)

    raw_users: list[str] = []
    item_ids, stamps_ms, ratings, lines = [], [], [], []
    review_keys: set[str] = set()
    for n, obj in _json_objects(reviews_path):
        review_keys.update(obj)
        user = _string(obj, "user_id", reviews_path, n, required=True)
        asin = _string(obj, "parent_asin" if "parent_asin" in obj else "asin", reviews_path, n, required=True)
        if asin not in asin_to_id:
            raise SourceLineError(reviews_path, n, f"item {asin} is not in {meta_path.name}",
                                  hint="every reviewed item must be listed in the meta file")
        ts, rating = obj.get("timestamp"), obj.get("rating")
        if not isinstance(ts, int) or isinstance(ts, bool) or ts < 0:
            raise SourceLineError(reviews_path, n, "'timestamp' must be a non-negative integer (milliseconds), "
                                                   f"got {json.dumps(ts)[:40]}")
        if not isinstance(rating, (int, float)) or isinstance(rating, bool) or rating != rating:
            raise SourceLineError(reviews_path, n, f"'rating' must be a number, got {json.dumps(rating)[:40]}")
        raw_users.append(user)
        item_ids.append(asin_to_id[asin])
        stamps_ms.append(ts)
        ratings.append(float(rating))
        lines.append(n)

    user_names = sorted(set(raw_users))
    user_to_id = {u: k + 1 for k, u in enumerate(user_names)}
    users = np.asarray([user_to_id[u] for u in raw_users], np.int64)
    ms = np.asarray(stamps_ms, np.int64)
    order = np.lexsort((np.arange(len(ms)), ms, users))  # chronological per user, so ties in seconds keep ms order
    take = order.tolist()
    raw = RawImport(category, f"amazon:{source}", items, meta_path, reviews_path,
                    users=users[order].tolist(), item_ids=[item_ids[k] for k in take],
                    timestamps=(ms[order] // 1000).tolist(), ratings=[ratings[k] for k in take],
                    lines=[lines[k] for k in take])
    id_to_asin = {i: a for a, i in asin_to_id.items()}
    raw.side_tables[ID_MAP_FILE] = pa.table({
        "kind": ["user"] * len(user_names) + ["item"] * len(id_to_asin),
        "id": list(range(1, len(user_names) + 1)) + list(id_to_asin),
        "source_id": user_names + list(id_to_asin.values()),
        "url": [None] * len(user_names) + [urls[i] for i in id_to_asin],
    }, schema=ID_MAP_SCHEMA)
    raw.images = find_images(images, asin_to_id)
    raw.meta = {"timestamp_unit": "s", "category": category, "id_map": ID_MAP_FILE}
    raw.unused = {meta_path.name: sorted(meta_keys - META_KEYS), reviews_path.name: sorted(review_keys - REVIEW_KEYS)}
    return raw
