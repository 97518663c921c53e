"""Dataset importers: each source format, images, filtering, output safety, and line-accurate errors on bad input."""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from mmsrarec_edge.core.errors import DataError, UserError
from mmsrarec_edge.core.imaging import load_image
from mmsrarec_edge.data import load_dataset
from mmsrarec_edge.data.importers import detect_format, import_dataset, load_id_map

FIX = Path(__file__).resolve().parent / "fixtures"
REAL = Path(__file__).resolve().parents[2] / "shared" / "data" / "ml100k_mm"
# (user, item, rating, timestamp) rows of the ml100k / recbole fixtures, in file order
ROWS = [(1, 1, 5, 874965478), (1, 2, 3, 874965500), (1, 4, 4, 874965600), (2, 3, 2, 875000000), (2, 1, 4, 875000100),
        (2, 5, 1, 875000200), (3, 2, 5, 876000000), (3, 3, 4, 876000000), (3, 4, 3, 876000300), (1, 3, 1, 874965700)]


def copy_fixture(name: str, tmp_path: Path) -> Path:
    return Path(shutil.copytree(FIX / name, tmp_path / f"src_{name}"))


def replace_line(path: Path, line: int, new: bytes) -> None:
    lines = path.read_bytes().split(b"\n")
    lines[line - 1] = new
    path.write_bytes(b"\n".join(lines))


def expect_error(src: Path, out: Path, file: str, line: int, problem: str, **kw) -> DataError:
    with pytest.raises(DataError) as info:
        import_dataset(src, out, **kw)
    err = info.value
    msg = str(err)
    assert Path(err.path).name == file and file in msg, msg
    assert err.row == line and f"line {line}:" in msg, msg
    assert problem in msg, msg
    assert not out.exists()
    return err


def png(path: Path, colour=(10, 200, 30), size=(6, 9)) -> Path:
    """A tiny image; its format follows the suffix."""
    Image.new("RGB", size, colour).save(path)
    return path


# ---------------------------------------------------------------- formats


@pytest.mark.parametrize("name", ["ml100k", "ml100k_mm", "recbole", "amazon"])
def test_detect_format(name):
    assert detect_format(FIX / name) == name


SEQ_HEADER = "user_id:token\titem_id_list:token_seq\titem_id:token\n"
SEQS = {1: [10, 11, 12, 13, 14], 2: [11, 12, 13, 10, 14], 3: [12, 10, 14]}  # what the files below hold


def write_seq_atomic(src: Path, name: str = "beauty", item_file: str | None = "beauty.item") -> Path:
    """Sequence-per-row atomic files as LLM-recommendation repositories ship them: train rows for every prefix,
    one valid and one test row per user (the test row holds the whole sequence), titles with HTML entities."""
    src.mkdir(parents=True, exist_ok=True)
    rows = {"train": [], "valid": [], "test": []}
    for u, s in SEQS.items():
        rows["train"] += [f"{u}\t{' '.join(map(str, s[:t]))}\t{s[t]}\n" for t in range(1, len(s) - 2)]
        rows["valid"].append(f"{u}\t{' '.join(map(str, s[:-2]))}\t{s[-2]}\n")
        rows["test"].append(f"{u}\t{' '.join(map(str, s[:-1]))}\t{s[-1]}\n")
    for split, lines in rows.items():
        (src / f"{name}.{split}.inter").write_text(SEQ_HEADER + "".join(lines))
    if item_file:
        (src / item_file).write_text("item_id:token\ttitle:token_seq\tbrand:token\n"
                                     "10\tPok&eacute;mon  cards &amp;amp; more\tX\n11\tTom&rsquo;s\tY\n"
                                     "12\tA &ndash; B\tY\n13\tPlain\tY\n14\tLast\tZ\n")
    return src


