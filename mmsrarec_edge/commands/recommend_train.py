"""`mmsrarec-edge train recommender`: collaborative retrieval index + multi-task yes/no SFT (MMSRARec stages 2-3).

Defaults live in RecommenderConfig (recommend/pipeline.py) and the configs nested in it (PromptConfig, RetrievalConfig,
TaskConfig, TrainConfig): every option defaults to None ("not given") and overrides its field, after `--config`.
`build_config()` is the config this command trains with, obtainable without training: with no options it equals
`RecommenderConfig()`. The prompt's history length is the protocol's (`data protocol --history-len`).
"""

from __future__ import annotations

import json
from pathlib import Path

import typer

from .common import CONFIG_HELP, TRAIN, config_command, renamed, status, threads


def default_config():
    from ..recommend.pipeline import RecommenderConfig

    return RecommenderConfig()


def build_config(config: Path | None = None, *, retrieval=None, aux=None, init=None, freeze_embeddings=None,
                 neighbours=None, items_per_neighbour=None, rank_hint=None, rank_digits=None,
                 collab_item_keywords=None, crossfit=None, sasrec_folds=None, candidate_image=None, epochs=None,
                 batch_size=None, lr=None, windows_per_user=None, negatives_per_window=None, val_cases=None,
                 lora_r=None, hidden=None, layers=None, max_steps=None, threads=None, seed=None, rescore=None,
                 device=None, dtype=None):
    """The RecommenderConfig `train recommender` trains with: the defaults <- `config`'s [recommender] settings <-
    the options given (None: not given)."""
    from ..core.config import build
    from ..core.errors import UserError

    options = {
        "retrieval_enabled": retrieval, "items_per_neighbour": items_per_neighbour,
        "init": "" if init == "scratch" else init, "freeze_embeddings": freeze_embeddings, "crossfit_folds": crossfit,
        "sasrec_folds": sasrec_folds, "n_rescore": rescore,
        "mllm.hidden_size": hidden, "mllm.intermediate_size": None if hidden is None else 2 * hidden,
        "mllm.num_layers": layers,
        "prompt.rank_hint": rank_hint, "prompt.rank_digits": rank_digits,
        "prompt.collab_item_keywords": collab_item_keywords, "prompt.candidate_image": candidate_image,
        "retrieval.k": neighbours,
        "tasks.windows_per_user": windows_per_user, "tasks.negatives": negatives_per_window, "tasks.aux": aux,
        "train.epochs": epochs, "train.batch_size": batch_size, "train.lr": lr, "train.val_cases": val_cases,
        "train.lora_r": lora_r, "train.max_steps": max_steps, "train.threads": threads,
        "train.device": device, "train.dtype": dtype,
    }
    for key in ("mllm.seed", "retrieval.seed", "tasks.seed", "train.seed"):
        options[key] = seed
    cfg = build(default_config(), config, "recommender", options)
    if cfg.n_rescore < 1:
        raise UserError(f"n_rescore (--rescore) must be >= 1, got {cfg.n_rescore}")
    return cfg


def use_protocol_history(cfg, config: Path | None, protocol_dir: Path) -> None:
    """The prompt shows the protocol's history length: taken from it, or when the config file sets
    prompt.history_len, checked against it (one UserError when they differ)."""
    from ..core.config import read_table
    from ..core.errors import UserError
    from ..data.protocol import load_protocol

    n = load_protocol(protocol_dir).config.history_len
    given = (read_table(config, "recommender").get("prompt") or {}).get("history_len")
    if given is not None and given != n:
        raise UserError(f"{config}: prompt.history_len = {given}, but the protocol {protocol_dir} was built with "
                        f"history length {n}", "drop prompt.history_len (it comes from the protocol), or rebuild "
                                               f"the protocol with `data protocol --history-len {given}`")
    cfg.prompt.history_len = n


