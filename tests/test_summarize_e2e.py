"""Stage 1 end to end at toy scale: SFT + GRPO steps, keyword store, determinism, a user's own checkpoint via --base."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from mmsrarec_edge.summarize.config import SummarizerConfig

CLI = [sys.executable, "-m", "mmsrarec_edge.cli"]
TINY = dict(sft_steps=4, sft_batch_size=8, recon_steps=3, recon_batch_size=8, grpo_steps=2, grpo_batch_size=4,
            num_generations=2, max_new_tokens=6, held_out_fraction=0.17, max_eval_items=2, threads=1)


@pytest.fixture(scope="module")
def synth12(tmp_path_factory):
    from mmsrarec_edge.data.synth import SynthConfig, generate

    return generate(SynthConfig(n_items=12, n_users=20), tmp_path_factory.mktemp("synth12"))


@pytest.fixture(scope="module")
def trained(synth12, tmp_path_factory):
    from mmsrarec_edge.summarize.pipeline import train_summarizer

    out = tmp_path_factory.mktemp("summ") / "model"
    log = train_summarizer(synth12, out, SummarizerConfig(**TINY), echo=lambda *_: None)
    return out, log


def test_training_writes_sft_rl_and_log(trained):
    out, log = trained
    for sub in ("sft", "rl"):
        assert (out / sub / "model.safetensors").exists() and (out / sub / "summarizer.json").exists()
        assert not list((out / sub).glob("*.bin"))  # safetensors only
    assert (out / "reconstructor" / "reconstructor.json").exists()
    assert json.loads((out / "train_log.json").read_text())["dataset"] == log["dataset"]
    assert log["dataset"] == {"name": "synthetic", "items": 12, "train_items": 10, "held_out_items": 2,
                              "evaluated_items": 2, "targets": "attributes"}
    assert len(log["sft_loss"]) == 4 and log["sft_loss"][-1] < log["sft_loss"][0]
    assert len(log["reference_lm_loss"]) == 3
    assert [e["step"] for e in log["grpo"]] == [1, 2]
    for e in log["grpo"]:
        assert {"total", "r_info", "r_recon", "r_len", "n_keywords", "kl", "loss", "image_total",
                "text_total"} <= set(e)
        assert e["r_len"] == pytest.approx(-e["n_keywords"])
    for stage in ("targets", "sft", "rl"):
        assert set(log["eval"][stage]) == {"image", "text", "all"}
        assert 0.0 <= log["eval"][stage]["all"]["gold_precision"] <= 1.0
    assert log["eval"]["targets"]["all"]["gold_precision"] == 1.0  # the SFT targets are the attributes here
    held_out = set(log["held_out_ids"])
    assert held_out and not held_out & {s["item_id"] for s in log["samples"]} - held_out


def test_rl_changed_the_weights_and_is_a_plain_llava(trained):
    from safetensors.numpy import load_file

    out, _ = trained
    sft, rl = load_file(out / "sft" / "model.safetensors"), load_file(out / "rl" / "model.safetensors")
    assert set(sft) == set(rl) and not any("lora" in k for k in rl)  # the adapter was merged away
    changed = [k for k in sft if not np.array_equal(sft[k], rl[k])]
    assert changed and all("language_model" in k for k in changed)  # LoRA on the decoder only
    assert not any("vision_tower" in k for k in changed)


def test_summarize_store_and_determinism(trained, synth12, tmp_path):
    from mmsrarec_edge.core.keyword_store import read_keyword_store, read_store_meta
    from mmsrarec_edge.summarize.pipeline import summarize_dataset

    out, _ = trained
    a = read_keyword_store(summarize_dataset(synth12, out / "rl", tmp_path / "a.parquet"))
    b = read_keyword_store(summarize_dataset(synth12, out / "rl", tmp_path / "b.parquet", batch_size=5))
    assert set(a) == set(synth12.items)
    assert a == b  # greedy decoding is deterministic, whatever the batching
    meta = read_store_meta(tmp_path / "a.parquet")
    w = meta["reward_weights"]
    for r in a.values():
        assert r.has_image and r.image_rewards is not None and r.text_rewards is not None
        for kws, t in ((r.image_keywords, r.image_rewards), (r.text_keywords, r.text_rewards)):
            assert len(kws) <= 8 and t.r_len == -len(kws) and t.r_recon < 0
            assert t.reward == pytest.approx(w["a"] * t.r_info + w["b"] * t.r_recon + w["c"] * t.r_len, rel=1e-6)


def test_item_without_image_gets_no_image_keywords(trained, synth12, tmp_path):
    import copy

    from mmsrarec_edge.core.keyword_store import read_keyword_store
    from mmsrarec_edge.summarize.pipeline import summarize_dataset

    ds = copy.deepcopy(synth12)
    first = min(ds.items)
    ds.items[first].image = None
    store = read_keyword_store(summarize_dataset(ds, trained[0] / "sft", tmp_path / "kw.parquet", rewards=False))
    assert store[first].image_keywords == [] and not store[first].has_image and store[first].image_rewards is None
    assert store[first + 1].has_image and store[first].text_rewards is None


def run(*args, ok=True):
    r = subprocess.run([*CLI, *map(str, args)], capture_output=True, text=True, timeout=600)
    if ok:
        assert r.returncode == 0, r.stderr[-3000:]
    return r


@pytest.mark.slow
def test_cli_with_a_users_own_llama_checkpoint(synth12, tmp_path):
    """A tiny random Llama-decoder LLaVA saved to disk is trained via --base and used by `summarize`."""
    from mmsrarec_edge.models.mllm import MLLMConfig, build_mllm, build_tokenizer, save_mllm

    tok = build_tokenizer()
    cfg = MLLMConfig(decoder="llama", hidden_size=64, num_layers=1, num_heads=2, num_kv_heads=1, intermediate_size=96,
                     image_size=32, patch_size=16, vision_hidden_size=32, vision_layers=1, seed=5)
    save_mllm(build_mllm(cfg, tok), tok, tmp_path / "base")
    (tmp_path / "cfg.toml").write_text(
        "[summarizer]\n" + "\n".join(f"{k} = {v}" for k, v in TINY.items()) + "\n")
    out = tmp_path / "trained"
    r = run("train", "summarizer", synth12.root, "--out", out, "--base", tmp_path / "base", "--config",
            tmp_path / "cfg.toml", "--steps", 1, "--b", 0.05)
    assert "| sft |" in r.stdout and "| rl |" in r.stdout
    saved = json.loads((out / "rl" / "config.json").read_text())
    assert saved["text_config"]["model_type"] == "llama" and saved["text_config"]["hidden_size"] == 64
    assert saved["vision_config"]["image_size"] == 32
    log = json.loads((out / "train_log.json").read_text())
    assert log["base"] == str(tmp_path / "base") and log["config"]["b"] == 0.05 and len(log["grpo"]) == 1
    spec = json.loads((out / "rl" / "summarizer.json").read_text())["prompt_spec"]
    assert spec["num_image_tokens"] == 4  # (32 / 16) ** 2: taken from the checkpoint, not the default
    run("summarize", synth12.root, "--model", out, "--stage", "sft", "--out", tmp_path / "kw.parquet")
    from mmsrarec_edge.core.keyword_store import read_keyword_store, read_store_meta

    assert len(read_keyword_store(tmp_path / "kw.parquet")) == 12
    assert read_store_meta(tmp_path / "kw.parquet")["stage"] == "sft"


@pytest.mark.parametrize("args, needle", [
    (["summarize", "DS", "--model", "/nonexistent/m", "--out", "/tmp/kw.parquet"], "is not a summarizer"),
    (["train", "summarizer", "DS", "--out", "OUT", "--base", "/nonexistent/ckpt"], "not a model directory"),
])
def test_cli_errors_are_one_line(synth12, tmp_path, args, needle):
    args = [str(synth12.root) if a == "DS" else str(tmp_path / "o") if a == "OUT" else a for a in args]
    r = run(*args, ok=False)
    assert r.returncode == 2 and needle in r.stderr and "Traceback" not in r.stderr
