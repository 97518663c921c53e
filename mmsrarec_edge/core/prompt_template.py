"""Prompt templates for a recommender trained elsewhere (`import-model --template FILE.toml`). Torch-free.

A template keeps the prefix / suffix split that shared-prefix scoring needs (core/prompt.py): the prefix holds what is
the same for every candidate, the suffix one candidate and the question, and the answer word is the token after it.

    prefix = "History: {history}. Similar users then chose: {collaborative}. Candidate:"
    suffix = " {title} ({keywords}){image}. Will the user choose it? Answer:"
    answer_words = ["yes", "no"]       # each one token for the model's tokenizer
    chat = "chatml"                    # optional: "none" (default), "chatml" (Qwen's <|im_start|>), or a table
    system = "You are a recommender."  # optional, with chat
    group_separator = " ; "            # between items' keyword groups (default " ; ")
    keyword_separator = ", "           # between keywords (default ", ")
    empty = "none"                     # an empty list (default "none")
    bos = true                         # start the prefix with the tokenizer's bos token, when it has one
    [settings]                         # optional PromptConfig fields: history_len, item_keywords, ...
    history_len = 5

Slots: the prefix takes {history} and {collaborative}; the suffix {title}, {keywords}, {image} (the candidate's
image tokens, " <image>" per image token, empty without an image) and {rank} (the candidate's bucketed SASRec
rank; the runtime then computes it per request). `{{` and `}}` are literal braces. Chat wrapping puts the system
turn and the user turn's opening before the prefix, and the user turn's end and the assistant turn's opening after the
suffix, so the answer word is the assistant's first token. A [chat] table gives its own strings: system_start,
system_end, user_start, user_end, assistant_start.
"""

from __future__ import annotations

import string
from pathlib import Path

from .errors import UserError

PREFIX_SLOTS = ("history", "collaborative")
SUFFIX_SLOTS = ("title", "keywords", "image", "rank")
CHAT_PRESETS = {
    "none": {},
    "chatml": {"system_start": "<|im_start|>system\n", "system_end": "<|im_end|>\n",
               "user_start": "<|im_start|>user\n", "user_end": "<|im_end|>\n",
               "assistant_start": "<|im_start|>assistant\n"},
}
CHAT_KEYS = ("system_start", "system_end", "user_start", "user_end", "assistant_start")
TEXT_KEYS = ("group_separator", "keyword_separator", "empty", "system")
DEFAULTS = {"group_separator": " ; ", "keyword_separator": ", ", "empty": "none", "system": ""}
FILE_KEYS = ("prefix", "suffix", "answer_words", "chat", "settings", "bos", *TEXT_KEYS)


def slots(text: str, where: str) -> list[str]:
    try:
        return [name for _, name, spec, conv in string.Formatter().parse(text) if name is not None]
    except ValueError as exc:
        raise UserError(f"{where}: malformed template ({exc})", "write literal braces as {{ and }}") from None


def check_template(t: dict, where: str = "template") -> dict:
    """A template dict (the file's keys, chat resolved to its strings) checked; returns it with defaults filled."""
    if not isinstance(t, dict):
        raise UserError(f"{where}: expected a table")
    unknown = sorted(set(t) - set(FILE_KEYS))
    if unknown:
        raise UserError(f"{where}: unknown key {unknown[0]!r}", f"known: {', '.join(FILE_KEYS)}")
    out = {**DEFAULTS}
    for key in ("prefix", "suffix"):
        if not isinstance(t.get(key), str) or not t[key].strip():
            raise UserError(f"{where}: {key} must be a non-empty string")
        allowed = PREFIX_SLOTS if key == "prefix" else SUFFIX_SLOTS
        for name in slots(t[key], where):
            if name not in allowed:
                other = "suffix" if key == "prefix" else "prefix"
                extra = f" (it belongs in the {other})" if name in (SUFFIX_SLOTS + PREFIX_SLOTS) else ""
                raise UserError(f"{where}: {key} has an unknown slot {{{name}}}{extra}",
                                f"the {key} takes {', '.join('{' + s + '}' for s in allowed)}")
        out[key] = t[key]
    for key in TEXT_KEYS:
        if key in t:
            if not isinstance(t[key], str):
                raise UserError(f"{where}: {key} must be a string")
            out[key] = t[key]
    chat = t.get("chat", "none")
    if isinstance(chat, str):
        if chat not in CHAT_PRESETS:
            raise UserError(f"{where}: unknown chat {chat!r}", f"known: {', '.join(CHAT_PRESETS)}, or a [chat] table")
        chat = CHAT_PRESETS[chat]
    if not isinstance(chat, dict) or any(k not in CHAT_KEYS or not isinstance(v, str) for k, v in chat.items()):
        raise UserError(f"{where}: chat must be a preset name or a table of strings", f"keys: {', '.join(CHAT_KEYS)}")
    out["chat"] = {k: chat.get(k, "") for k in CHAT_KEYS}
    words = t.get("answer_words", ["yes", "no"])
    if not (isinstance(words, list) and len(words) == 2 and all(isinstance(w, str) and w for w in words)
            and words[0] != words[1]):
        raise UserError(f"{where}: answer_words must be two different non-empty strings, e.g. [\"yes\", \"no\"]")
    out["answer_words"] = list(words)
    if not isinstance(t.get("bos", True), bool):
        raise UserError(f"{where}: bos must be true or false")
    out["bos"] = t.get("bos", True)
    settings = t.get("settings", {})
    if not isinstance(settings, dict):
        raise UserError(f"{where}: [settings] must be a table")
    out["settings"] = dict(settings)
    return out


def load_template(path: Path) -> dict:
    """A template TOML file, checked (one UserError naming the file and the key)."""
    from .config import read_toml

    return check_template(read_toml(path), str(path))


def uses(template: dict, slot: str) -> bool:
    return slot in slots(template["suffix"] if slot in SUFFIX_SLOTS else template["prefix"], "template")


def render_prefix(t: dict, history: str, collaborative: str) -> str:
    chat = t.get("chat") or {}
    system = t.get("system", "")
    head = (chat.get("system_start", "") + system + chat.get("system_end", "")) if system and chat else \
        (system if system else "")
    return head + chat.get("user_start", "") + t["prefix"].format(history=history, collaborative=collaborative)


def render_suffix(t: dict, title: str, keywords: str, image: str, rank: str) -> str:
    chat = t.get("chat") or {}
    return (t["suffix"].format(title=title, keywords=keywords, image=image, rank=rank) + chat.get("user_end", "")
            + chat.get("assistant_start", ""))
