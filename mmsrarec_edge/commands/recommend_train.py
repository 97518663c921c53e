"""`mmsrarec-edge train recommender`: collaborative retrieval index + multi-task yes/no SFT (MMSRARec stages 2-3)."""

from __future__ import annotations

import json
from pathlib import Path

import typer


def recommender(
    dataset: Path = typer.Option(..., "--dataset", help="Canonical dataset directory."),
    protocol_dir: Path = typer.Option(..., "--protocol", help="Protocol directory (from `data protocol`)."),
    sasrec: Path = typer.Option(..., "--sasrec", help="SASRec model directory (from `train sasrec`)."),
    keywords: Path = typer.Option(..., "--keywords", help="Keyword store (from `summarize`)."),
    out: Path = typer.Option(..., "--out", "-o", help="Recommender directory to write."),
    retrieval: bool = typer.Option(True, "--retrieval/--no-retrieval", help="Collaborative keywords of similar users."),
    aux: bool = typer.Option(True, "--aux/--no-aux", help="The auxiliary (multi-task) instructions."),
    init: str = typer.Option("minilm", help="minilm (fresh, MiniLM token embeddings), scratch, or a LLaVA "
                                            "checkpoint directory (e.g. the summarizer's)."),
    freeze_embeddings: bool = typer.Option(True, "--freeze-embeddings/--train-embeddings",
                                           help="Keep the (tied) token embeddings fixed."),
    k: int = typer.Option(3, help="Similar training users retrieved."),
    items_per_neighbour: int = typer.Option(0, help="Next items per neighbour; 0 = choose on validation."),
    # On by default: without it the tiny default model stayed at chance on validation (AUC 0.51 on synthetic), with
    # it 0.82 (benchmarks/results/recommender/NOTES.md).
    rank_hint: bool = typer.Option(True, "--rank-hint/--no-rank-hint",
                                   help="Show the candidate's bucketed SASRec catalog rank in the prompt."),
    rank_digits: int = typer.Option(2, help="Significant digits of the rank hint."),
    collab_item_keywords: int = typer.Option(6, help="Keywords shown per collaborative item."),
    crossfit: int = typer.Option(0, help="With --rank-hint: SASRec folds giving the training windows' hints "
                                         "(0 = in-sample ranks of the main SASRec, better on validation)."),
    sasrec_folds: str = typer.Option("", help="Reuse cross-fitted folds (another recommender's sasrec_folds/)."),
    candidate_image: bool = typer.Option(False, "--candidate-image/--no-candidate-image",
                                         help="Splice the candidate's image tokens into its prompt."),
    epochs: int = typer.Option(2, help="Epochs (validation picks the best; 2 was best within 3 on both sets)."),
    batch_size: int = typer.Option(32, help="Packed rows per step."), lr: float = typer.Option(3e-3),
    windows_per_user: int = typer.Option(8, help="Training windows sampled per training user."),
    negatives: int = typer.Option(3, help="Sampled negatives per positive window."),
    val_cases: int = typer.Option(300, help="Validation cases scored after each epoch (model selection)."),
    lora_r: int = typer.Option(0, help="LoRA rank; 0 = full fine-tuning (the tiny default)."),
    hidden: int = typer.Option(128, help="Hidden size of a fresh decoder."),
    layers: int = typer.Option(2, help="Layers of a fresh decoder."),
    max_steps: int = typer.Option(0, help="Cap on optimizer steps (0 = none)."),
    threads: int = typer.Option(1, help="torch threads (1 is fastest on a shared 2-core machine)."),
    seed: int = typer.Option(0),
):
    """Train the MMSRARec recommender: SASRec + hnswlib retrieval -> prompt -> multi-task yes/no SFT (PyTorch)."""
    from ..core.progress import progress_bar
    from ..core.prompt import PromptConfig
    from ..core.retrieval import RetrievalConfig
    from ..recommend.pipeline import RecommenderConfig, run
    from ..recommend.tasks import TaskConfig
    from ..recommend.train import TrainConfig

    cfg = RecommenderConfig(
        retrieval_enabled=retrieval, items_per_neighbour=items_per_neighbour, init="" if init == "scratch" else init,
        freeze_embeddings=freeze_embeddings, crossfit_folds=crossfit,
        sasrec_folds=sasrec_folds,
        mllm={"hidden_size": hidden, "num_layers": layers, "intermediate_size": 2 * hidden, "seed": seed},
        prompt=PromptConfig(rank_hint=rank_hint, rank_digits=rank_digits, collab_item_keywords=collab_item_keywords,
                            candidate_image=candidate_image),
        retrieval=RetrievalConfig(k=k, seed=seed),
        tasks=TaskConfig(windows_per_user=windows_per_user, negatives=negatives, aux=aux, seed=seed),
        train=TrainConfig(epochs=epochs, batch_size=batch_size, lr=lr, val_cases=val_cases, lora_r=lora_r,
                          max_steps=max_steps, threads=threads, seed=seed),
    )
    meta = run(dataset, protocol_dir, sasrec, keywords, out, cfg, progress_factory=progress_bar)
    log = meta["training"]
    typer.echo(json.dumps({"best_epoch": log["best_epoch"], "val_NDCG@5": round(log["best_val_NDCG@5"], 4),
                           "train_seconds": log["train_seconds"],
                           "items_per_neighbour": meta["retrieval"]["items_per_neighbour"]}))
    typer.echo(f"wrote {out}")


def register(apps) -> None:
    apps["train"].command("recommender")(recommender)
