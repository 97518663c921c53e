"""The canonical dataset format, shared by every loader and every stage.

A dataset is a directory:

    dataset.json            {"format": "mmsrarec-dataset", "version": 1, "name": ..., "source": ...}
    items.parquet           item_id:int64, title:str, description:str, image:str|null, attributes:str|null
    interactions.parquet    user_id:int64, item_id:int64, timestamp:int64
    images/                 optional; `image` paths are relative to the dataset directory

`attributes` is a JSON object of ground-truth attributes (the synthetic set has them, real sets do not); it lets the
summarizer's keywords be scored. Loading validates every row and raises DataError naming the file, row and problem.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ..core.errors import DataError
from ..core.io_utils import atomic_path, ensure_writable_dir, write_json

FORMAT = "mmsrarec-dataset"
FORMAT_VERSION = 1

ITEMS_SCHEMA = pa.schema(
    [
        ("item_id", pa.int64()),
        ("title", pa.string()),
        ("description", pa.string()),
        ("image", pa.string()),
        ("attributes", pa.string()),
    ]
)
INTERACTIONS_SCHEMA = pa.schema([("user_id", pa.int64()), ("item_id", pa.int64()), ("timestamp", pa.int64())])


@dataclass
class Item:
    item_id: int
    title: str
    description: str = ""
    image: str | None = None  # relative to the dataset root
    attributes: dict | None = None

    @property
    def text(self) -> str:
        """The item's text as the models see it: title, then description."""
        return f"{self.title}. {self.description}".strip() if self.description else self.title


@dataclass
class Dataset:
    name: str
    items: dict[int, Item]
    users: np.ndarray  # int64 [M]
    item_ids: np.ndarray  # int64 [M]
    timestamps: np.ndarray  # int64 [M]
    root: Path | None = None
    source: str = ""
    meta: dict = field(default_factory=dict)

    def image_path(self, item_id: int) -> Path | None:
        img = self.items[item_id].image
        if not img or self.root is None:
            return None
        return self.root / img

    def sequences(self) -> dict[int, list[int]]:
        """Each user's items in chronological order (ties keep file order)."""
        order = np.lexsort((np.arange(len(self.users)), self.timestamps, self.users))
        seqs: dict[int, list[int]] = {}
        for u, i in zip(self.users[order].tolist(), self.item_ids[order].tolist()):
            seqs.setdefault(u, []).append(i)
        return seqs

    def sequences_with_time(self) -> dict[int, tuple[list[int], list[int]]]:
        order = np.lexsort((np.arange(len(self.users)), self.timestamps, self.users))
        out: dict[int, tuple[list[int], list[int]]] = {}
        for u, i, t in zip(
            self.users[order].tolist(), self.item_ids[order].tolist(), self.timestamps[order].tolist()
        ):
            s = out.setdefault(u, ([], []))
            s[0].append(i)
            s[1].append(t)
        return out

    def stats(self) -> dict:
        n_users = int(len(np.unique(self.users))) if len(self.users) else 0
        n_inter = int(len(self.users))
        per_user = np.bincount(np.unique(self.users, return_inverse=True)[1]) if n_inter else np.zeros(0)
        return {
            "name": self.name,
            "items": len(self.items),
            "items_with_image": sum(1 for it in self.items.values() if it.image),
            "items_with_description": sum(1 for it in self.items.values() if it.description),
            "users": n_users,
            "interactions": n_inter,
            "density": n_inter / max(1, n_users * len(self.items)),
            "interactions_per_user_median": float(np.median(per_user)) if n_inter else 0.0,
            "interactions_per_user_min": int(per_user.min()) if n_inter else 0,
        }


def save_dataset(ds: Dataset, out_dir: Path) -> Path:
    """Write `ds` in the canonical format. Files are written atomically; images must already be under out_dir."""
    out_dir = ensure_writable_dir(Path(out_dir))
    rows = list(ds.items.values())
    items = pa.table(
        {
            "item_id": [it.item_id for it in rows],
            "title": [it.title for it in rows],
            "description": [it.description or "" for it in rows],
            "image": [it.image for it in rows],
            "attributes": [json.dumps(it.attributes, sort_keys=True) if it.attributes else None for it in rows],
        },
        schema=ITEMS_SCHEMA,
    )
    inter = pa.table(
        {"user_id": ds.users.astype(np.int64), "item_id": ds.item_ids.astype(np.int64),
         "timestamp": ds.timestamps.astype(np.int64)},
        schema=INTERACTIONS_SCHEMA,
    )
    with atomic_path(out_dir / "items.parquet", ".parquet") as tmp:
        pq.write_table(items, tmp)
    with atomic_path(out_dir / "interactions.parquet", ".parquet") as tmp:
        pq.write_table(inter, tmp)
    write_json(out_dir / "dataset.json", {"format": FORMAT, "version": FORMAT_VERSION, "name": ds.name,
                                          "source": ds.source, **({"meta": ds.meta} if ds.meta else {})})
    return out_dir


