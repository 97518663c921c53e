"""`mmsrarec-edge summarize-catalog`: the exported summarizer over an item table, single-process and on a local Ray
cluster (2 CPUs), in resumable parts. The Ray store equals the single-process one; both equal the runtime
summarizer item by item; a rerun after losing parts redoes only those; other inputs on the same store are refused."""

import json
import shutil
import subprocess
import sys

import pytest
from runtime_support import shared_tiny_bundle

from mmsrarec_edge.core.keyword_store import read_keyword_store

CLI = [sys.executable, "-m", "mmsrarec_edge.cli"]


def run(*args, ok=True, timeout=300):
    r = subprocess.run([*CLI, *map(str, args)], capture_output=True, text=True, timeout=timeout)
    if ok:
        assert r.returncode == 0, r.stderr[-3000:]
    return r


@pytest.fixture(scope="module")
def catalog(tmp_path_factory):
    bundle = shared_tiny_bundle()
    items = bundle.dir.parent / "bundle_parts" / "data" / "items.parquet"
    assert items.is_file()
    out = tmp_path_factory.mktemp("catalog") / "local"
    figures = json.loads(run("summarize-catalog", bundle.dir, items, "--out", out, "--part-size", 8, "--json").stdout)
    return bundle, items, out, figures


def test_single_process_store_equals_the_runtime_summarizer(catalog):
    from mmsrarec_edge.core.bundle import load_manifest
    from mmsrarec_edge.runtime.sessions import SessionConfig
    from mmsrarec_edge.runtime.summarizer import load_item_summarizer

    bundle, items, out, figures = catalog
    assert figures["items"] == 40 and figures["parts"] == 5 and figures["computed_parts"] == 5
    store = read_keyword_store(out / "keywords.parquet")
    assert sorted(store) == sorted(bundle.dataset.items) and len(list((out / "parts").glob("*.parquet"))) == 5
    summ = load_item_summarizer(load_manifest(bundle.dir), SessionConfig.resolve("cpu", None, 1))
    ds = bundle.dataset
    for iid in sorted(ds.items)[::9]:
        s = summ.summarize(ds.image_path(iid), ds.items[iid].text)
        assert (store[iid].image_keywords, store[iid].text_keywords) == (s.image_keywords, s.text_keywords)
        assert store[iid].has_image == (ds.image_path(iid) is not None)


def test_resume_redoes_only_missing_parts_and_refuses_other_inputs(catalog, tmp_path):
    bundle, items, out, _ = catalog
    copy = tmp_path / "store"
    shutil.copytree(out, copy)
    (copy / "keywords.parquet").unlink()
    for i in (1, 3):
        (copy / "parts" / f"part-{i:05d}.parquet").unlink()
    figures = json.loads(run("summarize-catalog", bundle.dir, items, "--out", copy, "--part-size", 8, "--json").stdout)
    assert figures["computed_parts"] == 2 and figures["items"] == 16
    assert read_keyword_store(copy / "keywords.parquet") == read_keyword_store(out / "keywords.parquet")
    r = run("summarize-catalog", bundle.dir, items, "--out", copy, "--part-size", 5, ok=False)
    assert r.returncode == 2 and "part_size" in r.stderr
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("x")
    r = run("summarize-catalog", bundle.dir, items, "--out", tmp_path / "other", ok=False)
    assert r.returncode == 2 and "not empty" in r.stderr


def test_ray_local_cluster_gives_identical_keywords(catalog, tmp_path):
    pytest.importorskip("ray", reason="Ray is not installed (pip install 'mmsrarec-edge[scale]')")
    bundle, items, out, _ = catalog
    figures = json.loads(run("summarize-catalog", bundle.dir, items, "--out", tmp_path / "ray", "--part-size", 8,
                             "--ray", "local", "--workers", 2, "--json", timeout=400).stdout)
    assert figures["mode"] == "ray" and figures["workers"] == 2 and figures["computed_parts"] == 5
    assert read_keyword_store(tmp_path / "ray" / "keywords.parquet") == read_keyword_store(out / "keywords.parquet")


def test_sigterm_keeps_finished_parts_and_a_rerun_completes(catalog, tmp_path):
    """A real interruption: SIGTERM while parts are being written, then the same command again."""
    import signal
    import time

    import pyarrow as pa
    import pyarrow.parquet as pq

    bundle, items, out, _ = catalog
    rows = pq.read_table(items).to_pylist()
    step = max(r["item_id"] for r in rows) + 1
    big = [{**r, "item_id": r["item_id"] + k * step, "image": str((items.parent / r["image"]).resolve())
            if r.get("image") else None} for k in range(10) for r in rows]
    table = tmp_path / "items.parquet"
    pq.write_table(pa.Table.from_pylist(big), table)
    store = tmp_path / "store"
    args = [*CLI, "summarize-catalog", str(bundle.dir), str(table), "--out", str(store), "--part-size", "8", "--json"]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while len(list((store / "parts").glob("part-*.parquet"))) < 3 and time.monotonic() < deadline:
        assert proc.poll() is None, proc.stderr.read()
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    done = len(list((store / "parts").glob("part-*.parquet")))
    assert proc.returncode == 143 and "terminated" in err
    assert 3 <= done < 50 and not (store / "keywords.parquet").exists()
    assert [p.name for p in (store / "parts").iterdir() if p.name.startswith(".")] == []  # no half-written part
    figures = json.loads(run(*args[3:]).stdout)
    assert figures["computed_parts"] == 50 - done and figures["items"] == 400 - 8 * done
    merged, reference = read_keyword_store(store / "keywords.parquet"), read_keyword_store(out / "keywords.parquet")
    assert len(merged) == 400
    for iid, kw in merged.items():  # copies of an item carry its text and image: same keywords
        ref = reference[iid % step]
        assert (kw.image_keywords, kw.text_keywords, kw.has_image) == \
            (ref.image_keywords, ref.text_keywords, ref.has_image)


def test_a_missing_image_is_a_one_line_error_on_both_paths(catalog, tmp_path):
    pytest.importorskip("ray", reason="Ray is not installed (pip install 'mmsrarec-edge[scale]')")
    import pyarrow as pa
    import pyarrow.parquet as pq

    bundle, items, _, _ = catalog
    rows = [{**r, "image": str(items.parent / r["image"]) if r.get("image") else None}
            for r in pq.read_table(items).to_pylist()[:6]]
    rows[4]["image"] = "images/does-not-exist.png"  # relative: next to the table
    table = tmp_path / "items.parquet"
    pq.write_table(pa.Table.from_pylist(rows), table)
    for name, extra in (("local", []), ("ray", ["--ray", "local", "--workers", 1])):
        r = run("summarize-catalog", bundle.dir, table, "--out", tmp_path / name, "--part-size", 2, *extra,
                ok=False, timeout=400)
        assert r.returncode == 2 and "does-not-exist.png" in r.stderr, (name, r.stderr[-2000:])
        # the parts before the bad item are kept for the rerun once the image is fixed
        assert (tmp_path / name / "parts" / "part-00000.parquet").is_file()
        assert not (tmp_path / name / "keywords.parquet").exists()