def test_cli_imports_sequence_per_row_atomic_files(tmp_path):
    """Issue 17, finding 1: <name>.train/.valid/.test.inter with item_id_list import (each user's rows merged into one
    sequence, expanded in order, positions as timestamps, recorded in dataset.json); detection says what it saw."""
    src = write_seq_atomic(tmp_path / "src")
    r = run_cli("data", "import", src, "--out", tmp_path / "out")
    assert r.returncode == 0, r.stderr
    assert ("detected format recbole: RecBole atomic files, one sequence per row (item_id_list): beauty.train.inter, "
            "beauty.valid.inter, beauty.test.inter") in r.stderr
    ds = load_dataset(tmp_path / "out")
    assert ds.sequences() == SEQS and ds.name == "beauty"
    assert sorted(ds.timestamps[ds.users == 1].tolist()) == [0, 1, 2, 3, 4]
    assert ds.meta["timestamp_unit"].startswith("position in the user's sequence")
    assert ds.meta["layout"].startswith("sequence per row")


def test_one_sequence_file_and_histories_cut_at_a_maximum_length(tmp_path):
    """One <name>.inter with item_id_list (finding 2's renamed file: it used to import one item per user) and
    histories cut at a maximum length (the train rows carry the older items)."""
    src = tmp_path / "src"
    src.mkdir()
    (src / "one.inter").write_text(SEQ_HEADER + "1\t10 11\t12\n1\t11 12\t13\n1\t12 13\t14\n2\t13\t10\n")
    r = run_cli("data", "import", src, "--out", tmp_path / "out")
    assert r.returncode == 0, r.stderr
    assert "one sequence per row (item_id_list): one.inter" in r.stderr
    assert "warning: no item file (one.item): items are named 'Item N'" in r.stderr
    assert load_dataset(tmp_path / "out").sequences() == {1: [10, 11, 12, 13, 14], 2: [13, 10]}
    # a row contradicting its user's sequence is reported, never silently merged
    (src / "one.inter").write_text(SEQ_HEADER + "1\t10 11\t12\n1\t20 21\t22 \n2\t13\t10\n".replace(" \n", "\n"))
    ds = import_dataset(src, tmp_path / "out2", warn=(seen := []).append)
    assert ds.sequences()[1] == [10, 11, 12]
    assert any("1 row(s) contradict their user's longest sequence" in w and "one.inter, line 3" in w for w in seen)


def test_cli_imports_a_sequence_text_file(tmp_path):
    """`user item1 item2 ...` lines (P5's sequential_data.txt), with an optional item file."""
    src = tmp_path / "src"
    src.mkdir()
    (src / "sequential_data.txt").write_text("".join(f"{u} {' '.join(map(str, s))}\n" for u, s in SEQS.items()))
    (src / "sequential_data.item").write_text("item_id:token\ttitle:token_seq\n" + "".join(
        f"{i}\tT{i}\n" for i in range(10, 15)))
    r = run_cli("data", "import", src, "--out", tmp_path / "out")
    assert r.returncode == 0, r.stderr
    assert "detected format sequences: a sequence text file, one user per line" in r.stderr
    assert "warning" not in r.stderr
    ds = load_dataset(tmp_path / "out")
    assert ds.sequences() == SEQS and ds.items[12].title == "T12"
    (src / "sequential_data.txt").write_text("1 10 11\n2 12\n1 13 14\n")
    r = run_cli("data", "import", src, "--out", tmp_path / "out3", "--format", "sequences")
    assert r.returncode == 2 and "sequential_data.txt, line 3: duplicate user 1 (first on line 1)" in r.stderr
    assert "Traceback" not in r.stderr


def test_cli_names_what_it_does_not_import(tmp_path):
    """Issue 17, finding 2: unused fields and files are named in one warning line; a <name>.item beside
    <name>.test.inter is found; an item file of another name is used and said so."""
    src = write_seq_atomic(tmp_path / "src")
    for split in ("train", "valid"):
        (src / f"beauty.{split}.inter").unlink()
    test_rows = (src / "beauty.test.inter").read_text().splitlines()  # every user's last item is 14: rate it 5
    (src / "beauty.test.inter").write_text(f"{test_rows[0]}\trating:float\n" + "".join(f"{ln}\t5\n"
                                                                                       for ln in test_rows[1:]))
    (src / "README.md").write_text("notes")
    r = run_cli("data", "import", src, "--out", tmp_path / "out")
    assert r.returncode == 0, r.stderr
    warnings = [ln for ln in r.stderr.splitlines() if ln.startswith("warning:")]
    assert warnings == ["warning: not imported: file README.md; beauty.item field brand; beauty.test.inter field "
                        "rating"], r.stderr
    ds = load_dataset(tmp_path / "out")
    assert ds.items[13].title == "Plain" and ds.sequences() == SEQS  # titles from beauty.item, not "Item N"
    assert ds.meta["import_warnings"] == [warnings[0][len("warning: "):]]

    (src / "beauty.item").rename(src / "Beauty_meta.item")
    r = run_cli("data", "import", src, "--out", tmp_path / "out2")
    assert "warning: using Beauty_meta.item as the item file of beauty.test.inter (its name differs from " \
           "beauty.item)" in r.stderr
    assert load_dataset(tmp_path / "out2").items[13].title == "Plain"


