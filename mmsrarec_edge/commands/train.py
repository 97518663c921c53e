"""`mmsrarec-edge data protocol` and `mmsrarec-edge train sasrec`.

Defaults live in ProtocolConfig (data/protocol.py) and SASRecConfig/SASRecTrainConfig (models/): an option left out
keeps the dataclass's value (or the `--config` file's), so the CLI and Python train the same model.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import typer

from .common import CONFIG_HELP, DATA, TRAIN, config_command, renamed, status, threads


def protocol(
    dataset: Path = typer.Argument(..., help="Canonical dataset directory."),
    out: Path = typer.Option(..., "--out", "-o", help="Protocol directory to write."),
    seed: int = typer.Option(None, help="Seed of the user split and the negative sampling @seed"),
    kcore: int = typer.Option(None, help="k-core filter on users and items @kcore"),
    history_len: int = typer.Option(None, "--history-len",
                                    help="History length n: targets need at least n items before them @history_len"),
    negatives_per_case: int = typer.Option(None, "--negatives-per-case",
                                           help="Sampled negative candidates per evaluation case @n_negatives"),
    max_cases_per_user: int = typer.Option(None, help="Cap on evaluation windows per validation/test user "
                                                      "@max_cases_per_user"),
    history_old: int = typer.Option(None, "--history", hidden=True, help="Old name of --history-len."),
    negatives_old: int = typer.Option(None, "--negatives", hidden=True, help="Old name of --negatives-per-case."),
):
    """Split users 8:1:1, build evaluation windows and save the candidates (the paper's protocol)."""
    from ..core.config import apply
    from ..core.outputs import PROTOCOL, check_output_dir
    from ..data.protocol import ProtocolConfig, build_protocol, save_protocol
    from ..data.schema import load_dataset

    check_output_dir(out, PROTOCOL)
    history_len = renamed(history_len, history_old, "--history-len", "--history")
    negatives_per_case = renamed(negatives_per_case, negatives_old, "--negatives-per-case", "--negatives")
    cfg = apply(ProtocolConfig(), {"seed": seed, "kcore": kcore, "history_len": history_len,
                                   "n_negatives": negatives_per_case, "max_cases_per_user": max_cases_per_user})
    p = build_protocol(load_dataset(dataset), cfg)
    save_protocol(p, out)
    typer.echo(json.dumps({"train_users": len(p.train_users), "val_users": len(p.val_users),
                           "test_users": len(p.test_users), "val_cases": len(p.val), "test_cases": len(p.test),
                           "items": len(p.items), "history_len": p.config.history_len}))
    status(f"wrote {out}")


@dataclass
class SASRecRun:
    """`train sasrec`'s settings: the model (SASRecConfig, `[model]` in a config file) and its training
    (SASRecTrainConfig, `[train]`)."""

    model: object
    train: object


def default_sasrec() -> SASRecRun:
    from ..models.sasrec import SASRecConfig
    from ..models.sasrec_train import SASRecTrainConfig

    return SASRecRun(SASRecConfig(), SASRecTrainConfig())


def build_config(config: Path | None = None, *, hidden=None, layers=None, heads=None, max_len=None, dropout=None,
                 epochs=None, patience=None, lr=None, batch_size=None, seed=None, threads=None) -> SASRecRun:
    """What `train sasrec` trains with: the dataclass defaults <- `config`'s [sasrec] settings <- the options given
    (None: not given). Without arguments it equals `default_sasrec()`."""
    from ..core.config import build

    return build(default_sasrec(), config, "sasrec", {
        "model.hidden": hidden, "model.layers": layers, "model.heads": heads, "model.max_len": max_len,
        "model.dropout": dropout, "model.seed": seed, "train.epochs": epochs, "train.patience": patience,
        "train.lr": lr, "train.batch_size": batch_size, "train.seed": seed, "train.threads": threads})


def sasrec(
    protocol_dir: Path = typer.Argument(..., help="Protocol directory (from `data protocol`)."),
    out: Path = typer.Option(..., "--out", "-o", help="Model directory to write."),
    hidden: int = typer.Option(None, help="Embedding and hidden size @model.hidden"),
    layers: int = typer.Option(None, help="Transformer blocks @model.layers"),
    heads: int = typer.Option(None, help="Attention heads @model.heads"),
    max_len: int = typer.Option(None, help="Longest history read; older items are dropped @model.max_len"),
    dropout: float = typer.Option(None, help="Dropout rate @model.dropout"),
    epochs: int = typer.Option(None, help="Upper bound; early stopping on validation NDCG@5 usually ends sooner "
                                          "@train.epochs"),
    patience: int = typer.Option(None, help="Epochs without validation improvement before stopping @train.patience"),
    lr: float = typer.Option(None, help="Adam learning rate @train.lr"),
    batch_size: int = typer.Option(None, help="Training sequences per step @train.batch_size"),
    seed: int = typer.Option(None, help="Seed of the weights and the batches @model.seed,train.seed"),
    threads_: int = typer.Option(None, "--threads", help="Torch threads, at most the CPU count (0: torch's choice) "
                                                         "@train.threads"),
    config: Path = typer.Option(None, "--config", help=CONFIG_HELP + " Tables: model, train."),
):
    """Train SASRec on the training users (PyTorch), early-stopped on validation.

    Defaults: SASRecConfig and SASRecTrainConfig; `mmsrarec-edge config sasrec` prints them."""
    from ..core.io_utils import atomic_dir, write_json
    from ..core.outputs import SASREC, check_output_dir
    from ..data.protocol import load_protocol

    check_output_dir(out, SASREC)  # before training, not after
    run = build_config(config, hidden=hidden, layers=layers, heads=heads, max_len=max_len, dropout=dropout,
                       epochs=epochs, patience=patience, lr=lr, batch_size=batch_size, seed=seed, threads=threads_)
    if run.train.threads < 0:
        raise typer.BadParameter("must be >= 0", param_hint="--threads")
    run.train.threads = threads(run.train.threads or None) or 0
    p = load_protocol(protocol_dir)

    from ..core.progress import progress_bar
    from ..models.sasrec_train import train_sasrec

    with progress_bar("training SASRec (epochs)", run.train.epochs) as adv:
        model, log = train_sasrec(p, run.model, run.train, progress=adv)
    with atomic_dir(out, marker=SASREC) as tmp:
        model.save(tmp)
        write_json(tmp / "train_log.json", log)
    typer.echo(f"best epoch {log['best_epoch']} of {log['epochs_run']}, val NDCG@5 {log['best_val_NDCG@5']:.4f}")
    status(f"wrote {out}")


def _protocol_defaults():
    from ..data.protocol import ProtocolConfig

    return ProtocolConfig()


def register(apps) -> None:
    apps["data"].command("protocol", cls=config_command(_protocol_defaults), rich_help_panel=DATA)(protocol)
    apps["train"].command("sasrec", cls=config_command(default_sasrec), rich_help_panel=TRAIN)(sasrec)
