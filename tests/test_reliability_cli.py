"""The README's troubleshooting table, row by row, through the CLI as a user runs it (subprocesses).

Each row of the table is one case here, named by the text the user sees: the command must exit non-zero with exactly
one line on stderr holding that text and no traceback (the warning rows succeed: exit 0, one warning line, the
result on stdout). `test_readme_table_matches_the_cases` keeps the README and this list one to one. The in-process
checks behind these rows (exact messages, atomicity, tampering) live in the stage tests: test_runtime_*,
test_export_*, test_data_*, test_cli_foundation.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import signal
import struct
import subprocess
import sys
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pytest
import signing_support as sig
from runtime_support import shared_tiny_bundle

ROOT = Path(__file__).resolve().parents[1]
FIX = Path(__file__).resolve().parent / "fixtures"
CLI = [sys.executable, "-m", "mmsrarec_edge.cli"]
ENV = {**os.environ, "MMSRAREC_QUIET": "1", "OMP_NUM_THREADS": "1", "COLUMNS": "80"}
MISSING_PROVIDER = "tensorrt"


@dataclass
class Result:
    rc: int
    stdout: str
    stderr: str
    after: dict  # what the case checks on disk afterwards


@dataclass
class Case:
    needle: str  # the README's "you see" text, verbatim
    setup: Callable  # (Work) -> argv after the program name; or a runner (Work) -> Result when `runner` is set
    rc: int = 2
    runner: bool = False
    stdout: str = ""  # with rc 0 (a warning): text the result on stdout holds


class Work:
    """Scratch inputs the cases share: the tiny bundle, copies of it with one defect each, a dataset, models."""

    def __init__(self, root: Path):
        self.root = root
        self.bundle = shared_tiny_bundle()
        self.b = self.bundle.dir

    def dir(self, name: str) -> Path:
        d = self.root / name
        d.mkdir(parents=True, exist_ok=True)
        return d

    def variant(self, name: str, change: Callable[[Path], None]) -> Path:
        d = self.root / "bundles" / name
        shutil.copytree(self.b, d)
        change(d)
        return d

    def dataset(self) -> Path:
        d = self.root / "dataset"
        if not d.exists():
            shutil.copytree(self.bundle.dataset.root, d)
        return d

    def fixture(self, name: str, file: str, line: int, new: bytes) -> Path:
        d = self.root / f"src_{name}_{line}"
        shutil.copytree(FIX / name, d)
        lines = (d / file).read_bytes().split(b"\n")
        lines[line - 1] = new
        (d / file).write_bytes(b"\n".join(lines))
        return d


def relist(bundle: Path, rel: str) -> None:
    """Rewrite the manifest entry of `rel` to match its current bytes (a consistent but broken bundle)."""
    m = json.loads((bundle / "manifest.json").read_text())
    data = (bundle / rel).read_bytes()
    m["files"][rel] = {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
    (bundle / "manifest.json").write_text(json.dumps(m))


def truncate(path: Path, n: int = 1000) -> None:
    path.write_bytes(path.read_bytes()[:n])


def flip(path: Path, at: int = 5000) -> None:
    b = bytearray(path.read_bytes())
    b[at] ^= 0x01
    path.write_bytes(bytes(b))


def wrong_type(bundle: Path) -> None:
    """config.json's recommender.n_rescore as a string, re-hashed so that the bundle verifies."""
    c = json.loads((bundle / "config.json").read_text())
    c["recommender"]["n_rescore"] = str(c["recommender"]["n_rescore"])
    (bundle / "config.json").write_text(json.dumps(c))
    relist(bundle, "config.json")


def set_version(bundle: Path) -> None:
    m = json.loads((bundle / "manifest.json").read_text())
    m["format_version"] = 99
    (bundle / "manifest.json").write_text(json.dumps(m))


