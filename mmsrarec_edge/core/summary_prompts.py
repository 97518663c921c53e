"""Prompt token ids for the two summarization tasks. Torch-free: training and the ONNX runtime build prompts here.

The paper summarizes the image and the text of an item separately (to avoid one modality drowning the other), so
there are two prompts, neither of which sees the other modality:

    image task:  [bos] <image> x N  "keywords of the image :"          -> " red, striped, lamp" [eos]
    text task:   [bos] "text :" <text, at most max_text_tokens>  "keywords of the text :"  -> " ..." [eos]

Prompts are token ids, built with any `encode(str) -> list[int]` that adds no special tokens (a transformers
tokenizer with `add_special_tokens=False`, or `tokenizers.Tokenizer.encode(...).ids` at runtime), so the same ids come
out of both. Decoding must drop special tokens; the image token, bos and pad are never generated (see
`suppressed_token_ids`): a sampled image token would not match any image feature in the next forward pass.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Callable, Sequence

from .prompt import IMAGE_TOKEN  # noqa: F401 - re-exported: the summarizer prompts use the same token

IMAGE_INSTRUCTION = "keywords of the image :"
TEXT_OPENING = "text :"
TEXT_INSTRUCTION = "keywords of the text :"
KEYWORD_SEPARATOR = ", "
TASKS = ("image", "text")

Encode = Callable[[str], Sequence[int]]


@dataclass(frozen=True)
class PromptSpec:
    """Everything prompt building needs besides the tokenizer; saved with every summarizer checkpoint."""

    eos_id: int
    pad_id: int
    image_token_id: int
    num_image_tokens: int
    bos_id: int | None = None
    max_text_tokens: int = 96
    # Tokens around the image's slots (Qwen2-VL's vision start/end: its multimodal positions find images by them)
    image_start_id: int | None = None
    image_end_id: int | None = None

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "PromptSpec":
        return cls(**{k: d[k] for k in cls.__dataclass_fields__ if k in d})


def _bos(spec: PromptSpec) -> list[int]:
    return [spec.bos_id] if spec.bos_id is not None else []


def image_prompt_ids(encode: Encode, spec: PromptSpec) -> list[int]:
    """The image task's prompt: the image's N placeholder tokens, then the instruction."""
    start = [spec.image_start_id] if spec.image_start_id is not None else []
    end = [spec.image_end_id] if spec.image_end_id is not None else []
    return _bos(spec) + start + [spec.image_token_id] * spec.num_image_tokens + end + list(encode(IMAGE_INSTRUCTION))


def text_prompt_ids(encode: Encode, spec: PromptSpec, text: str) -> list[int]:
    """The text task's prompt: the item text (truncated to `max_text_tokens` tokens), then the instruction."""
    body = list(encode(" ".join(text.split())))[: spec.max_text_tokens]
    body = [t for t in body if t != spec.image_token_id]  # an item text spelling "<image>" must not claim image slots
    return _bos(spec) + list(encode(TEXT_OPENING)) + body + list(encode(TEXT_INSTRUCTION))


def prompt_ids(encode: Encode, spec: PromptSpec, task: str, text: str = "") -> list[int]:
    if task == "image":
        return image_prompt_ids(encode, spec)
    if task == "text":
        return text_prompt_ids(encode, spec, text)
    raise ValueError(f"unknown task {task!r} (expected one of {TASKS})")


def format_keywords(keywords: Sequence[str]) -> str:
    """What the model is taught to write: keywords joined by ", "."""
    return KEYWORD_SEPARATOR.join(keywords)


def target_ids(encode: Encode, spec: PromptSpec, keywords: Sequence[str]) -> list[int]:
    """The completion the model learns in SFT: the formatted keywords, then eos."""
    return list(encode(" " + format_keywords(keywords))) + [spec.eos_id]


def suppressed_token_ids(spec: PromptSpec) -> list[int]:
    """Tokens generation must never emit (greedy and sampled alike)."""
    ids = {spec.image_token_id, spec.pad_id}
    if spec.bos_id is not None:
        ids.add(spec.bos_id)
    ids.discard(spec.eos_id)  # when pad doubles as eos, eos must stay reachable
    return sorted(ids)


def completion_until_eos(ids: Sequence[int], eos_id: int) -> list[int]:
    """The generated ids up to (not including) the first eos."""
    out = []
    for t in ids:
        if t == eos_id:
            break
        out.append(int(t))
    return out
