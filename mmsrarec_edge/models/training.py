"""The one training loop of every stage: Adam(W), a per-step LR schedule, gradient clipping, a progress callback,
early stopping on a named validation metric with the best epoch's weights restored, and the one LoRA helper.

`fit` runs SASRec (models/sasrec_train.py), the summarizer's vision alignment, reference LM and SFT (summarize/) and
the recommender (recommend/train.py). GRPO (summarize/grpo.py) generates between its steps, so it keeps its own loop
but steps through the same `Stepper` (optimizer, schedule, clipping) and adapts through the same `add_lora`.

Each stage keeps the schedule it was tuned with; `lr_factor` holds all of them:
- "constant": the base LR at every step (SASRec, GRPO).
- "cosine": min(1, (s + 1) / W) * 0.5 (1 + cos(pi s / T)): the cosine spans all T steps and the linear warm-up over
  the first W steps scales its start (the summarizer's stages; W = 0 is a plain cosine).
- "warmup_cosine": (s + 1) / W during the warm-up, then a cosine over the remaining T - W steps (the recommender). This
  is transformers' `get_cosine_schedule_with_warmup` except that warm-up step s runs at (s + 1) / W instead of s / W,
  so the first step does not run at LR 0.

The loop draws no random numbers: batches, dropout and LoRA's initialisation draw from the stage's own generators,
in the order the stage calls them, so a stage's seeds alone fix its trained weights.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable, Iterable

import numpy as np
import torch

SCHEDULES = ("constant", "cosine", "warmup_cosine")

# LoRA adapts the decoder's attention and MLP projections only; the vision tower and projector stay as they are.
LORA_TARGETS = r".*language_model.*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)"


@dataclass
class OptimConfig:
    """One stage's optimizer settings. `warmup` counts steps; `clip` is the max gradient norm (None: no clipping)."""

    lr: float
    weight_decay: float = 0.01
    schedule: str = "constant"
    warmup: int = 0
    clip: float | None = 1.0
    decoupled: bool = True  # AdamW; False = Adam with an L2 penalty (SASRec's optimizer)
    grad_scale: bool = False  # fp16 autocast: scale the loss (torch.amp.GradScaler), unscale before clipping

    def __post_init__(self):
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {SCHEDULES}, got {self.schedule!r}")


def lr_factor(schedule: str, total: int, warmup: int = 0) -> Callable[[int], float]:
    """Step s -> the multiplier of the base LR at step s (0-based) of a `total`-step run (see the module doc)."""
    if schedule == "constant":
        return lambda s: 1.0
    if schedule == "cosine":
        w, t = max(1, warmup), max(1, total)
        return lambda s: min(1.0, (s + 1) / w) * 0.5 * (1 + math.cos(math.pi * min(1.0, s / t)))
    if schedule == "warmup_cosine":
        w = max(1, warmup)

        def f(s: int) -> float:
            if s < w:
                return (s + 1) / w
            # np.cos, not math.cos: the recommender's LRs stay bit-identical to the values it was tuned with
            return max(0.0, 0.5 * (1 + np.cos(np.pi * (s - w) / max(1, total - w))))

        return f
    raise ValueError(f"schedule must be one of {SCHEDULES}, got {schedule!r}")


class Stepper:
    """One optimizer step: zero the gradients, backward, clip their global norm, step the optimizer and the schedule.

    The optimizer is built here (AdamW, or Adam for `decoupled=False`) over `params`; the schedule is a LambdaLR of
    `lr_factor` over `total_steps`, none for "constant" (the base LR as is)."""

    def __init__(self, params: Iterable[torch.nn.Parameter], cfg: OptimConfig, total_steps: int = 0):
        self.params, self.cfg, self.steps = list(params), cfg, 0
        cls = torch.optim.AdamW if cfg.decoupled else torch.optim.Adam
        self.opt = cls(self.params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.sched = None
        self.scaler = torch.amp.GradScaler("cuda") if cfg.grad_scale else None
        if cfg.schedule != "constant":
            self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, lr_factor(cfg.schedule, total_steps, cfg.warmup))

    @property
    def lr(self) -> float:
        """The LR the next step will use."""
        return float(self.opt.param_groups[0]["lr"])

    def __call__(self, loss: torch.Tensor) -> float:
        self.opt.zero_grad(set_to_none=True)
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            self.scaler.unscale_(self.opt)
        else:
            loss.backward()
        if self.cfg.clip is not None:
            torch.nn.utils.clip_grad_norm_(self.params, self.cfg.clip)
        if self.scaler is not None:
            self.scaler.step(self.opt)
            self.scaler.update()
        else:
            self.opt.step()
        if self.sched is not None:
            self.sched.step()
        self.steps += 1
        return loss.item()