def _read_parquet(path: Path) -> pa.Table:
    if not path.exists():
        raise DataError(path, "file is missing",
                        hint="is this a dataset directory? create one with `mmsrarec-edge data synth` or `data import`")
    try:
        return pq.read_table(path)
    except Exception as exc:  # pyarrow raises several types for a corrupt file
        raise DataError(path, f"not a readable Parquet file ({type(exc).__name__}: {exc})") from exc


def _column(table: pa.Table, path: Path, name: str, kind: str) -> list:
    if name not in table.column_names:
        raise DataError(path, f"missing column '{name}' (has: {', '.join(table.column_names)})")
    values = table.column(name).to_pylist()
    for row, v in enumerate(values):
        if kind == "int":
            if v is None or isinstance(v, bool) or not isinstance(v, (int, np.integer)):
                if isinstance(v, float) and not math.isnan(v) and float(v).is_integer():
                    continue
                raise DataError(path, f"column '{name}' must be an integer, got {v!r}", row=row)
        elif kind == "str":
            if v is None or not isinstance(v, str):
                raise DataError(path, f"column '{name}' must be text, got {v!r}", row=row)
    return [int(v) for v in values] if kind == "int" else values


def load_dataset(root: Path) -> Dataset:
    """Load and validate a canonical dataset directory."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(root, "dataset directory does not exist",
                        hint="create one with `mmsrarec-edge data synth` or `data import`")
    meta_path = root / "dataset.json"
    meta: dict = {}
    if meta_path.exists():
        try:
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise DataError(meta_path, f"not valid JSON: {exc}") from exc
        if meta.get("format") != FORMAT:
            raise DataError(meta_path, f"format is {meta.get('format')!r}, expected {FORMAT!r}")
        if int(meta.get("version", 0)) > FORMAT_VERSION:
            raise DataError(meta_path, f"dataset format version {meta.get('version')} is newer than this toolkit "
                                       f"supports ({FORMAT_VERSION})",
                            hint="upgrade mmsrarec-edge")

    items_path = root / "items.parquet"
    t = _read_parquet(items_path)
    ids = _column(t, items_path, "item_id", "int")
    titles = _column(t, items_path, "title", "str")
    descs = t.column("description").to_pylist() if "description" in t.column_names else [""] * len(ids)
    images = t.column("image").to_pylist() if "image" in t.column_names else [None] * len(ids)
    attrs = t.column("attributes").to_pylist() if "attributes" in t.column_names else [None] * len(ids)
    items: dict[int, Item] = {}
    for row, (iid, title, desc, img, attr) in enumerate(zip(ids, titles, descs, images, attrs)):
        if iid in items:
            raise DataError(items_path, f"duplicate item_id {iid}", row=row, hint="item ids must be unique")
        if not title.strip():
            raise DataError(items_path, f"item {iid} has an empty title", row=row)
        if desc is not None and not isinstance(desc, str):
            raise DataError(items_path, f"column 'description' must be text, got {desc!r}", row=row)
        if img is not None and (not isinstance(img, str) or Path(img).is_absolute() or ".." in Path(img).parts):
            raise DataError(items_path, f"image path {img!r} must be relative to the dataset directory", row=row)
        attributes = None
        if attr:
            try:
                attributes = json.loads(attr)
            except json.JSONDecodeError as exc:
                raise DataError(items_path, f"column 'attributes' is not valid JSON: {exc}", row=row) from exc
        items[iid] = Item(iid, title.strip(), (desc or "").strip(), img or None, attributes)

    inter_path = root / "interactions.parquet"
    t = _read_parquet(inter_path)
    users = np.asarray(_column(t, inter_path, "user_id", "int"), dtype=np.int64)
    item_ids = np.asarray(_column(t, inter_path, "item_id", "int"), dtype=np.int64)
    ts = np.asarray(_column(t, inter_path, "timestamp", "int"), dtype=np.int64)
    known = np.fromiter(items.keys(), dtype=np.int64, count=len(items))
    unknown = ~np.isin(item_ids, known)
    if unknown.any():
        row = int(np.argmax(unknown))
        raise DataError(inter_path, f"item_id {int(item_ids[row])} is not in items.parquet", row=row)
    return Dataset(meta.get("name", root.name), items, users, item_ids, ts, root=root, source=meta.get("source", ""),
                   meta=meta.get("meta", {}))
