"""The recommender's prompts: ONE builder for training, evaluation, export and the torch-free runtime.

Every prompt is a (prefix, suffix) pair split where the candidate starts, so the runtime computes the shared prefix's
KV cache once per request and scores each candidate suffix against it:

    prefix: [bos] "predict if the user will choose the candidate next . user history : " kw, kw ; kw, kw ; ...
            " . similar users then chose : " kw, kw ; ... " . candidate :"
    suffix (style "verbose", the default): ... [" . sequential rank : 40"] " . will the user choose it ? answer :"
    suffix (style "compact"): " " title " : " kw, kw [" <image>" x N] [" . rank 40"] " ?"

The compact style states the question once, in the shared prefix ("predict if the user will choose the candidate
next"): a candidate's suffix holds only what is its own (title, keywords, image slots, rank hint) and a one-token
answer marker. The suffixes are most of a request's compute at real sizes (21 of them against one prefix): compact
saves 210 of ~600 suffix tokens and 29-31% of the FLOPs per recommendation at every ladder size, and ranks as well
as verbose when training converges (benchmarks/results/recommender/prompt_style/). It is not the default yet: at the
default seed the tiny default model under-converged with it on synthetic (the report's model and the demo's, NDCG@5
47 vs 55), see benchmarks/results/recommender/NOTES.md. A stored config without `style` was trained verbose.

The answer ("yes" / "no") is the next token; score = p(yes) / (p(yes) + p(no)) there. Prefix and suffix are ALWAYS
tokenized separately (ids = prefix_ids + suffix_ids), in training too, so what the runtime feeds is exactly what the
model was trained on. Keyword lists are truncated here, by the config, never by callers.

The optional "sequential rank" hint is SASRec-derived context (the candidate's rank among the whole catalog under the
SASRec user embedding, rounded to `rank_digits` significant digits); it is off unless the recommender was trained
with it (recommender.json's prompt config says).
The auxiliary training tasks' templates live here too, so all prompt text is in one file. Torch-free.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Callable, Sequence

IMAGE_TOKEN = "<image>"
ANSWER_WORDS = ("yes", "no")
PROMPT_STYLES = ("compact", "verbose")
NONE = "none"
Encode = Callable[[str], list[int]]


@dataclass
class PromptConfig:
    """The defaults are what `train recommender` trains with (one source: the CLI only overrides them)."""

    history_len: int = 5  # the paper's n; `train recommender` takes it from the protocol
    item_keywords: int = 6  # keywords shown per history item
    candidate_keywords: int = 6
    collab_items: int = 9  # keyword groups of the collaborative context (k neighbours x items per neighbour)
    collab_item_keywords: int = 6
    candidate_title: bool = True
    candidate_image: bool = False  # splice the candidate's image features into its suffix
    # SASRec-derived: the candidate's catalog rank, rounded. On: without it the tiny default model stayed near chance
    # on validation (benchmarks/results/recommender/NOTES.md).
    rank_hint: bool = True
    rank_digits: int = 2  # significant digits of the rank hint
    # "verbose": the question repeated per candidate; "compact": per-candidate tokens are the candidate's own plus " ?"
    # (29-31% fewer FLOPs per recommendation; not the default until the tiny model's training converges with it on
    # every seed, see the module docstring)
    style: str = "verbose"
    # A recommender trained elsewhere: its own prefix/suffix templates (core/prompt_template.py), None = the text above
    template: dict | None = None

    def __post_init__(self):
        if self.style not in PROMPT_STYLES:
            from .errors import UserError

            raise UserError(f"unknown prompt style {self.style!r}", f"use one of {', '.join(PROMPT_STYLES)}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict | None) -> "PromptConfig":
        """A stored prompt config (recommender.json, a bundle's config.json). A key it lacks takes STORED_DEFAULTS's
        value, what a config written without it meant (the rank hint did not exist, or was off), then the default."""
        d = {**STORED_DEFAULTS, **(d or {})}
        return cls(**{k: d[k] for k in cls.__dataclass_fields__ if k in d})


# Values of settings a stored config may lack: the defaults before they became the CLI's, so a config written then
# (every config is written whole by to_dict; hand-written ones may not be) reads as it did.
STORED_DEFAULTS = {"rank_hint": False, "rank_digits": 1, "collab_item_keywords": 4, "style": "verbose"}


def _clean(s: str) -> str:
    # A literal "<image>" in a title or keyword would open an image slot with no features behind it.
    return " ".join(str(s).replace(IMAGE_TOKEN, " ").replace(";", ",").split())


def _groups(groups: Sequence[Sequence[str]], per_group: int) -> str:
    parts = [", ".join(_clean(k) for k in list(g)[:per_group]) for g in groups]
    return " ; ".join(p for p in parts if p) or NONE


def _groups_t(groups: Sequence[Sequence[str]], per_group: int, t: dict) -> str:
    """_groups with a template's separators."""
    parts = [t["keyword_separator"].join(_clean(k) for k in list(g)[:per_group]) for g in groups]
    return t["group_separator"].join(p for p in parts if p) or t["empty"]


def rank_bucket(rank: int, digits: int = 1) -> str:
    """0-based catalog rank -> the 1-based rank rounded down to `digits` significant digits (1 digit: "1".."9",
    "10".."90", "100".."900", ...): exact where it matters most, coarse in the tail, independent of the catalog size."""
    r = int(rank) + 1
    p = 10 ** max(0, len(str(r)) - int(digits))
    return str((r // p) * p)


def prefix_text(history_keywords: Sequence[Sequence[str]], collab_keywords: Sequence[Sequence[str]] | None,
                cfg: PromptConfig | None = None) -> str:
    """history_keywords: one keyword list per history item (oldest first); collab_keywords: keyword groups of the
    collaborative context (None or empty: "none", the w/o-retrieval ablation)."""
    cfg = cfg or PromptConfig()
    hist = list(history_keywords)[-cfg.history_len:] if cfg.history_len else []
    collab = list(collab_keywords or [])[: cfg.collab_items]
    if cfg.template:
        from .prompt_template import render_prefix

        t = cfg.template
        return render_prefix(t, _groups_t(hist, cfg.item_keywords, t), _groups_t(collab, cfg.collab_item_keywords, t))
    hist, collab = _groups(hist, cfg.item_keywords), _groups(collab, cfg.collab_item_keywords)
    return (f"predict if the user will choose the candidate next . user history : {hist} . "
            f"similar users then chose : {collab} . candidate :")


def candidate_text(title: str, keywords: Sequence[str], n_image_tokens: int = 0, rank: int | None = None,
                   cfg: PromptConfig | None = None) -> str:
    cfg = cfg or PromptConfig()
    kws = ", ".join(_clean(k) for k in list(keywords)[: cfg.candidate_keywords]) or NONE
    head = f" {_clean(title)} : {kws}" if cfg.candidate_title else f" {kws}"
    image = (" " + " ".join([IMAGE_TOKEN] * n_image_tokens)) if n_image_tokens else ""
    hint = ""
    if cfg.rank_hint and rank is not None:
        label = " . rank" if cfg.style == "compact" else " . sequential rank :"
        hint = f"{label} {rank_bucket(rank, cfg.rank_digits)}"
    return head + image + hint


def suffix_text(title: str, keywords: Sequence[str], n_image_tokens: int = 0, rank: int | None = None,
                cfg: PromptConfig | None = None) -> str:
    cfg = cfg or PromptConfig()
    if cfg.rank_hint and rank is None:
        raise ValueError("this recommender's prompt carries the SASRec rank hint: pass the candidate's rank")
    if cfg.template:
        from .prompt_template import render_suffix

        t = cfg.template
        kws = t["keyword_separator"].join(_clean(k) for k in list(keywords)[: cfg.candidate_keywords]) or t["empty"]
        image = (" " + " ".join([IMAGE_TOKEN] * n_image_tokens)) if n_image_tokens else ""
        hint = rank_bucket(rank, cfg.rank_digits) if cfg.rank_hint and rank is not None else ""
        return render_suffix(t, _clean(title), kws, image, hint)
    marker = " ?" if cfg.style == "compact" else " . will the user choose it ? answer :"
    return candidate_text(title, keywords, n_image_tokens, rank, cfg) + marker


def prefix_ids(encode: Encode, bos_id: int | None, history_keywords, collab_keywords,
               cfg: PromptConfig | None = None) -> list[int]:
    return ([int(bos_id)] if bos_id is not None else []) + list(encode(prefix_text(history_keywords, collab_keywords,
                                                                                   cfg)))


def suffix_ids(encode: Encode, title: str, keywords, n_image_tokens: int = 0, rank: int | None = None,
               cfg: PromptConfig | None = None) -> list[int]:
    return list(encode(suffix_text(title, keywords, n_image_tokens, rank, cfg)))


def candidate_ids(encode: Encode, title: str, keywords: Sequence[str], has_image: bool, meta: dict) -> list[int] | None:
    """An item's suffix ids as the catalog may cache them (meta = recommender.json); None when the suffix depends on
    the request (the SASRec rank hint): the runtime then builds the suffix per request."""
    cfg = PromptConfig.from_dict(meta.get("prompt"))
    if cfg.rank_hint:
        return None
    n_img = int(meta.get("n_image_tokens", 0)) if cfg.candidate_image and has_image else 0
    return suffix_ids(encode, title, list(keywords), n_img, None, cfg)


# Auxiliary tasks (training only; LC-Rec style). Each is (prefix, suffix) -> target text + eos.
def next_keywords_suffix() -> str:
    return " what will the user choose next ? keywords :"


def next_title_suffix() -> str:
    return " what will the user choose next ? title :"


def title_from_keywords(keywords: Sequence[str], cfg: PromptConfig | None = None) -> tuple[str, str]:
    cfg = cfg or PromptConfig()
    kws = ", ".join(_clean(k) for k in list(keywords)[: cfg.candidate_keywords]) or NONE
    return f"an item is described by : {kws} .", " which item is it ? title :"


def keywords_from_title(title: str) -> tuple[str, str]:
    return f"item : {_clean(title)} .", " describe it with keywords :"


def keywords_target(keywords: Sequence[str], limit: int) -> str:
    return " " + (", ".join(_clean(k) for k in list(keywords)[:limit]) or NONE)


def title_target(title: str) -> str:
    return " " + _clean(title)
