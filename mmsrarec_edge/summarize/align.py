"""Vision-language alignment warm-up for the embedded default MLLM (an analogue of LLaVA's stage-1 projector alignment).

A vision tower trained from scratch through the decoder alone sits on a long loss plateau: the only signal it gets is
the keyword tokens' cross-entropy, routed through a decoder that is itself still learning to read image tokens. Here
the vision tower and the projector first learn, directly, to make the image tokens look like the (frozen) token
embeddings of the item's pseudo-keywords: contrastive (InfoNCE) between the mean-pooled projected image tokens and
the mean embedding of the keyword tokens, over the batch. No decoder and no 30k-way LM head are involved, so a step
costs milliseconds. SFT then starts from image tokens that already point at the right words.
"""

from __future__ import annotations

import random
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..models.training import OptimConfig, fit
from .embeddings import image_tokens


def keyword_targets(model, token_ids: Sequence[Sequence[int]]) -> torch.Tensor:
    """Mean input embedding of each item's keyword tokens (the frozen table), [N, hidden]."""
    emb = model.get_input_embeddings().weight.detach()
    return torch.stack([emb[torch.as_tensor(list(ids), dtype=torch.long)].mean(0) if len(ids)
                        else torch.zeros(emb.shape[1]) for ids in token_ids])


def align_vision(model, pixels: np.ndarray, token_ids: Sequence[Sequence[int]], steps: int, batch_size: int = 64,
                 lr: float = 3e-3, temperature: float = 0.1, seed: int = 0, progress=None) -> list[float]:
    """Train the vision tower + projector with InfoNCE against keyword embeddings (AdamW, cosine LR, gradient norm
    clipped at 1, through the shared loop models/training.py); returns the loss curve."""
    if steps == 0 or len(pixels) < 2:
        return []
    rng = random.Random(seed)
    torch.manual_seed(seed)
    targets = F.normalize(keyword_targets(model, token_ids), dim=-1)
    params = [p for n, p in model.named_parameters() if "vision_tower" in n or "multi_modal_projector" in n]
    learning = {id(p) for p in params}
    saved = {n: p.requires_grad for n, p in model.named_parameters()}
    for p in model.parameters():
        p.requires_grad_(id(p) in learning)
    pix = torch.from_numpy(np.ascontiguousarray(pixels))
    n = len(pix)

    def loss_fn(rows: list[int]) -> torch.Tensor:
        f = F.normalize(image_tokens(model, pix[rows]).mean(1), dim=-1)
        logits = f @ targets[rows].T / temperature
        labels = torch.arange(len(rows))
        return 0.5 * (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels))

    res = fit(model, params, lambda _: (rng.sample(range(n), min(batch_size, n)) for _ in range(steps)), loss_fn,
              OptimConfig(lr=lr, weight_decay=0.01, schedule="cosine", warmup=0, clip=1.0), total_steps=steps,
              progress=progress)
    for name, p in model.named_parameters():
        p.requires_grad_(saved[name])
    return res.losses
