"""Multi-task SFT of the yes/no recommender (MMSRARec stage 3), with model selection on validation.

Loss: next-token cross-entropy over the full vocabulary on each example's target tokens (" yes" / " no" for the
recommendation task, keywords or titles for the auxiliary ones), averaged per example; auxiliary examples weigh
`aux_weight`. The language-model head runs only at target positions (the vocabulary is ~30k and prompts ~150 tokens:
computing every position's logits would dominate a step). A window's examples are packed into one row
(tasks.py); batches group rows of similar length.

Full fine-tuning is the default for the tiny model: it starts from random weights or from the summarizer's, so there is
no pretrained knowledge for LoRA to protect, and LoRA on a 2-layer, 128-wide decoder trains slower for no memory gain.
`lora_r > 0` trains peft LoRA adapters on the decoder's projections instead (for a real checkpoint), merged before
saving so the export sees plain weights. The shared loop (models/training.py) steps AdamW on a linear warm-up then
a cosine ("warmup_cosine"), gradient norm clipped at 1. After every epoch the model ranks `val_cases` validation
cases with the shared-prefix scorer; the best epoch's weights win and training stops after `patience` epochs without
improvement.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ..core import metrics
from ..models.device import Placement, on, place, resolve, unplace
from ..models.training import OptimConfig, add_lora, fit
from .tasks import Row


@dataclass
class TrainConfig:
    epochs: int = 2  # validation picks the best epoch; 2 was the best within 3 on both report datasets
    batch_size: int = 32  # packed rows (one window's examples each)
    lr: float = 3e-3
    weight_decay: float = 0.01
    warmup: float = 0.05  # share of steps with a linear warm-up
    aux_weight: float = 0.5
    patience: int = 2
    val_cases: int = 300
    lora_r: int = 0
    max_steps: int = 0  # 0 = no cap
    threads: int = 1  # tiny matmuls: on 2 shared cores a second thread only adds OpenMP barrier spinning
    seed: int = 0
    device: str = "cpu"  # cpu | cuda: the model and every batch tensor (models/device.py)
    dtype: str = "fp32"  # fp32 | bf16 | fp16: autocast precision; trainable weights stay fp32
    gradient_checkpointing: str = "auto"  # auto: on for decoders of large_decoder_params and up | on | off
    large_decoder_params: int = 1_000_000_000  # from this decoder size up, LoRA (rank 16 when lora_r is 0)

    def __post_init__(self):
        from ..models.device import check

        check(self.device, self.dtype, self.gradient_checkpointing)


def length_batches(rows: list[Row], batch_size: int, rng: np.random.Generator) -> list[list[Row]]:
    """Shuffled batches of similar-length rows (sorted within pools of 50 batches)."""
    order = rng.permutation(len(rows))
    pool = batch_size * 50
    batches = []
    for s in range(0, len(order), pool):
        chunk = sorted(order[s:s + pool], key=lambda k: len(rows[k]))
        batches.extend([rows[k] for k in chunk[b:b + batch_size]] for b in range(0, len(chunk), batch_size))
    return [batches[k] for k in rng.permutation(len(batches))]


def pack(rows: list[Row], pad_id: int):
    """Packed rows -> input ids, a 4D boolean attention mask (each segment sees the prefix and itself, causally),
    position ids (restarting after the prefix in every segment), and the (row, position, target, segment) of every
    target token. Pad slots attend only to themselves (no NaN rows) and are never read."""
    width = max(len(r) for r in rows)
    B = len(rows)
    ids = torch.full((B, width), pad_id, dtype=torch.long)
    pos = torch.zeros((B, width), dtype=torch.long)
    mask = torch.eye(width, dtype=torch.bool).repeat(B, 1, 1)
    causal = torch.tril(torch.ones(width, width, dtype=torch.bool))
    where: list[tuple[int, int, int, int]] = []
    seg_id = 0
    for r, row in enumerate(rows):
        P = len(row.prefix)
        ids[r, :P] = torch.tensor(row.prefix)
        pos[r, :P] = torch.arange(P)
        mask[r, :P, :P] = causal[:P, :P]
        start = P
        for seg in row.segments:
            toks = seg.suffix + seg.target[:-1]
            n = len(toks)
            ids[r, start:start + n] = torch.tensor(toks)
            pos[r, start:start + n] = torch.arange(P, P + n)
            mask[r, start:start + n, :P] = True
            mask[r, start:start + n, start:start + n] = causal[:n, :n]
            first = start + len(seg.suffix) - 1  # its output predicts the first target token
            where.extend((r, first + j, t, seg_id) for j, t in enumerate(seg.target))
            start += n
            seg_id += 1
    return ids, mask[:, None], pos, where


def batch_loss(model, batch: list[Row], pad_id: int, aux_weight: float, pixels: dict | None = None,
               with_stats: bool = True) -> tuple[torch.Tensor, dict]:
    """The step's loss and, `with_stats`, its mean per task (read back to the host: a sync point)."""
    ids, mask, pos, where = pack(batch, pad_id)
    segs = [seg for row in batch for seg in row.segments]
    pv = None
    if pixels is not None:
        imgs = [pixels[s.image_item] for s in segs if s.image_item is not None]
        pv = torch.from_numpy(np.stack(imgs)) if imgs else None
    ids, mask, pos, pv = on(model, ids, mask, pos, pv)  # every tensor on the model's device
    h = model.model(input_ids=ids, attention_mask=mask, position_ids=pos, pixel_values=pv).last_hidden_state
    rr, pp, tt, owner = on(model, *(torch.tensor(c) for c in zip(*where)))
    logits = model.lm_head(h[rr, pp])
    tok_loss = F.cross_entropy(logits.float(), tt, reduction="none")
    n = len(segs)
    zeros = torch.zeros(n, device=h.device)
    per_seg = zeros.index_add(0, owner, tok_loss) / zeros.index_add(0, owner, torch.ones_like(tok_loss))
    w = torch.tensor([1.0 if s.task == "rec" else aux_weight for s in segs], device=h.device)
    loss = (per_seg * w).sum() / w.sum()
    stats = {}
    with torch.no_grad():
        for task in {s.task for s in segs} if with_stats else ():
            sel = torch.tensor([s.task == task for s in segs], device=h.device)
            stats[task] = float(per_seg[sel].mean())
    return loss, stats


