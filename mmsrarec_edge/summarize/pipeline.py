"""Stage 1 end to end: train the item summarizer (SFT, then GRPO) and summarize a dataset into a keyword store.

`train_summarizer` writes one directory:

    OUT/sft/            the SFT-only summarizer (LLaVA safetensors + tokenizer + summarizer.json): the "without RL"
                        ablation
    OUT/rl/             the GRPO summarizer (LoRA merged), absent with sft_only
    OUT/reconstructor/  the frozen reference LM behind R_recon
    OUT/train_log.json  config, item split, loss curves, the per-step GRPO reward curve, held-out figures before/after
                        RL, the keyword vocabulary before/after RL ("vocabulary") and the collapse check ("collapse")

Held-out items (cfg.held_out_fraction, drawn with cfg.seed) are never trained on, by the summarizer or by the reference
LM; the before/after-RL comparison is made on them with greedy decoding.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from ..core.errors import UserError
from ..core.io_utils import atomic_dir, write_json
from ..core.keywords import match_counts, precision_recall
from ..core.outputs import SUMMARIZER
from ..core.progress import progress_bar
from ..core.summary_prompts import PromptSpec, prompt_ids, target_ids
from ..data.schema import Dataset
from .config import SummarizerConfig
from .generation import Prompt, decode_keywords, generate
from .targets import SYNTH_SYNONYMS, TfidfKeywords, attribute_keywords, has_attributes, text_words

SUMMARIZER_META = "summarizer.json"


def split_items(item_ids, held_out_fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """(train, held-out) item ids; deterministic in the seed."""
    ids = np.asarray(sorted(int(i) for i in item_ids))
    perm = np.random.default_rng(seed).permutation(len(ids))
    n_held = int(round(held_out_fraction * len(ids)))
    return sorted(ids[perm[n_held:]].tolist()), sorted(ids[perm[:n_held]].tolist())


def choose_targets(ds: Dataset, cfg: SummarizerConfig) -> str:
    if cfg.targets != "auto":
        if cfg.targets == "attributes" and not has_attributes(ds.items.values(), cfg.text_attributes):
            raise UserError(f"targets=attributes but not every item has attributes {list(cfg.text_attributes)}",
                            "use targets=tfidf (or auto) for datasets without ground-truth attributes")
        return cfg.targets
    return "attributes" if has_attributes(ds.items.values(), cfg.text_attributes) else "tfidf"


def pseudo_keywords(ds: Dataset, cfg: SummarizerConfig, mode: str) -> dict[int, dict[str, list[str]]]:
    """SFT targets per item and task."""
    if mode == "attributes":
        return {i: {"image": attribute_keywords(it.attributes, cfg.image_attributes),
                    "text": attribute_keywords(it.attributes, cfg.text_attributes)} for i, it in ds.items.items()}
    tf = TfidfKeywords(it.text for it in ds.items.values())
    out = {}
    for i, it in ds.items.items():
        kw = tf.keywords(it.text, cfg.tfidf_k)
        out[i] = {"image": kw, "text": kw}
    return out


def encoder_of(tokenizer) -> Callable[[str], list[int]]:
    return lambda s: tokenizer(s, add_special_tokens=False)["input_ids"]


def prompt_spec(model, tokenizer, cfg: SummarizerConfig) -> PromptSpec:
    from ..models import families
    from ..models.mllm import num_image_tokens

    if tokenizer.eos_token_id is None:
        raise UserError("the checkpoint's tokenizer has no eos token", "set eos_token in its tokenizer_config.json")
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    return PromptSpec(eos_id=int(tokenizer.eos_token_id), pad_id=int(pad),
                      image_token_id=families.image_token_id(model), num_image_tokens=num_image_tokens(model),
                      bos_id=None if tokenizer.bos_token_id is None else int(tokenizer.bos_token_id),
                      max_text_tokens=cfg.max_text_tokens, **families.image_wrap(model))


def load_pixels(ds: Dataset, ids, pre, label: str = "loading images") -> dict[int, np.ndarray]:
    """item id -> pixels by `pre` (the model's imaging.ImagePreprocess; an int: the default square resize)."""
    from ..core.imaging import ImagePreprocess, load_image

    pre = ImagePreprocess.square(pre) if isinstance(pre, int) else pre
    ids = [i for i in ids if ds.items[i].image]
    out = {}
    with progress_bar(label, len(ids)) as adv:
        for i in ids:
            out[i] = pre(load_image(ds.image_path(i)))
            adv()
    return out


def make_prompts(ds: Dataset, ids, encode, spec: PromptSpec, pixels: dict, tasks=("image", "text")) -> list[Prompt]:
    out = []
    for i in ids:
        for task in tasks:
            if task == "image" and i not in pixels:
                continue  # no image, no image keywords
            out.append(Prompt(i, task, prompt_ids(encode, spec, task, ds.items[i].text),
                              pixels[i] if task == "image" else None))
    return out


def summarize_prompts(model, tokenizer, spec: PromptSpec, prompts: list[Prompt], max_new_tokens: int,
                      max_keywords: int, batch_size: int = 32, label: str = "summarizing") -> list[list[str]]:
    """Greedy keywords per prompt (deterministic)."""
    # Batches of one task and similar length waste less compute on padding.
    order = sorted(range(len(prompts)), key=lambda k: (prompts[k].task, len(prompts[k].ids)))
    with progress_bar(label, len(prompts)) as adv:
        comps = generate(model, [prompts[k] for k in order], spec, max_new_tokens, batch_size=batch_size,
                         progress=adv)
    out: list[list[str]] = [[] for _ in prompts]
    for k, c in zip(order, comps):
        out[k] = decode_keywords(tokenizer, c, spec, max_keywords)
    return out


def score_keywords(ds: Dataset, prompts: list[Prompt], keywords: list[list[str]], reward_model, cfg,
                   gold: bool) -> dict:
    """Mean reward terms and keyword counts per task (and both), plus precision/recall against attributes."""
    rb = reward_model.score([p.item_id for p in prompts], keywords)
    out = {}
    for task in ("image", "text", "all"):
        rows = [k for k, p in enumerate(prompts) if task in ("all", p.task)]
        if not rows:
            continue
        d = {"n": len(rows), "total": float(np.mean(rb.total[rows])), "r_info": float(np.mean(rb.r_info[rows])),
             "r_recon": float(np.mean(rb.r_recon[rows])), "r_len": float(np.mean(rb.r_len[rows])),
             "keywords": float(np.mean(rb.n_keywords[rows])),
             "empty": float(np.mean([len(keywords[k]) == 0 for k in rows]))}
        if gold:
            keys = {"image": cfg.image_attributes, "text": cfg.text_attributes}
            d.update({f"gold_{k}": v for k, v in precision_recall(
                match_counts(keywords[r], attribute_keywords(ds.items[prompts[r].item_id].attributes,
                                                            keys[prompts[r].task]), SYNTH_SYNONYMS)
                for r in rows).items()})
        out[task] = d
    out["all"]["per_prompt_total"] = [round(float(x), 6) for x in rb.total]  # for paired before/after comparisons
    return out


def save_summarizer(model, tokenizer, spec: PromptSpec, cfg: SummarizerConfig, out_dir: Path, stage: str) -> None:
    from ..models.mllm import save_mllm

    save_mllm(model, tokenizer, out_dir)
    write_json(Path(out_dir) / SUMMARIZER_META, {
        "format": "mmsrarec-summarizer", "version": 1, "stage": stage, "prompt_spec": spec.to_dict(),
        "max_new_tokens": cfg.max_new_tokens, "max_keywords": cfg.max_keywords,
        "reward_weights": {"a": cfg.a, "b": cfg.b, "c": cfg.c}, "reward_scale": cfg.reward_scale})


def resolve_model_dir(path: Path, stage: str = "rl") -> Path:
    """A summarizer checkpoint, given it or a `train summarizer` output directory (then its rl/ or sft/)."""
    path = Path(path)
    if (path / SUMMARIZER_META).exists():
        return path
    for cand in ([path / stage] + ([path / "sft"] if stage == "rl" else [])):
        if (cand / SUMMARIZER_META).exists():
            return cand
    raise UserError(f"{path} is not a summarizer (no {SUMMARIZER_META} in it, in {path / stage} or in {path / 'sft'})",
                    "train one with `mmsrarec-edge train summarizer DATASET --out DIR`")


def load_summarizer(path: Path):
    """(model, tokenizer, PromptSpec, meta) of a saved summarizer checkpoint."""
    from ..models.mllm import load_mllm

    path = Path(path)
    meta = json.loads((path / SUMMARIZER_META).read_text())
    model, tok = load_mllm(path)
    return model, tok, PromptSpec.from_dict(meta["prompt_spec"]), meta


def vocabulary_stats(prompts: list[Prompt], keywords: list[list[str]]) -> dict:
    """Distinct keywords (lower-cased) over the items of `prompts`, keywords per prompt and the items with none, for
    both tasks together ("all") and per task: how a keyword store's vocabulary looks before and after RL."""
    out = {}
    for task in ("all", "image", "text"):
        rows = [k for k, p in enumerate(prompts) if task in ("all", p.task)]
        if not rows:
            continue
        items = {prompts[k].item_id for k in rows}
        per_item: dict[int, set] = {i: set() for i in items}
        for k in rows:
            per_item[prompts[k].item_id].update(" ".join(w.lower().split()) for w in keywords[k])
        distinct = set().union(*per_item.values())
        out[task] = {"items": len(items), "distinct_keywords": len(distinct),
                     "keywords_per_item": round(float(np.mean([len(v) for v in per_item.values()])), 3),
                     "keywords_per_prompt": round(float(np.mean([len(keywords[k]) for k in rows])), 3),
                     "items_without_keywords": sum(1 for v in per_item.values() if not v)}
    return out


def collapse_check(vocab: dict, cfg: SummarizerConfig) -> str | None:
    """A warning when the summarizer's vocabulary collapsed, else None. `vocab`: vocabulary_stats of the held-out items
    for "targets", "sft" and (after RL) "rl"; the final model is rl, else sft. Collapsed when
    - RL cut the distinct keywords below cfg.collapse_distinct_ratio x the SFT model's, or
    - the final model's distinct keywords are below cfg.collapse_target_ratio x its SFT targets' (a summarizer that
      writes the same few words for every item, RL or not), or
    - more than cfg.collapse_empty_share of the items have no keyword at all."""
    t, s = vocab["targets"]["all"], vocab["sft"]["all"]
    stage = "rl" if "rl" in vocab else "sft"
    f = vocab[stage]["all"]
    n = f["items"]
    why = []
    if stage == "rl" and f["distinct_keywords"] < cfg.collapse_distinct_ratio * s["distinct_keywords"]:
        why.append(f"RL cut the distinct keywords over {n} held-out items from {s['distinct_keywords']} to "
                   f"{f['distinct_keywords']} (keywords per item {s['keywords_per_item']:.2f} -> "
                   f"{f['keywords_per_item']:.2f})")
    if f["distinct_keywords"] < cfg.collapse_target_ratio * t["distinct_keywords"]:
        why.append(f"the {stage} model writes {f['distinct_keywords']} distinct keywords over {n} held-out items, its "
                   f"SFT targets {t['distinct_keywords']}")
    if f["items_without_keywords"] > cfg.collapse_empty_share * n:
        why.append(f"{f['items_without_keywords']} of {n} held-out items have no keyword "
                   f"({s['items_without_keywords']} after SFT)")
    if not why:
        return None
    return ("the summarizer collapsed: " + "; ".join(why) +
            f" (reward_scale {cfg.reward_scale}, weights a={cfg.a} b={cfg.b} c={cfg.c})")


@dataclass
class ItemSplit:
    """Which items train, which are held out (and which of those are evaluated), and every item's SFT targets."""

    mode: str  # "attributes" or "tfidf"
    train_ids: list[int]
    held_ids: list[int]
    eval_ids: list[int]
    targets: dict[int, dict[str, list[str]]]


def train_summarizer(ds: Dataset, out: Path, cfg: SummarizerConfig | None = None, base: Path | None = None,
                     sft_only: bool = False, echo=print) -> dict:
    """SFT then GRPO on `ds`; writes OUT (see module doc) atomically and returns the training log."""
    import torch

    from ..models.mllm import image_preprocess

    cfg = cfg or SummarizerConfig()
    torch.set_num_threads(cfg.threads)
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    split = split_dataset(ds, cfg)
    echo(f"targets: {split.mode}; items: {len(split.train_ids)} train, {len(split.held_ids)} held out "
         f"({len(split.eval_ids)} evaluated)")
    model, tok, spec = init_summarizer(base, cfg)
    encode = encoder_of(tok)
    pixels = load_pixels(ds, [*split.train_ids, *split.eval_ids], image_preprocess(model))
    warm, trainable = warm_start(model, split, pixels, encode, base, cfg)
    from ..models.device import place, resolve, unplace

    placement = resolve(cfg.placement())
    large = placement.large(model)  # decoders from 1B up: LoRA in SFT too, base weights in the dtype
    warm["placement"] = place(model, placement, lora=large)
    timings["setup"] = time.perf_counter() - t0

    t = time.perf_counter()
    recon, recon_losses = train_reference_lm(ds, split, cfg)
    rewards = reward_model(ds, split, recon, cfg)
    timings["reference_lm"] = time.perf_counter() - t
    echo(f"reference LM: {timings['reference_lm']:.0f} s, final loss {np.mean(recon_losses[-20:] or [0]):.3f}")

    gold = split.mode == "attributes"
    eval_prompts = make_prompts(ds, split.eval_ids, encode, spec, pixels)
    evals = {"targets": score_keywords(ds, eval_prompts, [split.targets[p.item_id][p.task] for p in eval_prompts],
                                       rewards, cfg, gold)}

    t = time.perf_counter()
    train_prompts = make_prompts(ds, split.train_ids, encode, spec, pixels)
    model, sft_losses = sft_warm_start(model, train_prompts, split, spec, encode, trainable, cfg, placement, large)
    timings["sft"] = time.perf_counter() - t
    echo(f"SFT: {timings['sft']:.0f} s, final loss {np.mean(sft_losses[-20:] or [0]):.3f}")

    def evaluate(m, label):
        with placement.autocast():
            kws = summarize_prompts(m, tok, spec, eval_prompts, cfg.max_new_tokens, cfg.max_keywords,
                                    label=f"held-out keywords ({label})")
        return score_keywords(ds, eval_prompts, kws, rewards, cfg, gold), kws

    evals["sft"], sft_kws = evaluate(model, "SFT")
    kws = {"sft": sft_kws}
    grpo_log: list[dict] = []
    with atomic_dir(out, marker=SUMMARIZER) as tmp:
        save_summarizer(unplace(model), tok, spec, cfg, tmp / "sft", "sft")  # saved on the CPU in fp32
        place(model, placement, lora=large)
        recon.save(tmp / "reconstructor")
        if not sft_only and cfg.grpo_steps:
            t = time.perf_counter()
            model, grpo_log = reinforce(model, tok, spec, train_prompts, rewards, cfg)
            timings["grpo"] = time.perf_counter() - t
            first, last = (np.mean([e["total"] for e in g]) for g in (grpo_log[:10], grpo_log[-10:]))
            echo(f"GRPO: {timings['grpo']:.0f} s, mean reward first/last 10 steps {first:.4f} / {last:.4f}")
            evals["rl"], kws["rl"] = evaluate(model, "RL")
            save_summarizer(unplace(model), tok, spec, cfg, tmp / "rl", "rl")
        timings["total"] = time.perf_counter() - t0
        log = training_log(ds, split, cfg, base, warm, timings, recon_losses, sft_losses, grpo_log, evals,
                           eval_prompts, kws)
        log["vocabulary"] = {"targets": vocabulary_stats(eval_prompts, [split.targets[p.item_id][p.task]
                                                                        for p in eval_prompts]),
                             **{name: vocabulary_stats(eval_prompts, k) for name, k in kws.items()}}
        log["collapse"] = collapse_check(log["vocabulary"], cfg)
        write_json(tmp / "train_log.json", log)
    return log


def split_dataset(ds: Dataset, cfg: SummarizerConfig) -> ItemSplit:
    """Hold out cfg.held_out_fraction of the items (then subsample training items to cfg.max_train_items, evaluate
    at most cfg.max_eval_items held-out ones) and pick the SFT targets."""
    mode = choose_targets(ds, cfg)
    train_ids, held_ids = split_items(ds.items, cfg.held_out_fraction, cfg.seed)
    if cfg.max_train_items and len(train_ids) > cfg.max_train_items:
        rng = np.random.default_rng(cfg.seed + 1)
        train_ids = sorted(rng.choice(train_ids, cfg.max_train_items, replace=False).tolist())
    eval_ids = held_ids[: cfg.max_eval_items] if cfg.max_eval_items else held_ids
    if len(train_ids) < 2:
        raise UserError(f"only {len(train_ids)} training item(s) after holding out {len(held_ids)}",
                        "use a larger dataset or a smaller held_out_fraction")
    return ItemSplit(mode, train_ids, held_ids, eval_ids, pseudo_keywords(ds, cfg, mode))


def init_summarizer(base: Path | None, cfg: SummarizerConfig):
    """The MLLM to train: `base` (a user's LLaVA checkpoint) or the embedded default, fresh. Returns (model,
    tokenizer, PromptSpec)."""
    from ..models.mllm import MLLMConfig, build_mllm, build_tokenizer, load_mllm

    if base is not None:
        model, tok = load_mllm(base)
        from ..models import families

        if not families.is_llava(model):  # other pixel layouts (Qwen: also 3-D positions) are not in SFT/GRPO
            raise UserError(f"train summarizer does not train {families.family_of(model)} checkpoints yet",
                            "export it as it is (export --summarizer DIR), or train a LLaVA-family summarizer")
    else:
        tok = build_tokenizer()
        model = build_mllm(MLLMConfig(seed=cfg.seed), tok)
    return model, tok, prompt_spec(model, tok, cfg)


def warm_start(model, split: ItemSplit, pixels: dict, encode, base: Path | None, cfg: SummarizerConfig):
    """The embedded default only (nothing for a `base` checkpoint): MiniLM token embeddings and the projector's
    scale (embeddings.py), then, with cfg.align_steps, vision-keyword alignment (align.py). Returns (the warm start's
    log, the SFT's `trainable(name)` filter: None = every parameter, else frozen token embeddings)."""
    import torch

    from .align import align_vision
    from .embeddings import warm_start_default

    if base is not None:
        return {}, None
    trainable = None
    with_img = [i for i in split.train_ids if i in pixels]
    train_pix = np.stack([pixels[i] for i in with_img]) if with_img else None
    warm = warm_start_default(model, torch.from_numpy(train_pix[:64]) if with_img else None, cfg.seed)
    if cfg.freeze_embeddings:
        def trainable(name: str) -> bool:  # tied: the LM head is the same tensor
            return "embed_tokens" not in name and "lm_head" not in name
    if cfg.align_steps and len(with_img) > 1:
        with progress_bar("aligning vision to keywords", cfg.align_steps) as adv:
            warm["align_loss"] = align_vision(
                model, train_pix, [encode(" ".join(split.targets[i]["image"])) for i in with_img], cfg.align_steps,
                seed=cfg.seed, progress=adv)
    return warm, trainable


def _recon_pools(ds: Dataset, ids, targets: dict, k: int) -> list[list[str]]:
    tf = TfidfKeywords(ds.items[i].text for i in ids)
    pools = []
    for i in ids:
        words = list(dict.fromkeys([*targets[i]["text"], *targets[i]["image"], *tf.keywords(ds.items[i].text, 2 * k),
                                    *text_words(ds.items[i].title)]))
        pools.append(words)
    return pools


def train_reference_lm(ds: Dataset, split: ItemSplit, cfg: SummarizerConfig):
    """The frozen reference LM behind R_recon (reconstructor.py), trained on the training items only. Returns
    (Reconstructor, loss curve)."""
    from ..models.mllm import build_tokenizer
    from .reconstructor import Reconstructor, compact_vocab, train_reconstructor

    rtok = build_tokenizer()
    recon = Reconstructor.build(rtok, compact_vocab(rtok, [it.text for it in ds.items.values()], cfg.recon_vocab),
                                cfg.recon_hidden, cfg.recon_layers, cfg.max_text_tokens, cfg.seed)
    with progress_bar("training reference LM (R_recon)", cfg.recon_steps) as adv:
        losses = train_reconstructor(recon, [ds.items[i].text for i in split.train_ids],
                                     _recon_pools(ds, split.train_ids, split.targets, cfg.tfidf_k), cfg.recon_steps,
                                     cfg.recon_batch_size, cfg.recon_lr, cfg.max_keywords, cfg.seed, adv)
    return recon, losses


def reward_model(ds: Dataset, split: ItemSplit, recon, cfg: SummarizerConfig):
    """R = a R_info + b R_recon + c R_len over the training and evaluated items' texts (rewards.py)."""
    from .rewards import RewardModel, SentenceEncoder

    texts = {i: ds.items[i].text for i in [*split.train_ids, *split.eval_ids]}
    return RewardModel(SentenceEncoder(), recon, texts, cfg.a, cfg.b, cfg.c, cfg.reward_scale)


def sft_warm_start(model, train_prompts: list[Prompt], split: ItemSplit, spec: PromptSpec, encode, trainable,
                   cfg: SummarizerConfig, placement=None, lora: bool = False):
    """SFT on the pseudo-keywords of every training prompt (sft.py); with `lora` (a decoder from 1B up) LoRA
    adapters (cfg.lora_r, cfg.lora_alpha) merged afterwards. Returns (the model, the loss curve)."""
    from ..models.training import add_lora
    from .sft import SFTExample, train_sft

    examples = [SFTExample(p, target_ids(encode, spec, split.targets[p.item_id][p.task])) for p in train_prompts]
    net = add_lora(model, cfg.lora_r, cfg.lora_alpha, cfg.lora_dropout) if lora else model
    if lora:
        def trainable(name: str) -> bool:
            return "lora_" in name
    with progress_bar("SFT warm start", cfg.sft_steps) as adv:
        losses = train_sft(net, examples, spec, cfg.sft_steps, cfg.sft_batch_size, cfg.sft_lr, cfg.sft_warmup,
                           cfg.seed, adv, trainable=trainable, placement=placement)
    return (net.merge_and_unload().eval() if lora else model), losses


def reinforce(model, tok, spec: PromptSpec, train_prompts: list[Prompt], rewards, cfg: SummarizerConfig):
    """GRPO with LoRA on the training prompts (grpo.py). Returns (the merged model, per-step log)."""
    from .grpo import train_grpo

    with progress_bar("GRPO", cfg.grpo_steps) as adv:
        return train_grpo(model, tok, spec, train_prompts, rewards, cfg, adv)


def training_log(ds: Dataset, split: ItemSplit, cfg: SummarizerConfig, base: Path | None, warm: dict,
                 timings: dict, recon_losses: list, sft_losses: list, grpo_log: list, evals: dict,
                 eval_prompts: list[Prompt], kws: dict) -> dict:
    """train_log.json: config, item split, loss and reward curves, held-out evaluations, 40 sample keyword sets."""
    samples = [{"item_id": p.item_id, "task": p.task, "target": split.targets[p.item_id][p.task],
                "sft": kws["sft"][k], **({"rl": kws["rl"][k]} if "rl" in evals else {})}
               for k, p in enumerate(eval_prompts[:40])]
    return {"format": "mmsrarec-summarizer-train-log", "config": cfg.to_dict(), "base": str(base) if base else None,
            "dataset": {"name": ds.name, "items": len(ds.items), "train_items": len(split.train_ids),
                        "held_out_items": len(split.held_ids), "evaluated_items": len(split.eval_ids),
                        "targets": split.mode},
            "held_out_ids": split.held_ids, "warm_start": warm,
            "timings_s": {k: round(v, 2) for k, v in timings.items()},
            "reference_lm_loss": recon_losses, "sft_loss": sft_losses, "grpo": grpo_log, "eval": evals,
            "samples": samples}


def summarize_dataset(ds: Dataset, model_dir: Path, out: Path, batch_size: int = 32, reconstructor: Path | None = None,
                      rewards: bool = True, echo=print) -> Path:
    """Greedy image and text keywords for every item of `ds` -> keyword store at `out` (atomic)."""
    from ..core.keyword_store import ItemKeywords, RewardTerms, write_keyword_store
    from ..models.mllm import image_preprocess
    from .reconstructor import Reconstructor
    from .rewards import RewardModel, SentenceEncoder

    model_dir = Path(model_dir)
    model, tok, spec, meta = load_summarizer(model_dir)
    pixels = load_pixels(ds, list(ds.items), image_preprocess(model))
    prompts = make_prompts(ds, sorted(ds.items), encoder_of(tok), spec, pixels)
    kws = summarize_prompts(model, tok, spec, prompts, meta["max_new_tokens"], meta["max_keywords"], batch_size)
    rows = {i: ItemKeywords(i, has_image=i in pixels) for i in ds.items}
    scored = None
    if rewards:
        rdir = Path(reconstructor) if reconstructor else model_dir.parent / "reconstructor"
        recon = Reconstructor.load(rdir)
        w = meta["reward_weights"]
        rm = RewardModel(SentenceEncoder(), recon, {i: it.text for i, it in ds.items.items()}, w["a"], w["b"], w["c"])
        scored = rm.score([p.item_id for p in prompts], kws)
    for k, p in enumerate(prompts):
        row = rows[p.item_id]
        terms = None if scored is None else RewardTerms(float(scored.r_info[k]), float(scored.r_recon[k]),
                                                        float(scored.r_len[k]), float(scored.total[k]))
        if p.task == "image":
            row.image_keywords, row.image_rewards = kws[k], terms
        else:
            row.text_keywords, row.text_rewards = kws[k], terms
    write_keyword_store(out, rows.values(), {"model": str(model_dir), "stage": meta.get("stage"),
                                             "dataset": ds.name, "reward_weights": meta.get("reward_weights"),
                                             "rewards": rewards})
    return Path(out)
