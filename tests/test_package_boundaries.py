"""The package's boundaries, checked from outside: one definition of each shared piece, a torch-free runtime (in a
fresh interpreter), and the import-linter contracts (which must pass, and must catch a planted violation)."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "mmsrarec_edge"
FORBIDDEN = ("torch", "transformers", "peft", "optimum", "trl")
TRAINING = tuple(f"mmsrarec_edge.{m}" for m in ("data", "models", "summarize", "recommend", "exporter", "evaluate",
                                                  "bench", "commands"))


def sources() -> dict[str, str]:
    return {p.relative_to(ROOT).as_posix(): p.read_text(encoding="utf-8") for p in sorted(PKG.rglob("*.py"))}


def code_lines(text: str):
    """Lines outside docstrings and comments (good enough for this package's style: docstrings are triple-quoted)."""
    in_doc = False
    for line in text.splitlines():
        stripped = line.strip()
        quotes = stripped.count('"""') + stripped.count("'''")
        if in_doc or (quotes and stripped[:3] in ('"""', "'''")):
            if quotes % 2 == 1:
                in_doc = not in_doc
            continue
        yield line.split("#", 1)[0]


def definitions(pattern: str) -> list[str]:
    rx = re.compile(pattern)
    return [f"{path}:{n}" for path, text in sources().items() for n, line in enumerate(code_lines(text), 1)
            if rx.search(line)]


@pytest.mark.parametrize("pattern, home", [
    (r"^def yes_probability\b", "mmsrarec_edge/core/scores.py"),
    (r"^IMAGE_TOKEN\s*=", "mmsrarec_edge/core/prompt.py"),
    (r"^class CandidateSpec\b", "mmsrarec_edge/core/candidates.py"),
])
def test_one_definition_each(pattern, home):
    found = definitions(pattern)
    assert len(found) == 1 and found[0].startswith(home + ":"), found


def test_candidate_specs_are_parsed_only_in_core_candidates():
    """No second parser of "sampled:N"/"all"/ids: code outside core/candidates.py may build the text, never take it
    apart; and the CLI, the Triton protocol and the Triton client all call the one parser."""
    parsing = re.compile(r"(startswith|partition|split|removeprefix)\(.*sampled|sampled.*\.(split|partition)\(")
    offenders = [f"{path}: {line.strip()}" for path, text in sources().items()
                 if path != "mmsrarec_edge/core/candidates.py"
                 for line in code_lines(text) if parsing.search(line) or "def parse_candidates" in line]
    assert offenders == []
    for path in ("commands/runtime.py", "serving/protocol.py", "serving/client.py", "runtime/first_stage.py"):
        assert "CandidateSpec.parse(" in (PKG / path).read_text(), path


def test_runtime_imports_no_torch_and_no_training_package():
    """A fresh interpreter imports the runtime and the Triton protocol: sys.modules then holds none of torch,
    transformers, peft, optimum, trl, nor a training package of ours."""
    code = textwrap.dedent(f"""
        import sys
        import mmsrarec_edge.runtime, mmsrarec_edge.runtime.recommender, mmsrarec_edge.runtime.summarizer
        import mmsrarec_edge.runtime.first_stage, mmsrarec_edge.serving.protocol, mmsrarec_edge.core.config
        bad = sorted(m for m in sys.modules
                     if m.split(".")[0] in {FORBIDDEN!r} or m.startswith({TRAINING!r}))
        print("\\n".join(bad))
    """)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == ""


def lint_imports() -> str:
    exe = shutil.which("lint-imports") or str(Path(sys.executable).with_name("lint-imports"))
    if not Path(exe).exists():
        pytest.skip("import-linter is not installed (the dev extra)")
    return exe


def test_import_contracts_hold():
    r = subprocess.run([lint_imports()], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-2000:]
    assert "0 broken" in r.stdout


def test_import_linter_catches_a_planted_torch_import(tmp_path):
    """The same contracts on a copy of the package with `import torch` added to a core module: lint-imports fails
    and names the contract."""
    exe = lint_imports()
    shutil.copytree(PKG, tmp_path / "mmsrarec_edge", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    errors = tmp_path / "mmsrarec_edge" / "core" / "errors.py"
    errors.write_text(errors.read_text() + "\nimport torch  # noqa: E402,F401 - planted\n")
    r = subprocess.run([exe], capture_output=True, text=True, timeout=300, cwd=tmp_path,
                       env={"PATH": str(Path(exe).parent), "PYTHONPATH": str(tmp_path), "HOME": str(tmp_path)})
    assert r.returncode != 0, r.stdout[-3000:]
    assert "never import torch" in r.stdout and "BROKEN" in r.stdout
    assert "mmsrarec_edge.core.errors -> torch" in r.stdout
