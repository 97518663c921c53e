"""Reliability of outputs and inputs, through the CLI as a user runs it (subprocesses, as test_reliability_cli.py).

Outputs: every command that writes a directory refuses, before any work, an `--out` folder that holds an unrelated
file (it replaces only an empty folder or its own kind of output), and the file survives. The inputs of these cases
do not exist: the refusal must come first, so none of them trains, imports or loads anything.
"""

from __future__ import annotations

import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CLI = [sys.executable, "-m", "mmsrarec_edge.cli"]
ENV = {**os.environ, "MMSRAREC_QUIET": "1", "OMP_NUM_THREADS": "1", "COLUMNS": "80"}
REFUSED = "refusing to replace it"

# command -> argv with OUT for the output folder; NONE_* are inputs that do not exist
WRITERS = {
    "data synth": ["data", "synth", "--out", "OUT", "--items", "10", "--users", "5"],
    "data import": ["data", "import", "NONE_SRC", "--out", "OUT"],
    "data protocol": ["data", "protocol", "NONE_DS", "--out", "OUT"],
    "train sasrec": ["train", "sasrec", "NONE_P", "--out", "OUT", "--epochs", "1"],
    "train summarizer": ["train", "summarizer", "NONE_DS", "--out", "OUT", "--steps", "1", "--sft-steps", "1"],
    "train recommender": ["train", "recommender", "--dataset", "NONE_DS", "--protocol", "NONE_P", "--sasrec",
                          "NONE_S", "--keywords", "NONE_K", "--out", "OUT", "--epochs", "1"],
    "export": ["export", "--profile", "cpu-fp32", "--sasrec", "NONE_S", "--out", "OUT"],
    "evaluate": ["evaluate", "NONE_P", "--out", "OUT"],
    "triton-repo": ["triton-repo", "NONE_B", "--out", "OUT"],
    "summarize-catalog": ["summarize-catalog", "NONE_B", "NONE_ITEMS", "--out", "OUT"],
    "bench": ["bench", "NONE_B", "--out", "OUT"],
    # `summarize` writes a keyword store FILE: a folder there, or a file of another kind, is refused
    "summarize (folder)": ["summarize", "NONE_DS", "--model", "NONE_M", "--out", "OUT"],
    "summarize (file)": ["summarize", "NONE_DS", "--model", "NONE_M", "--out", "OUT/notes.txt"],
}


def cli(*args, timeout: int = 300, stdin: bytes | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, *map(str, args)], capture_output=True, timeout=timeout, env=ENV, cwd=ROOT,
                          input=stdin)


@pytest.fixture(scope="module")
def refusals(tmp_path_factory):
    """Each writer run on its own folder holding notes.txt, two at a time: name -> (result, folder)."""
    root = tmp_path_factory.mktemp("outputs")

    def one(name: str):
        folder = root / name.replace(" ", "_").replace("(", "").replace(")", "")
        folder.mkdir()
        (folder / "notes.txt").write_text("keep me")
        argv = [a.replace("OUT", str(folder)).replace("NONE_", str(root / "none_")) for a in WRITERS[name]]
        return cli(*argv), folder

    with ThreadPoolExecutor(2) as pool:
        futures = {name: pool.submit(one, name) for name in WRITERS}
        return {name: f.result() for name, f in futures.items()}


@pytest.mark.parametrize("name", list(WRITERS))
def test_a_folder_with_an_unrelated_file_is_refused_before_any_work(refusals, name):
    r, folder = refusals[name]
    err = r.stderr.decode()
    lines = err.strip().splitlines()
    assert r.returncode == 2, err
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err
    needle = "is a directory" if name == "summarize (folder)" else REFUSED
    assert needle in lines[0] and str(folder) in lines[0], lines[0]
    assert (folder / "notes.txt").read_text() == "keep me"
    assert sorted(os.listdir(folder)) == ["notes.txt"]
    assert not [p for p in os.listdir(folder.parent) if p.startswith(f".{folder.name}")]  # no temp dir left


def test_an_empty_folder_or_its_own_output_is_replaced(tmp_path):
    """The check refuses only unrelated content: an empty folder is written, then written over."""
    out = tmp_path / "d"
    out.mkdir()
    for _ in range(2):
        r = cli("data", "synth", "--out", out, "--items", 10, "--users", 10)
        assert r.returncode == 0, r.stderr.decode()
        assert (out / "dataset.json").is_file()


# ----------------------------------------------------------------------------------------- bundles and requests


@pytest.fixture(scope="module")
def bundle():
    from runtime_support import shared_tiny_bundle

    return shared_tiny_bundle()  # SASRec max_len 8, 40 items, n_rescore 8, summarizer max_text_tokens 48


def edited_config(src: Path, dst: Path, section: str, key: str, value) -> Path:
    """A copy of the bundle with config.json's `section.key` set to `value`, re-hashed so that it verifies."""
    import hashlib
    import json
    import shutil

    shutil.copytree(src, dst)
    config = json.loads((dst / "config.json").read_text())
    config[section][key] = value
    data = json.dumps(config, indent=2).encode()
    (dst / "config.json").write_bytes(data)
    manifest = json.loads((dst / "manifest.json").read_text())
    manifest["files"]["config.json"] = {**manifest["files"]["config.json"], "sha256": hashlib.sha256(data).hexdigest(),
                                        "bytes": len(data)}
    (dst / "manifest.json").write_text(json.dumps(manifest))
    return dst


def one_error(r: subprocess.CompletedProcess) -> str:
    err = r.stderr.decode()
    lines = err.strip().splitlines()
    assert r.returncode == 2 and "Traceback" not in err, err
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