@pytest.mark.parametrize("name, expect", [
    ("ml100k", "not imported: u.item fields video release date, IMDb URL"),
    ("ml100k_mm", "not imported: items.csv fields ml1m_movie_id, imdb_url"),
    ("amazon", "not imported: Tiny_Toys.jsonl fields helpful_vote, images, text, title, verified_purchase; "
               "meta_Tiny_Toys.jsonl fields average_rating, bought_together, details, price, rating_number, videos"),
    ("recbole", None),  # every field of tiny.inter and tiny.item is imported
])
def test_every_importer_names_what_it_does_not_import(tmp_path, name, expect):
    seen = []
    ds = import_dataset(FIX / name, tmp_path / "out", warn=seen.append)
    assert seen == ([expect] if expect else [])
    assert ds.meta.get("import_warnings", []) == seen


def test_cli_import_unescapes_html_and_collapses_whitespace(tmp_path):
    """Issue 17, finding 6: HTML entities (also twice-escaped) are unescaped and whitespace collapsed at import,
    recorded in dataset.json."""
    src = write_seq_atomic(tmp_path / "src")
    r = run_cli("data", "import", src, "--out", tmp_path / "out")
    assert r.returncode == 0, r.stderr
    ds = load_dataset(tmp_path / "out")
    assert ds.items[10].title == "Pokémon cards & more" and ds.items[11].title == "Tom’s"
    assert ds.items[12].title == "A – B"
    norm = json.loads((tmp_path / "out" / "dataset.json").read_text())["meta"]["text_normalization"]
    assert norm["items_changed"] == 3 and "HTML entities unescaped" in norm["applied"]


def test_detect_format_unknown(tmp_path):
    (tmp_path / "notes.txt").write_text("hi")
    with pytest.raises(UserError, match="cannot tell the format"):
        detect_format(tmp_path)


def test_ml100k_round_trip(tmp_path):
    ds = import_dataset(FIX / "ml100k", tmp_path / "out")
    again = load_dataset(tmp_path / "out")
    assert again.items == ds.items
    assert ds.meta["import_format"] == "ml100k"
    assert sorted(ds.items) == [1, 2, 3, 4, 5]
    assert ds.items[4].title == "Café au lait (1994)"  # a latin-1 byte in u.item, decoded as latin-1
    assert ds.items[1].description == "An animation, children's and comedy film from 1995."
    assert ds.items[1].attributes == {"genres": "Animation|Children's|Comedy", "year": "1995"}
    assert ds.items[5].description == "" and ds.items[5].attributes is None  # genre 'unknown', no year
    assert list(zip(ds.users.tolist(), ds.item_ids.tolist(), ds.timestamps.tolist())) == [
        (u, i, t) for u, i, _, t in ROWS]
    assert ds.sequences() == {1: [1, 2, 4, 3], 2: [3, 1, 5], 3: [2, 3, 4]}
    assert ds.stats()["items_with_image"] == 0 and not (tmp_path / "out" / "images").exists()


