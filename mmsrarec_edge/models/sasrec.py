"""SASRec (Kang & McAuley, 2018): causal self-attention over item ids, read top to bottom.

Item ids are mapped to contiguous indices 1..N (0 is padding). Histories are left-padded to `max_len`; the hidden state
at the last position is the user embedding, and an item's score is its dot product with the item embedding. The same
`user_embeddings(histories) -> [N, d]` feeds the retrieval stage's hnswlib index and the ONNX export.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..core.errors import UserError


@dataclass
class SASRecConfig:
    hidden: int = 64
    layers: int = 2
    heads: int = 2
    max_len: int = 50
    dropout: float = 0.2
    seed: int = 0


class SASRecBlock(nn.Module):
    def __init__(self, d: int, heads: int, dropout: float):
        super().__init__()
        self.ln1 = nn.LayerNorm(d)
        self.attn = nn.MultiheadAttention(d, heads, dropout=dropout, batch_first=True)
        self.ln2 = nn.LayerNorm(d)
        self.ff = nn.Sequential(nn.Linear(d, d), nn.GELU(), nn.Dropout(dropout), nn.Linear(d, d), nn.Dropout(dropout))

    def forward(self, x: torch.Tensor, causal: torch.Tensor, pad: torch.Tensor) -> torch.Tensor:
        h = self.ln1(x)
        # A float mask (not key_padding_mask): fully padded rows stay finite instead of NaN, and it exports to ONNX.
        a, _ = self.attn(h, h, h, attn_mask=causal + pad, need_weights=False)
        x = x + a
        return x + self.ff(self.ln2(x))


class SASRec(nn.Module):
    def __init__(self, n_items: int, cfg: SASRecConfig):
        super().__init__()
        self.cfg = cfg
        self.n_items = n_items
        self.item_emb = nn.Embedding(n_items + 1, cfg.hidden, padding_idx=0)
        self.pos_emb = nn.Embedding(cfg.max_len, cfg.hidden)
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(SASRecBlock(cfg.hidden, cfg.heads, cfg.dropout) for _ in range(cfg.layers))
        self.ln = nn.LayerNorm(cfg.hidden)
        nn.init.normal_(self.item_emb.weight, std=0.02)
        nn.init.normal_(self.pos_emb.weight, std=0.02)

    def encode(self, seq: torch.Tensor) -> torch.Tensor:
        """seq: int64 [B, L] left-padded with 0 -> hidden states [B, L, d]."""
        B, L = seq.shape
        x = self.item_emb(seq) * (self.cfg.hidden ** 0.5)
        x = x + self.pos_emb(torch.arange(L, device=seq.device) + (self.cfg.max_len - L))
        x = self.drop(x * (seq > 0).unsqueeze(-1))
        neg = torch.finfo(x.dtype).min / 2
        causal = torch.triu(torch.full((L, L), neg, device=seq.device), diagonal=1)
        pad = ((seq == 0).to(x.dtype) * neg)[:, None, :].repeat_interleave(self.cfg.heads, 0)  # [B*H, 1, L]
        for blk in self.blocks:
            x = blk(x, causal, pad)
        return self.ln(x)

    def user_embedding(self, seq: torch.Tensor) -> torch.Tensor:
        return self.encode(seq)[:, -1, :]

    def score(self, seq: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """items: int64 [B, C] indices -> scores [B, C]."""
        u = self.user_embedding(seq)
        return (self.item_emb(items) * u[:, None, :]).sum(-1)


class SASRecModel:
    """A trained SASRec with its item-id vocabulary; saved as safetensors + JSON (no pickle). `dataset_fingerprint`:
    the fingerprint (data.protocol.fingerprint) of the dataset its protocol was built from, "" when unknown; `export`
    compares it with the dataset it is given."""

    def __init__(self, net: SASRec, item_ids: list[int], dataset_fingerprint: str = ""):
        self.net = net.eval()
        self.item_ids = list(item_ids)
        self.index = {iid: k + 1 for k, iid in enumerate(self.item_ids)}
        self.dataset_fingerprint = dataset_fingerprint

    @property
    def cfg(self) -> SASRecConfig:
        return self.net.cfg

    def pad_histories(self, histories: list[list[int]]) -> np.ndarray:
        L = self.cfg.max_len
        out = np.zeros((len(histories), L), dtype=np.int64)
        for r, h in enumerate(histories):
            idx = [self.index.get(i, 0) for i in h][-L:]  # unknown items become padding
            if idx:
                out[r, L - len(idx):] = idx
        return out

    @torch.no_grad()
    def user_embeddings(self, histories: list[list[int]], batch: int = 512) -> np.ndarray:
        """histories (item ids, chronological) -> float32 [N, d]."""
        outs = []
        for s in range(0, len(histories), batch):
            seq = torch.from_numpy(self.pad_histories(histories[s:s + batch]))
            outs.append(self.net.user_embedding(seq).float().numpy())
        return np.concatenate(outs) if outs else np.zeros((0, self.cfg.hidden), np.float32)

    @torch.no_grad()
    def score(self, histories: list[list[int]], candidates: np.ndarray, batch: int = 512) -> np.ndarray:
        outs = []
        cand_idx = np.vectorize(lambda i: self.index.get(int(i), 0), otypes=[np.int64])(candidates)
        for s in range(0, len(histories), batch):
            seq = torch.from_numpy(self.pad_histories(histories[s:s + batch]))
            sc = self.net.score(seq, torch.from_numpy(cand_idx[s:s + batch])).numpy()
            # Items SASRec never saw in training have no embedding: rank them last.
            sc = np.where(cand_idx[s:s + batch] == 0, -1e9, sc)
            outs.append(sc)
        return np.concatenate(outs)

    def save(self, out_dir: Path) -> None:
        from safetensors.torch import save_file

        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous() for k, v in self.net.state_dict().items()}, str(out_dir / "model.safetensors"))
        # "sasrec-recbole": RecBole's architecture and key names (models/recbole_sasrec.py), imported by import-model
        kind = "sasrec-recbole" if getattr(self.cfg, "arch", None) == "recbole" else "sasrec"
        meta = {"model": kind, "config": asdict(self.cfg), "item_ids": self.item_ids}
        if self.dataset_fingerprint:
            meta["dataset_fingerprint"] = self.dataset_fingerprint
        (out_dir / "config.json").write_text(json.dumps(meta) + "\n")

    @classmethod
    def load(cls, path: Path) -> "SASRecModel":
        from safetensors.torch import load_file

        path = Path(path)
        if not (path / "config.json").exists() or not (path / "model.safetensors").exists():
            raise UserError(f"{path} is not a SASRec model directory (needs config.json and model.safetensors)",
                            "train one with `mmsrarec-edge train sasrec`")
        meta = json.loads((path / "config.json").read_text())
        if meta.get("model") == "sasrec-recbole":
            from .recbole_sasrec import RecBoleSASRec, RecBoleSASRecConfig

            net = RecBoleSASRec(len(meta["item_ids"]), RecBoleSASRecConfig(**meta["config"]))
        else:
            net = SASRec(len(meta["item_ids"]), SASRecConfig(**meta["config"]))
        net.load_state_dict(load_file(str(path / "model.safetensors")))
        return cls(net, meta["item_ids"], meta.get("dataset_fingerprint", ""))
