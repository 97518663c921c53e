"""Training on a GPU, the plumbing, on the CPU: `--device`/`--dtype` reach the stages, every tensor a training step
builds is on the model's device (checked with the model on PyTorch's "meta" device: a CPU tensor mixed in is an
error), bf16 autocast trains, decoders from the LoRA threshold up train LoRA with gradient checkpointing and come back
merged, on the CPU in fp32. No test needs a GPU."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mmsrarec_edge.core.errors import UserError
from mmsrarec_edge.models.device import Placement, resolve


@pytest.fixture(scope="module")
def tiny():
    from mmsrarec_edge.models.mllm import MLLMConfig, build_mllm, build_tokenizer

    torch.set_num_threads(1)
    tok = build_tokenizer()
    return build_mllm(MLLMConfig(hidden_size=32, intermediate_size=64, num_layers=1), tok), tok


def _rows(image: bool = True):
    from mmsrarec_edge.recommend.tasks import Row, Segment

    rng = np.random.default_rng(0)
    ids = lambda n: rng.integers(1000, 5000, n).tolist()  # noqa: E731
    img = [30522] * 16 if image else []  # the tokenizer's <image> id, one image's slots
    return [Row(ids(9), [Segment(ids(4) + img, [2748], "rec", image_item=1 if image else None),
                         Segment(ids(3), [2053], "rec")]),
            Row(ids(6), [Segment(ids(5), [2003, 102], "aux")])]


def test_every_batch_tensor_is_on_the_models_device(tiny, monkeypatch):
    """The recommender's training step with the model on "meta": any tensor built on the CPU and mixed into the
    step raises, so passing means each one followed the model. (Text prompts: LLaVA's image splice needs
    data-dependent shapes, which "meta" cannot give; the pixels take the same `on()` path. The summarizer's steps
    use transformers' 2-D mask path, which reads values back, so "meta" cannot run them.)"""
    import contextlib
    import copy

    from mmsrarec_edge.core.prompt import IMAGE_TOKEN
    from mmsrarec_edge.recommend.train import batch_loss

    model, tok = tiny
    meta = copy.deepcopy(model).to("meta")
    real_autocast = torch.autocast  # transformers' rotary embedding opens autocast(device_type="meta"): none exists

    def autocast(device_type, *a, **k):
        return contextlib.nullcontext() if device_type == "meta" else real_autocast(device_type, *a, **k)

    monkeypatch.setattr(torch, "autocast", autocast)
    assert tok.convert_tokens_to_ids(IMAGE_TOKEN) == 30522
    pixels = {1: np.zeros((3, 64, 64), np.float32)}
    loss, _ = batch_loss(meta, _rows(image=False), tok.pad_token_id, 0.5, pixels, with_stats=False)
    assert loss.device.type == "meta"
    # the reference: the same step on the CPU gives a finite loss
    assert torch.isfinite(batch_loss(model, _rows(), tok.pad_token_id, 0.5, pixels)[0])


def test_placement_refuses_what_this_machine_cannot_run():
    if not torch.cuda.is_available():
        with pytest.raises(UserError, match="--device cuda: PyTorch sees no CUDA device here") as e:
            resolve(Placement("cuda", "bf16"))
        assert "\n" not in str(e.value)
    with pytest.raises(UserError, match="--dtype fp16 needs --device cuda"):
        resolve(Placement("cpu", "fp16"))
    with pytest.raises(UserError, match="dtype must be bf16, fp16 or fp32"):
        Placement("cpu", "int4")
    from mmsrarec_edge.recommend.train import TrainConfig
    from mmsrarec_edge.summarize.config import SummarizerConfig

    with pytest.raises(UserError, match="device must be cpu or cuda"):
        TrainConfig(device="tpu")
    with pytest.raises(UserError, match="device must be cpu or cuda"):
        SummarizerConfig(device="tpu")
    assert SummarizerConfig(dtype="bf16").placement().dtype == "bf16"


@pytest.mark.parametrize("threshold, want_lora", [(10**12, 0), (1, 16)])
def test_bf16_training_and_lora_with_checkpointing_from_the_threshold(tiny, threshold, want_lora):
    """bf16 autocast on the CPU trains the recommender; a decoder at or above `large_decoder_params` (1B by
    default; 1 here, so the tiny one counts as large) trains LoRA rank 16 with gradient checkpointing, its base
    weights in bf16, and comes back merged: a plain model on the CPU in fp32."""
    import copy

    from mmsrarec_edge.recommend.train import TrainConfig, train_recommender

    model = copy.deepcopy(tiny[0])
    before = model.model.language_model.layers[0].self_attn.q_proj.weight.detach().clone()
    cfg = TrainConfig(epochs=1, batch_size=2, lr=1e-2, dtype="bf16", large_decoder_params=threshold, val_cases=0)
    seen = []

    def validate(m):
        seen.append((next(m.parameters()).device.type, m.is_gradient_checkpointing))
        return {"HR@1": 0.0, "HR@5": 0.0, "NDCG@5": 1.0, "AUC": 0.5}

    pixels = {1: np.zeros((3, 64, 64), np.float32)}
    out, log = train_recommender(model, lambda e: _rows() * 2, tiny[1].pad_token_id, cfg, validate, pixels)
    assert log["placement"]["lora_r"] == want_lora and log["placement"]["dtype"] == "bf16"
    assert log["placement"]["gradient_checkpointing"] is bool(want_lora) and seen[0] == ("cpu", bool(want_lora))
    assert log["placement"]["base_weights"] == ("bf16" if want_lora else "fp32")
    assert type(out).__name__ == "LlavaForConditionalGeneration" and not out.is_gradient_checkpointing
    assert all(p.dtype == torch.float32 and p.device.type == "cpu" for p in out.parameters())
    after = out.model.language_model.layers[0].self_attn.q_proj.weight
    assert not torch.equal(before, after)  # trained (LoRA merged into it, or every weight)


def test_cli_options_reach_the_configs():
    from mmsrarec_edge.commands.recommend_train import build_config
    from mmsrarec_edge.commands.summarize import build_config as summarizer_config

    cfg = build_config(device="cuda", dtype="bf16")
    assert (cfg.train.device, cfg.train.dtype) == ("cuda", "bf16")
    s = summarizer_config(device="cuda", dtype="fp16")
    assert (s.device, s.dtype) == ("cuda", "fp16")


def test_summarizer_sft_and_generation_in_bf16_with_lora(tiny):
    """The summarizer's SFT (LoRA, as for a decoder from the threshold up) and greedy generation under bf16
    autocast on the CPU."""
    import copy

    from mmsrarec_edge.core.summary_prompts import PromptSpec
    from mmsrarec_edge.models.device import place, unplace
    from mmsrarec_edge.models.training import add_lora
    from mmsrarec_edge.summarize.generation import Prompt, generate
    from mmsrarec_edge.summarize.sft import SFTExample, train_sft

    model, tok = copy.deepcopy(tiny[0]), tiny[1]
    p = Placement(dtype="bf16", large_decoder_params=1)
    info = place(model, p, lora=True)
    assert info["gradient_checkpointing"] and info["base_weights"] == "bf16"
    spec = PromptSpec(eos_id=tok.eos_token_id, pad_id=tok.pad_token_id, image_token_id=30522, num_image_tokens=16,
                      bos_id=tok.bos_token_id)
    prompts = [Prompt(1, "image", [101, 2000] + [30522] * 16 + [2001], np.zeros((3, 64, 64), np.float32)),
               Prompt(2, "text", [101, 2002, 2003], None)]
    net = add_lora(model, 4, 8)
    losses = train_sft(net, [SFTExample(q, [2004, 102]) for q in prompts], spec, 2, 2, 1e-2,
                       trainable=lambda n: "lora_" in n, placement=p)
    assert len(losses) == 2 and all(np.isfinite(losses))
    merged = unplace(net.merge_and_unload())
    with p.autocast():
        out = generate(merged, prompts, spec, 3)
    assert len(out) == 2 and all(p.dtype == torch.float32 for p in merged.parameters())
