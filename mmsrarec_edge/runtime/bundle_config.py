"""Type checks of the bundle's config.json fields the runtime reads at load: a wrong type (say a hand-edited file,
re-hashed so that it verifies) is one BundleError naming the file, the key and the expected type, never a bare
ValueError or TypeError from deep inside the load. Torch-free.

A spec maps a dotted key (below the config's top level) to one of the kinds in KINDS; a key ending in "!" is required.
An absent optional key is the runtime's default; a present key must have its kind.
"""

from __future__ import annotations

import numbers
from typing import Mapping

from ..core.errors import BundleError

FILE = "config.json"


def _int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _number_list(v) -> bool:
    return isinstance(v, list) and all(isinstance(x, numbers.Real) and not isinstance(x, bool) for x in v)


# kind -> (test, what the message calls it)
KINDS = {
    "int": (_int, "an integer"),
    "int?": (lambda v: v is None or _int(v), "an integer or null"),
    "bool": (lambda v: isinstance(v, bool), "true or false"),
    "str": (lambda v: isinstance(v, str) and bool(v), "a non-empty string"),
    "str?": (lambda v: v is None or isinstance(v, str), "a string or null"),
    "object": (lambda v: isinstance(v, dict), "an object"),
    "object?": (lambda v: v is None or isinstance(v, dict), "an object or null"),
    "numbers": (_number_list, "a list of numbers"),
}

# recommender side: runtime/recommender.py and the first stage's n_rescore
RECOMMENDER = {
    "recommender": "object", "recommender.pad_id": "int?", "recommender.bos_id": "int?",
    "recommender.image_token_id": "int?", "recommender.num_image_tokens": "int", "recommender.tokenizer": "str",
    "recommender.n_rescore": "int", "recommender.max_position_embeddings": "int",
    "recommender.special_tokens": "object", "recommender.special_tokens.pad_id": "int?",
    "recommender.special_tokens.bos_id": "int?", "recommender.prompt": "object?",
    "recommender.prompt.history_len": "int", "recommender.prompt.item_keywords": "int",
    "recommender.prompt.candidate_keywords": "int", "recommender.prompt.collab_items": "int",
    "recommender.prompt.collab_item_keywords": "int", "recommender.prompt.candidate_title": "bool",
    "recommender.prompt.candidate_image": "bool", "recommender.prompt.rank_hint": "bool",
    "recommender.prompt.rank_digits": "int", "recommender.prompt.template": "object?",
    "recommender.image_preprocess": "object?", "recommender.image_preprocess.mean": "numbers",
    "recommender.image_preprocess.std": "numbers", "recommender.retrieval": "object?",
    "recommender.retrieval.k": "int?", "recommender.retrieval.items_per_neighbour": "int?",
    "recommender.rope": "object?",
    "limits": "object", "limits.max_candidates": "int", "limits.max_prefix_tokens": "int",
    "limits.max_suffix_tokens": "int",
    "sasrec": "object?", "sasrec.max_len!": "int", "sasrec.item_ids!": "str", "sasrec.item_embeddings": "str?",
    "retrieval": "object?", "retrieval.dir": "str",
}

# summarizer side: runtime/summarizer.py (load_item_summarizer, prompt_spec_from_config)
SUMMARIZER = {
    "summarizer": "object", "summarizer.tokenizer": "str", "summarizer.image_size!": "int",
    "summarizer.max_new_tokens": "int", "summarizer.max_keywords": "int", "summarizer.prompt_spec": "object?",
    "summarizer.prompt_spec.eos_id": "int", "summarizer.prompt_spec.pad_id": "int",
    "summarizer.prompt_spec.image_token_id": "int", "summarizer.prompt_spec.num_image_tokens": "int",
    "summarizer.prompt_spec.bos_id": "int?", "summarizer.prompt_spec.max_text_tokens": "int",
    "summarizer.prompt_spec.image_start_id": "int?", "summarizer.prompt_spec.image_end_id": "int?",
    "summarizer.special_tokens": "object", "summarizer.image_token_id": "int", "summarizer.num_image_tokens": "int",
    "summarizer.rope": "object?",
    "limits": "object", "limits.max_new_tokens": "int",
    "image_preprocess": "object", "image_preprocess.mean": "numbers", "image_preprocess.std": "numbers",
    "summarizer.image_preprocess": "object?", "summarizer.image_preprocess.mean": "numbers",
    "summarizer.image_preprocess.std": "numbers", "summarizer.image_preprocess.resample": "str",
}

_MISSING = object()


def check_config(config: Mapping, spec: Mapping[str, str], file: str = FILE) -> None:
    """BundleError for the first key of `spec` whose value in `config` has the wrong type (or a required one that
    is missing while its section is there); sections that are absent or null are not looked into."""
    if not isinstance(config, dict):
        raise BundleError(f"{file}: expected a JSON object, got {type(config).__name__}", "re-export the bundle")
    for dotted, kind in spec.items():
        required = dotted.endswith("!")
        key = dotted.rstrip("!")
        *parents, last = key.split(".")
        node = config
        for part in parents:
            node = node.get(part) if isinstance(node, dict) else None
        if not isinstance(node, dict):
            continue  # the section is absent: the runtime's own check says what that means
        value = node.get(last, _MISSING)
        test, what = KINDS[kind]
        if value is _MISSING:
            if required:
                raise BundleError(f"{file}: {key} is missing (expected {what})", "re-export the bundle")
            continue
        if not test(value):
            raise BundleError(f"{file}: {key} must be {what}, got {_shown(value)}", "re-export the bundle")


def _shown(value) -> str:
    kind = {bool: "a boolean", str: "a string", list: "a list", dict: "an object", type(None): "null",
            int: "an integer", float: "a number"}.get(type(value), type(value).__name__)
    text = repr(value) if not isinstance(value, (dict, list)) else ""
    return f"{kind} {text[:40]}".strip()
