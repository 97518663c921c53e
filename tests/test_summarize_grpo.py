"""GRPO pieces against hand-computed values: group advantages, the clipped objective with k3 KL, its gradient."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from mmsrarec_edge.summarize.grpo import group_advantages, grpo_loss


def test_group_advantages_by_hand():
    r = np.array([1.0, 2.0, 3.0, 5.0, 5.0, 5.0])
    adv = group_advantages(r, 3, eps=0.0 + 1e-12)
    # group 1: mean 2, sample std 1 -> -1, 0, 1; group 2: all equal -> 0
    np.testing.assert_allclose(adv, [-1, 0, 1, 0, 0, 0], atol=1e-9)
    adv = group_advantages(np.array([0.0, 1.0]), 2, eps=1e-4)
    s = math.sqrt(0.5)
    np.testing.assert_allclose(adv, [-0.5 / (s + 1e-4), 0.5 / (s + 1e-4)])


def test_loss_on_policy_without_kl_is_minus_mean_advantage():
    logp = torch.tensor([[-1.0, -2.0, 0.0], [-0.5, 0.0, 0.0]], requires_grad=True)
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    adv = torch.tensor([2.0, -1.0])
    loss, stats = grpo_loss(logp, logp.detach(), None, mask, adv, beta=0.0, clip_eps=0.2)
    assert loss.item() == pytest.approx(-(2.0 + -1.0) / 2)  # ratio 1 everywhere
    loss.backward()
    # d loss / d logp[i, t] = -A_i / (len_i * N) on real tokens, 0 on padding
    np.testing.assert_allclose(logp.grad.numpy(), [[-2 / 4, -2 / 4, 0], [1 / 2, 0, 0]], atol=1e-7)
    assert stats["kl"] == 0.0 and stats["clip_frac"] == 0.0


def test_loss_with_clipping_and_k3_kl_by_hand():
    logp = torch.tensor([[math.log(0.5), math.log(0.9)]])
    old = torch.tensor([[math.log(0.25), math.log(0.9)]])  # ratio 2 (clipped to 1.2), then 1
    ref = torch.tensor([[math.log(0.4), math.log(0.6)]])
    mask = torch.ones(1, 2)
    beta, eps = 0.1, 0.2
    for a in (1.0, -1.0):
        loss, stats = grpo_loss(logp, old, ref, mask, torch.tensor([a]), beta=beta, clip_eps=eps)
        # token 1: ratio 2: A>0 -> min(2A, 1.2A) = 1.2A; A<0 -> min(-2, -1.2) = -2
        pg1 = -(1.2 * a if a > 0 else 2 * a)
        pg2 = -a
        k3 = [0.4 / 0.5 - math.log(0.4 / 0.5) - 1, 0.6 / 0.9 - math.log(0.6 / 0.9) - 1]
        expected = ((pg1 + beta * k3[0]) + (pg2 + beta * k3[1])) / 2
        assert loss.item() == pytest.approx(expected, rel=1e-5)
        assert stats["kl"] == pytest.approx(sum(k3) / 2, rel=1e-5)
        assert stats["clip_frac"] == pytest.approx(0.5)


def test_kl_is_zero_at_the_reference_and_positive_elsewhere():
    logp = torch.log(torch.tensor([[0.3, 0.6]]))
    _, s0 = grpo_loss(logp, logp, logp, torch.ones(1, 2), torch.zeros(1), beta=0.5, clip_eps=0.2)
    _, s1 = grpo_loss(logp, logp, logp - 0.3, torch.ones(1, 2), torch.zeros(1), beta=0.5, clip_eps=0.2)
    assert s0["kl"] == pytest.approx(0.0, abs=1e-9) and s1["kl"] > 0


# -- the reward's scale (rewards.py: each part standardised within its GRPO group by default) -------------------------
def _spearman(a, b):
    ra, rb = np.argsort(np.argsort(a)), np.argsort(np.argsort(b))
    return float(np.corrcoef(ra, rb)[0, 1])


def _group():
    """One GRPO group of 6 samples: R_info rises sample by sample; R_recon (minus a perplexity) disagrees with it
    on the order of the middle samples; R_len is flat."""
    info = np.array([0.30, 0.34, 0.38, 0.42, 0.46, 0.50])
    recon = np.array([-21.0, -18.0, -22.0, -17.0, -23.0, -20.0])
    length = np.full(6, -4.0)
    return info, recon, length


def test_group_scale_keeps_r_info_in_charge_when_r_recon_is_scaled_100x():
    """With the parts standardised in the group, a part's weight means the same whatever its units: scaling R_recon by
    100 leaves the advantages unchanged, and with b = 0.1 the ranking still follows R_info. The paper's raw sum
    hands the ranking to R_recon as soon as its spread is large (the collapse seen on real titles, issue 20)."""
    from mmsrarec_edge.summarize.grpo import group_advantages
    from mmsrarec_edge.summarize.rewards import scaled_reward

    info, recon, length = _group()
    adv = {}
    for scale in ("group", "paper"):
        for k in (1.0, 100.0):
            adv[scale, k] = group_advantages(scaled_reward(info, k * recon, length, 1.0, 0.1, 0.02, 6, scale), 6)
    np.testing.assert_allclose(adv["group", 1.0], adv["group", 100.0], atol=1e-6)
    assert _spearman(adv["group", 100.0], info) > 0.9
    assert np.argmax(adv["group", 100.0]) == np.argmax(info)
    # the paper's sum: the same rescaling makes R_recon decide the order (b R_recon spans 600 vs R_info's 0.2)
    assert _spearman(adv["paper", 1.0], info) < 0.5
    assert _spearman(adv["paper", 100.0], recon) > 0.99 and _spearman(adv["paper", 100.0], info) < 0.2


def test_group_scale_weights_are_relative_says():
    """a = b: two parts that disagree cancel; a flat part adds nothing; a, b, c scale each part's say."""
    from mmsrarec_edge.summarize.rewards import group_standardize, scaled_reward

    info = np.array([0.1, 0.2, 0.3, 0.4])
    recon = np.array([-40.0, -30.0, -20.0, -10.0]) * -1.0 - 50.0  # perfectly anti-correlated with info
    r = scaled_reward(info, recon, np.full(4, -3.0), 1.0, 1.0, 0.5, 4, "group")
    np.testing.assert_allclose(r, 0.0, atol=1e-4)  # up to the eps in the standardisation
    z = group_standardize(np.array([1.0, 2.0, 3.0, 4.0, 5.0, 5.0, 5.0, 5.0]), 4)
    assert z[:4].std(ddof=1) == pytest.approx(1.0, rel=1e-5) and z[4:].tolist() == [0.0] * 4
    # paper: the raw weighted sum; log_ppl: -log perplexity as R_recon
    assert scaled_reward([0.5], [-4.0], [-3.0], 1.0, 0.1, 0.02, 1, "paper")[0] == pytest.approx(0.5 - 0.4 - 0.06)
    assert scaled_reward([0.5], [-math.e ** 2], [-3.0], 1.0, 0.1, 0.02, 1, "log_ppl")[0] == pytest.approx(
        0.5 - 0.2 - 0.06)
    with pytest.raises(ValueError, match="reward_scale"):
        scaled_reward([0.5], [-4.0], [-3.0], 1.0, 0.1, 0.02, 1, "zscore")


