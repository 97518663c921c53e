"""Import public recommendation datasets into the canonical format (see schema.py), with line-accurate errors.

Readers (movielens.py, sequences.py, amazon.py) parse a source directory into a `RawImport`; `import_dataset`
filters it, normalizes the item text, copies the item images into `images/`, and writes the canonical dataset
atomically. Every problem in a source file raises a `SourceLineError` (a DataError) whose message names the file, the
1-based line number in that file and the problem. Torch-free and pandas-free on purpose: importing must work on the
slim install.

Nothing is dropped silently: each reader records the files it read (`used_files`) and the columns or keys it did not
use (`unused`); `import_dataset` reports the source's other files and those columns in one warning line (also kept in
dataset.json's `meta.import_warnings`), so a sequence column or an item file the reader did not recognise is visible.
Item text is normalized once here (`normalize_text`: HTML entities unescaped, whitespace collapsed; Amazon and
RecBole titles carry `&amp;`, `&rsquo;`, ...) and the step is recorded in dataset.json (`meta.text_normalization`).
"""

from __future__ import annotations

import contextlib
import gzip
import html
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

FORMATS = ("ml100k", "ml100k_mm", "recbole", "sequences", "amazon")
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
    line_files: list[Path] = field(default_factory=list)  # the file of each line when there are several, else empty
    images: dict[int, Path] = field(default_factory=dict)  # item_id -> image file to copy
    meta: dict = field(default_factory=dict)
    side_tables: dict[str, pa.Table] = field(default_factory=dict)  # extra Parquet files, e.g. the id map
    used_files: set[Path] = field(default_factory=set)  # besides items_path and inter_path (e.g. ml100k's u.genre)
    unused: dict[str, list[str]] = field(default_factory=dict)  # file name -> its columns/keys not imported
    warnings: list[str] = field(default_factory=list)  # what the reader noticed (shown at import, kept in meta)


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


# ---------------------------------------------------------------- item text


TEXT_NORMALIZATION = "HTML entities unescaped (&amp; -> &, &rsquo; -> \u2019, ...), whitespace collapsed to one space"


def normalize_text(text: str) -> str:
    """`text` with HTML entities unescaped (twice-escaped ones too, e.g. `&amp;rsquo;`) and runs of whitespace
    (tabs, line breaks, non-breaking spaces) collapsed to one space."""
    for _ in range(3):
        out = html.unescape(text)
        if out == text:
            break
        text = out
    return " ".join(text.split())


# ---------------------------------------------------------------- detection and the entry point


def detect(source: Path) -> tuple[str, str]:
    """(format, what was recognised, in words) of a source directory, from the files it holds."""
    source = Path(source)
    if not source.is_dir():
        raise UserError(f"source {source} is not a directory", "pass the folder that holds the dataset files")
    names = {p.name for p in source.iterdir()}
    if {"u.data", "u.item"} <= names:
        return "ml100k", "MovieLens-100K (u.data + u.item)"
    if {"interactions.csv", "items.csv"} <= names:
        return "ml100k_mm", "ml100k_mm (interactions.csv + items.csv)"
    if any(n.endswith(".inter") for n in names):
        from .sequences import describe_atomic

        return "recbole", describe_atomic(source)
    if any(n.startswith("meta_") and (n.endswith(".jsonl") or n.endswith(".jsonl.gz")) for n in names):
        return "amazon", "Amazon Reviews 2023 JSONL (meta_<category>.jsonl + <category>.jsonl)"
    from .sequences import find_sequence_text

    seq = find_sequence_text(source)
    if seq is not None:
        return "sequences", f"a sequence text file, one user per line (user item1 item2 ...): {seq.name}"
    raise UserError(f"cannot tell the format of {source}",
                    "expected u.data+u.item (ml100k), interactions.csv+items.csv (ml100k_mm), <name>.inter or "
                    "<name>.train/.valid/.test.inter (recbole), meta_<cat>.jsonl + <cat>.jsonl (amazon) or a "
                    "'user item1 item2 ...' .txt file (sequences); or pass --format")


def detect_format(source: Path) -> str:
    """The format `detect` recognises in `source`."""
    return detect(source)[0]