def png_header(path: Path, side: int) -> Path:
    """A PNG whose header claims side x side pixels (a decompression bomb needs no more than its header)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(b"\0" * 16)) + chunk(b"IEND", b""))
    return path


def garbage(path: Path, data: bytes = b"not an image") -> Path:
    path.write_bytes(data)
    return path


def corrupt_items(w: Work) -> Path:
    d = w.root / "bad_dataset"
    shutil.copytree(w.dataset(), d)
    (d / "items.parquet").write_bytes(b"PAR1 not really")
    return d


def big_sasrec(w: Work) -> Path:
    """A SASRec large enough (20k items) that its export runs for about a second: time to interrupt it."""
    out = w.root / "sasrec_big"
    if not out.exists():
        import torch

        from mmsrarec_edge.models.sasrec import SASRec, SASRecConfig, SASRecModel

        torch.manual_seed(0)
        SASRecModel(SASRec(20000, SASRecConfig(hidden=128, layers=2, max_len=50)), list(range(1, 20001))).save(out)
        (w.root / "sasrec.toml").write_text('name = "sasrec-only"\ngraphs = ["sasrec.user_encoder"]\n'
                                            '[parity]\ncases = 30\n')  # ~1 s of parity checks: a window to interrupt
    return out


def corrupt_checkpoint(w: Work) -> Path:
    d = w.root / "sasrec_corrupt"
    shutil.copytree(big_sasrec(w), d)
    truncate(d / "model.safetensors", 100)
    return d


def foreign_sasrec(w: Work) -> Path:
    """A SASRec whose recorded dataset fingerprint is not the dataset's (trained on another one)."""
    d = w.root / "sasrec_foreign"
    shutil.copytree(big_sasrec(w), d)
    meta = json.loads((d / "config.json").read_text())
    (d / "config.json").write_text(json.dumps({**meta, "dataset_fingerprint": "0123456789abcdef"}))
    return d


def externalize(bundle: Path, rel: str) -> None:
    """Store graph `rel`'s weights as ONNX external data (`<rel>.data`), as real-size exports do; relist both."""
    import onnx

    path = bundle / rel
    onnx.save_model(onnx.load(str(path)), str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                    location=path.name + ".data", size_threshold=0)
    relist(bundle, rel)
    relist(bundle, rel + ".data")


def _tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@contextlib.contextmanager
def tmpfs(path: Path, size: str):
    """A real tmpfs mounted at `path` (root only): yields None, or why it could not be mounted; unmounted after."""
    mount = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True,
                           text=True)
    if mount.returncode:
        yield f"cannot mount a tmpfs here ({mount.stderr.strip()})"
        return
    try:
        yield None
    finally:
        subprocess.run(["umount", str(path)], capture_output=True)


def vl_checkpoint(w: Work) -> Path:
    """A checkpoint folder of an architecture the toolkit does not take (config.json is all import-model reads)."""
    d = w.dir("blip2")
    (d / "config.json").write_text('{"model_type": "blip-2", "architectures": ["Blip2ForConditionalGeneration"]}')
    return d


def pickled_sasrec_import(w: Work) -> Result:
    """import-model with a SASRec file that needs pickle (RecBole's own checkpoint keeps its Config object)."""
    import argparse

    import torch

    from mmsrarec_edge.models.mllm import save_mllm

    d = w.dir("import_pickle")
    g = w.bundle.graphs
    save_mllm(g.model, g.tokenizer, d / "model")
    torch.save({"state_dict": {}, "config": argparse.Namespace(model="SASRec")}, str(d / "recbole.pth"))
    (d / "kw.csv").write_text("item_id,text_keywords\n" + "".join(f"{i},x\n" for i in w.bundle.dataset.items))
    r = subprocess.run([*CLI, "import-model", "--model", d / "model", "--sasrec", d / "recbole.pth", "--keywords",
                        d / "kw.csv", "--dataset", w.dataset(), "--out", d / "out"], capture_output=True, text=True,
                       timeout=300, env=ENV, cwd=ROOT)
    return Result(r.returncode, r.stdout, r.stderr, {"left": [n.name for n in d.iterdir() if "out" in n.name]})


def train_on_missing_cuda(w: Work) -> Result:
    import torch

    if torch.cuda.is_available():
        return Result(2, "", "", {"skip": "this machine has CUDA"})
    r = subprocess.run([*CLI, "train", "recommender", "--device", "cuda", "--dtype", "bf16", "--dataset", w.dataset(),
                        "--protocol", w.root / "p", "--sasrec", w.root / "s", "--keywords", w.root / "k.parquet",
                        "--out", w.root / "never_trained"], capture_output=True, text=True, timeout=300, env=ENV,
                       cwd=ROOT)
    return Result(r.returncode, r.stdout, r.stderr,
                  {"left": [n.name for n in w.root.iterdir() if "never_trained" in n.name]})


