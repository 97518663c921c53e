"""`mmsrarec-edge summarize-catalog BUNDLE ITEMS.parquet --out STORE [--ray ADDRESS] [--workers N]`: summarize a whole
item table with the bundle's exported (torch-free) summarizer, in this process or on a Ray cluster, in resumable
parts. (The `summarize` command is the PyTorch summarizer over a dataset; this one needs only a bundle.)"""

from __future__ import annotations

import json
from pathlib import Path

import typer

from .common import PRECISION_HELP, RUNTIME, Precision, threads, value


def summarize_catalog(
    bundle: Path = typer.Argument(..., help="Bundle directory (from `mmsrarec-edge export`)."),
    items: Path = typer.Argument(..., help="Item table (Parquet: item_id, title, description, image)."),
    out: Path = typer.Option(..., "--out", help="Store directory (parts/, job.json, keywords.parquet); "
                                                 "rerun on it to resume."),
    ray_address: str = typer.Option(None, "--ray", help="Run on Ray: 'local' (a private local cluster) or an "
                                                        "address for ray.init ('auto', 'ray://host:10001')."),
    workers: int = typer.Option(2, "--workers", help="Ray actors, one summarizer each (with --ray)."),
    part_size: int = typer.Option(32, "--part-size", help="Items per part (the unit of work and of resuming)."),
    threads_: int = typer.Option(1, "--threads", help="onnxruntime intra-op threads per summarizer (at most the CPU "
                                                       "count)."),
    precision: Precision = typer.Option(None, "--precision", case_sensitive=False, help=PRECISION_HELP),
    as_json: bool = typer.Option(False, "--json", help="Print the run's figures as JSON."),
):
    """Summarize every item of a table into image/text keywords (a keyword store), resumable, optionally on Ray."""
    from ..core.outputs import CATALOG_STORE, check_output_dir
    from ..core.progress import progress_bar
    from ..scale.catalog_summarize import CatalogJob, read_item_rows, run_local

    check_output_dir(out, CATALOG_STORE)  # a new, empty or its own (resumable) store
    job = CatalogJob(bundle=bundle, items=items, out=out, part_size=part_size, threads=threads(threads_),
                     precision=value(precision))
    total = len(read_item_rows(items))
    with progress_bar("summarizing catalog", total) as advance:
        if ray_address:
            from ..scale.ray_summarize import run_ray

            result = run_ray(job, ray_address, workers, progress=advance)
        else:
            result = run_local(job, progress=advance)
    figures = {**result.to_dict(), "items_per_s": round(result.items_per_s, 3)}
    if as_json:
        typer.echo(json.dumps(figures, indent=2))
    else:
        typer.echo(f"{result.store}: {result.items} items summarized in {result.computed_parts} of {result.parts} "
                   f"parts ({result.mode}, {result.workers} worker(s), {result.seconds:.1f} s)")


def register(apps) -> None:
    apps["app"].command("summarize-catalog", rich_help_panel=RUNTIME)(summarize_catalog)
