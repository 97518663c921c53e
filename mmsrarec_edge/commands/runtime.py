"""`mmsrarec-edge recommend` and `mmsrarec-edge summarize-item`: the torch-free runtime on an exported bundle.

Only the runtime package is imported (lazily, inside the commands), never torch or transformers: these commands work on
a slim install (`pip install 'mmsrarec-edge[cpu]'`).
"""

from __future__ import annotations

import json
from pathlib import Path

import typer

from .common import PRECISION_HELP, PROVIDER_HELP, RUNTIME, THREADS_HELP, Precision, Provider, threads, value, warn

VERIFY_HELP = "Check every file's SHA-256 against the manifest (--no-verify: sizes and file types only, faster)."


def _console():
    """A console on stdout: the table is the result."""
    from rich.console import Console

    return Console()


def recommend(
    bundle: Path = typer.Argument(..., help="Bundle directory (from `mmsrarec-edge export`)."),
    user: int = typer.Option(None, "--user", help="A user id known to the bundle (its training users)."),
    history: str = typer.Option(None, "--history", help="Ad-hoc history: comma-separated item ids, oldest first."),
    candidates: str = typer.Option(None, "--candidates",
                                   help="ID,ID,... | sampled:N (random non-interacted items) | all. Default: every "
                                        "catalog item ranked by the first stage, the top --rescore rescored by the "
                                        "LLM."),
    top_k: int = typer.Option(10, "--top-k", "-k", help="How many recommendations to return."),
    rescore: int = typer.Option(None, "--rescore",
                                help="How many first-stage items the LLM rescores (default: the bundle's, set by "
                                     "`train recommender --rescore`)."),
    seed: int = typer.Option(0, "--seed", help="Seed of sampled:N candidates."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
    provider: Provider = typer.Option(None, "--provider", case_sensitive=False, help=PROVIDER_HELP),
    precision: Precision = typer.Option(None, "--precision", case_sensitive=False, help=PRECISION_HELP),
    threads_: int = typer.Option(None, "--threads", help=THREADS_HELP),
    verify: bool = typer.Option(True, "--verify/--no-verify", help=VERIFY_HELP),
):
    """Recommend items for a known user or an ad-hoc history, with scores and explanation keywords."""
    from ..core.candidates import CandidateSpec, parse_item_ids
    from ..core.errors import UserError
    from ..runtime.recommender import Recommender

    if (user is None) == (history is None):
        raise UserError("pass exactly one of --user ID or --history ID,ID,...")
    hist = parse_item_ids(history, "--history") if history is not None else None
    spec = CandidateSpec.parse(candidates, "--candidates")
    rec = Recommender(bundle, provider=value(provider), precision=value(precision), threads=threads(threads_),
                      verify=verify)
    result = rec.recommend(user=user, history=hist, candidates=spec, top_k=top_k, n_rescore=rescore, seed=seed)
    for message in result.warnings:
        warn(message)
    if as_json:
        typer.echo(json.dumps(result.to_dict(), indent=2))
        return
    from rich.table import Table

    who = f"user {user}" if user is not None else "ad-hoc history"
    variant = result.variants.get("recommender.decoder", "?")
    table = Table(title=f"Top {len(result.items)} for {who} ({result.provider} {variant}, {result.candidate_mode}, "
                        f"{len(result.scored)} scored by the LLM)")
    for col, kw in (("#", {"justify": "right"}), ("item", {"justify": "right"}), ("title", {}),
                    ("score", {"justify": "right"}), ("why (keywords)", {})):
        table.add_column(col, **kw)
    for it in result.items:
        table.add_row(str(it.rank), str(it.item_id), it.title, f"{it.score:.4f}", ", ".join(it.explanation))
    _console().print(table)


def summarize_item(
    bundle: Path = typer.Argument(..., help="Bundle directory (from `mmsrarec-edge export`)."),
    image: Path = typer.Option(None, "--image", help="The item's image (PNG/JPEG)."),
    text: str = typer.Option(None, "--text", help="The item's text (title and description)."),
    add_to_catalog: bool = typer.Option(False, "--add-to-catalog", help="Add the item to the bundle's catalog."),
    item_id: int = typer.Option(None, "--item-id", help="Id of the new item (with --add-to-catalog)."),
    title: str = typer.Option(None, "--title", help="Title of the new item (default: the text's first 60 chars)."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
    provider: Provider = typer.Option(None, "--provider", case_sensitive=False, help=PROVIDER_HELP),
    precision: Precision = typer.Option(None, "--precision", case_sensitive=False, help=PRECISION_HELP),
    threads_: int = typer.Option(None, "--threads", help=THREADS_HELP),
):
    """Summarize a new (cold-start) item into image and text keywords with the bundle's summarizer."""
    from ..core.bundle import load_manifest
    from ..core.errors import UserError
    from ..runtime.sessions import SessionConfig
    from ..runtime.summarizer import load_item_summarizer
    from ..runtime.tokenizer import require_utf8

    text = None if text is None else require_utf8(text, "--text")
    title = None if title is None else require_utf8(title, "--title")
    if image is None and not (text and text.strip()):
        raise UserError("nothing to summarize", "pass --image PATH and/or --text \"...\"")
    if add_to_catalog and item_id is None:
        raise UserError("--add-to-catalog needs --item-id", "choose an id not yet in the catalog")
    if not add_to_catalog and (item_id is not None or title is not None):
        raise UserError("--item-id and --title only apply with --add-to-catalog")
    cfg = SessionConfig.resolve(value(provider), value(precision), threads(threads_))
    manifest = load_manifest(bundle, verify=True)
    summary = load_item_summarizer(manifest, cfg).summarize(image, text)
    out = {"image": str(image) if image is not None else None, **summary.to_dict()}
    if add_to_catalog:
        from ..runtime.cold_start import add_summarized_item

        item = add_summarized_item(manifest, cfg, item_id, title, text or "", summary, image)
        out["added"] = item.to_dict()
    if as_json:
        typer.echo(json.dumps(out, indent=2))
        return
    from rich.table import Table

    table = Table(title="Item keywords" + (f" (added as item {item_id})" if add_to_catalog else ""))
    table.add_column("modality")
    table.add_column("keywords")
    table.add_column("raw output", style="dim")
    table.add_row("image", ", ".join(summary.image_keywords) or "-", summary.image_output if image is not None else "")
    table.add_row("text", ", ".join(summary.text_keywords) or "-", summary.text_output)
    _console().print(table)


def register(apps) -> None:
    apps["app"].command("recommend", rich_help_panel=RUNTIME)(recommend)
    apps["app"].command("summarize-item", rich_help_panel=RUNTIME)(summarize_item)
