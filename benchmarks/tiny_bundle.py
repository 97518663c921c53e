"""The tiny test bundle (tests/runtime_support.py) for benchmarks run without --bundle. Built in a subprocess, so a
benchmark that serves the bundle stays torch-free itself."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
_BUILD = """
import sys
sys.path.insert(0, sys.argv[2])
from pathlib import Path
from runtime_support import build_tiny_bundle, shared_tiny_llava
build_tiny_bundle(Path(sys.argv[1]), shared_tiny_llava())
"""


def build_tiny_bundle(bundle: Path) -> None:
    subprocess.run([sys.executable, "-c", _BUILD, str(bundle), str(ROOT / "tests")], check=True, cwd=ROOT)
