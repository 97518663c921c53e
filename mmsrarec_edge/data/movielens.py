"""Readers for MovieLens-style sources: the ML-100K release, its multimodal variant (ml100k_mm), and RecBole
atomic files.

- ml100k: `u.data` (user, item, rating, timestamp; tab-separated) and `u.item` (pipe-separated, latin-1: id, title,
  release date, video release date, IMDb URL, 19 genre flags; genre names from `u.genre` when present).
- ml100k_mm: `interactions.csv` (user_id,item_id,rating,timestamp) and `items.csv` (item_id, ml1m_movie_id, title,
  release_date, genres '|'-separated, description, director and cast as Python list literals, imdb_url, poster).
- recbole: `<name>.inter` and optional `<name>.item`, tab-separated with `field:type` headers. A sequence-per-row
  layout (an `item_id_list` column, or `<name>.train/.valid/.test.inter` files) is read by sequences.py.

Item descriptions (see `describe_movie`): the plot when there is one, followed by "Genres: ...", up to 2 directors and
the top 3 billed cast members; without a plot it starts with "A <genres> film from <year>." so that every movie has some
text. IMDb's "no plot summary yet" placeholder counts as no plot. Ground-truth attributes kept per item: `genres`
('|'-joined) and `year`, as strings.
"""

from __future__ import annotations

import ast
import csv
import io
import re
from pathlib import Path

from .importers import (
    RawImport,
    SourceLineError,
    add_item,
    find_images,
    iter_lines,
    parse_float,
    parse_int,
    read_text,
    require_file,
)
from .schema import Item

ML100K_GENRES = ["unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary", "Drama",
                 "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller", "War",
                 "Western"]
MAX_DIRECTORS, MAX_CAST = 2, 3
_PLACEHOLDER_PLOTS = ("It looks like we don't have any Plot Summaries",)
_YEAR = re.compile(r"\b(1[89]\d\d|20\d\d)\b")


def _year(release_date: str, title: str) -> str:
    m = _YEAR.search(release_date or "") or re.search(r"\((1[89]\d\d|20\d\d)\)\s*$", title or "")
    return m.group(1) if m else ""


def _genre_phrase(genres: list[str]) -> str:
    g = [x.lower() for x in genres]
    if len(g) < 2:
        return "".join(g)
    return f"{', '.join(g[:-1])} and {g[-1]}"


def _sentence(text: str) -> str:
    return text if text.endswith((".", "!", "?", '"')) else text + "."


def describe_movie(plot: str, genres: list[str], year: str, directors: list[str] = (), cast: list[str] = ()) -> str:
    """The description the models read: plot (or a generated opening), genres, directors and leading cast."""
    genres = [g for g in genres if g and g.lower() != "unknown"]
    plot = " ".join((plot or "").split())
    if any(plot.startswith(p) for p in _PLACEHOLDER_PLOTS):
        plot = ""
    parts = []
    if plot:
        parts.append(_sentence(plot))
        if genres:
            parts.append(f"Genres: {', '.join(genres)}.")
    elif genres or year:
        kind = f"{_genre_phrase(genres)} film" if genres else "film"
        parts.append(f"A{'n' if kind[0] in 'aeiou' else ''} {kind}" + (f" from {year}." if year else "."))
    if directors:
        parts.append(_sentence(f"Directed by {', '.join(directors[:MAX_DIRECTORS])}"))
    if cast:
        parts.append(_sentence(f"Starring {', '.join(cast[:MAX_CAST])}"))
    return " ".join(parts)


def _attributes(genres: list[str], year: str) -> dict | None:
    attrs = {"genres": "|".join(g for g in genres if g.lower() != "unknown"), "year": year}
    return {k: v for k, v in attrs.items() if v} or None


def _id_keys(items) -> dict[str, int]:
    return {str(i): i for i in items}


# ---------------------------------------------------------------- ML-100K


def read_ml100k(source: Path, images: Path | None = None) -> RawImport:
    genres = ML100K_GENRES
    if (source / "u.genre").exists():
        genres = [line.split("|")[0] for _, line in iter_lines(source / "u.genre", "latin-1")]
    items_path, inter_path = require_file(source / "u.item"), require_file(source / "u.data")
    items: dict[int, Item] = {}
    item_lines: dict[int, int] = {}
    n_fields = 5 + len(genres)
    for n, line in iter_lines(items_path, "latin-1"):  # latin-1 is u.item's real encoding
        f = line.split("|")
        if len(f) != n_fields:
            raise SourceLineError(items_path, n, f"expected {n_fields} '|'-separated fields, got {len(f)}")
        iid = parse_int(f[0], items_path, n, "item id")
        title = f[1].strip()
        if not title:
            raise SourceLineError(items_path, n, f"item {iid} has an empty title")
        flags = f[5:]
        if any(x.strip() not in ("0", "1") for x in flags):
            raise SourceLineError(items_path, n, f"genre flags must be 0 or 1, got {'|'.join(flags)!r}")
        g = [name for name, x in zip(genres, flags) if x.strip() == "1"]
        year = _year(f[2], title)
        add_item(items, item_lines, Item(iid, title, describe_movie("", g, year), None, _attributes(g, year)),
                 items_path, n)
    raw = RawImport(source.name, f"ml100k:{source}", items, items_path, inter_path)
    for n, line in iter_lines(inter_path, "utf-8"):
        f = line.split("\t")
        if len(f) != 4:
            raise SourceLineError(inter_path, n,
                                  f"expected 4 tab-separated fields (user, item, rating, timestamp), got {len(f)}")
        _add_inter(raw, n, f[0], f[1], f[2], f[3])
    raw.images = find_images(images, _id_keys(items))
    raw.meta = {"timestamp_unit": "s"}
    if (source / "u.genre").exists():
        raw.used_files.add(source / "u.genre")
    raw.unused = {"u.item": ["video release date", "IMDb URL"]}
    return raw


