"""The synthetic catalog: determinism by seed, decodable images, ground-truth attributes, sane sequences.

(The synth/stats CLI is covered by test_cli_foundation.py.)
"""

from __future__ import annotations

import numpy as np
import pytest

from mmsrarec_edge.core.imaging import load_image
from mmsrarec_edge.data import load_dataset
from mmsrarec_edge.data.synth import CATEGORIES, COLOURS, MATERIALS, PATTERNS, SIZES, STYLES, SynthConfig, generate

CFG = dict(n_items=24, n_users=30, min_len=5, max_len=9)


def files(root):
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    base = tmp_path_factory.mktemp("synth")
    for name, seed in (("a", 3), ("b", 3), ("c", 4)):
        generate(SynthConfig(seed=seed, **CFG), base / name)
    return base


def test_same_seed_same_bytes(pair):
    a, b = files(pair / "a"), files(pair / "b")
    assert a.keys() == b.keys() and len([k for k in a if k.startswith("images/")]) == 24
    assert a == b  # parquet, dataset.json and every PNG byte-identical


def test_different_seed_differs(pair):
    a, c = load_dataset(pair / "a"), load_dataset(pair / "c")
    assert a.sequences() != c.sequences()
    assert [it.attributes for it in a.items.values()] != [it.attributes for it in c.items.values()]


def test_images_decode_and_attributes(pair):
    ds = load_dataset(pair / "a")
    assert len(ds.items) == 24 and sorted(ds.items) == list(range(1, 25))
    combos = set()
    for it in ds.items.values():
        img = load_image(ds.image_path(it.item_id))
        assert img.size == (64, 64) and img.mode == "RGB"
        arr = np.asarray(img)
        assert arr.std() > 10  # a drawn item, not a blank square
        a = it.attributes
        assert set(a) == {"category", "colour", "pattern", "size", "material", "style"}
        assert a["category"] in CATEGORIES and a["colour"] in COLOURS and a["pattern"] in PATTERNS
        assert a["size"] in SIZES and a["material"] in MATERIALS and a["style"] in STYLES
        assert it.title.endswith(a["category"])
        for key in ("category", "colour", "material", "size"):
            assert a[key] in it.description.lower()
        combos.add((a["category"], a["colour"], a["pattern"], a["size"]))
    assert len(combos) == 24  # each item is a distinct visible combination


def test_sequences(pair):
    ds = load_dataset(pair / "a")
    seqs = ds.sequences_with_time()
    assert sorted(seqs) == list(range(1, 31))
    for items, stamps in seqs.values():
        assert 5 <= len(items) <= 9
        assert len(set(items)) == len(items)  # no repeats within a user
        assert all(t1 > t0 for t0, t1 in zip(stamps, stamps[1:]))

