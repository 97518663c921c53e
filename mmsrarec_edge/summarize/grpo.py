"""GRPO for the summarizer: a hand-written loop with a peft LoRA adapter on the decoder.

Why not TRL's GRPOTrainer (which does run these tiny models on CPU): TRL 1.16 accepts images only
through conversational prompts rendered by a chat template and pixels made by the HF image processor, so its prompts
and pixels would come from a second code path, not the torch-free `prompts.py` ids and `imaging.preprocess` pixels that
the ONNX runtime reuses; keeping the two in step would be a standing risk. It also cannot mix image and text prompts in
one batch. The loop below is the textbook algorithm (DeepSeekMath GRPO) in ~100 lines, at about TRL's speed,
and every piece is tested against hand-computed values:

    for each step: B prompts (half image task, half text task), G samples each (temperature sampling)
    reward R per sample (on cfg.reward_scale, rewards.py: by default each part standardised within the group before
    weighting); advantage A = (R - mean_group) / (std_group + eps)      (sample std, n-1)
    per token: -min(r A, clip(r, 1-eps, 1+eps) A) + beta * k3(policy, ref),  r = p / p_old,
               k3 = exp(ref - logp) - (ref - logp) - 1
    loss = mean over samples of (mean over that sample's completion tokens)

The reference is the SFT model itself: the adapter disabled (no second copy). The adapter is merged at the end, so the
saved model is a plain LLaVA checkpoint. Optimizer step (AdamW, constant LR, gradient norm clipped at 1) and adapter
come from the shared training module (models/training.py: `Stepper`, `add_lora`).
"""

from __future__ import annotations

import random
import time
from typing import Sequence

import numpy as np
import torch

from ..core.summary_prompts import PromptSpec
from ..models.device import on
from ..models.training import OptimConfig, Stepper, add_lora
from .generation import Prompt, completion_logps, decode_keywords, generate
from .rewards import group_standardize


def group_advantages(rewards: np.ndarray, group: int, eps: float = 1e-4) -> np.ndarray:
    """(R - group mean) / (group sample std + eps); a group whose samples all score the same gets 0. The same
    per-group z-score the reward's parts get under reward_scale "group" (rewards.group_standardize)."""
    return group_standardize(rewards, group, eps)


def grpo_loss(logp: torch.Tensor, old_logp: torch.Tensor, ref_logp: torch.Tensor | None, mask: torch.Tensor,
              advantages: torch.Tensor, beta: float, clip_eps: float) -> tuple[torch.Tensor, dict]:
    """The clipped GRPO objective with a k3 KL penalty; all inputs [N, L] except advantages [N]."""
    ratio = torch.exp(logp - old_logp)
    adv = advantages.unsqueeze(1)
    per_token = -torch.min(ratio * adv, torch.clamp(ratio, 1 - clip_eps, 1 + clip_eps) * adv)
    kl = torch.zeros_like(logp)
    if beta and ref_logp is not None:
        d = ref_logp - logp
        kl = torch.exp(d) - d - 1
        per_token = per_token + beta * kl
    per_seq = (per_token * mask).sum(1) / mask.sum(1).clamp(min=1)
    loss = per_seq.mean()
    tokens = mask.sum().clamp(min=1)
    kl, ratio = kl.detach(), ratio.detach()
    return loss, {"kl": float((kl * mask).sum() / tokens),
                  "clip_frac": float((((ratio - 1).abs() > clip_eps).float() * mask).sum() / tokens)}


def _balanced_batch(pools: dict[str, list[Prompt]], size: int, rng: random.Random) -> list[Prompt]:
    tasks = [t for t in ("image", "text") if pools.get(t)]
    out: list[Prompt] = []
    for k, t in enumerate(tasks):
        n = size // len(tasks) + (1 if k < size % len(tasks) else 0)
        out += rng.sample(pools[t], min(n, len(pools[t])))
    return out


def train_grpo(model, tokenizer, spec: PromptSpec, prompts: Sequence[Prompt], reward_model, cfg, progress=None):
    """Run cfg.grpo_steps GRPO steps with LoRA; returns (merged plain model, per-step log)."""
    rng = random.Random(cfg.seed)
    torch.manual_seed(cfg.seed)
    pools = {t: [p for p in prompts if p.task == t] for t in ("image", "text")}
    policy = add_lora(model, cfg.lora_r, cfg.lora_alpha, cfg.lora_dropout)
    params = [p for p in policy.parameters() if p.requires_grad]
    placement = cfg.placement()
    stepper = Stepper(params, OptimConfig(lr=cfg.grpo_lr, weight_decay=0.0, schedule="constant", clip=1.0,
                                          grad_scale=placement.dtype == "fp16"))
    G = cfg.num_generations
    log: list[dict] = []
    for step in range(cfg.grpo_steps):
        t0 = time.perf_counter()
        batch = _balanced_batch(pools, cfg.grpo_batch_size, rng)
        rep = [p for p in batch for _ in range(G)]
        torch.manual_seed(cfg.seed * 1_000_003 + step)  # the samples of step s do not depend on earlier timing
        with placement.autocast():
            comps = generate(policy, rep, spec, cfg.max_new_tokens, do_sample=True, temperature=cfg.temperature,
                             batch_size=len(rep))
        kws = [decode_keywords(tokenizer, c, spec, cfg.max_keywords) for c in comps]
        rb = reward_model.score([p.item_id for p in rep], kws)
        scaled = reward_model.group_reward(rb, G)
        adv = on(policy, torch.as_tensor(group_advantages(scaled, G), dtype=torch.float32))
        policy.train()
        with torch.no_grad(), placement.autocast():
            ref_logp = None
            if cfg.beta:
                with policy.disable_adapter():
                    ref_logp, _ = completion_logps(policy, rep, comps, spec, cfg.temperature)
            old_logp = None
            if cfg.grpo_iterations > 1:
                old_logp, _ = completion_logps(policy, rep, comps, spec, cfg.temperature)
        for _ in range(cfg.grpo_iterations):
            with placement.autocast():
                logp, mask = completion_logps(policy, rep, comps, spec, cfg.temperature)
            loss, stats = grpo_loss(logp, logp.detach() if old_logp is None else old_logp, ref_logp, mask, adv,
                                    cfg.beta, cfg.clip_eps)
            stepper(loss)
        groups = np.asarray(scaled).reshape(-1, G)
        entry = {"step": step + 1, **rb.mean(), "loss": loss.item(), **stats,
                 "flat_groups": float(np.mean(groups.std(axis=1) == 0)), "seconds": time.perf_counter() - t0}
        for task in ("image", "text"):
            rows = [k for k, p in enumerate(rep) if p.task == task]
            if rows:
                entry[f"{task}_total"] = float(np.mean(rb.total[rows]))
        log.append(entry)
        if progress:
            progress(1, R=entry["total"], kl=entry["kl"])
    policy.eval()
    return policy.merge_and_unload().eval(), log
