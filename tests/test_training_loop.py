"""The shared training loop (models/training.py): LR schedules against hand-computed values, gradient clipping,
early stopping that restores the best epoch's weights, the step cap, and the LoRA helper's targets."""

from __future__ import annotations

import math

import pytest
import torch

from mmsrarec_edge.models.training import EarlyStopping, OptimConfig, Stepper, add_lora, fit, lr_factor


def _lrs(cfg: OptimConfig, total: int, steps: int) -> list[float]:
    """The LR each of `steps` optimizer steps ran at."""
    p = torch.nn.Parameter(torch.ones(3))
    stepper = Stepper([p], cfg, total)
    out = []
    for _ in range(steps):
        out.append(stepper.lr)
        stepper((p ** 2).sum())
    return out


def test_schedules_match_hand_computed_values():
    assert lr_factor("constant", 10)(7) == 1.0
    # cosine over all 8 steps, scaled by a 4-step linear warm-up
    f = lr_factor("cosine", 8, 4)
    def cos(s):
        return 0.5 * (1 + math.cos(s * math.pi / 8))

    for s, want in [(0, 0.25), (1, 0.5 * cos(1)), (3, cos(3)), (6, cos(6)), (8, 0.0), (9, 0.0)]:
        assert f(s) == pytest.approx(want, abs=1e-12)
    assert lr_factor("cosine", 8, 0)(0) == 1.0  # no warm-up: a plain cosine
    # warm-up to the base LR over 2 steps, then a cosine over the remaining 4
    g = lr_factor("warmup_cosine", 6, 2)
    for s, want in [(0, 0.5), (1, 1.0), (2, 1.0), (3, 0.5 * (1 + math.cos(math.pi / 4))), (4, 0.5), (6, 0.0)]:
        assert g(s) == pytest.approx(want, abs=1e-12)


def test_warmup_cosine_is_transformers_after_the_warmup():
    from transformers import get_cosine_schedule_with_warmup

    p = torch.nn.Parameter(torch.ones(1))
    ref = get_cosine_schedule_with_warmup(torch.optim.SGD([p], lr=1.0), 5, 40).lr_lambdas[0]
    ours = lr_factor("warmup_cosine", 40, 5)
    assert all(ours(s) == pytest.approx(ref(s), abs=1e-12) for s in range(5, 45))
    assert [ours(s) for s in range(5)] == [ref(s + 1) for s in range(5)]  # warm-up one step ahead: no step at LR 0


def test_stepper_runs_each_step_at_the_scheduled_lr():
    cfg = OptimConfig(lr=0.1, schedule="warmup_cosine", warmup=3)
    f = lr_factor("warmup_cosine", 12, 3)
    assert _lrs(cfg, 12, 12) == pytest.approx([0.1 * f(s) for s in range(12)], abs=1e-15)
    assert _lrs(OptimConfig(lr=0.1, schedule="constant"), 12, 5) == [0.1] * 5
    with pytest.raises(ValueError):
        OptimConfig(lr=0.1, schedule="linear")


def test_gradients_are_clipped_to_the_max_norm():
    for clip, want in [(1.0, 1.0), (None, 200.0)]:
        p = torch.nn.Parameter(torch.zeros(4))
        stepper = Stepper([p], OptimConfig(lr=0.0, weight_decay=0.0, clip=clip))
        stepper((p * torch.tensor([100.0, 100.0, 100.0, 100.0])).sum())  # gradient norm 200
        assert float(p.grad.norm()) == pytest.approx(want, rel=1e-5)


def test_adam_without_decoupling_is_sasrecs_l2_penalty():
    assert type(Stepper([torch.nn.Parameter(torch.ones(1))], OptimConfig(lr=1e-3, decoupled=False)).opt) is \
        torch.optim.Adam
    assert type(Stepper([torch.nn.Parameter(torch.ones(1))], OptimConfig(lr=1e-3)).opt) is torch.optim.AdamW


