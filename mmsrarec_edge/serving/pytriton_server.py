"""`mmsrarec-edge serve BUNDLE`: the bundle's recommender on NVIDIA Triton Inference Server, through PyTriton.

PyTriton (the `nvidia-pytriton` wheel) ships a tritonserver binary and its Python backend; it starts the server as a
child process and forwards each request (HTTP or gRPC, dynamic batching by Triton) to `infer` below, which runs in this
process: the same torch-free `Recommender.recommend` the CLI's `recommend` calls, so answers are identical.

The Python-backend stub that PyTriton ships links `libpython3.X.so.1.0` dynamically and finds whichever one the loader
finds first (the system's). When that is not the library of the interpreter running PyTriton (a pyenv or conda Python),
the stub runs one patch release's C code against another's standard library and dies with errors like
`'_thread.RLock' object has no attribute '_recursion_count'` (pytriton issue #51). `stub_environment()` puts this
interpreter's own LIBDIR first on LD_LIBRARY_PATH, which the server and the stub inherit.
"""

from __future__ import annotations

import os
import socket
import sys
import sysconfig
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..core.errors import UserError
from . import protocol

INSTALL_HINT = ("install the serving extra in its own environment: `make serve-env` (nvidia-pytriton pins numpy<2, "
                "so it cannot share the training venv), then run `.venv-serve/bin/mmsrarec-edge serve ...`")


def stub_environment(env: dict | None = None) -> dict:
    """`env` (default os.environ) with this interpreter's shared-library folder first on LD_LIBRARY_PATH, so the
    Python-backend stub loads the libpython matching this interpreter's standard library."""
    env = dict(os.environ if env is None else env)
    libdir = sysconfig.get_config_var("LIBDIR")
    if sysconfig.get_config_var("Py_ENABLE_SHARED") and libdir and Path(libdir).is_dir():
        parts = [p for p in env.get("LD_LIBRARY_PATH", "").split(":") if p and p != libdir]
        env["LD_LIBRARY_PATH"] = ":".join([libdir, *parts])
    # the stub finds the environment's packages through the `python` first on PATH (as PyTriton sets it)
    bindir = str(Path(sys.executable).parent)
    env["PATH"] = ":".join([bindir, *[p for p in env.get("PATH", "").split(":") if p and p != bindir]])
    return env


def require_pytriton():
    try:
        import pytriton.triton  # noqa: F401
    except ImportError as exc:
        raise UserError(f"PyTriton is not installed in this environment ({sys.executable}): {exc}",
                        INSTALL_HINT) from exc


@dataclass
class ServeConfig:
    http_port: int = 8000
    grpc_port: int = 8001
    metrics_port: int = 8002
    host: str = "127.0.0.1"
    max_batch_size: int = 8
    max_queue_delay_us: int = 2000
    instances: int = 2
    threads: int | None = None  # onnxruntime intra-op threads per session
    provider: str | None = None
    precision: str | None = None
    verify: bool = True


class RecommendModel:
    """The infer function PyTriton binds: a list of (possibly batched) requests -> one output dict per request.
    Rows of a failing request raise (Triton returns the error to that request's client)."""

    def __init__(self, recommender):
        self.rec = recommender
        self.requests = 0
        self.rows = 0
        self._lock = threading.Lock()

    def __call__(self, requests):
        out = []
        for req in requests:
            rows = protocol.decode_batch({k: np.asarray(v) for k, v in req.data.items()})
            results = [self.rec.recommend(**row) for row in rows]
            out.append(protocol.encode_batch(results))
            with self._lock:
                self.requests += 1
                self.rows += len(rows)
        return out


def triton_tensors():
    from pytriton.model_config import Tensor

    def conv(specs):
        return [Tensor(name=s.name, dtype=s.dtype if s.dtype is not np.bytes_ else bytes, shape=s.shape) for s in specs]

    return conv(protocol.INPUTS), conv(protocol.OUTPUTS)


def check_ports(cfg: ServeConfig) -> None:
    """UserError naming a port that is taken: tritonserver would exit and PyTriton wait for it until its timeout."""
    for flag, port in (("--http-port", cfg.http_port), ("--grpc-port", cfg.grpc_port),
                       ("--metrics-port", cfg.metrics_port)):
        with socket.socket(socket.AF_INET6 if ":" in cfg.host else socket.AF_INET) as s:
            try:
                s.bind((cfg.host, port))
            except OSError as exc:
                raise UserError(f"cannot listen on {cfg.host}:{port} ({flag}): {exc.strerror or exc}",
                                f"choose another {flag}, or stop what is using it") from exc


def build_triton(bundle: Path, cfg: ServeConfig):
    """A PyTriton `Triton` with the bundle's recommender bound as `recommend` (not started). Returns (triton, model)."""
    require_pytriton()
    from pytriton.model_config import DynamicBatcher, ModelConfig
    from pytriton.triton import Triton, TritonConfig

    from ..runtime.recommender import Recommender

    if cfg.max_batch_size < 1 or cfg.instances < 1:
        raise UserError("--max-batch and --instances must be >= 1")
    check_ports(cfg)
    rec = Recommender(bundle, provider=cfg.provider, precision=cfg.precision, threads=cfg.threads, verify=cfg.verify)
    os.environ.update(stub_environment())
    tconf = TritonConfig(http_address=cfg.host, http_port=cfg.http_port, grpc_address=cfg.host,
                         grpc_port=cfg.grpc_port, metrics_address=cfg.host, metrics_port=cfg.metrics_port,
                         exit_timeout_secs=5)
    triton = Triton(config=tconf)
    model = RecommendModel(rec)
    inputs, outputs = triton_tensors()
    # one callable per instance: PyTriton runs each in its own thread; the Recommender is thread-safe and shared
    triton.bind(model_name=protocol.MODEL_NAME, infer_func=[model] * cfg.instances, inputs=inputs, outputs=outputs,
                config=ModelConfig(max_batch_size=cfg.max_batch_size,
                                   batcher=DynamicBatcher(max_queue_delay_microseconds=cfg.max_queue_delay_us)),
                strict=True)
    return triton, model


def serve(bundle: Path, cfg: ServeConfig, on_ready=None) -> None:
    """Start Triton and block until SIGINT/SIGTERM (or the server dies); `on_ready(endpoints)` once it serves."""
    triton, _ = build_triton(bundle, cfg)
    with triton:
        triton.run()
        if on_ready:
            on_ready({"http": f"{cfg.host}:{cfg.http_port}", "grpc": f"{cfg.host}:{cfg.grpc_port}",
                      "metrics": f"{cfg.host}:{cfg.metrics_port}", "model": protocol.MODEL_NAME})
        triton.serve()