def train_recommender(model, make_epoch, pad_id: int, cfg: TrainConfig, validate, pixels: dict | None = None,
                      progress=None) -> tuple[object, dict]:
    """Train `model` (a LLaVA) in place on `make_epoch(epoch) -> list[Row]`; `validate(model) -> metrics dict`
    (HR/NDCG/AUC means on validation cases). Returns (the best epoch's model, log)."""
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    placement = resolve(Placement(cfg.device, cfg.dtype, cfg.gradient_checkpointing, cfg.large_decoder_params))
    # decoders from 1B parameters up train LoRA adapters (rank 16 unless lora_r says), smaller ones every weight
    lora_r = cfg.lora_r or (16 if placement.large(model) else 0)
    placed = place(model, placement, lora=lora_r > 0 and placement.large(model))
    peft_model = add_lora(model, lora_r, 2 * lora_r) if lora_r > 0 else None
    params = [p for p in model.parameters() if p.requires_grad]
    first = make_epoch(0)
    total = total_steps(len(first), cfg)
    segs = [s.task for row in first for s in row.segments]
    log = {"config": cfg.__dict__.copy(), "placement": {**placed, "lora_r": lora_r}, "epochs": [],
           "rows_per_epoch": len(first),
           "examples_per_epoch": {t: segs.count(t) for t in sorted(set(segs))}}
    t0 = time.perf_counter()
    def loss_fn(batch):
        with placement.autocast():
            return batch_loss(model, batch, pad_id, cfg.aux_weight, pixels)

    def validate_on_device(m):
        with placement.autocast():
            return validate(m)

    res = fit(model, params, lambda e: length_batches(first if e == 0 else make_epoch(e), cfg.batch_size, rng),
              loss_fn, OptimConfig(lr=cfg.lr, weight_decay=cfg.weight_decay, schedule="warmup_cosine",
                                   warmup=int(total * cfg.warmup), clip=1.0, grad_scale=cfg.dtype == "fp16"),
              total_steps=total, epochs=cfg.epochs, max_steps=cfg.max_steps, validate=validate_on_device,
              metric="NDCG@5", patience=cfg.patience, progress=progress)
    for rec in res.epochs:
        log["epochs"].append({"epoch": rec["epoch"], "steps": rec["steps"], "seconds": round(rec["seconds"], 1),
                              "loss": {k: float(np.mean(v)) for k, v in rec["stats"].items()},
                              "val": {m: round(float(rec["val"][m]), 4) for m in ("HR@1", "HR@5", "NDCG@5", "AUC")}})
    if peft_model is not None:
        model = peft_model.merge_and_unload()
    model = unplace(model)  # saving, evaluation and the export read it on the CPU in fp32
    log.update({"best_epoch": res.best_epoch, "best_val_NDCG@5": res.best, "steps": res.steps,
                "train_seconds": round(time.perf_counter() - t0, 1)})
    return model.eval(), log


def total_steps(rows_per_epoch: int, cfg: TrainConfig) -> int:
    """Optimizer steps of a full run (epochs x batches per epoch, capped by max_steps): the LR schedule's length."""
    per_epoch = (rows_per_epoch + cfg.batch_size - 1) // cfg.batch_size
    return min(cfg.max_steps, per_epoch * cfg.epochs) if cfg.max_steps else per_epoch * cfg.epochs


def validation_metrics(scores: np.ndarray, users: np.ndarray) -> dict:
    res = metrics.summarize(scores, users, n_boot=1)
    return {k: v["mean"] for k, v in res.items() if not k.startswith("_")}