class EarlyStopping:
    """Model selection on a validation metric (higher is better): keeps a copy of the best epoch's weights, and says
    to stop once `patience` epochs in a row have not beaten it."""

    def __init__(self, metric: str, patience: int):
        self.metric, self.patience = metric, patience
        self.best, self.best_epoch, self.state = float("-inf"), 0, None

    def update(self, epoch: int, val: dict, model) -> bool:
        """Record epoch `epoch`'s validation metrics; returns whether it is the new best (its weights are copied)."""
        value = val[self.metric]
        if value > self.best:
            self.best, self.best_epoch = float(value), epoch
            self.state = {k: v.detach().clone() for k, v in model.state_dict().items()}
            return True
        return False

    def should_stop(self, epoch: int) -> bool:
        return epoch - self.best_epoch >= self.patience

    def restore(self, model) -> None:
        if self.state is None:
            raise RuntimeError(f"no epoch had a comparable validation {self.metric} (NaN?): no weights to restore")
        model.load_state_dict(self.state)


@dataclass
class FitResult:
    """What `fit` did. `epochs`: one record per epoch run: epoch (1-based), steps (cumulative), seconds (since the
    start), losses (per step), stats (per key, per step), val (the validation metrics, {} without validation)."""

    epochs: list[dict] = field(default_factory=list)
    steps: int = 0
    best_epoch: int = 0
    best: float | None = None

    @property
    def losses(self) -> list[float]:
        return [x for e in self.epochs for x in e["losses"]]


def fit(model, params: Iterable[torch.nn.Parameter], batches: Callable[[int], Iterable], loss_fn: Callable,
        optim: OptimConfig, total_steps: int = 0, epochs: int = 1, max_steps: int = 0,
        validate: Callable | None = None, metric: str = "NDCG@5", patience: int = 1,
        progress: Callable | None = None, on_epoch: Callable[[dict], None] | None = None) -> FitResult:
    """Train `model` on `params` for up to `epochs` passes over `batches(e)` (e = 0, 1, ...), stepping each batch's
    `loss_fn(batch)` (a loss tensor, or (loss, {name: float}) whose stats are kept per step).

    `total_steps` sizes the LR schedule; `max_steps` > 0 ends training after that many steps (the epoch in progress is
    still validated). With `validate(model) -> {metric: value}`, every epoch is validated in eval mode, training stops
    after `patience` epochs without a better `metric`, and the best epoch's weights are restored at the end.
    `progress(1, loss=...)` is called after every step, `on_epoch(record)` after every epoch. The model is left in eval
    mode."""
    stepper = Stepper(params, optim, total_steps)
    stopper = EarlyStopping(metric, patience) if validate is not None else None
    result = FitResult()
    t0 = time.perf_counter()
    for e in range(epochs):
        model.train()
        losses: list[float] = []
        stats: dict[str, list[float]] = {}
        for batch in batches(e):
            out = loss_fn(batch)
            loss, step_stats = out if isinstance(out, tuple) else (out, {})
            losses.append(stepper(loss))
            for k, v in step_stats.items():
                stats.setdefault(k, []).append(v)
            if progress:
                progress(1, loss=losses[-1])
            if max_steps and stepper.steps >= max_steps:
                break
        model.eval()
        val = validate(model) if validate is not None else {}
        record = {"epoch": e + 1, "steps": stepper.steps, "seconds": time.perf_counter() - t0, "losses": losses,
                  "stats": stats, "val": val}
        result.epochs.append(record)
        improved = stopper.update(e + 1, val, model) if stopper is not None else False
        if on_epoch:
            on_epoch(record)
        if (stopper is not None and not improved and stopper.should_stop(e + 1)) or (
                max_steps and stepper.steps >= max_steps):
            break
    result.steps = stepper.steps
    if stopper is not None:
        stopper.restore(model)
        result.best_epoch, result.best = stopper.best_epoch, stopper.best
    model.eval()
    return result


def add_lora(model, r: int, alpha: int, dropout: float = 0.0):
    """Wrap `model` in peft LoRA adapters of rank `r` on the decoder's projections (LORA_TARGETS); the base weights
    are frozen in place. `merge_and_unload()` on the result gives back a plain model."""
    from peft import LoraConfig, get_peft_model

    cfg = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=LORA_TARGETS, bias="none")
    return get_peft_model(model, cfg)
