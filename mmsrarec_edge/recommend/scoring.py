"""Yes/no candidate scoring in PyTorch: the paper's score p(yes) / (p(yes) + p(no)) at the first answer token.

Two scorers over the same model, which must agree (tested):
- `score_naive`: one full prompt (prefix + candidate suffix) per candidate through the LLaVA forward, batch 1: what
  the paper does, and the "PyTorch naive" benchmark peer.
- `score_shared`: the shared prefix once (batch 1) -> its KV cache, expanded (a stride-0 view) over a chunk of C
  candidates; all suffixes of the chunk in one call, right-padded, the 2D mask covering prefix + each row's real
  tokens, position ids continuing from the prefix length; logits of "yes"/"no" gathered at each row's last real token.
  Right padding is safe: pads come after every real token, so causality hides them. The "PyTorch with prefix
  sharing" benchmark peer.
Since softmax normalisation cancels, p(yes) / (p(yes) + p(no)) = sigmoid(l_yes - l_no).

`load_scorer(dir, protocol)` turns a `train recommender` directory into an evaluation scorer `(cases) -> scores`.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from ..core.scores import yes_probability
from ..models.device import on


def _legacy(cache) -> list[tuple[torch.Tensor, torch.Tensor]]:
    if hasattr(cache, "layers"):
        return [(layer.keys, layer.values) for layer in cache.layers]
    return [tuple(kv) for kv in cache.to_legacy_cache()]


def expand_cache(layers: list[tuple[torch.Tensor, torch.Tensor]], batch: int):
    """Batch-1 KV -> a fresh DynamicCache at `batch` (expand: a view; the suffix step's concat makes new tensors)."""
    from transformers.cache_utils import DynamicCache

    return DynamicCache([(k.expand(batch, -1, -1, -1), v.expand(batch, -1, -1, -1)) for k, v in layers])


class TorchScorer:
    """p(yes) of candidate suffixes after a prefix with a LLaVA recommender (no grad; the model's own dtype)."""

    def __init__(self, model, yes_id: int, no_id: int, pad_id: int, max_batch: int = 64):
        self.model, self.yes_id, self.no_id, self.pad_id = model, int(yes_id), int(no_id), int(pad_id)
        self.max_batch = int(max_batch)

    def _yes_no(self, hidden: torch.Tensor) -> torch.Tensor:
        w = self.model.lm_head.weight[[self.yes_id, self.no_id]]
        out = hidden @ w.T
        if getattr(self.model.lm_head, "bias", None) is not None:
            out = out + self.model.lm_head.bias[[self.yes_id, self.no_id]]
        return yes_probability(out[..., 0].double().cpu(), out[..., 1].double().cpu())

    @staticmethod
    def _pixels(pixels: Sequence[np.ndarray | None] | None):
        if not pixels:
            return None
        arr = [np.asarray(p, np.float32) for p in pixels if p is not None]
        return torch.from_numpy(np.stack(arr)) if arr else None

    @torch.no_grad()
    def score_naive(self, prefix: Sequence[int], suffixes: Sequence[Sequence[int]],
                    suffix_pixels: Sequence[np.ndarray | None] | None = None) -> np.ndarray:
        out = np.empty(len(suffixes), np.float64)
        for c, suf in enumerate(suffixes):
            ids = torch.tensor([list(prefix) + list(suf)])
            ids, pv = on(self.model, ids, self._pixels([suffix_pixels[c]] if suffix_pixels else None))
            logits = self.model(input_ids=ids, pixel_values=pv).logits[0, -1].double()
            out[c] = float(yes_probability(logits[self.yes_id], logits[self.no_id]))
        return out

    @torch.no_grad()
    def prefill(self, prefix: Sequence[int]):
        ids = on(self.model, torch.tensor([list(prefix)]))
        res = self.model.model(input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=True)
        return _legacy(res.past_key_values), len(prefix)

    @torch.no_grad()
    def score_shared(self, prefix: Sequence[int], suffixes: Sequence[Sequence[int]],
                     suffix_pixels: Sequence[np.ndarray | None] | None = None) -> np.ndarray:
        if any(len(s) == 0 for s in suffixes):
            raise ValueError("every candidate suffix needs at least one token")
        out = np.empty(len(suffixes), np.float64)
        if not len(suffixes):
            return out
        layers, P = self.prefill(prefix)
        for start in range(0, len(suffixes), self.max_batch):
            chunk = [list(s) for s in suffixes[start:start + self.max_batch]]
            C, S = len(chunk), max(len(s) for s in chunk)
            ids = torch.full((C, S), self.pad_id, dtype=torch.long)
            mask = torch.zeros((C, P + S), dtype=torch.long)
            mask[:, :P] = 1
            for r, s in enumerate(chunk):
                ids[r, :len(s)] = torch.tensor(s)
                mask[r, P:P + len(s)] = 1
            pos = torch.arange(P, P + S).expand(C, S)
            pv = self._pixels(suffix_pixels[start:start + C] if suffix_pixels else None)
            ids, mask, pos, pv = on(self.model, ids, mask, pos, pv)  # every tensor on the model's device
            h = self.model.model(input_ids=ids, pixel_values=pv, attention_mask=mask, position_ids=pos,
                                 past_key_values=expand_cache(layers, C), use_cache=True).last_hidden_state
            last = on(self.model, torch.tensor([len(s) - 1 for s in chunk]))
            out[start:start + C] = self._yes_no(h[torch.arange(C, device=h.device), last])
        return out


def load_scorer(path, protocol, max_batch: int = 64, threads: int | None = None):
    """A `train recommender` directory -> scorer(cases) -> float64 [N, C] (evaluate's `--recommender`)."""
    from .model_dir import RecommenderDir

    rec = RecommenderDir.load(path)
    rec.check_protocol(protocol)
    return rec.case_scorer(max_batch=max_batch, threads=threads)
