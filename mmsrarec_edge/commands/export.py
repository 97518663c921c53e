"""`mmsrarec-edge export` (ONNX bundle with parity gates) and `mmsrarec-edge build-engine` (TensorRT engines)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer


def export(
    profile: Path = typer.Option(..., "--profile", "-p", help="Export profile TOML (see export/*.toml)."),
    out: Path = typer.Option(..., "--out", "-o", help="Bundle directory to write (replaced atomically)."),
    sasrec: Optional[Path] = typer.Option(None, help="SASRec model directory (`train sasrec`)."),
    recommender: Optional[Path] = typer.Option(None, help="Recommender directory (model/, recommender.json, retrieval/)."),
    summarizer: Optional[Path] = typer.Option(None, help="Summarizer directory (a LLaVA checkpoint)."),
    keywords: Optional[Path] = typer.Option(None, help="Keyword store Parquet (`summarize`)."),
    dataset: Optional[Path] = typer.Option(None, help="Canonical dataset: the catalog, and real parity inputs."),
    threads: int = typer.Option(2, help="Torch/ONNX Runtime threads used by export and parity checks."),
):
    """Export ONNX graphs + precision variants, gate each against PyTorch, and write one verified bundle."""
    from ..core.bundle import MANIFEST
    from ..core.io_utils import check_replaceable, ensure_writable_dir

    if threads < 1:
        raise typer.BadParameter("must be >= 1", param_hint="--threads")
    check_replaceable(out, MANIFEST)  # before minutes of export, not after
    ensure_writable_dir(out.parent)

    import torch

    from ..core.progress import progress_bar
    from ..exporter.bundle import export_bundle, parity_summary
    from ..exporter.inputs import load_inputs
    from ..exporter.profile import load_profile

    torch.set_num_threads(threads)
    prof = load_profile(profile)
    inputs = load_inputs(summarizer, recommender, sasrec, keywords, dataset)
    n = sum(len(prof.graph_variants(g)) for g in prof.graphs)
    with progress_bar(f"exporting ({prof.name})", n) as advance:
        manifest = export_bundle(inputs, prof, out, profile_source=str(profile), progress=advance)
    for graph, precision, metrics in parity_summary(manifest):
        figures = ", ".join(f"{k} {v:.2e}" for k, v in metrics.items())
        typer.echo(f"parity {graph} [{precision}]: {figures}  (pass)")
    total = sum(f["bytes"] for f in manifest["files"].values())
    typer.echo(f"wrote {out} ({len(manifest['files'])} files, {total / 1e6:.1f} MB, {manifest['export_seconds']} s)")


def build_engine(
    bundle: Path = typer.Argument(..., help="Bundle directory written by `mmsrarec-edge export`."),
    fp16: Optional[bool] = typer.Option(None, "--fp16/--fp32", help="Engine precision (default: the bundle profile's)."),
    workspace: Optional[int] = typer.Option(None, "--workspace", help="TensorRT workspace in MB (default: profile's)."),
    graph: Optional[list[str]] = typer.Option(None, "--graph", help="Only these graphs (repeatable)."),
):
    """Build TensorRT engines for a bundle's graphs into BUNDLE/engines/ (needs TensorRT on this machine)."""
    from ..core.progress import progress_bar
    from ..exporter.tensorrt import build_bundle_engines

    with progress_bar("building TensorRT engines", len(graph) if graph else None) as advance:
        engines = build_bundle_engines(bundle, fp16, workspace, graph or None, progress=advance)
    for g, e in engines.items():
        typer.echo(f"engine {g}: {e['file']} (TensorRT {e['tensorrt_version']}, {'fp16' if e['fp16'] else 'fp32'})")


def register(apps) -> None:
    apps["app"].command("export")(export)
    apps["app"].command("build-engine")(build_engine)
