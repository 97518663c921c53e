"""SFT warm start: teach the MLLM to write the pseudo-keywords (targets.py) for each task.

Full fine-tuning of every weight (vision tower, projector, decoder): the embedded default starts from random weights,
so there is nothing for a low-rank adapter to adapt. Loss = cross-entropy on the completion tokens (keywords + eos).
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from ..core.summary_prompts import PromptSpec
from .generation import Prompt, collate_left, position_ids, stack_pixels


@dataclass
class SFTExample:
    prompt: Prompt
    target: list[int]  # keywords + eos


def sft_batch(examples: Sequence[SFTExample], spec: PromptSpec):
    seqs = [e.prompt.ids + e.target for e in examples]
    ids, mask = collate_left(seqs, spec.pad_id)
    labels = torch.full_like(ids, -100)
    width = ids.shape[1]
    for r, e in enumerate(examples):
        labels[r, width - len(e.target):] = torch.as_tensor(e.target)
    return ids, mask, labels, stack_pixels([e.prompt for e in examples])


def sft_loss(model, examples: Sequence[SFTExample], spec: PromptSpec) -> torch.Tensor:
    ids, mask, labels, pixels = sft_batch(examples, spec)
    # Left padding puts every target at the right end: only the last n+1 positions need logits. Over a 30k vocabulary
    # the LM head on the whole sequence would cost more than the rest of the model.
    n = max(len(e.target) for e in examples)
    logits = model(input_ids=ids, attention_mask=mask, position_ids=position_ids(mask), pixel_values=pixels,
                   logits_to_keep=n + 1).logits
    return torch.nn.functional.cross_entropy(logits[:, :-1].transpose(1, 2).float(), labels[:, -n:], ignore_index=-100)


def optimizer_step(loss, opt, sched, params, losses: list[float], progress=None, clip: float = 1.0) -> None:
    """Backward, clip, step the optimizer and the schedule; record the loss and advance the progress bar."""
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, clip)
    opt.step()
    sched.step()
    losses.append(loss.item())
    if progress:
        progress(1, loss=losses[-1])


def train_sft(model, examples: list[SFTExample], spec: PromptSpec, steps: int, batch_size: int, lr: float,
              warmup: int = 25, seed: int = 0, progress=None,
              trainable: Callable[[str], bool] | None = None) -> list[float]:
    """Shuffled epochs over the examples for `steps` steps (AdamW, warmup + cosine). Returns the loss curve.

    `trainable(name)` picks the parameters that learn (default: all); the others stay frozen for this call.
    """
    if steps == 0 or not examples:
        return []
    rng = random.Random(seed)
    torch.manual_seed(seed)
    model.train()
    params = []
    for n, p in model.named_parameters():
        p.requires_grad_(trainable is None or trainable(n))
        if p.requires_grad:
            params.append(p)
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / max(1, warmup)) * 0.5 * (1 + math.cos(math.pi * min(1.0, s / steps))))
    order: list[int] = []
    losses = []
    for _ in range(steps):
        if len(order) < batch_size:
            fresh = list(range(len(examples)))
            rng.shuffle(fresh)
            order += fresh
        rows, order = order[:batch_size], order[batch_size:]
        optimizer_step(sft_loss(model, [examples[i] for i in rows], spec), opt, sched, params, losses, progress)
    model.eval()
    for p in model.parameters():
        p.requires_grad_(True)
    return losses
