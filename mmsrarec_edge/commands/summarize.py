"""`mmsrarec-edge train summarizer` (SFT then GRPO) and `mmsrarec-edge summarize` (keyword store)."""

from __future__ import annotations

import json
import os
from enum import Enum
from pathlib import Path

import typer


class Stage(str, Enum):
    rl = "rl"
    sft = "sft"


def _quiet_openmp() -> None:
    """Before torch loads: idle OpenMP threads sleep instead of spinning, which on shared cores slowed every step
    of this stage by 2-10x (measured: GRPO step 30 s -> 4.5 s under load 6 on 2 cores)."""
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")


def _load_config(path: Path | None, overrides: dict):
    from ..core.errors import UserError
    from ..summarize.config import SummarizerConfig

    base: dict = {}
    if path is not None:
        import tomllib

        try:
            data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
        except FileNotFoundError as exc:
            raise UserError(f"config file {path} does not exist") from exc
        except tomllib.TOMLDecodeError as exc:
            raise UserError(f"config file {path} is not valid TOML: {exc}") from exc
        base = data.get("summarizer", data)
    base.update({k: v for k, v in overrides.items() if v is not None})
    return SummarizerConfig.from_dict(base)


def _row(name: str, d: dict) -> str:
    gold = f" | {d['gold_precision']:.3f} | {d['gold_recall']:.3f}" if "gold_precision" in d else " | - | -"
    return (f"| {name} | {d['total']:.4f} | {d['r_info']:.4f} | {d['r_recon']:.3f} | {d['r_len']:.2f} | "
            f"{d['keywords']:.2f}{gold} |")


def train_summarizer(
    dataset: Path = typer.Argument(..., help="Canonical dataset directory."),
    out: Path = typer.Option(..., "--out", "-o", help="Directory to write (sft/, rl/, reconstructor/, train_log.json)."),
    steps: int = typer.Option(None, "--steps", help="GRPO steps."),
    sft_steps: int = typer.Option(None, "--sft-steps", help="SFT steps."),
    recon_steps: int = typer.Option(None, "--recon-steps", help="Training steps of the reference LM for R_recon."),
    a: float = typer.Option(None, "--a", help="Weight of R_info (cosine of keywords and text)."),
    b: float = typer.Option(None, "--b", help="Weight of R_recon (-perplexity of the text given the keywords)."),
    c: float = typer.Option(None, "--c", help="Weight of R_len (-number of keywords)."),
    base: Path = typer.Option(None, "--base", help="Start from your own local LLaVA checkpoint (Llama/Qwen2 decoder)."),
    sft_only: bool = typer.Option(False, "--sft-only", help="Stop after SFT (writes sft/ only)."),
    targets: str = typer.Option(None, "--targets", help="SFT targets: auto, attributes or tfidf."),
    max_train_items: int = typer.Option(None, "--max-train-items", help="Subsample training items (0 = all)."),
    seed: int = typer.Option(None, "--seed"),
    threads: int = typer.Option(None, "--threads", help="Torch threads."),
    config: Path = typer.Option(None, "--config", help="TOML file of SummarizerConfig fields ([summarizer] table)."),
):
    """Train the item summarizer: SFT warm start on pseudo-keywords, then GRPO on R = a R_info + b R_recon + c R_len."""
    _quiet_openmp()
    from ..data.schema import load_dataset
    from ..summarize.pipeline import train_summarizer as run

    cfg = _load_config(config, {"grpo_steps": steps, "sft_steps": sft_steps, "recon_steps": recon_steps, "a": a,
                                "b": b, "c": c, "targets": targets, "max_train_items": max_train_items, "seed": seed,
                                "threads": threads})
    ds = load_dataset(dataset)
    log = run(ds, out, cfg, base=base, sft_only=sft_only, echo=typer.echo)
    typer.echo("held-out items, greedy decoding (both tasks):")
    typer.echo("| model | R | R_info | R_recon | R_len | keywords | gold P | gold R |\n|---|---|---|---|---|---|---|---|")
    for name in ("targets", "sft", "rl"):
        if name in log["eval"]:
            typer.echo(_row(name, log["eval"][name]["all"]))
    typer.echo(json.dumps({"timings_s": log["timings_s"]}))
    typer.echo(f"wrote {out}")


def summarize(
    dataset: Path = typer.Argument(..., help="Canonical dataset directory."),
    model: Path = typer.Option(..., "--model", "-m", help="A summarizer checkpoint or a `train summarizer` output."),
    out: Path = typer.Option(..., "--out", "-o", help="Keyword store to write (Parquet)."),
    stage: Stage = typer.Option(Stage.rl, "--stage", help="With a training output directory: rl (default) or sft."),
    batch_size: int = typer.Option(32, "--batch-size", min=1),
    rewards: bool = typer.Option(True, "--rewards/--no-rewards", help="Score every item's keywords (R_info, ...)."),
    reconstructor: Path = typer.Option(None, "--reconstructor",
                                       help="Reference LM for R_recon (default: next to the model)."),
):
    """Summarize every item's image and text into keywords (greedy, deterministic) and write the keyword store."""
    _quiet_openmp()
    from ..core.keyword_store import read_keyword_store
    from ..data.schema import load_dataset
    from ..summarize.pipeline import resolve_model_dir, summarize_dataset

    model_dir = resolve_model_dir(model, stage.value)
    ds = load_dataset(dataset)
    summarize_dataset(ds, model_dir, out, batch_size=batch_size, reconstructor=reconstructor, rewards=rewards,
                      echo=typer.echo)
    store = read_keyword_store(out)
    n_img = sum(1 for r in store.values() if r.image_keywords)
    typer.echo(json.dumps({"items": len(store), "with_image_keywords": n_img, "model": str(model_dir)}))
    typer.echo(f"wrote {out}")


def register(apps) -> None:
    apps["train"].command("summarizer")(train_summarizer)
    apps["app"].command("summarize")(summarize)