def test_ml100k_images_and_min_rating(tmp_path):
    imgs = tmp_path / "posters"
    imgs.mkdir()
    png(imgs / "1.png")
    png(imgs / "3.jpg", (200, 0, 0), (5, 5))  # saved as JPEG (PIL picks the format from the suffix)
    png(imgs / "3.png", (0, 0, 200))  # .jpg is preferred over .png for the same item
    png(imgs / "99.png")  # no such item: ignored
    (imgs / "readme.txt").write_text("not an image")
    ds = import_dataset(FIX / "ml100k", tmp_path / "out", images=imgs, min_rating=4)
    assert {i: it.image for i, it in ds.items.items() if it.image} == {1: "images/1.png", 3: "images/3.jpg"}
    assert load_image(ds.image_path(1)).size == (6, 9)
    assert load_image(ds.image_path(3)).getpixel((2, 2))[0] > 150
    assert sorted((tmp_path / "out" / "images").iterdir()) == [tmp_path / "out" / "images" / n
                                                               for n in ("1.png", "3.jpg")]
    keep = [(u, i) for u, i, r, _ in ROWS if r >= 4]
    assert list(zip(ds.users.tolist(), ds.item_ids.tolist())) == keep and len(keep) == 5
    assert ds.meta["min_rating"] == 4
    with pytest.raises(UserError, match="no interactions are rated 6"):
        import_dataset(FIX / "ml100k", tmp_path / "out2", min_rating=6)


def test_ml100k_mm_fixture(tmp_path):
    ds = import_dataset(FIX / "ml100k_mm", tmp_path / "out")
    assert ds.meta["import_format"] == "ml100k_mm"
    toy = ds.items[1]
    assert toy.description == ('A cowboy doll is threatened by a new "spaceman" toy. He fights back. '
                               "Genres: Animation, Children's, Comedy. Directed by John Lasseter. "
                               "Starring Tom Hanks, Tim Allen, Don Rickles.")  # top 3 cast only
    assert ds.items[2].description == "An action, adventure and thriller film from 1995."  # no plot
    assert ds.items[3].description.endswith("Directed by Allison Anders, Alexandre Rockwell. Starring Tim Roth.")
    assert ds.items[4].description == "A comedy film from 1994."  # ['nan'] lists are empty
    assert {i for i, it in ds.items.items() if it.image} == {1, 2}
    for i in (1, 2):
        assert ds.image_path(i).read_bytes() == (FIX / "ml100k_mm" / "posters" / f"{i}.png").read_bytes()
    assert len(ds.users) == 9


def test_ml100k_mm_images_folder_replaces_posters(tmp_path):
    imgs = tmp_path / "imgs"
    imgs.mkdir()
    png(imgs / "4.png")
    ds = import_dataset(FIX / "ml100k_mm", tmp_path / "out", images=imgs)
    assert {i for i, it in ds.items.items() if it.image} == {4}


def test_recbole(tmp_path):
    ds = import_dataset(FIX / "recbole", tmp_path / "out", fmt="recbole")
    assert ds.name == "tiny"
    assert ds.items[1].title == "Toy Story" and ds.items[4].title == "Café au lait"
    assert ds.items[2].description == "An action, adventure and thriller film from 1995."
    assert ds.sequences() == {1: [1, 2, 4, 3], 2: [3, 1, 5], 3: [2, 3, 4]}
    assert len(import_dataset(FIX / "recbole", tmp_path / "out", min_rating=5).users) == 2


def test_recbole_without_item_file_or_rating(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "ids.inter").write_text("user_id:token\titem_id:token\n7\t70\n7\t71\n8\t70\n")
    ds = import_dataset(src, tmp_path / "out")
    assert {i: it.title for i, it in ds.items.items()} == {70: "Item 70", 71: "Item 71"}
    assert ds.sequences() == {7: [70, 71], 8: [70]}  # no timestamps: file order
    with pytest.raises(UserError, match="has no ratings"):
        import_dataset(src, tmp_path / "out2", min_rating=3)


