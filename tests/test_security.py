"""No pickle anywhere: a bundle holds only data files of safe types, and the package's code never deserializes code.

The bundle scan checks the files themselves (type by name, then by content: no pickle stream, no zip/torch archive,
each file parses as what its name says), independently of the verifier's own allow-list. The source scan reads the
code tokens of every module (comments and docstrings that say "no pickle" do not count) for pickle-family modules,
torch.load (unless called with weights_only=True, the restricted unpickler), builtin eval/exec, weights_only=False,
allow_pickle=True and trust_remote_code=True.
"""

from __future__ import annotations

import ast
import io
import json
import tokenize
from pathlib import Path

import pytest
from runtime_support import shared_tiny_bundle

ROOT = Path(__file__).resolve().parents[1]
ALLOWED = (".onnx", ".onnx.data", ".json", ".parquet", ".safetensors", ".hnsw", ".bin", ".engine")
PICKLE_MODULES = {"pickle", "cPickle", "_pickle", "dill", "cloudpickle", "joblib", "marshal", "shelve"}
PICKLE_FUNCTIONS = {"read_pickle", "to_pickle"}
UNSAFE_FLAGS = {("weights_only", "False"), ("allow_pickle", "True"), ("trust_remote_code", "True")}


def looks_like_pickle(head: bytes) -> bool:
    """A pickle stream of protocol 2-5 starts with PROTO (0x80) and its version; torch's legacy format is one."""
    return len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5


def looks_like_zip(head: bytes) -> bool:
    """torch.save's default format (and .npz, .pt, .pth, .ckpt) is a zip archive."""
    return head[:4] in (b"PK\x03\x04", b"PK\x05\x06", b"PK\x07\x08")


def check_content(path: Path) -> None:
    """The file parses as what its name says (a safetensors header, say, may start with 0x80: its length)."""
    name = path.name
    raw = path.read_bytes()
    if name.endswith(".json"):
        json.loads(raw.decode("utf-8"))
    elif name.endswith(".parquet"):
        assert raw[:4] == b"PAR1" and raw[-4:] == b"PAR1", f"{path}: not Parquet"
    elif name.endswith(".safetensors"):
        from mmsrarec_edge.core.bundle import read_safetensors

        assert read_safetensors(path), f"{path}: no tensors"
        return  # its first 8 bytes are a little-endian header length: pickle's magic can occur by chance
    elif name.endswith(".onnx"):
        import onnx

        onnx.load_model(str(path), load_external_data=False)
    assert not looks_like_pickle(raw[:2]), f"{path} starts like a pickle stream"
    assert not looks_like_zip(raw[:4]), f"{path} is a zip (torch) archive"


def test_bundle_holds_only_safe_data_files():
    root = shared_tiny_bundle().dir
    files = sorted(p for p in root.rglob("*") if p.is_file())
    assert len(files) > 10
    suffixes = set()
    for path in files:
        assert path.name.endswith(ALLOWED), f"{path.relative_to(root)}: file type not allowed in a bundle"
        suffixes.add(next(s for s in ALLOWED if path.name.endswith(s)))
        check_content(path)
    assert {".onnx", ".json", ".parquet", ".safetensors", ".hnsw"} <= suffixes  # the scan saw every kind it checks


def test_content_checks_catch_pickles_and_archives(tmp_path):
    import pickle  # noqa: S403 - the test writes the very thing the bundle must never hold
    import zipfile

    pkl = tmp_path / "weights.json"
    pkl.write_bytes(pickle.dumps({"a": 1}, protocol=4))
    with pytest.raises((AssertionError, UnicodeDecodeError, json.JSONDecodeError)):
        check_content(pkl)
    assert looks_like_pickle(pickle.dumps([1], protocol=2)) and looks_like_pickle(pickle.dumps([1], protocol=5))
    with zipfile.ZipFile(tmp_path / "model.bin", "w") as z:
        z.writestr("archive/data.pkl", b"\x80\x02N.")
    with pytest.raises(AssertionError, match="zip"):
        check_content(tmp_path / "model.bin")


# ---------------------------------------------------------------- the source


