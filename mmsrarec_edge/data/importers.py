"""Import public recommendation datasets into the canonical format (see schema.py), with line-accurate errors.

Readers (movielens.py, amazon.py) parse a source directory into a `RawImport`; `import_dataset` filters it, copies the
item images into `images/`, and writes the canonical dataset atomically. Every problem in a source file raises a
`SourceLineError` (a DataError) whose message names the file, the 1-based line number in that file and the problem.
Torch-free and pandas-free on purpose: importing must work on the slim install.
"""

from __future__ import annotations

import contextlib
import gzip
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image, UnidentifiedImageError

from ..core.errors import DataError, UserError
from ..core.io_utils import atomic_dir
from .schema import Dataset, Item, load_dataset, save_dataset

FORMATS = ("ml100k", "ml100k_mm", "recbole", "amazon")
IMAGE_EXTS = (".jpg", ".jpeg", ".png")  # preference order when an item has several
ID_MAP_FILE = "id_map.parquet"
ID_MAP_SCHEMA = pa.schema([("kind", pa.string()), ("id", pa.int64()), ("source_id", pa.string()), ("url", pa.string())])
INT64_MAX = 2**63 - 1


class SourceLineError(DataError):
    """A malformed line of a source file. `row` is the 1-based line number; the message says "line" to be
    unambiguous."""

    def __init__(self, path, line: int, problem: str, hint: str | None = None):
        super().__init__(path, problem, row=line, hint=hint)
        self.message = f"{path}, line {line}: {problem}"
        self.args = (self.message,)


@dataclass
class RawImport:
    """What a reader produces: items, interactions with their source line numbers, and where each image lives."""

    name: str
    source: str
    items: dict[int, Item]
    items_path: Path
    inter_path: Path
    users: list[int] = field(default_factory=list)
    item_ids: list[int] = field(default_factory=list)
    timestamps: list[int] = field(default_factory=list)
    ratings: list[float] | None = field(default_factory=list)  # None: the source has no ratings
    lines: list[int] = field(default_factory=list)  # line of each interaction in inter_path, for error messages
    images: dict[int, Path] = field(default_factory=dict)  # item_id -> image file to copy
    meta: dict = field(default_factory=dict)
    side_tables: dict[str, pa.Table] = field(default_factory=dict)  # extra Parquet files, e.g. the id map


# ---------------------------------------------------------------- text helpers shared by the readers


def _open_binary(path: Path):
    return gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")


def _decode_error(path: Path, line: int, byte: int, col: int, encoding: str) -> SourceLineError:
    enc = encoding.upper()
    return SourceLineError(path, line, f"not valid {enc} text (byte 0x{byte:02x} at column {col})",
                           hint=f"re-save the file as {enc}")


def _decode(raw: bytes, path: Path, line: int, encoding: str) -> str:
    try:
        return raw.decode(encoding)
    except UnicodeDecodeError as exc:
        raise _decode_error(path, line, raw[exc.start], exc.start + 1, encoding) from exc


def iter_lines(path: Path, encoding: str = "utf-8") -> Iterator[tuple[int, str]]:
    """Yield (1-based line number, text without the line break) for each non-blank line; .gz files are decompressed."""
    path = Path(path)
    require_file(path)
    try:
        with _open_binary(path) as f:
            for n, raw in enumerate(f, start=1):
                text = _decode(raw, path, n, encoding).rstrip("\r\n")
                if text.strip():
                    yield n, text
    except (OSError, EOFError) as exc:  # e.g. a truncated or corrupt .gz
        raise DataError(path, f"cannot be read ({type(exc).__name__}: {exc})") from exc


def read_text(path: Path, encoding: str = "utf-8") -> str:
    """The whole file as text; a decoding error names the line it is on."""
    path = Path(path)
    require_file(path)
    raw = path.read_bytes()
    try:
        return raw.decode(encoding)
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        col = exc.start - (raw.rfind(b"\n", 0, exc.start) + 1) + 1
        raise _decode_error(path, line, raw[exc.start], col, encoding) from exc


def require_file(path: Path) -> Path:
    if not Path(path).is_file():
        raise DataError(path, "file is missing", hint="check the source directory and --format")
    return Path(path)


