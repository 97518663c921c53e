"""The canonical dataset format: save/load round trip and load_dataset's validation errors (file, row, problem)."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from mmsrarec_edge.core.errors import DataError
from mmsrarec_edge.data import Dataset, Item, load_dataset, save_dataset


def make(tmp_path, items=None, inter=None):
    items = items or [Item(1, "Red lamp", "A lamp.", "images/1.png", {"colour": "red"}), Item(2, "Blue vase"),
                      Item(3, "Kite", "Flies.", None, None)]
    ds = Dataset("tiny", {it.item_id: it for it in items}, np.array([5, 5, 6, 5], np.int64),
                 np.array([1, 2, 3, 3], np.int64), np.array([10, 10, 7, 9], np.int64), source="test", meta={"k": 1})
    root = save_dataset(ds, tmp_path / "ds")
    return ds, root


def rewrite(path, **columns):
    """Replace columns of a Parquet file (with whatever types are given) to build malformed datasets."""
    t = pq.read_table(path)
    data = {name: t.column(name).to_pylist() for name in t.column_names}
    data.update(columns)
    data = {k: v for k, v in data.items() if v is not None}
    pq.write_table(pa.table(data), path)


def test_round_trip(tmp_path):
    ds, root = make(tmp_path)
    back = load_dataset(root)
    assert back.items == ds.items and back.name == "tiny" and back.source == "test" and back.meta == {"k": 1}
    assert back.root == root and back.image_path(1) == root / "images/1.png" and back.image_path(2) is None
    assert back.items[2].text == "Blue vase" and back.items[1].text == "Red lamp. A lamp."
    # user 5: t=9 comes before the two t=10 rows, which keep their file order (1 then 2)
    assert back.sequences() == {5: [3, 1, 2], 6: [3]}
    assert back.sequences_with_time()[5] == ([3, 1, 2], [9, 10, 10])
    st = back.stats()
    assert (st["items"], st["users"], st["interactions"], st["items_with_image"],
            st["items_with_description"]) == (3, 2, 4, 1, 2)
    assert json.loads((root / "dataset.json").read_text())["format"] == "mmsrarec-dataset"


def test_integral_float_ids_are_accepted(tmp_path):
    _, root = make(tmp_path)
    rewrite(root / "interactions.parquet", timestamp=[10.0, 10.0, 7.0, 9.0])
    assert load_dataset(root).timestamps.tolist() == [10, 10, 7, 9]


@pytest.mark.parametrize("file, change, row, problem", [
    ("items.parquet", {"item_id": ["a", "b", "c"]}, 0, "column 'item_id' must be an integer, got 'a'"),
    ("items.parquet", {"item_id": [1, 2, 1]}, 2, "duplicate item_id 1"),
    ("items.parquet", {"title": ["Lamp", "  ", "Kite"]}, 1, "item 2 has an empty title"),
    ("items.parquet", {"title": ["Lamp", None, "Kite"]}, 1, "column 'title' must be text, got None"),
    ("items.parquet", {"image": ["/etc/passwd", None, None]}, 0, "must be relative to the dataset directory"),
    ("items.parquet", {"image": [None, "../x.png", None]}, 1, "must be relative to the dataset directory"),
    ("items.parquet", {"attributes": [None, None, "{bad"]}, 2, "column 'attributes' is not valid JSON"),
    ("items.parquet", {"item_id": None}, None, "missing column 'item_id'"),
    ("interactions.parquet", {"item_id": [1, 2, 9, 3]}, 2, "item_id 9 is not in items.parquet"),
    ("interactions.parquet", {"timestamp": [1.0, 2.5, 3.0, 4.0]}, 1, "column 'timestamp' must be an integer, got 2.5"),
    ("interactions.parquet", {"user_id": [5, None, 6, 5]}, 1, "column 'user_id' must be an integer, got None"),
])
def test_validation_errors(tmp_path, file, change, row, problem):
    _, root = make(tmp_path)
    rewrite(root / file, **change)
    with pytest.raises(DataError) as info:
        load_dataset(root)
    err = info.value
    assert err.path == str(root / file) and err.row == row and problem in err.problem
    assert str(err).startswith(f"{root / file}" + (f", row {row}: " if row is not None else ": "))


def test_missing_and_corrupt_files(tmp_path):
    with pytest.raises(DataError, match="dataset directory does not exist"):
        load_dataset(tmp_path / "nope")
    _, root = make(tmp_path)
    (root / "interactions.parquet").write_bytes(b"PAR1 not really")
    with pytest.raises(DataError, match="interactions.parquet: not a readable Parquet file"):
        load_dataset(root)
    (root / "items.parquet").unlink()
    with pytest.raises(DataError, match="items.parquet: file is missing"):
        load_dataset(root)


@pytest.mark.parametrize("text, problem", [
    ("{not json", "not valid JSON"),
    ('{"format": "something-else", "version": 1}', "format is 'something-else'"),
    ('{"format": "mmsrarec-dataset", "version": 99}', "version 99 is newer than this toolkit supports"),
])
def test_dataset_json_errors(tmp_path, text, problem):
    _, root = make(tmp_path)
    (root / "dataset.json").write_text(text)
    with pytest.raises(DataError, match=problem) as info:
        load_dataset(root)
    assert info.value.path == str(root / "dataset.json")