def _fit_scripted(scores: list[float], patience: int, **kw):
    """A linear model trained on a fixed batch; validation returns `scores` in turn; a copy of the weights is kept
    at every validation."""
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 1)
    x, y = torch.randn(8, 3), torch.randn(8, 1)
    seen, it = [], iter(scores)

    def validate(m):
        seen.append({k: v.clone() for k, v in m.state_dict().items()})
        assert not m.training
        return {"AUC": next(it), "other": 0.0}

    def loss_fn(b):
        return torch.nn.functional.mse_loss(model(b[0]), b[1])

    res = fit(model, model.parameters(), lambda e: [(x, y)] * 2, loss_fn, OptimConfig(lr=0.05), epochs=len(scores),
              validate=validate, metric="AUC", patience=patience, **kw)
    return model, res, seen


def test_early_stopping_restores_the_best_epoch():
    model, res, seen = _fit_scripted([0.1, 0.5, 0.3, 0.2, 0.9, 1.0], patience=2)
    assert [r["epoch"] for r in res.epochs] == [1, 2, 3, 4]  # epochs 3 and 4 did not beat epoch 2
    assert (res.best_epoch, res.best, res.steps) == (2, 0.5, 8)
    assert all(torch.equal(v, seen[1][k]) for k, v in model.state_dict().items())
    assert not torch.equal(model.weight, seen[3]["weight"])
    assert not model.training
    assert len(res.losses) == 8 and [r["steps"] for r in res.epochs] == [2, 4, 6, 8]


def test_patience_counts_epochs_without_improvement():
    _, res, _ = _fit_scripted([0.1, 0.2, 0.2, 0.3], patience=1)
    assert len(res.epochs) == 3 and res.best_epoch == 2  # a tie is no improvement
    _, res, _ = _fit_scripted([0.1, 0.2, 0.3, 0.4], patience=0)
    assert len(res.epochs) == 4  # patience 0: stop at the first epoch that does not improve


def test_max_steps_ends_mid_epoch_and_validates_it():
    _, res, seen = _fit_scripted([0.1, 0.2, 0.3], patience=5, max_steps=3)
    assert res.steps == 3 and len(res.epochs) == 2 and len(seen) == 2 and res.best_epoch == 2


def test_loss_stats_and_progress_per_step():
    p = torch.nn.Parameter(torch.ones(2))
    calls = []
    res = fit(torch.nn.Module(), [p], lambda e: range(3), lambda b: ((p * b).sum() ** 2, {"a": float(b)}),
              OptimConfig(lr=0.01), progress=lambda n, **kw: calls.append((n, kw["loss"])))
    assert res.epochs[0]["stats"] == {"a": [0.0, 1.0, 2.0]} and res.epochs[0]["val"] == {}
    assert [c[0] for c in calls] == [1, 1, 1] and [c[1] for c in calls] == res.losses
    assert res.best_epoch == 0 and res.best is None


def test_early_stopping_without_a_comparable_epoch_refuses_to_restore():
    stop = EarlyStopping("NDCG@5", 1)
    assert not stop.update(1, {"NDCG@5": float("nan")}, torch.nn.Linear(1, 1))
    with pytest.raises(RuntimeError, match="no weights"):
        stop.restore(torch.nn.Linear(1, 1))


def test_lora_adapts_the_decoder_projections_only():
    from mmsrarec_edge.models.mllm import MLLMConfig, build_mllm, build_tokenizer

    model = build_mllm(MLLMConfig(seed=0), build_tokenizer())
    peft_model = add_lora(model, r=2, alpha=4)
    trainable = [n for n, p in peft_model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n and "language_model" in n for n in trainable)
    assert {n.split(".lora_")[0].rsplit(".", 1)[1] for n in trainable} == {
        "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
    merged = peft_model.merge_and_unload()
    assert not any("lora_" in n for n, _ in merged.named_parameters())