def parse_int(value: str, path: Path, line: int, what: str) -> int:
    text = value.strip()
    try:
        v = int(text)
    except ValueError:
        try:  # RecBole and some exports write ids/timestamps as "12.0"
            f = float(text)
        except ValueError:
            f = float("nan")
        if not (f == f and f.is_integer() and abs(f) < 2**53):
            raise SourceLineError(path, line, f"{what} must be an integer, got {value!r}") from None
        v = int(f)
    if not -INT64_MAX <= v <= INT64_MAX:
        raise SourceLineError(path, line, f"{what} {v} does not fit in 64 bits")
    return v


def parse_float(value: str, path: Path, line: int, what: str) -> float:
    try:
        v = float(value.strip())
    except ValueError:
        raise SourceLineError(path, line, f"{what} must be a number, got {value!r}") from None
    if v != v or v in (float("inf"), float("-inf")):
        raise SourceLineError(path, line, f"{what} must be a finite number, got {value!r}")
    return v


def add_item(items: dict[int, Item], item_lines: dict[int, int], item: Item, path: Path, line: int) -> None:
    """Add `item`, refusing a duplicate id (the message names both lines)."""
    if item.item_id in items:
        raise SourceLineError(path, line,
                              f"duplicate item id {item.item_id} (first on line {item_lines[item.item_id]})",
                              hint="item ids must be unique")
    items[item.item_id] = item
    item_lines[item.item_id] = line


def find_images(folder: Path | None, keys: dict[str, int]) -> dict[int, Path]:
    """Match `<key>.jpg/.jpeg/.png` files in `folder` to item ids (keys: file stem -> item id)."""
    if folder is None:
        return {}
    folder = Path(folder)
    if not folder.is_dir():
        raise UserError(f"image folder {folder} does not exist",
                        "pass a folder of <item id>.jpg/.png files with --images")
    found: dict[int, Path] = {}
    for p in folder.iterdir():
        ext, iid = p.suffix.lower(), keys.get(p.stem)
        if iid is None or ext not in IMAGE_EXTS or not p.is_file():
            continue
        if iid not in found or IMAGE_EXTS.index(ext) < IMAGE_EXTS.index(found[iid].suffix.lower()):
            found[iid] = p
    return dict(sorted(found.items()))


# ---------------------------------------------------------------- detection and the entry point


def detect_format(source: Path) -> str:
    """Guess the format of a source directory from the files it holds."""
    source = Path(source)
    if not source.is_dir():
        raise UserError(f"source {source} is not a directory", "pass the folder that holds the dataset files")
    names = {p.name for p in source.iterdir()}
    if {"u.data", "u.item"} <= names:
        return "ml100k"
    if {"interactions.csv", "items.csv"} <= names:
        return "ml100k_mm"
    if any(n.endswith(".inter") for n in names):
        return "recbole"
    if any(n.startswith("meta_") and (n.endswith(".jsonl") or n.endswith(".jsonl.gz")) for n in names):
        return "amazon"
    raise UserError(f"cannot tell the format of {source}",
                    "expected u.data+u.item (ml100k), interactions.csv+items.csv (ml100k_mm), <name>.inter (recbole) "
                    "or meta_<cat>.jsonl + <cat>.jsonl (amazon); or pass --format")


def read_source(source: Path, fmt: str, images: Path | None = None) -> RawImport:
    if fmt in ("ml100k", "ml100k_mm", "recbole"):
        from . import movielens

        reader = {"ml100k": movielens.read_ml100k, "ml100k_mm": movielens.read_ml100k_mm,
                  "recbole": movielens.read_recbole}[fmt]
    elif fmt == "amazon":
        from .amazon import read_amazon as reader
    else:
        raise UserError(f"unknown format {fmt!r}", f"choose one of: auto, {', '.join(FORMATS)}")
    return reader(Path(source), images)


@contextlib.contextmanager
def _no_progress(description: str, total: int | None):
    yield lambda n=1, **fields: None


def _check_out(source: Path, out: Path) -> None:
    src, dst = source.resolve(), out.resolve()
    if dst == src or dst in src.parents:
        raise UserError(f"output {out} would replace the source {source}", "choose another --out directory")
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not (out / "dataset.json").exists())):
        raise UserError(f"output {out} exists and is not a dataset directory; refusing to replace it",
                        "choose a new or empty --out directory")