def full_disk_export(w: Work) -> Result:
    """`export` over an existing bundle on a file system with room for one copy only: the new bundle cannot be
    written; the old one must be left exactly as it was (and the temporary directory removed)."""
    sas = big_sasrec(w)
    first = w.dir("fulldisk_first") / "bundle"
    r = subprocess.run([*CLI, "export", "--profile", w.root / "sasrec.toml", "--sasrec", sas, "--out", first,
                        "--threads", "1"], capture_output=True, text=True, env=ENV, cwd=ROOT, timeout=300)
    assert r.returncode == 0, r.stderr
    size = sum(len(b) for b in _tree(first).values())
    disk = w.dir("fulldisk")
    with tmpfs(disk, str(size * 3 // 2 + (64 << 10))) as why_not:
        if why_not:
            return Result(0, "", "", {"skip": why_not})
        shutil.copytree(first, disk / "bundle")
        before = _tree(disk / "bundle")
        r = subprocess.run([*CLI, "export", "--profile", w.root / "sasrec.toml", "--sasrec", sas, "--out",
                            disk / "bundle", "--threads", "1"], capture_output=True, text=True, env=ENV, cwd=ROOT,
                           timeout=300)
        intact = _tree(disk / "bundle") == before
        left = sorted(n for n in os.listdir(disk) if n != "bundle" and not n.endswith(".lock"))
        return Result(r.returncode, r.stdout, r.stderr, {"left": left if intact else ["<the old bundle changed>"]})


def read_only_bundle(w: Work) -> Result:
    """A bundle on read-only media: `recommend` works (nothing is written into a bundle; stamps go to the user's
    cache), `summarize-item --add-to-catalog` is refused with one line and the bundle is unchanged."""
    disk = w.dir("readonly")
    with tmpfs(disk, "64m") as why_not:
        if why_not:
            return Result(0, "", "", {"skip": why_not})
        shutil.copytree(w.b, disk / "bundle")
        if subprocess.run(["mount", "-o", "remount,ro", str(disk)], capture_output=True).returncode:
            return Result(0, "", "", {"skip": "cannot remount the tmpfs read-only"})
        before = _tree(disk / "bundle")
        rec = subprocess.run([*CLI, "recommend", disk / "bundle", "--history", "1,2", "--json"], capture_output=True,
                             text=True, env=ENV, cwd=ROOT, timeout=300)
        r = subprocess.run([*CLI, "summarize-item", disk / "bundle", "--text", "a red lamp", "--add-to-catalog",
                            "--item-id", "9999"], capture_output=True, text=True, env=ENV, cwd=ROOT, timeout=300)
        problems = ([] if rec.returncode == 0 else [f"recommend failed: {rec.stderr.strip()}"]) + (
            [] if _tree(disk / "bundle") == before else ["the bundle changed"])
        return Result(r.returncode, r.stdout, r.stderr, {"left": problems})


def interrupted_export(sig: int):
    """Run `export`, send `sig` once its temporary bundle directory exists, and report what is left on disk."""

    def run(w: Work) -> Result:
        sas = big_sasrec(w)
        for attempt in range(3):  # the export may win the race on a fast machine: then try again
            parent = w.dir(f"interrupt_{sig}_{attempt}")
            p = subprocess.Popen([*CLI, "export", "--profile", w.root / "sasrec.toml", "--sasrec", sas,
                                  "--out", parent / "bundle", "--threads", "1"], stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True, env=ENV, cwd=ROOT,
                                 # as from a terminal: a shell's background job (nohup ... &) starts its children with
                                 # SIGINT ignored, and Python then never raises KeyboardInterrupt
                                 preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
            deadline = time.time() + 120
            while p.poll() is None and time.time() < deadline:
                if any(e.name.startswith(".bundle.") for e in os.scandir(parent)):
                    p.send_signal(sig)
                    break
                time.sleep(0.002)
            out, err = p.communicate(timeout=120)
            if p.returncode != 0:
                break
        return Result(p.returncode, out, err, {"left": sorted(os.listdir(parent))})

    return run


# needle -> how to provoke it. Keep in the README's order (## Troubleshooting).
CASES = [
    # --- data
    Case("dataset directory does not exist", lambda w: ["data", "stats", w.root / "no_dataset"]),
    Case("items.parquet: not a readable Parquet file", lambda w: ["data", "stats", corrupt_items(w)]),
    Case("u.data, line 3: expected 4 tab-separated fields",
         lambda w: ["data", "import", w.fixture("ml100k", "u.data", 3, b"1\t2"), "--out", w.root / "imp1"]),
    Case("u.data, line 4: not valid UTF-8 text (byte 0xff at column 12)",
         lambda w: ["data", "import", w.fixture("ml100k", "u.data", 4, b"2\t3\t2\t87500\xff000"),
                    "--out", w.root / "imp2"]),
    Case("not a protocol directory", lambda w: ["train", "sasrec", w.root / "no_protocol", "--out", w.root / "s"]),
    Case("the 1000-core filter removed every interaction",
         lambda w: ["data", "protocol", w.dataset(), "--kcore", 1000, "--out", w.root / "proto"]),
    Case("the protocol would have 0 validation cases",
         lambda w: ["data", "protocol", w.dataset(), "--history-len", 1000, "--out", w.root / "proto0"]),
    # --- requests
    Case("unknown user id 1000000", lambda w: ["recommend", w.b, "--user", 1000000]),
    Case("unknown item id 999999 in the history", lambda w: ["recommend", w.b, "--history", "1,999999"]),
    Case("unknown candidate item id 999", lambda w: ["recommend", w.b, "--history", "1", "--candidates", "2,999"]),
    Case("the history is empty", lambda w: ["recommend", w.b, "--history", ","]),
    Case("history has 12 items; the model reads the last 8",
         lambda w: ["recommend", w.b, "--history", ",".join(map(str, range(1, 13))), "--top-k", 2], rc=0,
         stdout="Top 2"),
    Case("--top-k 100000 is more than the 8 candidates scored",
         lambda w: ["recommend", w.b, "--history", "1", "--top-k", 100000], rc=0, stdout="Top 8"),
    Case("duplicate item id 1 in the history", lambda w: ["recommend", w.b, "--history", "1,2,1"]),
    Case("duplicate candidate item id 2", lambda w: ["recommend", w.b, "--history", "1", "--candidates", "2,2"]),
    Case("--candidates is empty", lambda w: ["recommend", w.b, "--history", "1", "--candidates", ""]),
    Case("--history must be comma-separated integer item ids", lambda w: ["recommend", w.b, "--history", "1,x"]),
    Case("Invalid value for '--user'", lambda w: ["recommend", w.b, "--user", "abc"]),
    # --- item inputs
    Case("cannot be decoded", lambda w: ["summarize-item", w.b, "--image", garbage(w.root / "bad.png")]),
    Case("does not exist", lambda w: ["summarize-item", w.b, "--image", w.root / "missing.png"]),
    Case("is too large (400000000 pixels", lambda w: ["summarize-item", w.b, "--image",
                                                        png_header(w.root / "huge.png", 20000)]),
    Case("--text is not valid UTF-8 (byte 0xe9 at character 4)",
         lambda w: ["summarize-item", w.b, "--text", os.fsdecode(b"caf\xe9 lamp")]),
    Case("latin1.txt is not valid UTF-8 (byte 0xe9 at character 4)",
         lambda w: ["summarize-item", w.b, "--text-file", garbage(w.root / "latin1.txt", b"caf\xe9 lamp")]),
    Case("the summarizer reads the first 48, the rest is ignored",
         lambda w: ["summarize-item", w.b, "--text", " ".join(["purple nylon kite"] * 100)], rc=0,
         stdout="Item keywords"),
    # --- bundles
    Case("not found (not a directory)", lambda w: ["recommend", w.root / "no_bundle", "--history", "1"]),
    Case("manifest.json: missing", lambda w: ["recommend", w.variant("no_manifest", lambda d: (
        d / "manifest.json").unlink()), "--history", "1"]),
    Case("catalog/items.parquet: missing", lambda w: ["recommend", w.variant("missing_file", lambda d: (
        d / "catalog" / "items.parquet").unlink()), "--history", "1"]),
    Case("recommender/decoder.onnx: size 1000 bytes, manifest says", lambda w: ["recommend", w.variant(
        "truncated", lambda d: truncate(d / "recommender" / "decoder.onnx")), "--history", "1"]),
    Case("onnxruntime cannot load scorer.onnx", lambda w: ["recommend", w.variant("unloadable", lambda d: (
        truncate(d / "recommender" / "scorer.onnx"), relist(d, "recommender/scorer.onnx"))), "--history", "1"]),
    Case("recommender/scorer.onnx.data: missing", lambda w: ["recommend", w.variant("nodata", lambda d: (
        externalize(d, "recommender/scorer.onnx"), (d / "recommender" / "scorer.onnx.data").unlink())),
        "--history", "1"]),
    Case("recommender/scorer.onnx.data: size 1000 bytes, manifest says", lambda w: ["recommend", w.variant(
        "shortdata", lambda d: (externalize(d, "recommender/scorer.onnx"),
                                truncate(d / "recommender" / "scorer.onnx.data"))), "--history", "1"]),
    Case("SHA-256 does not match the manifest", lambda w: ["recommend", w.variant(
        "flipped", lambda d: flip(d / "recommender" / "decoder.onnx")), "--history", "1"]),
    Case("unexpected file, not listed in the manifest", lambda w: ["recommend", w.variant(
        "extra", lambda d: garbage(d / "model.pkl", b"\x80\x04N.")), "--history", "1"]),
    Case("unknown bundle format version 99", lambda w: ["recommend", w.variant("version", set_version),
                                                        "--history", "1"]),
    Case("config.json: recommender.n_rescore must be an integer", lambda w: [
        "recommend", w.variant("wrong_type", wrong_type), "--history", "1"]),
    Case(f"execution provider '{MISSING_PROVIDER}'", lambda w: ["recommend", w.b, "--history", "1", "--provider",
                                                                MISSING_PROVIDER]),
    Case("the bundle has no fp16 variant", lambda w: ["recommend", w.b, "--history", "1", "--precision", "fp16"]),
    # --- signatures, verification, the writer lock (helpers in signing_support.py)
    Case("--verify must be auto or full", lambda w: ["recommend", w.b, "--history", "1", "--verify", "fast"]),
    Case("--no-verify: file contents are not hashed", lambda w: ["recommend", w.b, "--history", "1", "--no-verify"],
         rc=0, stdout="Top"),
    Case("missing.pub does not exist", lambda w: ["recommend", w.b, "--history", "1", "--trust-key",
                                                  w.root / "missing.pub"]),
    Case("not an Ed25519 public key in PEM format", lambda w: ["recommend", w.b, "--history", "1", "--trust-key",
                                                               garbage(w.root / "bad.pub", b"not a key")]),
    Case("manifest.json: the bundle is not signed", lambda w: ["recommend", w.b, "--history", "1", "--trust-key",
                                                               sig.pubkey(w, "k1")]),
    Case("which is not a trusted key", lambda w: ["recommend", sig.signed(w, "untrusted", "k2"), "--history", "1",
                                                  "--trust-key", sig.pubkey(w, "k2-other")]),
    Case("manifest.sig: the signature does not match manifest.json", lambda w: [
        "recommend", sig.tampered_signed(w, "tampered", "k3"), "--history", "1", "--trust-key", sig.pubkey(w, "k3")]),
    Case("the bundle is signed (key", lambda w: ["summarize-item", sig.signed(w, "signed_add", "k4"), "--text",
                                                 "a red kite", "--add-to-catalog", "--item-id", 5000]),
    Case("--sign-key is key", lambda w: ["summarize-item", sig.signed(w, "signed_add2", "k5"), "--text", "a red kite",
                                         "--add-to-catalog", "--item-id", 5001, "--sign-key", sig.privkey(w, "k6")]),
    Case("another writer holds", sig.locked_add(ENV, ROOT), runner=True),
    # --- outputs
    Case("cannot create output directory /proc/mmsrarec", lambda w: ["data", "synth", "--out", "/proc/mmsrarec/x",
                                                                       "--items", 10, "--users", 5]),
    Case("cannot write to /proc", lambda w: ["export", "--profile", "cpu-fp32",
                                             "--out", "/proc/bundle"]),
    Case("exists and is not a directory", lambda w: ["export", "--profile", "cpu-fp32",
                                                     "--out", garbage(w.root / "a_file", b"keep me")]),
    Case("has no manifest.json; refusing to replace it", lambda w: [
        "export", "--profile", "cpu-fp32", "--out", garbage(w.dir("keep") / "notes.txt").parent]),
    Case("is not a keyword store; refusing to replace it", lambda w: [
        "summarize", w.dataset(), "--model", w.root / "no_model", "--out", garbage(w.root / "notes.parquet")]),
    Case("unsupported architecture 'blip-2'", lambda w: [
        "import-model", "--model", vl_checkpoint(w), "--sasrec", w.root / "none.safetensors", "--keywords",
        w.root / "none.csv", "--dataset", w.dataset(), "--out", w.root / "imported"]),
    Case("needs pickle to load, which can run code", pickled_sasrec_import, runner=True),
    Case("--device cuda: PyTorch sees no CUDA device here", train_on_missing_cuda, runner=True),
    Case("cannot load the model in", lambda w: ["export", "--profile", w.root / "sasrec.toml", "--sasrec",
                                                 corrupt_checkpoint(w), "--out", w.root / "never"]),
    Case("is not the dataset the SASRec model was trained on", lambda w: [
        "export", "--profile", w.root / "sasrec.toml", "--sasrec", foreign_sasrec(w), "--dataset", w.dataset(),
        "--out", w.root / "never2"]),
    Case("no space left on the device", full_disk_export, runner=True),
    Case("cannot create the lock file", read_only_bundle, runner=True),
    Case("interrupted", interrupted_export(signal.SIGINT), rc=130, runner=True),
    Case("terminated", interrupted_export(signal.SIGTERM), rc=143, runner=True),
]


def _run(w: Work, case: Case) -> Result:
    if case.runner:
        return case.setup(w)
    args = [str(a) for a in case.setup(w)]
    r = subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=300, env=ENV, cwd=ROOT)
    return Result(r.returncode, r.stdout, r.stderr, {})


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    """Every case, run four at a time (each is mostly a Python start-up)."""
    w = Work(tmp_path_factory.mktemp("reliability"))
    w.dataset()
    big_sasrec(w)  # once, before the two interrupt cases run side by side
    with ThreadPoolExecutor(4) as pool:
        futures = {c.needle: pool.submit(_run, w, c) for c in CASES}
        return {k: f.result() for k, f in futures.items()}


@pytest.mark.parametrize("case", CASES, ids=[c.needle for c in CASES])
def test_bad_input_gives_one_clear_line(results, case):
    if case.needle.startswith("execution provider"):
        import onnxruntime

        if "TensorrtExecutionProvider" in onnxruntime.get_available_providers():
            pytest.skip("TensorRT is available on this machine")
    r = results[case.needle]
    if r.after.get("skip"):
        pytest.skip(r.after["skip"])
    lines = r.stderr.strip().splitlines()
    assert r.rc == case.rc, r.stderr
    assert len(lines) == 1, r.stderr
    assert case.needle in lines[0] and "Traceback" not in r.stderr
    if case.rc == 2:
        assert lines[0].startswith("error: ")
    if case.rc == 0:
        assert lines[0].startswith("warning: ") and case.stdout in r.stdout
    if case.runner:  # an interrupted export leaves neither a bundle nor its temporary directory
        assert r.after["left"] == [], r.after


def test_debug_shows_the_traceback(tmp_path):
    r = subprocess.run([*CLI, "--debug", "recommend", str(tmp_path / "none"), "--history", "1"], capture_output=True,
                       text=True, timeout=120, env=ENV)
    assert r.returncode == 2
    assert "Traceback" in r.stderr and "BundleError" in r.stderr
    assert r.stderr.strip().splitlines()[-1].startswith("error: bundle")


def readme_rows() -> list[str]:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split("## Troubleshooting", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("|") and not line.startswith("|---")][1:]
    return [re.search(r"`([^`]+)`", row.split("|")[2]).group(1) for row in rows]


def test_readme_table_matches_the_cases():
    assert readme_rows() == [c.needle for c in CASES]
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    assert f"`tests/test_reliability_cli.py`: {len(CASES)} rows," in " ".join(text.split())  # the count it quotes
