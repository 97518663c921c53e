"""`mmsrarec-edge train summarizer` (SFT then GRPO) and `mmsrarec-edge summarize` (keyword store)."""

from __future__ import annotations

import json
import os
from enum import Enum
from pathlib import Path

import typer

from .common import CONFIG_HELP, TRAIN, config_command, renamed, status, threads, warn


class Stage(str, Enum):
    rl = "rl"
    sft = "sft"


def _quiet_openmp() -> None:
    """Before torch loads: idle OpenMP threads sleep instead of spinning, which on shared cores slowed every step
    of this stage severalfold."""
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")


class RewardScale(str, Enum):
    group = "group"
    log_ppl = "log_ppl"
    paper = "paper"


class Targets(str, Enum):
    auto = "auto"
    attributes = "attributes"
    tfidf = "tfidf"


def default_config():
    from ..summarize.config import SummarizerConfig

    return SummarizerConfig()


def build_config(config: Path | None = None, **options):
    """The SummarizerConfig `train summarizer` trains with: the defaults <- `config`'s [summarizer] settings <- the
    options given (SummarizerConfig field names; None: not given). Without arguments it equals SummarizerConfig()."""
    from ..core.config import build

    return build(default_config(), config, "summarizer", options)


def _row(name: str, d: dict) -> str:
    gold = f" | {d['gold_precision']:.3f} | {d['gold_recall']:.3f}" if "gold_precision" in d else " | - | -"
    return (f"| {name} | {d['total']:.4f} | {d['r_info']:.4f} | {d['r_recon']:.3f} | {d['r_len']:.2f} | "
            f"{d['keywords']:.2f}{gold} |")


def train_summarizer(
    dataset: Path = typer.Argument(..., help="Canonical dataset directory."),
    out: Path = typer.Option(..., "--out", "-o",
                             help="Directory to write (sft/, rl/, reconstructor/, train_log.json)."),
    steps: int = typer.Option(None, "--steps", help="GRPO steps @grpo_steps"),
    sft_steps: int = typer.Option(None, "--sft-steps", help="SFT steps @sft_steps"),
    recon_steps: int = typer.Option(None, "--recon-steps", help="Training steps of the reference LM for R_recon "
                                                                "@recon_steps"),
    info_weight: float = typer.Option(None, "--info-weight",
                                      help="Weight of R_info, the cosine of keywords and text @a"),
    recon_weight: float = typer.Option(None, "--recon-weight",
                                       help="Weight of R_recon, -perplexity of the text given the keywords @b"),
    len_weight: float = typer.Option(None, "--len-weight", help="Weight of R_len, -number of keywords @c"),
    reward_scale: RewardScale = typer.Option(None, "--reward-scale",
                                     help="How the reward's parts are put on one scale in GRPO: group (each part "
                                          "standardised within its GRPO group), log_ppl (-log perplexity as "
                                          "R_recon) or paper (the paper's sum as written) @reward_scale"),
    base: Path = typer.Option(None, "--base", help="Start from your own local LLaVA checkpoint (Llama/Qwen2 decoder)."),
    sft_only: bool = typer.Option(False, "--sft-only", help="Stop after SFT (writes sft/ only)."),
    targets: Targets = typer.Option(None, "--targets", help="SFT targets; auto: attributes when every item has them, "
                                                            "else tfidf @targets"),
    max_train_items: int = typer.Option(None, "--max-train-items", help="Subsample training items; 0 = all "
                                                                        "@max_train_items"),
    seed: int = typer.Option(None, "--seed", help="Seed of the item split, the models and the sampling @seed"),
    threads_: int = typer.Option(None, "--threads", help="Torch threads, at most the CPU count @threads"),
    device: str = typer.Option(None, "--device", help="cpu or cuda: the model and every batch tensor @device"),
    dtype: str = typer.Option(None, "--dtype", help="bf16, fp16 or fp32 (autocast; trainable weights stay fp32; "
                                                    "decoders from 1B up train LoRA with gradient checkpointing) "
                                                    "@dtype"),
    config: Path = typer.Option(None, "--config", help=CONFIG_HELP),
    a_old: float = typer.Option(None, "--a", hidden=True, help="Old name of --info-weight."),
    b_old: float = typer.Option(None, "--b", hidden=True, help="Old name of --recon-weight."),
    c_old: float = typer.Option(None, "--c", hidden=True, help="Old name of --len-weight."),
):
    """Train the item summarizer: SFT warm start on pseudo-keywords, then GRPO on the reward
    R = info-weight R_info + recon-weight R_recon + len-weight R_len.

    Defaults: SummarizerConfig; `mmsrarec-edge config summarizer` prints them."""
    _quiet_openmp()
    from ..core.outputs import SUMMARIZER, check_output_dir
    from ..data.schema import load_dataset
    from ..summarize.pipeline import train_summarizer as run

    check_output_dir(out, SUMMARIZER)  # before training, not after
    cfg = build_config(config, grpo_steps=steps, sft_steps=sft_steps, recon_steps=recon_steps,
                       a=renamed(info_weight, a_old, "--info-weight", "--a"),
                       b=renamed(recon_weight, b_old, "--recon-weight", "--b"),
                       c=renamed(len_weight, c_old, "--len-weight", "--c"),
                       reward_scale=reward_scale.value if reward_scale else None,
                       targets=targets.value if targets else None, max_train_items=max_train_items, seed=seed,
                       threads=threads_, device=device, dtype=dtype)
    cfg.threads = threads(cfg.threads)
    from ..models.device import resolve

    resolve(cfg.placement())  # before any work: no CUDA here is one line
    ds = load_dataset(dataset)
    log = run(ds, out, cfg, base=base, sft_only=sft_only, echo=status)
    typer.echo("held-out items, greedy decoding (both tasks):")
    typer.echo("| model | R | R_info | R_recon | R_len | keywords | gold P | gold R |\n"
               "|---|---|---|---|---|---|---|---|")
    for name in ("targets", "sft", "rl"):
        if name in log["eval"]:
            typer.echo(_row(name, log["eval"][name]["all"]))
    typer.echo(json.dumps({"timings_s": log["timings_s"], "reward_scale": cfg.reward_scale,
                           "vocabulary": {k: v["all"] for k, v in log["vocabulary"].items()},
                           "collapse": log.get("collapse")}))
    if log.get("collapse"):
        warn(log["collapse"])
    status(f"wrote {out}")


