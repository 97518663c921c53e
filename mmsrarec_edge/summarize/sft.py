"""SFT warm start: teach the MLLM to write the pseudo-keywords (targets.py) for each task.

Full fine-tuning of every weight (vision tower, projector, decoder): the embedded default starts from random weights,
so there is nothing for a low-rank adapter to adapt. Loss = cross-entropy on the completion tokens (keywords + eos).
"""

from __future__ import annotations

import contextlib
import random
from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from ..core.summary_prompts import PromptSpec
from ..models.device import on
from ..models.training import OptimConfig, fit
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
    ids, mask, labels, pixels = on(model, *sft_batch(examples, spec))  # every tensor on the model's device
    # Left padding puts every target at the right end: only the last n+1 positions need logits. Over a 30k vocabulary
    # the LM head on the whole sequence would cost more than the rest of the model.
    n = max(len(e.target) for e in examples)
    logits = model(input_ids=ids, attention_mask=mask, position_ids=position_ids(mask), pixel_values=pixels,
                   logits_to_keep=n + 1).logits
    return torch.nn.functional.cross_entropy(logits[:, :-1].transpose(1, 2).float(), labels[:, -n:], ignore_index=-100)


def _batches(examples: list[SFTExample], steps: int, batch_size: int, rng: random.Random):
    """`steps` batches of shuffled epochs over the examples (a batch may span two epochs)."""
    order: list[int] = []
    for _ in range(steps):
        if len(order) < batch_size:
            fresh = list(range(len(examples)))
            rng.shuffle(fresh)
            order += fresh
        rows, order = order[:batch_size], order[batch_size:]
        yield [examples[i] for i in rows]


def train_sft(model, examples: list[SFTExample], spec: PromptSpec, steps: int, batch_size: int, lr: float,
              warmup: int = 25, seed: int = 0, progress=None,
              trainable: Callable[[str], bool] | None = None, placement=None) -> list[float]:
    """Shuffled epochs over the examples for `steps` steps (AdamW, warm-up x cosine, gradient norm clipped at 1,
    through the shared loop models/training.py). Returns the loss curve.

    `trainable(name)` picks the parameters that learn (default: all); the others stay frozen for this call.
    """
    if steps == 0 or not examples:
        return []
    rng = random.Random(seed)
    torch.manual_seed(seed)
    params = []
    for n, p in model.named_parameters():
        p.requires_grad_(trainable is None or trainable(n))
        if p.requires_grad:
            params.append(p)
    amp = placement.autocast if placement is not None else contextlib.nullcontext

    def loss(batch):
        with amp():
            return sft_loss(model, batch, spec)

    res = fit(model, params, lambda _: _batches(examples, steps, batch_size, rng), loss,
              OptimConfig(lr=lr, weight_decay=0.01, schedule="cosine", warmup=warmup, clip=1.0,
                          grad_scale=placement is not None and placement.dtype == "fp16"), total_steps=steps,
              progress=progress)
    for p in model.parameters():
        p.requires_grad_(True)
    return res.losses
