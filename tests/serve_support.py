"""Helpers for the Triton serving tests: find the serving interpreter, free loopback ports, and run a server process
that always stops (terminate, then kill) when the test ends.

nvidia-pytriton pins numpy<2, so the serving extra lives in its own environment (`make serve-env` -> .venv-serve);
the tests build bundles with torch in the test venv and run the server and the tritonclient side with that
interpreter: MMSRAREC_SERVE_PYTHON, else ROOT/.venv-serve/bin/python, else the test interpreter itself.
"""

from __future__ import annotations

import functools
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
_PROBE = ("import json, pytriton.triton, tritonclient.grpc, tritonclient.http, mmsrarec_edge; "
          "print(json.dumps(mmsrarec_edge.__file__))")


@functools.lru_cache(maxsize=None)
def serve_python() -> tuple[str | None, str]:
    """(interpreter, why not): the first candidate with PyTriton, tritonclient and this checkout's package."""
    env = os.environ.get("MMSRAREC_SERVE_PYTHON")
    cands = [env] if env else [str(ROOT / ".venv-serve" / "bin" / "python"), sys.executable]
    reasons = []
    for py in cands:
        if not Path(py).exists():
            reasons.append(f"{py} does not exist")
            continue
        r = subprocess.run([py, "-c", _PROBE], capture_output=True, text=True, timeout=120)
        if r.returncode != 0:
            reasons.append(f"{py}: {r.stderr.strip().splitlines()[-1] if r.stderr.strip() else 'probe failed'}")
            continue
        where = Path(json.loads(r.stdout)).resolve()
        if ROOT not in where.parents:
            reasons.append(f"{py} imports mmsrarec_edge from {where}, not this checkout")
            continue
        return py, ""
    return None, "no serving environment (`make serve-env` builds .venv-serve): " + "; ".join(reasons)


def require_serve_python() -> str:
    py, why = serve_python()
    if py is None:
        pytest.skip(why)
    return py


def free_ports(n: int) -> list[int]:
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


class ServerProcess:
    """A server subprocess with its log in a file; `stop()` sends SIGTERM, waits, then kills."""

    def __init__(self, argv: list[str], log: Path, env: dict | None = None):
        self.log_path = Path(log)
        self._log = open(self.log_path, "w")
        self.proc = subprocess.Popen(argv, stdout=self._log, stderr=subprocess.STDOUT,
                                     env={**os.environ, "MMSRAREC_QUIET": "1", **(env or {})}, start_new_session=True)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, timeout: float = 40) -> int:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, 9)  # the server's own session: tritonserver and stubs go too
                self.proc.wait(10)
        self._log.close()
        return self.proc.returncode


def group_members(pgid: int) -> list[str]:
    """Live (not zombie) processes of a process group, as 'pid state name' (from /proc)."""
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue
        name_end = text.rindex(")")
        fields = text[name_end + 2:].split()
        if int(fields[2]) == pgid and fields[0] != "Z":
            out.append(f"{stat.parent.name} {fields[0]} {text[text.index('(') + 1:name_end]}")
    return out


def wait_group_gone(pgid: int, timeout: float = 30) -> list[str]:
    end = time.monotonic() + timeout
    while (left := group_members(pgid)) and time.monotonic() < end:
        time.sleep(0.5)
    return left


def client_answers(py: str, url: str, protocol: str, requests: list[dict], tmp: Path, wait: float = 150) -> list[dict]:
    """Run the tritonclient-based client (serving/client.py) in the serving interpreter on a list of requests."""
    path = Path(tmp) / f"requests-{protocol}-{time.monotonic_ns()}.json"
    path.write_text(json.dumps(requests))
    r = subprocess.run([py, "-m", "mmsrarec_edge.serving.client", "--url", url, "--protocol", protocol,
                        "--requests", str(path), "--wait", str(wait)],
                       capture_output=True, text=True, timeout=wait + 120)
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout)
