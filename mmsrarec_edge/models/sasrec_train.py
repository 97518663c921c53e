"""Training SASRec on the training users' sequences: full softmax over the catalog, early stopping on validation.

Each epoch takes, for every training user, a random crop of at most max_len + 1 items and predicts every next item
(cross-entropy over all items; the catalogs here are small enough that sampled negatives would only add noise).
After every epoch the model ranks the saved validation candidates; the best validation NDCG@5 wins and training stops
after `patience` epochs without improvement.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ..core import metrics
from ..data.protocol import Protocol
from .sasrec import SASRec, SASRecConfig, SASRecModel


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


def evaluate_sasrec(model: SASRecModel, cases) -> dict:
    scores = model.score(cases.prefixes, cases.candidates)
    return metrics.summarize(scores, cases.user_id, n_boot=200)


def train_sasrec(protocol: Protocol, cfg: SASRecConfig | None = None, tcfg: SASRecTrainConfig | None = None,
                 progress=None) -> tuple[SASRecModel, dict]:
    cfg = cfg or SASRecConfig()
    tcfg = tcfg or SASRecTrainConfig()
    if tcfg.threads:
        torch.set_num_threads(tcfg.threads)
    torch.manual_seed(tcfg.seed)
    rng = np.random.default_rng(tcfg.seed)
    item_ids = list(protocol.items)
    net = SASRec(len(item_ids), cfg)
    model = SASRecModel(net, item_ids)
    train = [s for s in protocol.train_sequences().values() if len(s) >= 2]
    opt = torch.optim.Adam(net.parameters(), lr=tcfg.lr, weight_decay=tcfg.weight_decay)
    val = protocol.val
    best, best_state, best_epoch, history = -1.0, None, 0, []
    for epoch in range(1, tcfg.epochs + 1):
        net.train()
        losses = []
        for inp, tgt in _batches(train, model.index, cfg.max_len, tcfg.batch_size, rng):
            h = net.encode(inp)
            logits = h @ net.item_emb.weight[1:].T  # index k+1 -> column k
            mask = tgt > 0
            loss = F.cross_entropy(logits[mask], tgt[mask] - 1)
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.item())
        net.eval()
        m = metrics.per_case(model.score(val.prefixes, val.candidates))
        ndcg = float(m["NDCG@5"].mean())
        history.append({"epoch": epoch, "loss": float(np.mean(losses)), "val_NDCG@5": ndcg,
                        "val_HR@5": float(m["HR@5"].mean())})
        if progress:
            progress(1, loss=float(np.mean(losses)), val_ndcg5=ndcg)
        if ndcg > best:
            best, best_state, best_epoch = ndcg, copy.deepcopy(net.state_dict()), epoch
        elif epoch - best_epoch >= tcfg.patience:
            break
    net.load_state_dict(best_state)
    net.eval()
    return model, {"best_epoch": best_epoch, "best_val_NDCG@5": best, "epochs_run": len(history), "history": history}
