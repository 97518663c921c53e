"""`mmsrarec-edge serve BUNDLE` (Triton through PyTriton) and `mmsrarec-edge triton-repo BUNDLE --out DIR` (a Triton
model repository for clusters). Neither imports torch; PyTriton is imported only when `serve` runs."""

from __future__ import annotations

import json
from enum import Enum
from pathlib import Path

import typer

from .common import PRECISION_HELP, PROVIDER_HELP, SERVING, THREADS_HELP, Precision, Provider, status, threads, value


class Device(str, Enum):
    gpu = "gpu"
    cpu = "cpu"


def serve(
    bundle: Path = typer.Argument(..., help="Bundle directory (from `mmsrarec-edge export`)."),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to bind (0.0.0.0 for every interface)."),
    http_port: int = typer.Option(8000, "--http-port", help="Triton's HTTP (KServe v2) port."),
    grpc_port: int = typer.Option(8001, "--grpc-port", help="Triton's gRPC port."),
    metrics_port: int = typer.Option(8002, "--metrics-port", help="Triton's Prometheus metrics port."),
    max_batch: int = typer.Option(8, "--max-batch", help="Triton dynamic batching: the largest batch of requests."),
    queue_delay_us: int = typer.Option(2000, "--queue-delay-us",
                                       help="Dynamic batching: longest wait to fill a batch."),
    instances: int = typer.Option(2, "--instances", help="Model instances (threads sharing one Recommender)."),
    threads_: int = typer.Option(None, "--threads", help=THREADS_HELP),
    provider: Provider = typer.Option(None, "--provider", case_sensitive=False, help=PROVIDER_HELP),
    precision: Precision = typer.Option(None, "--precision", case_sensitive=False, help=PRECISION_HELP),
    verify: bool = typer.Option(True, "--verify/--no-verify", help="Hash-check the bundle before serving."),
):
    """Serve `recommend` on NVIDIA Triton (PyTriton): HTTP and gRPC, dynamic batching, until Ctrl-C/SIGTERM."""
    from ..serving.pytriton_server import ServeConfig
    from ..serving.pytriton_server import serve as run

    cfg = ServeConfig(http_port=http_port, grpc_port=grpc_port, metrics_port=metrics_port, host=host,
                      max_batch_size=max_batch, max_queue_delay_us=queue_delay_us, instances=instances,
                      threads=threads(threads_), provider=value(provider), precision=value(precision), verify=verify)

    def ready(endpoints):
        status("serving " + json.dumps(endpoints))

    run(bundle, cfg, on_ready=ready)


def triton_repo(
    bundle: Path = typer.Argument(..., help="Bundle directory (from `mmsrarec-edge export`)."),
    out: Path = typer.Option(..., "--out", help="Model repository directory to write."),
    device: Device = typer.Option(Device.gpu, "--device", case_sensitive=False,
                                  help="gpu (KIND_GPU, TensorRT accelerator on ONNX models) or cpu."),
    instances: int = typer.Option(1, "--instances", help="Instances per model (instance_group count)."),
    max_batch: int = typer.Option(8, "--max-batch", help="max_batch_size of the models with a batch axis."),
    queue_delay_us: int = typer.Option(2000, "--queue-delay-us",
                                       help="Dynamic batching: longest wait to fill a batch."),
    precision: Precision = typer.Option(None, "--precision", case_sensitive=False,
                                        help="Graph variant to ship where a graph has it (default: each graph's "
                                             "default variant)."),
    bls: bool = typer.Option(False, "--bls/--local",
                             help="The Python model runs the graphs through BLS calls to the ONNX models (--bls) "
                                  "or in its own onnxruntime sessions (--local, default: needs no ONNX backend)."),
):
    """Write a standard Triton model repository: the graphs as ONNX (or TensorRT plan) models, and a Python-backend
    `recommend` model composing retrieval, prompt building and shared-prefix scoring."""
    from ..core.outputs import TRITON_REPO, check_output_dir
    from ..serving.triton_repo import RepoConfig, write_model_repository

    check_output_dir(out, TRITON_REPO)
    cfg = RepoConfig(device=device.value, instances=instances, max_batch_size=max_batch,
                     max_queue_delay_us=queue_delay_us, bls=bls, precision=value(precision))
    written = write_model_repository(bundle, out, cfg)
    typer.echo(json.dumps({"repository": str(out), "models": written}, indent=2))


def register(apps) -> None:
    apps["app"].command("serve", rich_help_panel=SERVING)(serve)
    apps["app"].command("triton-repo", rich_help_panel=SERVING)(triton_repo)
