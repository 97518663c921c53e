"""`mmsrarec-edge data {synth,import,stats}`."""

from __future__ import annotations

import json
from enum import Enum
from pathlib import Path

import typer

from .common import status, warn


def synth(
    out: Path = typer.Option(Path("work/data/synthetic"), "--out", "-o", help="Dataset directory to write."),
    seed: int = typer.Option(0, help="Random seed: the same seed gives the same dataset."),
    items: int = typer.Option(300, help="Number of items (at most 384 attribute combinations)."),
    users: int = typer.Option(1000, help="Number of users."),
):
    """Generate the synthetic multimodal catalog (the embedded default)."""
    from ..core.io_utils import atomic_dir
    from ..core.outputs import DATASET, check_output_dir
    from ..core.progress import progress_bar
    from ..data.synth import SynthConfig, generate

    check_output_dir(out, DATASET)
    cfg = SynthConfig(seed=seed, n_items=items, n_users=users)
    with atomic_dir(out, marker=DATASET) as tmp, progress_bar("drawing items", min(items, 384)) as adv:
        ds = generate(cfg, tmp, progress=adv)
    typer.echo(json.dumps(ds.stats()))
    status(f"wrote {out}")


class ImportFormat(str, Enum):
    auto = "auto"
    ml100k = "ml100k"
    ml100k_mm = "ml100k_mm"
    recbole = "recbole"
    sequences = "sequences"
    amazon = "amazon"


def import_(
    source: Path = typer.Argument(..., help="Directory holding the source files."),
    out: Path = typer.Option(..., "--out", "-o", help="Dataset directory to write (replaced atomically)."),
    fmt: ImportFormat = typer.Option(ImportFormat.auto, "--format", "-f", help="Source format; auto detects it."),
    images: Path = typer.Option(None, "--images",
                                help="Folder of <item id>.jpg/.png (Amazon: <parent_asin>.jpg/.png)."),
    min_rating: float = typer.Option(None, "--min-rating", help="Drop interactions rated below this."),
):
    """Import MovieLens-100K, ml100k_mm, RecBole atomic files (one interaction or one sequence per row), a
    'user item1 item2 ...' sequence text file or Amazon Reviews 2023 JSONL.

    Auto-detection says what it recognised; files and columns not imported are named in one warning."""
    from ..core.outputs import DATASET, check_output_dir
    from ..core.progress import progress_bar
    from ..data.importers import import_dataset

    check_output_dir(out, DATASET)  # before reading the source: import_dataset's own check comes after it
    ds = import_dataset(source, out, fmt=fmt.value, images=images, min_rating=min_rating, progress=progress_bar,
                        warn=warn, status=status)
    typer.echo(json.dumps(ds.stats()))
    status(f"wrote {out}")


def stats(dataset: Path = typer.Argument(..., help="A canonical dataset directory.")):
    """Print dataset statistics as JSON."""
    from ..data.schema import load_dataset

    typer.echo(json.dumps(load_dataset(dataset).stats(), indent=2))


def register(apps) -> None:
    apps["data"].command("synth")(synth)
    apps["data"].command("import")(import_)
    apps["data"].command("stats")(stats)
