"""Keyword store: round trip, atomic replacement, clear errors on bad files. Torch-free."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from mmsrarec_edge.core import keyword_store as store_mod
from mmsrarec_edge.core.errors import DataError
from mmsrarec_edge.core.keyword_store import (
    ItemKeywords,
    RewardTerms,
    read_keyword_store,
    read_store_meta,
    write_keyword_store,
)


def _rows():
    return [
        ItemKeywords(7, ["red", "lamp"], ["red", "wood lamp", "vintage"], True,
                     RewardTerms(0.5, -3.25, -2.0, 0.1), RewardTerms(0.625, -2.5, -3.0, 0.3)),
        ItemKeywords(2, [], ["blue kite"], False, None, RewardTerms(0.25, -9.0, -1.0, -0.7)),
        ItemKeywords(5, [], [], False),
    ]


def test_round_trip(tmp_path):
    path = write_keyword_store(tmp_path / "kw.parquet", _rows(), {"model": "m", "reward_weights": {"a": 1.0}})
    got = read_keyword_store(path)
    assert list(got) == [2, 5, 7]  # sorted by item id
    assert got[7] == _rows()[0]
    assert got[2].image_rewards is None and got[2].text_rewards == RewardTerms(0.25, -9.0, -1.0, -0.7)
    assert got[5] == ItemKeywords(5, [], [], False, None, None)
    assert got[7].keywords == ["red", "wood lamp", "vintage", "lamp"]
    meta = read_store_meta(path)
    assert meta["format"] == "mmsrarec-keyword-store" and meta["model"] == "m" and meta["reward_weights"] == {"a": 1.0}
    t = pq.read_table(path)
    assert t.schema.field("image_keywords").type == pa.list_(pa.string())
    assert t.column("text_reward").to_pylist() == [-0.7, None, 0.3]


def test_duplicate_ids_rejected(tmp_path):
    with pytest.raises(ValueError, match="duplicate"):
        write_keyword_store(tmp_path / "kw.parquet", [ItemKeywords(1), ItemKeywords(1)])
    assert not (tmp_path / "kw.parquet").exists()


def test_atomic_replace_keeps_old_store_on_failure(tmp_path, monkeypatch):
    path = write_keyword_store(tmp_path / "kw.parquet", _rows())
    before = path.read_bytes()

    def crash(table, where, **kw):  # a crash half-way through writing the new file
        with open(where, "wb") as f:
            f.write(b"PAR1 partial")
        raise OSError("disk full")

    monkeypatch.setattr(store_mod.pq, "write_table", crash)
    with pytest.raises(OSError, match="disk full"):
        write_keyword_store(path, [ItemKeywords(1, ["x"], ["y"])])
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["kw.parquet"]  # no temporary file left behind
    monkeypatch.undo()
    assert set(read_keyword_store(path)) == {2, 5, 7}


def test_read_errors(tmp_path):
    with pytest.raises(DataError, match="missing"):
        read_keyword_store(tmp_path / "nope.parquet")
    bad = tmp_path / "bad.parquet"
    bad.write_text("not parquet")
    with pytest.raises(DataError, match="not a readable Parquet"):
        read_keyword_store(bad)
    plain = tmp_path / "plain.parquet"
    pq.write_table(pa.table({"item_id": [1]}), plain)
    with pytest.raises(DataError, match="not a keyword store"):
        read_keyword_store(plain)
    newer = tmp_path / "newer.parquet"
    pq.write_table(pa.table({"item_id": [1]}).replace_schema_metadata(
        {b"mmsrarec": json.dumps({"format": "mmsrarec-keyword-store", "version": 99})}), newer)
    with pytest.raises(DataError, match="newer"):
        read_keyword_store(newer)
    dup = tmp_path / "dup.parquet"
    t = pa.table({"item_id": [1, 1], "image_keywords": [["a"], ["b"]], "text_keywords": [["c"], ["d"]]})
    pq.write_table(t.replace_schema_metadata({b"mmsrarec": json.dumps({"format": "mmsrarec-keyword-store",
                                                                        "version": 1})}), dup)
    with pytest.raises(DataError, match="row 1"):
        read_keyword_store(dup)
