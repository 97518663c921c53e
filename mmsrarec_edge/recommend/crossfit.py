"""Cross-fitted SASRec models for the rank hint's training windows (PyTorch).

SASRec ranks its own training users' next items far better than unseen users' (it has seen them), so a recommender
trained on in-sample ranks would learn to trust the hint more than it deserves on test users. So the training users
are split into `k` folds and one SASRec per fold is trained on the OTHER folds (same architecture as the main SASRec,
early-stopped on validation); a training window's hint comes from the model that never saw its user. Evaluation and
the runtime keep using the main SASRec, trained on all training users, exactly like the SASRec baseline. Whether this
pays off is measured in benchmarks/results/recommender/NOTES.md (it is off by default).

Directory: fold{i}/ (SASRecModel.save) + folds.json {"k", "seed", "held_out": [[user ids of fold i], ...]}.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np

from ..core.errors import UserError
from ..core.io_utils import atomic_dir


def train_folds(protocol, sasrec, out: Path, k: int = 2, seed: int = 0, progress=None, max_epochs: int = 200,
                patience: int = 5) -> Path:
    from ..models.sasrec_train import SASRecTrainConfig, train_sasrec

    if k < 2:
        raise UserError("cross-fitting needs at least 2 folds")
    users = np.random.default_rng([seed, 23]).permutation(sorted(protocol.train_users))
    folds = [sorted(int(u) for u in users[i::k]) for i in range(k)]
    with atomic_dir(Path(out)) as tmp:
        for i, held in enumerate(folds):
            sub = dataclasses.replace(protocol, train_users=sorted(set(protocol.train_users) - set(held)))
            model, log = train_sasrec(sub, dataclasses.replace(sasrec.cfg, seed=seed + i),
                                      SASRecTrainConfig(epochs=max_epochs, patience=patience, seed=seed + i))
            model.save(tmp / f"fold{i}")
            (tmp / f"fold{i}" / "train_log.json").write_text(json.dumps(log) + "\n")
            if progress:
                progress(1)
        (tmp / "folds.json").write_text(json.dumps({"k": k, "seed": seed, "held_out": folds}) + "\n")
    return Path(out)


def load_folds(path: Path, protocol) -> list[tuple[set, object, object]]:
    """[(held-out users, embed, SASRecRanks)] for tasks.build_windows; checks the folds cover the training users."""
    from ..models.sasrec import SASRecModel
    from .model_dir import sasrec_ranks

    path = Path(path)
    if not (path / "folds.json").is_file():
        raise UserError(f"{path} holds no cross-fitted SASRec folds (no folds.json)",
                        "omit --sasrec-folds to train them, or point it at a previous recommender's sasrec_folds/")
    meta = json.loads((path / "folds.json").read_text())
    held = [set(int(u) for u in f) for f in meta["held_out"]]
    if set().union(*held) != set(int(u) for u in protocol.train_users):
        raise UserError(f"the SASRec folds in {path} were built for another protocol's training users",
                        "let `train recommender` train new folds (omit --sasrec-folds)")
    out = []
    for i, users in enumerate(held):
        m = SASRecModel.load(path / f"fold{i}")
        out.append((users, m.user_embeddings, sasrec_ranks(m)))
    return out