def test_reward_scale_is_a_documented_setting():
    from mmsrarec_edge.core.errors import UserError
    from mmsrarec_edge.summarize.config import SummarizerConfig

    assert SummarizerConfig().reward_scale == "group"
    assert SummarizerConfig(reward_scale="paper").to_dict()["reward_scale"] == "paper"
    with pytest.raises(UserError, match="reward_scale"):
        SummarizerConfig(reward_scale="zscore")


# -- the collapse check (`train summarizer` warns on stderr) ----------------------------------------------------------
def _prompts(n):
    from mmsrarec_edge.summarize.generation import Prompt

    return [Prompt(i, task, [1, 2], None) for i in range(n) for task in ("image", "text")]


def test_vocabulary_stats_by_hand():
    from mmsrarec_edge.summarize.pipeline import vocabulary_stats

    prompts = _prompts(3)  # items 0, 1, 2; image then text
    kws = [["Red", "lamp"], ["red", "metal"], ["blue"], [], [], []]
    v = vocabulary_stats(prompts, kws)
    assert v["all"] == {"items": 3, "distinct_keywords": 4, "keywords_per_item": pytest.approx(4 / 3, abs=1e-3),
                        "keywords_per_prompt": pytest.approx(5 / 6, abs=1e-3), "items_without_keywords": 1}
    assert v["image"]["distinct_keywords"] == 3 and v["text"]["items_without_keywords"] == 2


