"""Cold-start item summarization with the exported summarizer: image and text keywords for a new item, torch-free.

As in training (summarize/prompts.py), an item's image and its text are summarized SEPARATELY, by two prompts that never
see the other modality: the image prompt is [bos] <image> x N "keywords of the image :", with the vision graph's
features spliced over the N slots; the text prompt is [bos] "text :" <text> "keywords of the text :". Both prompts run
as one left-padded batch through greedy decoding with the KV cache in numpy: prefill at past length 0, then one token
per step, position ids counting real tokens only (cumsum(mask) - 1, as transformers' generate does), the tokens of
`suppressed_token_ids` masked before argmax, a row stopping at eos, all stopping at `max_new_tokens`. The decoded text
goes through the summarizer's own keyword parser (`parse_keywords`). Images go through `imaging.preprocess`, the
function training uses, so both see identical pixels. An item without an image gets no image keywords; an empty text
gets no text keywords. Torch-free.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Protocol, Sequence

import numpy as np

from ..core.errors import BundleError, UserError
from ..core.imaging import CLIP_MEAN, CLIP_STD, ImagePreprocess, config_preprocess, load_image
from ..core.keywords import parse_keywords
from ..core.rope_index import MRope, rope_from_config, text_positions
from ..core.summary_prompts import (
    PromptSpec,
    completion_until_eos,
    image_prompt_ids,
    suppressed_token_ids,
    text_prompt_ids,
)
from .bundle_config import SUMMARIZER, check_config
from .llm import Decoder, Embedder, ImageEncoder
from .sessions import SessionConfig, open_bundle_graph
from .tokenizer import Codec


class TextCodec(Protocol):
    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: Sequence[int]) -> str: ...


@dataclass
class ItemSummary:
    image_keywords: list[str] = field(default_factory=list)
    text_keywords: list[str] = field(default_factory=list)
    image_output: str = ""  # the decoded generations, before keyword parsing
    text_output: str = ""

    @property
    def keywords(self) -> list[str]:
        """Text keywords, then the image keywords not already among them (as the keyword store's ItemKeywords)."""
        return list(dict.fromkeys([*self.text_keywords, *self.image_keywords]))

    def to_dict(self) -> dict:
        return {"image_keywords": self.image_keywords, "text_keywords": self.text_keywords,
                "keywords": self.keywords, "image_output": self.image_output, "text_output": self.text_output}


@dataclass(frozen=True)
class GreedyStep:
    """One step of greedy decoding: the decoder's logits [B, V] as it returned them (before suppression), the rows
    still generating (whose logits pick a token) and the token each row emits (pad for finished rows)."""

    logits: np.ndarray
    live: np.ndarray
    tokens: np.ndarray


def greedy_steps(decoder: Decoder, embedder: Embedder, prompts: Sequence[Sequence[int]], spec: PromptSpec,
                 max_new_tokens: int, features: Sequence[Sequence[np.ndarray] | None] | None = None,
                 rope: MRope | None = None) -> Iterator[GreedyStep]:
    """The greedy loop (module docstring), one GreedyStep per generated position: what `greedy_generate` collects,
    and what the export's parity gate compares with PyTorch step by step. `rope`: a multimodal-rope decoder's
    position scheme (core/rope_index.py): 3-D prompt positions, each new token at the row's next position."""
    if decoder.layout.head != "last":
        raise ValueError("generation needs a decoder exported with the `last` head")
    B = len(prompts)
    if B == 0:
        return
    embeds, mask = embedder.embed_rows([list(p) for p in prompts], spec.pad_id, left=True, features=features)
    if rope is None:
        positions = text_positions(mask)
    else:
        positions, next_position = rope.batch(prompts, mask.shape[1], left=True)
    logits, past = decoder.run(embeds, mask, positions)
    suppressed = np.asarray(suppressed_token_ids(spec), np.int64)
    done = np.zeros(B, bool)
    for step in range(max_new_tokens):
        masked = np.array(logits, np.float32)
        masked[:, suppressed] = -np.inf
        nxt = np.where(done, spec.pad_id, masked.argmax(-1))
        yield GreedyStep(logits, ~done, nxt)
        done |= nxt == spec.eos_id
        if done.all() or step == max_new_tokens - 1:
            break
        mask = np.concatenate([mask, np.ones((B, 1), np.int64)], axis=1)
        if rope is None:
            positions = mask.sum(-1, keepdims=True) - 1
        else:
            positions = np.broadcast_to(next_position[None, :, None], (3, B, 1))
            next_position = next_position + 1
        logits, past = decoder.run(embedder(nxt[:, None]), mask, positions, past)


def greedy_generate(decoder: Decoder, embedder: Embedder, prompts: Sequence[Sequence[int]], spec: PromptSpec,
                    max_new_tokens: int, features: Sequence[Sequence[np.ndarray] | None] | None = None,
                    rope: MRope | None = None) -> list[list[int]]:
    """Greedy completions, one per prompt, up to and including eos when one was generated (the format of the
    PyTorch side's summarize.generation.generate)."""
    out: list[list[int]] = [[] for _ in prompts]
    for step in greedy_steps(decoder, embedder, prompts, spec, max_new_tokens, features, rope):
        for r in np.flatnonzero(step.live):
            out[r].append(int(step.tokens[r]))
    return out


class ItemSummarizer:
    """The exported summarizer: vision + embed + `last`-head decoder sessions, the tokenizer and the prompt spec."""

    def __init__(self, vision: ImageEncoder | None, embedder: Embedder, decoder: Decoder, codec: TextCodec,
                 spec: PromptSpec, image_size: int, max_new_tokens: int = 20, max_keywords: int = 8,
                 mean=CLIP_MEAN, std=CLIP_STD, rope: MRope | None = None,
                 preprocess: ImagePreprocess | None = None):
        self.vision, self.embedder, self.decoder, self.codec = vision, embedder, decoder, codec
        self.rope = rope
        self.spec, self.image_size = spec, int(image_size)
        # the checkpoint's preprocessing (config.json); mean/std alone: the default square resize
        self.preprocess = preprocess or ImagePreprocess.square(self.image_size, mean, std)
        self.max_new_tokens, self.max_keywords = int(max_new_tokens), int(max_keywords)
        if vision is not None and vision.tokens is not None and vision.tokens != spec.num_image_tokens:
            raise ValueError(f"vision graph gives {vision.tokens} image tokens, prompt spec says "
                             f"{spec.num_image_tokens}")

    def pixels(self, image) -> np.ndarray:
        """A path, a PIL image or an already preprocessed float32 [3, S, S] array -> [3, S, S]."""
        if isinstance(image, (str, Path)):
            image = load_image(Path(image))
        if isinstance(image, np.ndarray):
            if image.shape != (3, self.image_size, self.image_size):
                raise UserError(f"preprocessed image has shape {image.shape}, expected (3, {self.image_size}, "
                                f"{self.image_size})")
            return image.astype(np.float32, copy=False)
        return self.preprocess(image)

    def summarize(self, image=None, text: str | None = None) -> ItemSummary:
        prompts, feats, tasks = [], [], []
        if image is not None:
            if self.vision is None:
                raise UserError("this bundle's summarizer has no vision graph", "re-export it with summarizer.vision")
            prompts.append(image_prompt_ids(self.codec.encode, self.spec))
            feats.append([self.vision(self.pixels(image)[None])[0]])
            tasks.append("image")
        if text is not None and text.strip():
            prompts.append(text_prompt_ids(self.codec.encode, self.spec, text))
            feats.append(None)
            tasks.append("text")
        result = ItemSummary()
        if not prompts:
            return result
        completions = greedy_generate(self.decoder, self.embedder, prompts, self.spec, self.max_new_tokens, feats,
                                      self.rope)
        for task, ids in zip(tasks, completions):
            decoded = self.codec.decode(completion_until_eos(ids, self.spec.eos_id))
            keywords = parse_keywords(decoded, max_keywords=self.max_keywords)
            setattr(result, f"{task}_output", decoded)
            setattr(result, f"{task}_keywords", keywords)
        return result


def prompt_spec_from_config(conf: dict) -> PromptSpec:
    """The summarizer's PromptSpec from its config.json section: the saved `prompt_spec` when the export kept the
    checkpoint's summarizer.json, else rebuilt from the special tokens and image-token fields."""
    if isinstance(conf.get("prompt_spec"), dict):
        return PromptSpec.from_dict(conf["prompt_spec"])
    special = conf.get("special_tokens", {})
    try:
        return PromptSpec(eos_id=int(special["eos_id"]), pad_id=int(special["pad_id"]),
                          image_token_id=int(conf["image_token_id"]), num_image_tokens=int(conf["num_image_tokens"]),
                          bos_id=None if special.get("bos_id") is None else int(special["bos_id"]))
    except (KeyError, TypeError) as exc:
        raise BundleError(f"config.json: summarizer section lacks {exc}", "re-export the bundle") from exc


def load_item_summarizer(manifest, cfg: SessionConfig) -> ItemSummarizer:
    """The summarizer of a verified bundle (runtime.bundle.Manifest), its sessions opened per `cfg`."""
    config = manifest.config()
    check_config(config, SUMMARIZER)  # a wrong type: one line naming the key, not a ValueError below
    conf = config.get("summarizer")
    if not conf or not manifest.has_graph("summarizer.decoder") or not manifest.has_graph("summarizer.embed"):
        raise BundleError(f"bundle {manifest.root} has no summarizer",
                          "export it with a profile whose graphs include summarizer.embed and summarizer.decoder")
    spec = prompt_spec_from_config(conf)
    vision = ImageEncoder(open_bundle_graph(manifest, "summarizer.vision", cfg)) \
        if manifest.has_graph("summarizer.vision") else None
    embedder = Embedder(open_bundle_graph(manifest, "summarizer.embed", cfg), spec.image_token_id)
    decoder = Decoder(open_bundle_graph(manifest, "summarizer.decoder", cfg))
    limit = int(config.get("limits", {}).get("max_new_tokens", 32))
    return ItemSummarizer(vision, embedder, decoder, Codec(manifest.path(conf.get("tokenizer", "tokenizer.json"))),
                          spec, int(conf["image_size"]), min(int(conf.get("max_new_tokens", 20)), limit),
                          int(conf.get("max_keywords", 8)), rope=rope_from_config(conf.get("rope")),
                          preprocess=config_preprocess(config, "summarizer"))