def recommender(
    dataset: Path = typer.Option(..., "--dataset", help="Canonical dataset directory."),
    protocol_dir: Path = typer.Option(..., "--protocol", help="Protocol directory (from `data protocol`); the "
                                                              "prompt's history length is its."),
    sasrec: Path = typer.Option(..., "--sasrec", help="SASRec model directory (from `train sasrec`)."),
    keywords: Path = typer.Option(..., "--keywords", help="Keyword store (from `summarize`)."),
    out: Path = typer.Option(..., "--out", "-o", help="Recommender directory to write."),
    retrieval: bool = typer.Option(None, "--retrieval/--no-retrieval",
                                   help="Collaborative keywords of similar users @retrieval_enabled"),
    aux: bool = typer.Option(None, "--aux/--no-aux", help="The auxiliary (multi-task) instructions @tasks.aux"),
    init: str = typer.Option(None, help="minilm (fresh, MiniLM token embeddings), scratch, or a LLaVA checkpoint "
                                        "directory, e.g. the summarizer's @init"),
    freeze_embeddings: bool = typer.Option(None, "--freeze-embeddings/--train-embeddings",
                                           help="Keep the (tied) token embeddings fixed @freeze_embeddings"),
    neighbours: int = typer.Option(None, "--neighbours", help="Similar training users retrieved @retrieval.k"),
    items_per_neighbour: int = typer.Option(None, help="Next items per neighbour; 0 = choose on validation "
                                                       "@items_per_neighbour"),
    rank_hint: bool = typer.Option(None, "--rank-hint/--no-rank-hint",
                                   help="Show the candidate's bucketed SASRec catalog rank in the prompt "
                                        "@prompt.rank_hint"),
    rank_digits: int = typer.Option(None, help="Significant digits of the rank hint @prompt.rank_digits"),
    collab_item_keywords: int = typer.Option(None, help="Keywords shown per collaborative item "
                                                        "@prompt.collab_item_keywords"),
    crossfit: int = typer.Option(None, help="With --rank-hint: SASRec folds giving the training windows' hints; "
                                            "0 = in-sample ranks of the main SASRec @crossfit_folds"),
    sasrec_folds: str = typer.Option(None, help="Reuse cross-fitted folds (another recommender's sasrec_folds/) "
                                                "@sasrec_folds"),
    candidate_image: bool = typer.Option(None, "--candidate-image/--no-candidate-image",
                                         help="Splice the candidate's image tokens into its prompt "
                                              "@prompt.candidate_image"),
    epochs: int = typer.Option(None, help="Epochs; validation picks the best @train.epochs"),
    batch_size: int = typer.Option(None, help="Packed rows per step @train.batch_size"),
    lr: float = typer.Option(None, help="AdamW learning rate @train.lr"),
    windows_per_user: int = typer.Option(None, help="Training windows sampled per training user "
                                                    "@tasks.windows_per_user"),
    negatives_per_window: int = typer.Option(None, "--negatives-per-window",
                                             help="Sampled negative items per positive training window "
                                                  "@tasks.negatives"),
    val_cases: int = typer.Option(None, help="Validation cases scored after each epoch (model selection) "
                                             "@train.val_cases"),
    lora_r: int = typer.Option(None, help="LoRA rank; 0 = full fine-tuning (the tiny default) @train.lora_r"),
    hidden: int = typer.Option(None, help="Hidden size of a fresh decoder; its MLP is twice as wide "
                                          "@mllm.hidden_size"),
    layers: int = typer.Option(None, help="Layers of a fresh decoder @mllm.num_layers"),
    max_steps: int = typer.Option(None, help="Cap on optimizer steps; 0 = none @train.max_steps"),
    threads_: int = typer.Option(None, "--threads", help="torch threads, at most the CPU count @train.threads"),
    device: str = typer.Option(None, "--device", help="cpu or cuda: the model and every batch tensor @train.device"),
    dtype: str = typer.Option(None, "--dtype", help="bf16, fp16 or fp32 (autocast; trainable weights stay fp32; "
                                                    "decoders from 1B up train LoRA with gradient checkpointing) "
                                                    "@train.dtype"),
    seed: int = typer.Option(None, help="Seed of the model, retrieval, tasks and training "
                                        "@mllm.seed,retrieval.seed,tasks.seed,train.seed"),
    rescore: int = typer.Option(None, "--rescore", help="First-stage items the bundle's runtime has the LLM rescore "
                                                        "per request (`recommend --rescore` overrides it) @n_rescore"),
    config: Path = typer.Option(None, "--config", help=CONFIG_HELP + " Tables: prompt, retrieval, tasks, train, "
                                                                     "mllm."),
    k_old: int = typer.Option(None, "--k", hidden=True, help="Old name of --neighbours."),
    negatives_old: int = typer.Option(None, "--negatives", hidden=True, help="Old name of --negatives-per-window."),
):
    """Train the MMSRARec recommender: SASRec + hnswlib retrieval -> prompt -> multi-task yes/no SFT (PyTorch).

    Defaults: RecommenderConfig; `mmsrarec-edge config recommender` prints them."""
    from ..core.outputs import RECOMMENDER, check_output_dir
    from ..core.progress import progress_bar
    from ..recommend.pipeline import run

    check_output_dir(out, RECOMMENDER)  # before training, not after
    neighbours = renamed(neighbours, k_old, "--neighbours", "--k")
    negatives_per_window = renamed(negatives_per_window, negatives_old, "--negatives-per-window", "--negatives")
    cfg = build_config(config, retrieval=retrieval, aux=aux, init=init, freeze_embeddings=freeze_embeddings,
                       neighbours=neighbours, items_per_neighbour=items_per_neighbour, rank_hint=rank_hint,
                       rank_digits=rank_digits, collab_item_keywords=collab_item_keywords, crossfit=crossfit,
                       sasrec_folds=sasrec_folds, candidate_image=candidate_image, epochs=epochs,
                       batch_size=batch_size, lr=lr, windows_per_user=windows_per_user,
                       negatives_per_window=negatives_per_window, val_cases=val_cases, lora_r=lora_r, hidden=hidden,
                       layers=layers, max_steps=max_steps, threads=threads_, seed=seed, rescore=rescore,
                       device=device, dtype=dtype)
    cfg.train.threads = threads(cfg.train.threads)
    from ..models.device import Placement, resolve

    resolve(Placement(cfg.train.device, cfg.train.dtype))  # before any work: no CUDA here is one line
    use_protocol_history(cfg, config, protocol_dir)
    meta = run(dataset, protocol_dir, sasrec, keywords, out, cfg, progress_factory=progress_bar)
    log = meta["training"]
    typer.echo(json.dumps({"best_epoch": log["best_epoch"], "val_NDCG@5": round(log["best_val_NDCG@5"], 4),
                           "train_seconds": log["train_seconds"],
                           "items_per_neighbour": meta["retrieval"]["items_per_neighbour"]}))
    status(f"wrote {out}")


def register(apps) -> None:
    apps["train"].command("recommender", cls=config_command(default_config), rich_help_panel=TRAIN)(recommender)