@pytest.mark.parametrize("section, key, value, argv, needle", [
    ("recommender", "n_rescore", "8", ["recommend", "--history", "1"],
     "config.json: recommender.n_rescore must be an integer, got a string '8'"),
    ("sasrec", "max_len", [8], ["recommend", "--history", "1"],
     "config.json: sasrec.max_len must be an integer, got a list"),
    ("limits", "max_candidates", 2.5, ["recommend", "--history", "1"],
     "config.json: limits.max_candidates must be an integer, got a number 2.5"),
    ("summarizer", "max_keywords", None, ["summarize-item", "--text", "a red lamp"],
     "config.json: summarizer.max_keywords must be an integer, got null"),
    ("summarizer", "prompt_spec", {"eos_id": "x"}, ["summarize-item", "--text", "a red lamp"],
     "config.json: summarizer.prompt_spec.eos_id must be an integer, got a string 'x'"),
])
def test_a_config_value_of_the_wrong_type_is_named(bundle, tmp_path, section, key, value, argv, needle):
    b = edited_config(bundle.dir, tmp_path / "b", section, key, value)
    line = one_error(cli(argv[0], b, *argv[1:]))
    assert needle in line, line


def recommend_json(bundle, *args) -> tuple[dict, list[str]]:
    import json

    r = cli("recommend", bundle.dir, *args, "--json")
    assert r.returncode == 0, r.stderr.decode()
    return json.loads(r.stdout), r.stderr.decode().strip().splitlines()


@pytest.mark.parametrize("candidates", [[], ["--candidates", "all"], ["--candidates", "sampled:20"]])
def test_items_of_a_long_history_are_never_recommended_back(bundle, candidates):
    history = list(range(1, 21))  # 20 items; the model reads the last 8
    out, err = recommend_json(bundle, "--history", ",".join(map(str, history)), *candidates, "--top-k", 20)
    scored = {s["item_id"] for s in out["scored"]}
    assert scored and not scored & set(history), sorted(scored & set(history))
    assert out["history"] == history[-8:]
    assert err[0] == ("warning: history has 20 items; the model reads the last 8 (older ones are still never "
                      "recommended back)")


def test_a_top_k_beyond_the_candidates_is_warned(bundle):
    out, err = recommend_json(bundle, "--history", "1,2", "--top-k", 100000)
    n = len(out["items"])
    assert n == len(out["scored"]) and 0 < n < 100000
    message = f"--top-k 100000 is more than the {n} candidates scored: returning {n}"
    assert len(err) == 1 and err[0].startswith(f"warning: {message}") and message in out["warnings"][0]
    # the default --top-k (10) over fewer candidates, or a --top-k they fill: no warning
    for args in (["--candidates", "3,4"], ["--top-k", 2]):
        out, err = recommend_json(bundle, "--history", "1,2", *args)
        assert err == [] and out["warnings"] == []


@pytest.mark.parametrize("value", ["", "  "])
def test_empty_candidates_are_an_error(bundle, value):
    line = one_error(cli("recommend", bundle.dir, "--history", "1", "--candidates", value))
    assert "--candidates is empty" in line


# ----------------------------------------------------------------------------------------- summarize-item's text

TEXT = "Zephyr kite. A purple checked kite made of nylon, sporty."


def summarize_json(bundle, *args, stdin: bytes | None = None) -> tuple[dict, list[str]]:
    import json

    r = cli("summarize-item", bundle.dir, *args, "--json", stdin=stdin)
    assert r.returncode == 0, r.stderr.decode()
    return json.loads(r.stdout), r.stderr.decode().strip().splitlines()


def test_text_from_a_file_or_stdin_is_the_same_text(bundle, tmp_path):
    by_option, err = summarize_json(bundle, "--text", TEXT)
    assert err == [] and by_option["warnings"] == [] and by_option["text_output"]
    (tmp_path / "item.txt").write_text(TEXT + "\n", encoding="utf-8")
    by_file, _ = summarize_json(bundle, "--text-file", tmp_path / "item.txt")
    by_stdin, _ = summarize_json(bundle, "--text", "-", stdin=TEXT.encode())
    assert by_file["text_keywords"] == by_stdin["text_keywords"] == by_option["text_keywords"]
    assert by_file["text_output"] == by_stdin["text_output"] == by_option["text_output"]


def test_a_text_longer_than_the_prompt_is_warned(bundle):
    long = " ".join(["purple nylon kite"] * 100)
    out, err = summarize_json(bundle, "--text", long)
    assert len(err) == 1 and err[0].startswith("warning: the text has ")
    assert "the summarizer reads the first 48, the rest is ignored" in err[0]
    assert out["warnings"] == [err[0].removeprefix("warning: ")]


def test_bad_text_files_are_one_line(bundle, tmp_path):
    (tmp_path / "latin1.txt").write_bytes(b"caf\xe9 lamp")
    line = one_error(cli("summarize-item", bundle.dir, "--text-file", tmp_path / "latin1.txt"))
    assert f"--text-file {tmp_path / 'latin1.txt'} is not valid UTF-8 (byte 0xe9 at character 4)" in line
    line = one_error(cli("summarize-item", bundle.dir, "--text", "-", stdin=b"caf\xe9 lamp"))
    assert "--text - (stdin) is not valid UTF-8 (byte 0xe9 at character 4)" in line
    line = one_error(cli("summarize-item", bundle.dir, "--text-file", tmp_path / "missing.txt"))
    assert "missing.txt does not exist" in line
    line = one_error(cli("summarize-item", bundle.dir, "--text", "x", "--text-file", tmp_path / "latin1.txt"))
    assert "pass one of --text or --text-file" in line