def test_collapse_is_reported_and_a_healthy_run_is_not():
    from mmsrarec_edge.summarize.config import SummarizerConfig
    from mmsrarec_edge.summarize.pipeline import collapse_check, vocabulary_stats

    cfg = SummarizerConfig()
    prompts = _prompts(20)
    colours = ["red", "blue", "green", "pink", "black"]
    shapes = ["lamp", "vase", "clock", "chair"]

    def v(kws):
        return vocabulary_stats(prompts, kws)

    targets = v([[colours[k % 5], shapes[k % 4], f"style{k % 7}", f"word{k}"] for k in range(40)])  # 56 distinct
    before = v([[colours[k % 5], shapes[k % 4], f"style{k % 7}"] for k in range(40)])  # 16
    healthy = v([[colours[(k + 1) % 5], shapes[k % 4]] for k in range(40)])  # 9
    collapsed = v([["war"] if k % 3 else [] for k in range(40)])  # 1
    empty = v([[colours[k % 5], shapes[k % 4], f"style{k % 7}"] if k >= 12 else [] for k in range(40)])
    assert collapse_check({"targets": targets, "sft": before, "rl": healthy}, cfg) is None
    assert collapse_check({"targets": targets, "sft": before}, cfg) is None  # --sft-only: the SFT model is final
    msg = collapse_check({"targets": targets, "sft": before, "rl": collapsed}, cfg)
    assert msg.startswith("the summarizer collapsed: RL cut the distinct keywords over 20 held-out items from 16 to 1")
    assert "the rl model writes 1 distinct keywords over 20 held-out items, its SFT targets 56" in msg
    assert "reward_scale group" in msg
    msg = collapse_check({"targets": targets, "sft": before, "rl": empty}, cfg)
    assert msg == ("the summarizer collapsed: 6 of 20 held-out items have no keyword (0 after SFT) (reward_scale "
                   "group, weights a=1.0 b=0.1 c=0.02)")
    # a summarizer whose SFT already collapsed (ml100k_mm, 300 SFT steps: 724 distinct targets, 6 after SFT, 3 after
    # RL) is reported even though RL only halved it
    msg = collapse_check({"targets": targets, "sft": collapsed, "rl": collapsed}, cfg)
    assert "RL cut" not in msg and "the rl model writes 1 distinct keywords" in msg


@pytest.mark.slow
def test_train_summarizer_reports_vocabulary_and_warns_on_collapse(tmp_path):
    """`train summarizer` prints the vocabulary before/after RL in its JSON line and the collapse warning on stderr
    (forced here by thresholds a toy run cannot meet: fewer distinct keywords than 1e9 x the SFT targets', or any
    item without keywords)."""
    import json
    import subprocess
    import sys

    from mmsrarec_edge.data.synth import SynthConfig, generate

    ds = generate(SynthConfig(n_items=12, n_users=20), tmp_path / "d")
    tiny = dict(sft_steps=4, sft_batch_size=8, recon_steps=3, recon_batch_size=8, grpo_steps=1, grpo_batch_size=4,
                num_generations=2, max_new_tokens=6, held_out_fraction=0.17, max_eval_items=2, threads=1)
    name = "forced"
    settings = {**tiny, "collapse_target_ratio": 1e9, "collapse_empty_share": 0.0}
    (tmp_path / f"{name}.toml").write_text("[summarizer]\n" + "\n".join(f"{k} = {v}" for k, v in settings.items()))
    r = subprocess.run([sys.executable, "-m", "mmsrarec_edge.cli", "train", "summarizer", str(ds.root), "--out",
                        str(tmp_path / name), "--config", str(tmp_path / f"{name}.toml")],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert set(out["vocabulary"]) == {"targets", "sft", "rl"} and out["reward_scale"] == "group"
    assert out["vocabulary"]["targets"]["distinct_keywords"] > 0
    log = json.loads((tmp_path / name / "train_log.json").read_text())
    assert log["vocabulary"]["rl"]["all"] == out["vocabulary"]["rl"]
    warned = [line for line in r.stderr.splitlines() if line.startswith("warning: the summarizer collapsed")]
    # the warning line (stderr) is the JSON's collapse entry (stdout)
    assert len(warned) == 1 and out["collapse"] == warned[0][len("warning: "):]