def summarize(
    dataset: Path = typer.Argument(..., help="Canonical dataset directory."),
    model: Path = typer.Option(..., "--model", "-m", help="A summarizer checkpoint or a `train summarizer` output."),
    out: Path = typer.Option(..., "--out", "-o", help="Keyword store to write (Parquet)."),
    stage: Stage = typer.Option(Stage.rl, "--stage", help="With a training output directory: rl (default) or sft."),
    batch_size: int = typer.Option(32, "--batch-size", min=1, help="Items summarized per batch."),
    rewards: bool = typer.Option(True, "--rewards/--no-rewards", help="Score every item's keywords (R_info, ...)."),
    reconstructor: Path = typer.Option(None, "--reconstructor",
                                       help="Reference LM for R_recon (default: next to the model)."),
):
    """Summarize every item's image and text into keywords (greedy, deterministic) and write the keyword store."""
    _quiet_openmp()
    from ..core.keyword_store import read_keyword_store
    from ..core.outputs import check_keyword_store_output
    from ..data.schema import load_dataset
    from ..summarize.pipeline import resolve_model_dir, summarize_dataset

    check_keyword_store_output(out)  # before summarizing, not after
    model_dir = resolve_model_dir(model, stage.value)
    ds = load_dataset(dataset)
    summarize_dataset(ds, model_dir, out, batch_size=batch_size, reconstructor=reconstructor, rewards=rewards,
                      echo=status)
    store = read_keyword_store(out)
    n_img = sum(1 for r in store.values() if r.image_keywords)
    typer.echo(json.dumps({"items": len(store), "with_image_keywords": n_img, "model": str(model_dir)}))
    status(f"wrote {out}")


def register(apps) -> None:
    apps["train"].command("summarizer", cls=config_command(default_config), rich_help_panel=TRAIN)(train_summarizer)
    apps["app"].command("summarize", rich_help_panel=TRAIN)(summarize)
