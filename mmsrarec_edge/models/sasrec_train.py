"""Training SASRec on the training users' sequences: full softmax over the catalog, early stopping on validation.

Each epoch takes, for every training user, a random crop of at most max_len + 1 items and predicts every next item
(cross-entropy over all items; the catalogs here are small enough that sampled negatives would only add noise).
After every epoch the model ranks the saved validation candidates; the best validation NDCG@5 wins and training stops
after `patience` epochs without improvement. Adam at a constant LR, no gradient clipping, through the shared loop
(training.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ..core import metrics
from ..data.protocol import Protocol
from .sasrec import SASRec, SASRecConfig, SASRecModel
from .training import OptimConfig, fit


@dataclass
class SASRecTrainConfig:
    epochs: int = 200
    batch_size: int = 128
    lr: float = 1e-3
    weight_decay: float = 0.0
    patience: int = 10
    seed: int = 0
    threads: int = 0  # 0 = leave torch's default


def _batches(seqs: list[list[int]], index: dict[int, int], L: int, bs: int, rng: np.random.Generator):
    order = rng.permutation(len(seqs))
    for s in range(0, len(order), bs):
        inp = np.zeros((min(bs, len(order) - s), L), np.int64)
        tgt = np.zeros_like(inp)
        for r, k in enumerate(order[s:s + bs]):
            seq = [index[i] for i in seqs[k] if i in index]
            if len(seq) > L + 1:
                start = int(rng.integers(0, len(seq) - L))
                seq = seq[start:start + L + 1]
            x, y = seq[:-1], seq[1:]
            inp[r, L - len(x):] = x
            tgt[r, L - len(y):] = y
        yield torch.from_numpy(inp), torch.from_numpy(tgt)


def train_sasrec(protocol: Protocol, cfg: SASRecConfig | None = None, tcfg: SASRecTrainConfig | None = None,
                 progress=None) -> tuple[SASRecModel, dict]:
    """Train a SASRec on `protocol`'s training users; returns (the best epoch's model, in eval mode, and its log).
    `progress(1, loss=..., val_ndcg5=...)` is called after every epoch."""
    cfg = cfg or SASRecConfig()
    tcfg = tcfg or SASRecTrainConfig()
    if tcfg.threads:
        torch.set_num_threads(tcfg.threads)
    torch.manual_seed(tcfg.seed)
    rng = np.random.default_rng(tcfg.seed)
    item_ids = list(protocol.items)
    net = SASRec(len(item_ids), cfg)
    model = SASRecModel(net, item_ids, protocol.dataset_fingerprint)
    train = [s for s in protocol.train_sequences().values() if len(s) >= 2]
    val = protocol.val

    def loss_fn(batch) -> torch.Tensor:
        inp, tgt = batch
        logits = net.encode(inp) @ net.item_emb.weight[1:].T  # index k+1 -> column k
        mask = tgt > 0
        return F.cross_entropy(logits[mask], tgt[mask] - 1)

    def validate(_net) -> dict:
        m = metrics.per_case(model.score(val.prefixes, val.candidates))
        return {"NDCG@5": float(m["NDCG@5"].mean()), "HR@5": float(m["HR@5"].mean())}

    history: list[dict] = []

    def on_epoch(rec: dict) -> None:
        loss = float(np.mean(rec["losses"]))
        history.append({"epoch": rec["epoch"], "loss": loss, "val_NDCG@5": rec["val"]["NDCG@5"],
                        "val_HR@5": rec["val"]["HR@5"]})
        if progress:
            progress(1, loss=loss, val_ndcg5=rec["val"]["NDCG@5"])

    res = fit(net, net.parameters(), lambda _: _batches(train, model.index, cfg.max_len, tcfg.batch_size, rng),
              loss_fn, OptimConfig(lr=tcfg.lr, weight_decay=tcfg.weight_decay, decoupled=False, clip=None),
              epochs=tcfg.epochs, validate=validate, metric="NDCG@5", patience=tcfg.patience, on_epoch=on_epoch)
    return model, {"best_epoch": res.best_epoch, "best_val_NDCG@5": res.best, "epochs_run": len(history),
                   "history": history}