def _add_inter(raw: RawImport, n: int, user: str, item: str, rating: str | None, ts: str | None) -> None:
    p = raw.inter_path
    raw.users.append(parse_int(user, p, n, "user id"))
    raw.item_ids.append(parse_int(item, p, n, "item id"))
    if raw.ratings is not None:
        raw.ratings.append(parse_float(rating, p, n, "rating"))
    raw.timestamps.append(parse_int(ts, p, n, "timestamp") if ts is not None else 0)
    raw.lines.append(n)


# ---------------------------------------------------------------- ml100k_mm (CSV)


def _csv_rows(path: Path, required: list[str], header_out: list | None = None):
    """Yield (line the record starts on, {column: value}); quoted fields may span lines. The header's columns are
    appended to `header_out` when given."""
    reader = csv.reader(io.StringIO(read_text(path, "utf-8"), newline=""), strict=True)
    start = 1
    try:
        header = next(reader, None)
        if header is None:
            raise SourceLineError(path, 1, "the file is empty (expected a header line)")
        missing = [c for c in required if c not in header]
        if missing:
            raise SourceLineError(path, 1, f"header lacks column(s) {', '.join(missing)} (has: {', '.join(header)})")
        if header_out is not None:
            header_out.extend(header)
        start = reader.line_num + 1
        for rec in reader:
            if rec and any(x.strip() for x in rec):
                if len(rec) != len(header):
                    raise SourceLineError(path, start, f"expected {len(header)} comma-separated fields, got {len(rec)}")
                yield start, dict(zip(header, rec))
            start = reader.line_num + 1
    except csv.Error as exc:
        raise SourceLineError(path, start, f"malformed CSV ({exc})") from exc


def _literal_list(text: str, path: Path, n: int, column: str) -> list[str]:
    """Parse a Python list literal of names with ast.literal_eval (never eval); drops blanks and 'nan'."""
    if not text.strip():
        return []
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        raise SourceLineError(path, n,
                              f"column '{column}' is not a list literal like ['A', 'B']: {text[:60]!r}") from None
    if not isinstance(value, (list, tuple)) or not all(isinstance(x, str) for x in value):
        raise SourceLineError(path, n, f"column '{column}' must be a list of names, got {text[:60]!r}")
    return [x.strip() for x in value if x.strip() and x.strip().lower() != "nan"]


def read_ml100k_mm(source: Path, images: Path | None = None) -> RawImport:
    items_path, inter_path = require_file(source / "items.csv"), require_file(source / "interactions.csv")
    items: dict[int, Item] = {}
    item_lines: dict[int, int] = {}
    posters: dict[int, Path] = {}
    item_cols: list[str] = []
    for n, r in _csv_rows(items_path, ["item_id", "title", "genres"], item_cols):
        iid = parse_int(r["item_id"], items_path, n, "item_id")
        title = r["title"].strip()
        if not title:
            raise SourceLineError(items_path, n, f"item {iid} has an empty title")
        genres = [g.strip() for g in r["genres"].split("|") if g.strip()]
        year = _year(r.get("release_date", ""), title)
        directors = _literal_list(r.get("director", ""), items_path, n, "director")
        cast = _literal_list(r.get("cast", ""), items_path, n, "cast")
        desc = describe_movie(r.get("description", ""), genres, year, directors, cast)
        add_item(items, item_lines, Item(iid, title, desc, None, _attributes(genres, year)), items_path, n)
        poster = r.get("poster", "").strip()
        if poster and images is None:
            p = source / poster
            if not p.is_file():
                raise SourceLineError(items_path, n, f"poster {poster!r} does not exist under {source}")
            posters[iid] = p
    raw = RawImport(source.name, f"ml100k_mm:{source}", items, items_path, inter_path)
    inter_cols: list[str] = []
    for n, r in _csv_rows(inter_path, ["user_id", "item_id", "timestamp"], inter_cols):
        if "rating" not in r:
            raw.ratings = None
        _add_inter(raw, n, r["user_id"], r["item_id"], r.get("rating"), r["timestamp"])
    raw.images = find_images(images, _id_keys(items)) if images is not None else posters
    raw.meta = {"timestamp_unit": "s", "description": "plot + genres + up to 2 directors + top 3 cast"}
    used_items = {"item_id", "title", "genres", "release_date", "director", "cast", "description", "poster"}
    raw.unused = {items_path.name: [c for c in item_cols if c not in used_items],
                  inter_path.name: [c for c in inter_cols if c not in ("user_id", "item_id", "rating", "timestamp")]}
    return raw