def _weights_only_call(toks, k: int) -> bool:
    """Whether the call whose "(" is toks[k] passes weights_only=True (at its own parenthesis depth)."""
    if k >= len(toks) or toks[k].string != "(":
        return False
    depth = 0
    for j in range(k, len(toks)):
        depth += {"(": 1, ")": -1}.get(toks[j].string, 0)
        if depth == 0:
            return False
        if (depth == 1 and toks[j].string == "weights_only" and j + 2 < len(toks) and toks[j + 1].string == "="
                and toks[j + 2].string == "True"):
            return True
    return False


def unsafe_calls(source: str, filename: str = "<src>") -> list[str]:
    """Unsafe deserialization or code evaluation in `source`, as 'file:line: what', from code tokens only."""
    toks = [t for t in tokenize.generate_tokens(io.StringIO(source).readline)
            if t.type not in (tokenize.COMMENT, tokenize.NL, tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT)]
    found = []
    for k, t in enumerate(toks):
        prev = toks[k - 1].string if k else ""
        nxt = toks[k + 1].string if k + 1 < len(toks) else ""
        what = None
        if t.type == tokenize.NAME and t.string in PICKLE_MODULES | PICKLE_FUNCTIONS:
            what = t.string
        elif (t.type == tokenize.NAME and t.string == "load" and prev == "." and k >= 2
              and toks[k - 2].string == "torch" and not _weights_only_call(toks, k + 1)):
            what = "torch.load"  # torch.load(..., weights_only=True) is the restricted unpickler: allowed
        elif t.type == tokenize.NAME and t.string == "load" and prev == "import" and any(
                x.string == "torch" for x in toks[max(0, k - 3):k]):
            what = "from torch import load"
        elif t.type == tokenize.NAME and t.string in ("eval", "exec") and nxt == "(" and prev not in (".", "def"):
            what = f"{t.string}("
        elif t.type == tokenize.NAME and nxt == "=" and k + 2 < len(toks) and (t.string, toks[k + 2].string) in \
                UNSAFE_FLAGS:
            what = f"{t.string}={toks[k + 2].string}"
        elif t.type == tokenize.STRING:
            try:
                value = ast.literal_eval(t.string)
            except (ValueError, SyntaxError):
                value = None
            if isinstance(value, str) and value in PICKLE_MODULES:  # importlib.import_module("pickle")
                what = f"string {value!r}"
        if what:
            found.append(f"{filename}:{t.start[0]}: {what}")
    return found


def test_scanner_finds_what_it_looks_for():
    bad = ("import pickle\nfrom joblib import load\nx = torch.load(p)\ny = eval('1')\nexec(code)\n"
           "torch.load(p, weights_only=False)\nnp.load(f, allow_pickle=True)\ndf.to_pickle(p)\n"
           "importlib.import_module('dill')\nfrom torch import load\n"
           "m = AutoModel.from_pretrained(p, trust_remote_code=True)\n")
    hits = unsafe_calls(bad)
    assert [h.split(": ", 1)[1] for h in hits] == [
        "pickle", "joblib", "torch.load", "eval(", "exec(", "torch.load", "weights_only=False", "allow_pickle=True",
        "to_pickle", "string 'dill'", "from torch import load", "trust_remote_code=True"]
    clean = ('"""No pickle here: we never call torch.load or eval(."""\n# pickle is banned\nmodel.eval()\n'
             "v = ast.literal_eval(s)\nnp.load(f, allow_pickle=False)\nsafetensors.torch.load_file(p)\n"
             "sd = torch.load(p, map_location='cpu', weights_only=True)\n"
             "def eval(self):\n    pass\n")
    assert unsafe_calls(clean) == []


def test_package_source_has_no_unsafe_deserialization():
    files = sorted([*(ROOT / "mmsrarec_edge").rglob("*.py"), *(ROOT / "benchmarks").rglob("*.py")])
    assert len(files) > 30
    hits = [h for f in files for h in unsafe_calls(f.read_text(encoding="utf-8"), str(f.relative_to(ROOT)))]
    assert hits == []
