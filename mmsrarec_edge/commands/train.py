"""`mmsrarec-edge data protocol` and `mmsrarec-edge train sasrec`."""

from __future__ import annotations

import json
from pathlib import Path

import typer


def protocol(
    dataset: Path = typer.Argument(..., help="Canonical dataset directory."),
    out: Path = typer.Option(..., "--out", "-o", help="Protocol directory to write."),
    seed: int = typer.Option(42, help="Seed of the user split and the negative sampling."),
    kcore: int = typer.Option(5, help="k-core filter on users and items."),
    history: int = typer.Option(5, help="History length n (targets need at least n items before them)."),
    negatives: int = typer.Option(20, help="Sampled negatives per case."),
    max_cases_per_user: int = typer.Option(10, help="Cap on evaluation windows per validation/test user."),
):
    """Split users 8:1:1, build evaluation windows and save the candidates (the paper's protocol)."""
    from ..data.protocol import ProtocolConfig, build_protocol, save_protocol
    from ..data.schema import load_dataset

    cfg = ProtocolConfig(seed=seed, kcore=kcore, history_len=history, n_negatives=negatives,
                         max_cases_per_user=max_cases_per_user)
    p = build_protocol(load_dataset(dataset), cfg)
    save_protocol(p, out)
    typer.echo(json.dumps({"train_users": len(p.train_users), "val_users": len(p.val_users),
                           "test_users": len(p.test_users), "val_cases": len(p.val), "test_cases": len(p.test),
                           "items": len(p.items)}))
    typer.echo(f"wrote {out}")


def sasrec(
    protocol_dir: Path = typer.Argument(..., help="Protocol directory (from `data protocol`)."),
    out: Path = typer.Option(..., "--out", "-o", help="Model directory to write."),
    hidden: int = typer.Option(64), layers: int = typer.Option(2), heads: int = typer.Option(2),
    max_len: int = typer.Option(50), dropout: float = typer.Option(0.2),
    epochs: int = typer.Option(200, help="Upper bound; early stopping on validation NDCG@5 usually ends sooner."),
    patience: int = typer.Option(10), lr: float = typer.Option(1e-3), batch_size: int = typer.Option(128),
    seed: int = typer.Option(0),
):
    """Train SASRec on the training users (PyTorch), early-stopped on validation."""
    from ..core.io_utils import atomic_dir, check_replaceable, ensure_writable_dir, write_json
    from ..data.protocol import load_protocol

    p = load_protocol(protocol_dir)
    check_replaceable(out, "model.safetensors")  # before training, not after
    ensure_writable_dir(out.parent)

    from ..core.progress import progress_bar
    from ..models.sasrec import SASRecConfig  # torch: only once the inputs are known to be good
    from ..models.sasrec_train import SASRecTrainConfig, train_sasrec

    cfg = SASRecConfig(hidden=hidden, layers=layers, heads=heads, max_len=max_len, dropout=dropout, seed=seed)
    tcfg = SASRecTrainConfig(epochs=epochs, batch_size=batch_size, lr=lr, patience=patience, seed=seed)
    with progress_bar("training SASRec (epochs)", epochs) as adv:
        model, log = train_sasrec(p, cfg, tcfg, progress=adv)
    with atomic_dir(out, marker="model.safetensors") as tmp:
        model.save(tmp)
        write_json(tmp / "train_log.json", log)
    typer.echo(f"best epoch {log['best_epoch']} of {log['epochs_run']}, val NDCG@5 {log['best_val_NDCG@5']:.4f}")
    typer.echo(f"wrote {out}")


def register(apps) -> None:
    apps["data"].command("protocol")(protocol)
    apps["train"].command("sasrec")(sasrec)