# ---------------------------------------------------------------- RecBole atomic files

_RECBOLE_TYPES = ("token", "token_seq", "float", "float_seq")
_TITLE_FIELDS = ("title", "movie_title", "item_name", "name")
_DESC_FIELDS = ("description", "plot", "overview", "summary", "text")
_GENRE_FIELDS = ("genre", "genres", "class", "categories", "category")
_YEAR_FIELDS = ("release_year", "year")


def _recbole_header(path: Path, line: str) -> list[str]:
    names = []
    for col in line.split("\t"):
        name, sep, typ = col.strip().partition(":")
        if not sep or not name or typ not in _RECBOLE_TYPES:
            raise SourceLineError(path, 1, f"header field {col!r} is not 'name:type' with type one of "
                                           f"{', '.join(_RECBOLE_TYPES)}")
        names.append(name)
    return names


def _recbole_rows(path: Path):
    """Yield (line, {field: value}) after checking the header and each row's field count."""
    lines = iter_lines(path, "utf-8")
    first = next(lines, None)
    if first is None:
        raise SourceLineError(path, 1, "the file is empty (expected a 'field:type' header line)")
    names = _recbole_header(path, first[1])
    yield 1, names
    for n, line in lines:
        f = line.split("\t")
        if len(f) != len(names):
            raise SourceLineError(path, n, f"expected {len(names)} tab-separated fields, got {len(f)}")
        yield n, dict(zip(names, f))


def _pick(names, candidates) -> str | None:
    return next((c for c in candidates if c in names), None)


def read_recbole_items(items_path: Path) -> tuple[dict[int, Item], list[str]]:
    """The items of a RecBole `.item` file and the names of its fields not imported. Title, description, genres and
    year come from the first field of each kind present (_TITLE_FIELDS, ...); with only a `text` field, its first
    sentence (at most 80 characters) becomes the title."""
    items: dict[int, Item] = {}
    item_lines: dict[int, int] = {}
    rows = _recbole_rows(items_path)
    _, names = next(rows)
    if "item_id" not in names:
        raise SourceLineError(items_path, 1, f"header has no item_id field (has: {', '.join(names)})")
    tf, df, gf, yf = (_pick(names, c) for c in (_TITLE_FIELDS, _DESC_FIELDS, _GENRE_FIELDS, _YEAR_FIELDS))
    for n, r in rows:
        iid = parse_int(r["item_id"], items_path, n, "item_id")
        title = r[tf].strip() if tf else ""
        genres = [g.replace("_", " ") for g in r[gf].split()] if gf else []
        year = r[yf].strip() if yf else ""
        desc = r[df].strip() if df else ""
        if not title and desc and not tf:  # a text-only item file (e.g. <name>.text): title from its first sentence
            head = " ".join(desc.split()).split(". ")[0]
            title = head if len(head) <= 80 else head[:79].rstrip() + "…"
        if not desc and (genres or year):
            desc = describe_movie("", genres, year)
        add_item(items, item_lines, Item(iid, title or f"Item {iid}", desc, None, _attributes(genres, year)),
                 items_path, n)
    used = {"item_id", tf, df, gf, yf}
    return items, [n for n in names if n not in used]


def read_recbole(source: Path, images: Path | None = None) -> RawImport:
    from .sequences import atomic_layout, find_item_file, read_atomic_sequences

    layout = atomic_layout(source)
    if layout.sequence:
        return read_atomic_sequences(source, layout, images)
    inter_path = layout.files[0]
    items_path, notes = find_item_file(source, inter_path)
    items: dict[int, Item] = {}
    unused: dict[str, list[str]] = {}
    if items_path is not None:
        items, unused[items_path.name] = read_recbole_items(items_path)
    rows = _recbole_rows(inter_path)
    _, names = next(rows)
    missing = [c for c in ("user_id", "item_id") if c not in names]
    if missing:
        raise SourceLineError(inter_path, 1, f"header lacks field(s) {', '.join(missing)} (has: {', '.join(names)})")
    raw = RawImport(inter_path.stem, f"recbole:{inter_path}", items, items_path or inter_path.with_suffix(".item"),
                    inter_path)
    if "rating" not in names:
        raw.ratings = None
    for n, r in rows:
        _add_inter(raw, n, r["user_id"], r["item_id"], r.get("rating"), r.get("timestamp"))
    if items_path is None:  # an id-only dataset: every interacted item becomes a bare item
        raw.items = {i: Item(i, f"Item {i}") for i in sorted(set(raw.item_ids))}
        raw.items_path = inter_path
    raw.images = find_images(images, _id_keys(raw.items))
    raw.meta = {"timestamp_unit": "s" if "timestamp" in names else "none (file order)"}
    unused[inter_path.name] = [c for c in names if c not in ("user_id", "item_id", "rating", "timestamp")]
    raw.unused = unused
    raw.warnings = notes
    return raw