def test_amazon(tmp_path):
    imgs = tmp_path / "imgs"
    imgs.mkdir()
    png(imgs / "B000KITE00.png")
    ds = import_dataset(FIX / "amazon", tmp_path / "out", images=imgs)
    assert ds.name == "Tiny_Toys" and ds.meta["id_map"] == "id_map.parquet"
    users, items = load_id_map(tmp_path / "out")
    assert users == {1: "AEUSER1", 2: "AGZUSER2", 3: "AHUSER3"}
    assert items == {1: "B000TRAIN1", 2: "B000PUZZLE", 3: "B000STAR00", 4: "B000KITE00"}
    assert ds.items[1].description == ("A classic train set. Compatible with most tracks. "
                                       "Features: 30 pieces; Solid beech wood.")
    assert ds.items[1].attributes == {"main_category": "Toys & Games", "categories": "Toys & Games > Trains",
                                      "store": "Kestrel"}
    assert ds.items[3].title == "Item B000STAR00"  # empty title
    assert ds.items[4].title == "Kite — Rainbow" and ds.items[4].image == "images/4.png"
    # chronological per user by milliseconds, stored in seconds
    assert ds.sequences_with_time() == {1: ([1, 3, 4], [1588615855, 1588615855, 1600000000]),
                                        2: ([1, 2], [1588687728, 1588687728]), 3: ([4, 2], [1610000000, 1610000001])}
    import pyarrow.parquet as pq

    urls = {r["id"]: r["url"] for r in pq.read_table(tmp_path / "out" / "id_map.parquet").to_pylist()
            if r["kind"] == "item"}
    assert urls == {1: "https://example.com/l1.jpg", 2: "https://example.com/l2.jpg", 3: None, 4: None}


def test_amazon_gzip(tmp_path):
    import gzip

    src = tmp_path / "src"
    src.mkdir()
    for p in (FIX / "amazon").iterdir():
        (src / (p.name + ".gz")).write_bytes(gzip.compress(p.read_bytes()))
    ds = import_dataset(src, tmp_path / "out")
    assert len(ds.items) == 4 and len(ds.users) == 7


# ---------------------------------------------------------------- output safety and atomicity


def test_reimport_replaces_dataset_but_never_other_dirs(tmp_path):
    out = tmp_path / "out"
    import_dataset(FIX / "amazon", out)
    ds = import_dataset(FIX / "ml100k", out)  # an existing dataset is replaced
    assert ds.meta["import_format"] == "ml100k" and not (out / "id_map.parquet").exists()
    other = tmp_path / "mine"
    other.mkdir()
    (other / "precious.txt").write_text("x")
    with pytest.raises(UserError, match="not a dataset directory"):
        import_dataset(FIX / "ml100k", other)
    src = copy_fixture("ml100k", tmp_path)
    with pytest.raises(UserError, match="would replace the source"):
        import_dataset(src, src)
    assert (other / "precious.txt").exists() and (src / "u.data").exists()


def test_bad_image_leaves_nothing_behind(tmp_path):
    imgs = tmp_path / "imgs"
    imgs.mkdir()
    (imgs / "2.png").write_bytes(b"not a png at all")
    with pytest.raises(DataError, match="not a readable image") as info:
        import_dataset(FIX / "ml100k", tmp_path / "out", images=imgs)
    assert Path(info.value.path).name == "2.png"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["imgs"]  # no output, no temporary directory
    with pytest.raises(UserError, match="image folder"):
        import_dataset(FIX / "ml100k", tmp_path / "out", images=tmp_path / "nope")


# ---------------------------------------------------------------- malformed sources


def test_ml100k_errors(tmp_path):
    out = tmp_path / "out"
    cases = [
        ("u.data", 3, b"1\t2\t3", "expected 4 tab-separated fields", ),
        ("u.data", 2, b"x1\t2\t3\t874965500", "user id must be an integer, got 'x1'"),
        ("u.data", 4, b"2\t3\t2\t87500\xff000", "not valid UTF-8 text (byte 0xff at column 12)"),
        ("u.data", 5, b"2\t99\t4\t875000100", "item id 99 is not in u.item"),
        ("u.data", 6, b"2\t5\tfive\t875000200", "rating must be a number"),
        ("u.item", 3, b"3|Four Rooms (1995)|01-Jan-1995|", "expected 24 '|'-separated fields, got 4"),
        ("u.item", 4, b"2|Again (1995)|01-Jan-1995||x" + b"|0" * 19, "duplicate item id 2 (first on line 2)"),
        ("u.item", 2, b"1.5|Toy (1995)|01-Jan-1995||x" + b"|0" * 19, "item id must be an integer, got '1.5'"),
        ("u.item", 5, b"5||||x" + b"|0" * 19, "item 5 has an empty title"),
    ]
    for file, line, new, problem in cases:
        src = copy_fixture("ml100k", tmp_path)
        replace_line(src / file, line, new)
        expect_error(src, out, file, line, problem)
        shutil.rmtree(src)


