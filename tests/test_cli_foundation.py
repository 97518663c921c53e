"""The foundation's CLI chain: synth -> protocol -> train sasrec -> evaluate, and one-line errors."""

import json
import subprocess
import sys

import pytest

CLI = [sys.executable, "-m", "mmsrarec_edge.cli"]


def run(*args, ok=True):
    r = subprocess.run([*CLI, *map(str, args)], capture_output=True, text=True, timeout=600)
    if ok:
        assert r.returncode == 0, r.stderr
    return r


@pytest.mark.slow
def test_chain(tmp_path):
    run("data", "synth", "--out", tmp_path / "d", "--items", 60, "--users", 150)
    stats = json.loads(run("data", "stats", tmp_path / "d").stdout)
    assert stats["items"] == 60 and stats["users"] == 150
    run("data", "protocol", tmp_path / "d", "--out", tmp_path / "p", "--max-cases-per-user", 3)
    run("train", "sasrec", tmp_path / "p", "--out", tmp_path / "s", "--epochs", 5, "--hidden", 16)
    run("evaluate", tmp_path / "p", "--sasrec", tmp_path / "s", "--out", tmp_path / "r", "--bootstrap", 50)
    rep = json.loads((tmp_path / "r" / "report.json").read_text())
    assert set(rep["results"]) == {"popularity", "SASRec"}
    assert 0.0 <= rep["results"]["SASRec"]["HR@5"]["mean"] <= 1.0
    assert (tmp_path / "r" / "report.png").stat().st_size > 1000
    assert "| SASRec |" in (tmp_path / "r" / "report.md").read_text()


@pytest.mark.parametrize("args, needle", [
    (["data", "stats", "/nonexistent/ds"], "dataset directory does not exist"),
    (["train", "sasrec", "/nonexistent/p", "--out", "/tmp/x"], "not a protocol directory"),
    (["evaluate", "/nonexistent/p", "--out", "/tmp/x"], "not a protocol directory"),
])
def test_errors_are_one_line_without_traceback(args, needle):
    r = run(*args, ok=False)
    assert r.returncode == 2
    assert needle in r.stderr and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_invalid_dataset_row_is_named(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    run("data", "synth", "--out", tmp_path / "d", "--items", 20, "--users", 10)
    t = pq.read_table(tmp_path / "d" / "interactions.parquet").to_pydict()
    t["item_id"][3] = 999_999
    pq.write_table(pa.table(t), tmp_path / "d" / "interactions.parquet")
    r = run("data", "stats", tmp_path / "d", ok=False)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "interactions.parquet, row 3: item_id 999999 is not in items.parquet" in r.stderr.replace("\n", " ")


def test_debug_shows_traceback():
    r = run("--debug", "data", "stats", "/nonexistent/ds", ok=False)
    assert r.returncode == 2 and "Traceback" in r.stderr
