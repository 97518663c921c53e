"""Readers for sequential-recommendation sets shipped one user sequence per row, as many LLM-recommendation
repositories ship them.

- RecBole atomic files, sequence per row: `<name>.train.inter`, `<name>.valid.inter`, `<name>.test.inter` (or one
  `<name>.inter`) with the fields `user_id:token  item_id_list:token_seq  item_id:token`: the history in one field
  (space-separated, oldest first) and the next item in the other. A user has one row per split (the test row holds the
  whole sequence) or one row per prefix; each user's rows are merged into one sequence (a row already contained in it
  adds nothing; a row overlapping one of its ends extends it: sliding windows of histories cut at a maximum length)
  and expanded into one interaction per item, in order. Split files without `item_id_list` (one interaction per row)
  are concatenated.
- A sequence text file: one line per user, `user item1 item2 ...` (whitespace-separated integers, oldest first), e.g.
  P5's `sequential_data.txt`.

Item text comes from a RecBole `.item` file (or a `.text` file, UniSRec's layout) found by `find_item_file`: the one
named like the interaction file, else like its base name (`<name>.item` for `<name>.test.inter`), else the only one in
the folder, with a note saying so; without one, items are named "Item N", with a note. When the source has no
timestamps (`timestamp_list` + `timestamp`), an item's position in its user's sequence becomes its timestamp; the
choice is recorded in dataset.json (`meta.timestamp_unit`). Rows that contradict their user's merged sequence are not
imported, and one warning says how many and where the first is.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from ..core.errors import UserError
from .importers import RawImport, SourceLineError, find_images, iter_lines, parse_int
from .schema import Item

SPLITS = ("train", "valid", "validation", "val", "test")  # file order of a split layout
_SPLIT_FILE = re.compile(r"^(?P<base>.+)\.(?P<split>" + "|".join(SPLITS) + r")\.inter$")
ITEM_SUFFIXES = (".item", ".text")  # RecBole's item file, UniSRec's item text file (same atomic format)
POSITION_TIMESTAMPS = "position in the user's sequence (the source has no timestamps)"
_IGNORED_TEXT = ("readme", "license", "licence", "notice", "changelog")


@dataclass
class AtomicLayout:
    """The `.inter` files of a RecBole source, in the order they are read, and whether rows hold whole sequences."""

    files: list[Path]
    base: str
    sequence: bool  # an item_id_list field: one sequence per row

    def describe(self) -> str:
        names = ", ".join(p.name for p in self.files)
        rows = "one sequence per row (item_id_list)" if self.sequence else "one interaction per row"
        return f"RecBole atomic files, {rows}: {names}"


def _header_names(path: Path) -> list[str]:
    from .movielens import _recbole_rows

    return next(_recbole_rows(path))[1]


def atomic_layout(source: Path) -> AtomicLayout:
    """The layout of the `.inter` files in `source`: one `<name>.inter`, or `<name>.<split>.inter` files of one name."""
    inters = sorted(Path(source).glob("*.inter"))
    if not inters:
        raise UserError(f"no <name>.inter file in {source}", "pass the folder that holds the RecBole atomic files")
    if len(inters) == 1:
        files = inters
        m = _SPLIT_FILE.match(inters[0].name)
        base = m.group("base") if m else inters[0].stem
    else:
        matches = [_SPLIT_FILE.match(p.name) for p in inters]
        bases = {m.group("base") for m in matches if m}
        if not all(matches) or len(bases) != 1:
            raise UserError(f"expected one <name>.inter file, or <name>.train/.valid/.test.inter files of one name, "
                            f"in {source}; found {', '.join(p.name for p in inters)}",
                            "keep one dataset per directory")
        files = sorted(inters, key=lambda p: SPLITS.index(_SPLIT_FILE.match(p.name).group("split")))
        base = bases.pop()
    return AtomicLayout(files, base, "item_id_list" in _header_names(files[0]))


def describe_atomic(source: Path) -> str:
    return atomic_layout(source).describe()


def find_item_file(source: Path, inter_path: Path) -> tuple[Path | None, list[str]]:
    """(the item file of `inter_path`, notes for the user): `<stem>.item`, `<base>.item` (`<base>.<split>.inter`),
    the same with `.text`, else the only item file in `source` (noted), else None (noted)."""
    source = Path(source)
    stem = inter_path.name[: -len(inter_path.suffix)] if inter_path.suffix else inter_path.name
    m = _SPLIT_FILE.match(inter_path.name)
    bases = [stem] + ([m.group("base")] if m else [])
    for suffix in ITEM_SUFFIXES:
        for base in bases:
            if (source / f"{base}{suffix}").is_file():
                return source / f"{base}{suffix}", []
    found = sorted(p for p in source.iterdir() if p.suffix in ITEM_SUFFIXES and p.is_file())
    want = f"{bases[-1]}.item"
    if len(found) == 1:
        return found[0], [f"using {found[0].name} as the item file of {inter_path.name} (its name differs from "
                          f"{want})"]
    if found:
        return None, [f"none of the item files {', '.join(p.name for p in found)} is named {want}: items are named "
                      f"'Item N' (rename the right one to {want})"]
    return None, [f"no item file ({want}): items are named 'Item N'"]


def _tokens(value: str, path: Path, line: int, what: str) -> list[int]:
    return [parse_int(t, path, line, what) for t in value.split()]


def _merge(rows: list[tuple[list, int, Path]]) -> tuple[list, int, Path, tuple[tuple[int, Path], int] | None]:
    """One user's rows (sequence of (item, ts) pairs, line, file) -> (merged sequence, line and file of its longest
    row, None or ((line, file) of the first row contradicting it, how many do)). Starting from the longest row, a row
    already contained adds nothing, a row whose end overlaps the merged start extends it backwards and one whose start
    overlaps its end extends it forwards (sliding windows of a history cut at a maximum length), until no row fits."""
    order = sorted(range(len(rows)), key=lambda k: -len(rows[k][0]))  # stable: file order among equal lengths
    full, line, path = list(rows[order[0]][0]), rows[order[0]][1], rows[order[0]][2]
    pending = [rows[k] for k in order[1:] if rows[k][0]]
    while pending:
        left = [row for row in pending if not _fit(full, row[0])]
        if len(left) == len(pending):
            break
        pending = left
    if not pending:
        return full, line, path, None
    first = min(pending, key=rows.index)  # in file order
    return full, line, path, ((first[1], first[2]), len(pending))


def _fit(full: list, seq: list) -> bool:
    """Whether `seq` is part of `full`, extending `full` in place where they overlap at one end."""
    if _contains(full, seq):
        return True
    for j, x in enumerate(seq):  # seq's end overlaps full's start
        if x == full[0] and seq[j:] == full[: len(seq) - j]:
            full[:0] = seq[:j]
            return True
    for j, x in enumerate(full):  # full's end overlaps seq's start
        if x == seq[0] and full[j:] == seq[: len(full) - j]:
            full.extend(seq[len(full) - j:])
            return True
    return False


def _contains(full: list, seq: list) -> bool:
    """Whether `seq` is a contiguous part of `full` (checked where its last element occurs)."""
    n = len(seq)
    return any(full[j - n + 1: j + 1] == seq for j, x in enumerate(full) if x == seq[-1] and j >= n - 1)


def read_atomic_sequences(source: Path, layout: AtomicLayout, images: Path | None = None) -> RawImport:
    """A RecBole source of `layout` (module docstring) into a RawImport."""
    from .movielens import _id_keys, _recbole_rows, read_recbole_items

    items_path, notes = find_item_file(source, layout.files[0])
    items: dict[int, Item] = {}
    unused: dict[str, list[str]] = {}
    if items_path is not None:
        items, unused[items_path.name] = read_recbole_items(items_path)
    per_user: dict[int, list[tuple[list, int, Path]]] = {}
    plain: list[tuple[int, int, int | None, float | None, int, Path]] = []
    has_ts = has_rating = False
    for path in layout.files:
        rows = _recbole_rows(path)
        _, names = next(rows)
        need = ["user_id", "item_id_list"] if layout.sequence else ["user_id", "item_id"]
        missing = [c for c in need if c not in names]
        if missing:
            raise SourceLineError(path, 1, f"header lacks field(s) {', '.join(missing)} (has: {', '.join(names)}); "
                                           f"{layout.files[0].name} has them")
        if layout.sequence:
            has_ts = "timestamp_list" in names and ("timestamp" in names or "item_id" not in names)
            used = {"user_id", "item_id_list", "item_id"} | ({"timestamp_list", "timestamp"} if has_ts else set())
        else:
            has_ts, has_rating = "timestamp" in names, "rating" in names
            used = {"user_id", "item_id", "rating", "timestamp"}
        unused[path.name] = [c for c in names if c not in used]
        for n, r in rows:
            user = parse_int(r["user_id"], path, n, "user id")
            if not layout.sequence:
                plain.append((user, parse_int(r["item_id"], path, n, "item id"),
                              parse_int(r["timestamp"], path, n, "timestamp") if has_ts else None,
                              float(r["rating"]) if has_rating else None, n, path))
                continue
            seq = _tokens(r["item_id_list"], path, n, "item id")
            stamps = _tokens(r["timestamp_list"], path, n, "timestamp") if has_ts else [None] * len(seq)
            if "item_id" in r and r["item_id"].strip():
                seq.append(parse_int(r["item_id"], path, n, "item id"))
                stamps.append(parse_int(r["timestamp"], path, n, "timestamp") if has_ts and "timestamp" in r
                              else None)
            if len(stamps) != len(seq):
                raise SourceLineError(path, n, f"timestamp_list has {len(stamps)} values for {len(seq)} items")
            per_user.setdefault(user, []).append((list(zip(seq, stamps)), n, path))
    raw = RawImport(layout.base, f"recbole:{layout.files[0]}", items,
                    items_path or layout.files[0], layout.files[0])
    raw.used_files.update(layout.files)
    if layout.sequence:
        raw.ratings = None
        bad_rows, first_bad = 0, None
        for user in sorted(per_user):
            full, line, path, bad = _merge(per_user[user])
            if bad:
                bad_rows += bad[1]
                first_bad = first_bad or bad[0]
            for pos, (item, ts) in enumerate(full):
                raw.users.append(user)
                raw.item_ids.append(item)
                raw.timestamps.append(pos if not has_ts else ts)
                raw.lines.append(line)
                raw.line_files.append(path)
        if bad_rows:
            notes.append(f"{bad_rows} row(s) contradict their user's longest sequence and were not imported (first: "
                         f"{first_bad[1].name}, line {first_bad[0]})")
        raw.meta = {"layout": "sequence per row (item_id_list), expanded in order",
                    "files": [p.name for p in layout.files]}
    else:
        raw.ratings = [row[3] for row in plain] if has_rating else None
        for user, item, ts, _, n, path in plain:
            raw.users.append(user)
            raw.item_ids.append(item)
            raw.timestamps.append(ts if has_ts else len(raw.timestamps))
            raw.lines.append(n)
            raw.line_files.append(path)
        raw.meta = {"layout": "one interaction per row", "files": [p.name for p in layout.files]}
    raw.meta["timestamp_unit"] = "s" if has_ts else (POSITION_TIMESTAMPS if layout.sequence else "none (file order)")
    if items_path is None:
        raw.items = {i: Item(i, f"Item {i}") for i in sorted(set(raw.item_ids))}
    raw.images = find_images(images, _id_keys(raw.items))
    raw.unused, raw.warnings = unused, notes
    return raw


# ---------------------------------------------------------------- `user item1 item2 ...` text files


def _first_line(path: Path) -> str | None:
    try:
        with open(path, "rb") as f:
            for raw in f:
                text = raw.decode("utf-8", "replace").strip()
                if text:
                    return text
    except OSError:
        return None
    return None


def _is_sequence_line(text: str | None) -> bool:
    parts = (text or "").split()
    return len(parts) >= 2 and all(re.fullmatch(r"-?\d+", p) for p in parts)


def find_sequence_text(source: Path) -> Path | None:
    """The `user item1 item2 ...` file of `source` (a .txt file whose first line is 2+ integers): the only one, or
    sequential_data.txt among several; None when there is none or no way to choose."""
    found = [p for p in sorted(Path(source).glob("*.txt"))
             if p.is_file() and not p.stem.lower().startswith(_IGNORED_TEXT) and _is_sequence_line(_first_line(p))]
    if len(found) > 1:
        found = [p for p in found if p.name == "sequential_data.txt"]
    return found[0] if len(found) == 1 else None


def read_sequence_text(source: Path, images: Path | None = None) -> RawImport:
    """A sequence text file (module docstring) and its optional item file into a RawImport."""
    from .movielens import _id_keys, read_recbole_items

    path = find_sequence_text(source)
    if path is None:
        txt = sorted(p.name for p in Path(source).glob("*.txt"))
        raise UserError(f"expected one 'user item1 item2 ...' .txt file in {source}, found "
                        + (", ".join(txt) if txt else "none"),
                        "one line per user: whitespace-separated integer ids, oldest item first")
    items_path, notes = find_item_file(source, path)
    items: dict[int, Item] = {}
    raw = RawImport(path.stem, f"sequences:{path}", items, items_path or path, path, ratings=None)
    if items_path is not None:
        raw.items, raw.unused[items_path.name] = read_recbole_items(items_path)
    first_line: dict[int, int] = {}
    for n, line in iter_lines(path, "utf-8"):
        parts = line.split()
        user = parse_int(parts[0], path, n, "user id")
        if user in first_line:
            raise SourceLineError(path, n, f"duplicate user {user} (first on line {first_line[user]})",
                                  hint="one line per user, the whole sequence on it")
        first_line[user] = n
        if len(parts) < 2:
            raise SourceLineError(path, n, f"user {user} has no items", hint="each line is: user item1 item2 ...")
        for pos, tok in enumerate(parts[1:]):
            raw.users.append(user)
            raw.item_ids.append(parse_int(tok, path, n, "item id"))
            raw.timestamps.append(pos)
            raw.lines.append(n)
    if items_path is None:
        raw.items = {i: Item(i, f"Item {i}") for i in sorted(set(raw.item_ids))}
    raw.images = find_images(images, _id_keys(raw.items))
    raw.meta = {"layout": "one user sequence per line (user item1 item2 ...)", "timestamp_unit": POSITION_TIMESTAMPS}
    raw.warnings = notes
    return raw