def test_ml100k_mm_errors(tmp_path):
    out = tmp_path / "out"
    items_head = (FIX / "ml100k_mm" / "items.csv").read_bytes().split(b"\n")[0]
    cases = [  # items.csv record 1 spans lines 2-3, so record 3 is on line 5
        ("items.csv", 5, b"3,18,Four Rooms (1995),,Thriller,Plot.,\"__import__('os').system('true')\",,,",
         "column 'director' is not a list literal"),
        ("items.csv", 5, b"3,18,Four Rooms (1995),,Thriller,Plot.,\"{'a': 1}\",,,",
         "column 'director' must be a list of names"),
        ("items.csv", 4, b"two,10,GoldenEye (1995),,Action,,,,,", "item_id must be an integer, got 'two'"),
        ("items.csv", 4, b"2,10,GoldenEye (1995),,Action,,,,,posters/missing.png",
         "poster 'posters/missing.png' does not exist"),
        ("items.csv", 6, b"4,,Caf\xe9 (1994),,Comedy,,,,,", "not valid UTF-8 text (byte 0xe9 at column 7)"),
        ("items.csv", 6, b"4,,Cafe (1994),Comedy", "expected 10 comma-separated fields, got 4"),
        ("items.csv", 6, b"1,,Dup (1994),,Comedy,,,,,", "duplicate item id 1 (first on line 2)"),
        ("items.csv", 1, items_head.replace(b"genres", b"genre"), "header lacks column(s) genres"),
        ("interactions.csv", 3, b"1,2,3", "expected 4 comma-separated fields, got 3"),
        ("interactions.csv", 10, b"3,7,4,876000300", "item id 7 is not in items.csv"),
    ]
    for file, line, new, problem in cases:
        src = copy_fixture("ml100k_mm", tmp_path)
        replace_line(src / file, line, new)
        expect_error(src, out, file, line, problem)
        shutil.rmtree(src)


def test_recbole_errors(tmp_path):
    out = tmp_path / "out"
    cases = [
        ("tiny.inter", 1, b"user_id:token\titem_id\trating:float\ttimestamp:float",
         "header field 'item_id' is not 'name:type'"),
        ("tiny.inter", 4, b"1\t4\t4", "expected 4 tab-separated fields, got 3"),
        ("tiny.inter", 2, b"u1\t1\t5\t874965478", "user id must be an integer, got 'u1'"),
        ("tiny.item", 3, b"1\tAgain\t1995\tComedy", "duplicate item id 1 (first on line 2)"),
    ]
    for file, line, new, problem in cases:
        src = copy_fixture("recbole", tmp_path)
        replace_line(src / file, line, new)
        expect_error(src, out, file, line, problem)
        shutil.rmtree(src)


def test_amazon_errors(tmp_path):
    out = tmp_path / "out"
    good = json.loads((FIX / "amazon" / "Tiny_Toys.jsonl").read_text().split("\n")[0])
    review = lambda **kw: json.dumps({**good, **kw}).encode()  # noqa: E731
    cases = [
        ("meta_Tiny_Toys.jsonl", 2, b'{"parent_asin": "B1", "title": "x"', "not valid JSON"),
        ("meta_Tiny_Toys.jsonl", 3, b'["B1"]', "expected a JSON object, got list"),
        ("meta_Tiny_Toys.jsonl", 4, b'{"title": "no id"}', "'parent_asin' must be a non-empty string"),
        ("meta_Tiny_Toys.jsonl", 4, b'{"parent_asin": "B000TRAIN1", "title": "again"}',
         "duplicate parent_asin B000TRAIN1 (first on line 1)"),
        ("meta_Tiny_Toys.jsonl", 2, b'{"parent_asin": "B2", "title": "x", "description": [1, 2]}',
         "'description' must be a list of strings"),
        ("Tiny_Toys.jsonl", 3, review(parent_asin="B999"), "item B999 is not in meta_Tiny_Toys.jsonl"),
        ("Tiny_Toys.jsonl", 5, review(timestamp="yesterday"), "'timestamp' must be a non-negative integer"),
        ("Tiny_Toys.jsonl", 6, review(rating=None), "'rating' must be a number"),
        ("Tiny_Toys.jsonl", 7, review(user_id=42), "'user_id' must be a non-empty string"),
        ("Tiny_Toys.jsonl", 2, b'{"user_id": "A", "parent_asin": "B000\xc3(", "rating": 1, "timestamp": 1}',
         "not valid UTF-8"),
    ]
    for file, line, new, problem in cases:
        src = copy_fixture("amazon", tmp_path)
        replace_line(src / file, line, new)
        expect_error(src, out, file, line, problem)
        shutil.rmtree(src)


