"""Batching, decoding and per-token log-probabilities for the summarizer MLLM (PyTorch side).

Conventions the ONNX runtime must reproduce: prompts are left-padded; position ids count real tokens only
(cumsum(mask) - 1, as transformers' generate does); pixel values are stacked for the rows that have an image, in row
order; the tokens in `suppressed_token_ids` are masked before argmax/sampling; decoding stops at eos.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from ..core.summary_prompts import PromptSpec, completion_until_eos, suppressed_token_ids
from ..models.device import on


@dataclass
class Prompt:
    item_id: int
    task: str  # image | text
    ids: list[int]
    pixels: np.ndarray | None = None  # float32 [3, S, S] for the image task


def position_ids(mask: torch.Tensor) -> torch.Tensor:
    pos = mask.long().cumsum(-1) - 1
    return pos.masked_fill(mask == 0, 1)


def collate_left(seqs: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for r, s in enumerate(seqs):
        if len(s):
            ids[r, width - len(s):] = torch.as_tensor(list(s), dtype=torch.long)
            mask[r, width - len(s):] = 1
    return ids, mask


def collate_right(seqs: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(1, max(len(s) for s in seqs))
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for r, s in enumerate(seqs):
        if len(s):
            ids[r, :len(s)] = torch.as_tensor(list(s), dtype=torch.long)
            mask[r, :len(s)] = 1
    return ids, mask


def stack_pixels(prompts: Sequence[Prompt]) -> torch.Tensor | None:
    px = [p.pixels for p in prompts if p.pixels is not None]
    return torch.from_numpy(np.stack(px)) if px else None


@torch.no_grad()
def generate(model, prompts: Sequence[Prompt], spec: PromptSpec, max_new_tokens: int, do_sample: bool = False,
             temperature: float = 1.0, batch_size: int = 32, progress=None) -> list[list[int]]:
    """Completion ids per prompt, up to and including eos when one was generated.

    Greedy (do_sample=False) is deterministic. Sampling uses plain temperature sampling (no top-k/top-p), the
    distribution GRPO's log-probabilities are computed under.
    """
    from transformers import GenerationConfig

    gcfg = GenerationConfig(
        max_new_tokens=max_new_tokens, do_sample=do_sample, temperature=temperature if do_sample else None,
        top_k=0 if do_sample else None, top_p=None, num_beams=1, eos_token_id=spec.eos_id, pad_token_id=spec.pad_id,
        bos_token_id=spec.bos_id, suppress_tokens=suppressed_token_ids(spec) or None,
    )
    was_training = model.training
    model.eval()
    out: list[list[int]] = []
    for i in range(0, len(prompts), batch_size):
        chunk = prompts[i:i + batch_size]
        ids, mask = collate_left([p.ids for p in chunk], spec.pad_id)
        ids, mask, pixels = on(model, ids, mask, stack_pixels(chunk))  # every tensor on the model's device
        seqs = model.generate(input_ids=ids, attention_mask=mask, pixel_values=pixels, generation_config=gcfg)
        for row in seqs[:, ids.shape[1]:].tolist():
            body = completion_until_eos(row, spec.eos_id)
            out.append(body + [spec.eos_id] if len(body) < len(row) and row[len(body)] == spec.eos_id else body)
        if progress:
            progress(len(chunk))
    model.train(was_training)
    return out


def decode_keywords(tokenizer, completion: Sequence[int], spec: PromptSpec, max_keywords: int) -> list[str]:
    from ..core.keywords import parse_keywords

    return parse_keywords(tokenizer.decode(completion_until_eos(completion, spec.eos_id), skip_special_tokens=True),
                          max_keywords=max_keywords)


def completion_logps(model, prompts: Sequence[Prompt], completions: Sequence[Sequence[int]], spec: PromptSpec,
                     temperature: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token log p(completion token | prompt, previous tokens): ([B, L], mask [B, L]); differentiable."""
    p_ids, p_mask = collate_left([p.ids for p in prompts], spec.pad_id)
    c_ids, c_mask = collate_right(completions, spec.pad_id)
    p_ids, p_mask, c_ids, c_mask = on(model, p_ids, p_mask, c_ids, c_mask)
    ids = torch.cat([p_ids, c_ids], 1)
    mask = torch.cat([p_mask, c_mask], 1)
    n = c_ids.shape[1]
    logits = model(input_ids=ids, attention_mask=mask, position_ids=position_ids(mask),
                   pixel_values=on(model, stack_pixels(prompts)), logits_to_keep=n + 1).logits[:, :-1].float()
    logp = torch.log_softmax(logits / temperature, dim=-1).gather(-1, c_ids.unsqueeze(-1)).squeeze(-1)
    return logp, c_mask.float()
