"""Run the tritonserver binary that the `nvidia-pytriton` wheel ships on a model repository (ours, from
`mmsrarec-edge triton-repo`), the way PyTriton itself prepares it: a backend folder with the Python backend and the
stub built for this interpreter's Python version, the wheel's libraries and this interpreter's libpython on
LD_LIBRARY_PATH (see pytriton_server.stub_environment). That build has only the Python backend, so only the
Python-backend models (in `local` mode) load; ONNX models need NVIDIA's Triton containers.

`python -m mmsrarec_edge.serving.tritonserver REPO --http-port P ...` runs it in the foreground.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path

from ..core.errors import UserError
from .pytriton_server import INSTALL_HINT, stub_environment


def _dist() -> tuple[Path, Path]:
    try:
        import pytriton
    except ImportError as exc:
        raise UserError(f"PyTriton is not installed in this environment ({sys.executable})", INSTALL_HINT) from exc
    root = Path(pytriton.__file__).parent
    return root / "tritonserver", root.parent / "nvidia_pytriton.libs"


def prepare_backends(workdir: Path) -> Path:
    """A backend directory under `workdir` with the Python backend and the stub for this Python version."""
    dist, _ = _dist()
    version = f"{sys.version_info[0]}.{sys.version_info[1]}"
    stub = dist / "python_backend_stubs" / version / "triton_python_backend_stub"
    if not stub.is_file():
        raise UserError(f"PyTriton ships no Python-backend stub for Python {version}", "use Python 3.8 to 3.13")
    backends = Path(workdir) / "backends"
    shutil.copytree(dist / "backends", backends, dirs_exist_ok=True)
    shutil.copy2(stub, backends / "python" / "triton_python_backend_stub")
    return backends


def server_command(repo: Path, workdir: Path, http_port: int, grpc_port: int, metrics_port: int,
                   models: list[str], host: str = "127.0.0.1") -> tuple[list[str], dict]:
    """(argv, env) to start tritonserver on `repo`, loading only `models` (explicit model control)."""
    dist, libs = _dist()
    backends = prepare_backends(workdir)
    env = stub_environment()
    env["LD_LIBRARY_PATH"] = ":".join(p for p in (env.get("LD_LIBRARY_PATH", ""), str(libs)) if p)
    argv = [str(dist / "bin" / "tritonserver"), f"--model-repository={Path(repo).resolve()}",
            f"--backend-directory={backends}", "--model-control-mode=explicit",
            *[f"--load-model={m}" for m in models], f"--http-address={host}", f"--http-port={http_port}",
            f"--grpc-address={host}", f"--grpc-port={grpc_port}", f"--metrics-address={host}",
            f"--metrics-port={metrics_port}", "--exit-timeout-secs=5", "--strict-readiness=true"]
    return argv, env


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description="Run PyTriton's tritonserver on a model repository (Python models only).")
    p.add_argument("repo", type=Path)
    p.add_argument("--model", action="append", default=None, help="model to load (repeatable; default: recommend)")
    p.add_argument("--http-port", type=int, default=8000)
    p.add_argument("--grpc-port", type=int, default=8001)
    p.add_argument("--metrics-port", type=int, default=8002)
    p.add_argument("--workdir", type=Path, default=Path(".tritonserver"))
    a = p.parse_args(argv)
    cmd, env = server_command(a.repo, a.workdir, a.http_port, a.grpc_port, a.metrics_port, a.model or ["recommend"])
    sys.stdout.flush()
    os.execve(cmd[0], cmd, env)  # the server takes this process's place: signals reach it directly


if __name__ == "__main__":
    sys.exit(main())