def test_missing_files_and_source(tmp_path):
    src = copy_fixture("ml100k", tmp_path)
    (src / "u.data").unlink()
    with pytest.raises(DataError, match="u.data: file is missing"):
        import_dataset(src, tmp_path / "out", fmt="ml100k")
    with pytest.raises(UserError, match="is not a directory"):
        import_dataset(tmp_path / "nowhere", tmp_path / "out")
    with pytest.raises(UserError, match="unknown format 'csv'"):
        import_dataset(FIX / "ml100k", tmp_path / "out", fmt="csv")


# ---------------------------------------------------------------- CLI


def run_cli(*args, cwd=None):
    env = {"MMSRAREC_QUIET": "1", "PATH": "/usr/bin:/bin", "COLUMNS": "60"}
    return subprocess.run([sys.executable, "-m", "mmsrarec_edge.cli", *map(str, args)], capture_output=True, text=True,
                          env=env, cwd=cwd, timeout=120)


def test_cli_import(tmp_path):
    r = run_cli("data", "import", FIX / "ml100k_mm", "--out", tmp_path / "out", "--min-rating", "3")
    assert r.returncode == 0, r.stderr
    stats = json.loads(r.stdout.splitlines()[0])
    assert stats["items"] == 4 and stats["items_with_image"] == 2 and stats["interactions"] == 7

    src = copy_fixture("ml100k", tmp_path)
    replace_line(src / "u.data", 3, b"1\t2")
    r = run_cli("data", "import", src, "--out", tmp_path / "out2", "--format", "ml100k")
    assert r.returncode == 2
    assert "Traceback" not in r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith("error: ") and "u.data, line 3: expected 4 tab-separated fields" in lines[0]
    assert lines[0].endswith("got 2")
    assert not (tmp_path / "out2").exists()


# ---------------------------------------------------------------- the real set


@pytest.mark.realdata
def test_real_ml100k_mm(tmp_path):
    if not (REAL / "items.csv").exists():
        pytest.skip(f"the real ml100k_mm set is not at {REAL} (it cannot be redistributed)")
    ds = import_dataset(REAL, tmp_path / "out")
    st = ds.stats()
    assert (st["users"], st["items"], st["interactions"]) == (943, 1682, 100000)
    with open(REAL / "items.csv", encoding="utf-8", newline="") as f:
        posters = {int(r["item_id"]): r["poster"] for r in csv.DictReader(f) if r["poster"]}
    assert len(posters) == 1624
    assert {i for i, it in ds.items.items() if it.image} == set(posters)
    for i in (1, 50 if 50 in posters else 2, max(posters)):
        assert ds.image_path(i).read_bytes() == (REAL / posters[i]).read_bytes()
    assert load_image(ds.image_path(1)).size[0] > 50
    assert ds.items[1].title == "Toy Story (1995)" and "Directed by John Lasseter" in ds.items[1].description
    assert all(it.description for it in ds.items.values())
    assert not any("Plot Summaries" in it.description for it in ds.items.values())  # IMDb placeholder dropped
    assert ds.stats()["interactions_per_user_min"] == 20


def test_describe_movie():
    from mmsrarec_edge.data.movielens import describe_movie

    assert describe_movie("  A heist\n goes wrong ", ["Crime", "unknown"], "1992", ["Q. T."], ["A", "B", "C", "D"]) == \
        "A heist goes wrong. Genres: Crime. Directed by Q. T. Starring A, B, C."
    placeholder = "It looks like we don't have any Plot Summaries for this title yet.\nBe the first to contribute!"
    assert describe_movie(placeholder, ["Comedy"], "1995") == "A comedy film from 1995."
    assert describe_movie("", ["Adventure"], "") == "An adventure film."
    assert describe_movie("", ["unknown"], "") == ""
