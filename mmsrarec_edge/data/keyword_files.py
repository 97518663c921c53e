"""Keyword stores from files written elsewhere: CSV or JSONL -> the keyword store (core/keyword_store.py).

Columns (CSV header / JSONL keys): `item_id` (integer, required), `image_keywords` and `text_keywords` (at least one
of them; `keywords` is read as text keywords), optional `has_image` (true/false; default: the item has image keywords).
In CSV a cell holds the keywords separated by `;`, `|` or `,` (quote the cell when it has commas); in JSONL a list of
strings or one such string. A bad line is one error naming the file, the 1-based line and the problem.
"""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

from ..core.errors import UserError
from ..core.keyword_store import ItemKeywords, read_keyword_store, write_keyword_store

_SPLIT = re.compile(r"[;|,]")
_TRUE, _FALSE = {"1", "true", "yes", "y", "t"}, {"0", "false", "no", "n", "f", ""}


def _where(path: Path, line: int) -> str:
    return f"{path}, line {line}"


def _keywords(value, path: Path, line: int, col: str) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [k.strip() for k in _SPLIT.split(value) if k.strip()]
    if isinstance(value, list) and all(isinstance(k, str) for k in value):
        return [k.strip() for k in value if k.strip()]
    raise UserError(f"{_where(path, line)}: {col} must be a list of strings or one string, got {value!r}"[:300])


def _item_id(value, path: Path, line: int) -> int:
    if isinstance(value, bool):
        value = None
    try:
        iid = int(str(value).strip()) if value is not None and str(value).strip() else None
    except ValueError:
        iid = None
    if iid is None or (isinstance(value, float) and value != int(value)):
        raise UserError(f"{_where(path, line)}: item_id must be an integer, got {value!r}")
    return iid


def _flag(value, path: Path, line: int) -> bool | None:
    if value is None or isinstance(value, bool):
        return value
    s = str(value).strip().lower()
    if s in _TRUE or s in _FALSE:
        return s in _TRUE
    raise UserError(f"{_where(path, line)}: has_image must be true or false, got {value!r}")


def _row(rec: dict, path: Path, line: int) -> ItemKeywords:
    iid = _item_id(rec.get("item_id"), path, line)
    image = _keywords(rec.get("image_keywords"), path, line, "image_keywords")
    text = _keywords(rec.get("text_keywords", rec.get("keywords")), path, line, "text_keywords")
    has = _flag(rec.get("has_image"), path, line)
    return ItemKeywords(iid, image, text, bool(image) if has is None else has)


def _check_columns(cols, path: Path) -> None:
    if "item_id" not in cols:
        raise UserError(f"{path}: no item_id column", "columns: item_id, image_keywords, text_keywords")
    if not {"image_keywords", "text_keywords", "keywords"} & set(cols):
        raise UserError(f"{path}: no keyword column", "columns: item_id, image_keywords, text_keywords")


def read_keyword_file(path: Path) -> list[ItemKeywords]:
    """Rows of a CSV or JSONL keyword file (by extension: .csv, .jsonl/.json/.ndjson) or of a keyword store."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"keyword file {path} does not exist", "pass a .csv, .jsonl or keyword store .parquet file")
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        return list(read_keyword_store(path).values())
    if suffix not in (".csv", ".jsonl", ".ndjson", ".json"):
        raise UserError(f"{path}: unknown keyword file type {suffix or '(none)'}", "use .csv, .jsonl or .parquet")
    rows: list[ItemKeywords] = []
    try:
        with open(path, encoding="utf-8", newline="") as f:
            if suffix == ".csv":
                reader = csv.DictReader(f)
                _check_columns(reader.fieldnames or [], path)
                for rec in reader:
                    rows.append(_row(rec, path, reader.line_num))
            else:
                seen_columns = False
                for n, text in enumerate(f, 1):
                    if not text.strip():
                        continue
                    try:
                        rec = json.loads(text)
                    except json.JSONDecodeError as exc:
                        raise UserError(f"{_where(path, n)}: not valid JSON ({exc.msg})") from None
                    if not isinstance(rec, dict):
                        raise UserError(f"{_where(path, n)}: expected a JSON object")
                    if not seen_columns:
                        _check_columns(rec, path)
                        seen_columns = True
                    rows.append(_row(rec, path, n))
    except UnicodeDecodeError as exc:
        raise UserError(f"{path}: not valid UTF-8 text (byte 0x{exc.object[exc.start]:02x} at offset {exc.start})",
                        "convert the file to UTF-8") from None
    seen: dict[int, int] = {}
    for r in rows:
        if r.item_id in seen:
            raise UserError(f"{path}: duplicate item_id {r.item_id}", "list each item once")
        seen[r.item_id] = 1
    if not rows:
        raise UserError(f"{path}: no items", "one row per item: item_id, image_keywords, text_keywords")
    return rows


def import_keywords(path: Path, out: Path, meta: dict | None = None) -> Path:
    """A CSV/JSONL keyword file (or a keyword store) -> a keyword store at `out` (atomic)."""
    return write_keyword_store(out, read_keyword_file(path), {"source": str(path), **(meta or {})})