def read_source(source: Path, fmt: str, images: Path | None = None) -> RawImport:
    if fmt in ("ml100k", "ml100k_mm", "recbole"):
        from . import movielens

        reader = {"ml100k": movielens.read_ml100k, "ml100k_mm": movielens.read_ml100k_mm,
                  "recbole": movielens.read_recbole}[fmt]
    elif fmt == "sequences":
        from .sequences import read_sequence_text as reader
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


def unused_report(source: Path, raw: RawImport, images: Path | None = None) -> str | None:
    """One line naming the source's files the reader did not read and the columns/keys it did not import; None when
    everything was used. Hidden files and folders (an image folder, say) are not listed."""
    used = {Path(p).resolve() for p in (raw.items_path, raw.inter_path, *raw.used_files)}
    skip = Path(images).resolve() if images is not None else None
    files = sorted(p.name for p in Path(source).iterdir()
                   if p.is_file() and not p.name.startswith(".") and p.resolve() not in used and p.resolve() != skip)
    parts = [f"file{'s' if len(files) > 1 else ''} {', '.join(files)}"] if files else []
    parts += [f"{name} field{'s' if len(cols) > 1 else ''} {', '.join(cols)}"
              for name, cols in sorted(raw.unused.items()) if cols]
    return f"not imported: {'; '.join(parts)}" if parts else None


def import_dataset(source: Path, out: Path, fmt: str | None = None, images: Path | None = None,
                   min_rating: float | None = None, progress: Callable = _no_progress,
                   warn: Callable[[str], None] | None = None, status: Callable[[str], None] | None = None) -> Dataset:
    """Import `source` (a directory in one of FORMATS; None or "auto" detects it) into the canonical dataset `out`.

    `images`: a folder of `<item id>.jpg/.png` (Amazon: `<parent_asin>.jpg/.png`) copied into `out/images/`; for
    ml100k_mm it replaces the `poster` column. `min_rating`: drop interactions rated below it. `progress` is a
    context manager factory like `progress.progress_bar`. `status(line)` hears what auto-detection recognised (once
    the source was read),
    `warn(line)` each warning (the files and columns not imported, what a reader noticed); the warnings are kept in
    dataset.json's `meta.import_warnings` too. Returns the dataset as loaded back from `out`.
    """
    source, out = Path(source), Path(out)
    if not source.is_dir():
        raise UserError(f"source {source} is not a directory", "pass the folder that holds the dataset files")
    what = None
    if fmt in (None, "auto"):
        fmt, what = detect(source)
    _check_out(source, out)
    raw = read_source(source, fmt, images)
    if what and status is not None:  # once the source reads: a bad source gets its one error line, nothing else
        status(f"detected format {fmt}: {what}")
    report = unused_report(source, raw, images)
    warnings = [*raw.warnings, *([report] if report else [])]
    for line in warnings:
        if warn is not None:
            warn(line)
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
        raise SourceLineError(raw.line_files[k] if raw.line_files else raw.inter_path, raw.lines[k],
                              f"item id {int(item_ids[k])} is not in {raw.items_path.name}",
                              hint="every interacted item must be listed in the item file")
    meta = {"import_format": fmt, **raw.meta}
    if warnings:
        meta["import_warnings"] = warnings
    if min_rating is not None:
        if raw.ratings is None:
            raise UserError(f"{raw.inter_path} has no ratings, so --min-rating cannot be applied",
                            "leave --min-rating out")
        keep = np.asarray(raw.ratings, np.float64) >= min_rating
        users, item_ids, stamps = users[keep], item_ids[keep], stamps[keep]
        meta["min_rating"] = min_rating
        if not len(users):
            raise UserError(f"no interactions are rated {min_rating} or more", "lower --min-rating")

    items, changed = {}, 0
    for iid, it in raw.items.items():
        title, desc = normalize_text(it.title), normalize_text(it.description or "")
        changed += (title, desc) != (it.title, it.description or "")
        items[iid] = Item(it.item_id, title or f"Item {iid}", desc, None, it.attributes)
    meta["text_normalization"] = {"applied": TEXT_NORMALIZATION, "items_changed": changed}
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