def _copy_image(src: Path, dst: Path) -> None:
    try:
        with Image.open(src):  # identifies the format from the header only: cheap, catches non-images
            pass
    except (UnidentifiedImageError, OSError) as exc:
        raise DataError(src, f"not a readable image ({type(exc).__name__})", hint="remove or replace the file") from exc
    shutil.copyfile(src, dst)


def import_dataset(source: Path, out: Path, fmt: str | None = None, images: Path | None = None,
                   min_rating: float | None = None, progress: Callable = _no_progress) -> Dataset:
    """Import `source` (a directory in one of FORMATS; None or "auto" detects it) into the canonical dataset `out`.

    `images`: a folder of `<item id>.jpg/.png` (Amazon: `<parent_asin>.jpg/.png`) copied into `out/images/`; for
    ml100k_mm it replaces the `poster` column. `min_rating`: drop interactions rated below it. `progress` is a
    context manager factory like `progress.progress_bar`. Returns the dataset as loaded back from `out`.
    """
    source, out = Path(source), Path(out)
    if not source.is_dir():
        raise UserError(f"source {source} is not a directory", "pass the folder that holds the dataset files")
    fmt = detect_format(source) if fmt in (None, "auto") else fmt
    _check_out(source, out)
    raw = read_source(source, fmt, images)
    if not raw.items:
        raise DataError(raw.items_path, "no items", hint="is this the right file?")
    if not raw.users:
        raise DataError(raw.inter_path, "no interactions", hint="is this the right file?")

    users = np.asarray(raw.users, np.int64)
    item_ids = np.asarray(raw.item_ids, np.int64)
    stamps = np.asarray(raw.timestamps, np.int64)
    known = np.fromiter(raw.items.keys(), np.int64, len(raw.items))
    unknown = ~np.isin(item_ids, known)
    if unknown.any():
        k = int(np.argmax(unknown))
        raise SourceLineError(raw.inter_path, raw.lines[k],
                              f"item id {int(item_ids[k])} is not in {raw.items_path.name}",
                              hint="every interacted item must be listed in the item file")
    meta = {"import_format": fmt, **raw.meta}
    if min_rating is not None:
        if raw.ratings is None:
            raise UserError(f"{raw.inter_path} has no ratings, so --min-rating cannot be applied",
                            "leave --min-rating out")
        keep = np.asarray(raw.ratings, np.float64) >= min_rating
        users, item_ids, stamps = users[keep], item_ids[keep], stamps[keep]
        meta["min_rating"] = min_rating
        if not len(users):
            raise UserError(f"no interactions are rated {min_rating} or more", "lower --min-rating")

    items = {iid: Item(it.item_id, it.title, it.description, None, it.attributes) for iid, it in raw.items.items()}
    with atomic_dir(out) as tmp:
        if raw.images:
            (tmp / "images").mkdir()
            with progress("copying images", len(raw.images)) as advance:
                for iid, src in raw.images.items():
                    rel = f"images/{iid}{src.suffix.lower()}"
                    _copy_image(src, tmp / rel)
                    items[iid].image = rel
                    advance()
        for fname, table in raw.side_tables.items():
            pq.write_table(table, tmp / fname)
        save_dataset(Dataset(raw.name, items, users, item_ids, stamps, root=tmp, source=raw.source, meta=meta), tmp)
    return load_dataset(out)


def load_id_map(root: Path) -> tuple[dict[int, str], dict[int, str]]:
    """(users, items): int64 id -> the source's string id, for datasets imported from string ids (Amazon)."""
    path = Path(root) / ID_MAP_FILE
    if not path.exists():
        raise DataError(path, "file is missing", hint="only datasets imported from string ids (amazon) have an id map")
    t = pq.read_table(path).to_pydict()
    maps: dict[str, dict[int, str]] = {"user": {}, "item": {}}
    for kind, i, s in zip(t["kind"], t["id"], t["source_id"]):
        maps[kind][int(i)] = s
    return maps["user"], maps["item"]
