"""The exported graphs as numpy functions: image features, token embeddings with image slots, decoder steps, the
suffix scorer and the SASRec user encoder.

The graphs are those of `exporter/graphs.py` (read its docstring): `vision` (pixel_values -> image_features),
`embed` (input_ids -> inputs_embeds) and one merged `decoder` with flat KV inputs `past_key_values.{i}.key/value`
[B, kv_heads, past, head_dim], a 2D 0/1 `attention_mask` [B, past+q] (the graph makes it causal over slot order),
`position_ids` [B, q], and either a `logits` head (last position, full vocabulary) or a `yes_no_logits` head read at
`logits_index` [B, K]. Everything about the decoder's layout (layers, KV heads, head size, head kind, float type) is
read from the session's own input/output metadata, so nothing here depends on the model size. Torch-free.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

_NP_TYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(double)": np.float64}


def _run(sess, feeds: dict, names: list[str] | None = None) -> dict[str, np.ndarray]:
    names = names or [o.name for o in sess.get_outputs()]
    return dict(zip(names, sess.run(names, feeds)))


class ImageEncoder:
    """vision graph: float32 [N, 3, S, S] -> [N, n_image_tokens, H]."""

    def __init__(self, sess):
        self.sess = sess
        shape = sess.get_inputs()[0].shape
        self.image_size = int(shape[-1]) if isinstance(shape[-1], int) else None
        out = sess.get_outputs()[0].shape
        self.tokens = int(out[1]) if isinstance(out[1], int) else None

    def __call__(self, pixels: np.ndarray) -> np.ndarray:
        pixels = np.ascontiguousarray(pixels, dtype=np.float32)
        if pixels.ndim == 3:
            pixels = pixels[None]
        return _run(self.sess, {"pixel_values": pixels})["image_features"].astype(np.float32, copy=False)


class UserEncoder:
    """user_encoder graph: history int64 [N, max_len] (SASRec indices, left-padded with 0) -> user_embedding [N, d]."""

    def __init__(self, sess):
        self.sess = sess
        shape = sess.get_inputs()[0].shape
        self.max_len = int(shape[-1]) if isinstance(shape[-1], int) else None

    def __call__(self, history: np.ndarray) -> np.ndarray:
        out = _run(self.sess, {"history": np.ascontiguousarray(history, dtype=np.int64)}, ["user_embedding"])
        return out["user_embedding"].astype(np.float32, copy=False)


class Embedder:
    """embed graph, plus splicing of image features over `<image>` slots (in order of appearance)."""

    def __init__(self, sess, image_token_id: int | None = None):
        self.sess = sess
        self.image_token_id = image_token_id
        self.hidden = int(sess.get_outputs()[0].shape[-1])

    def __call__(self, ids: np.ndarray) -> np.ndarray:
        ids = np.ascontiguousarray(ids, dtype=np.int64)
        if ids.shape[-1] == 0:
            return np.zeros((*ids.shape, self.hidden), np.float32)
        return _run(self.sess, {"input_ids": ids})["inputs_embeds"].astype(np.float32, copy=False)

    def splice(self, embeds: np.ndarray, ids: Sequence[int], features: Sequence[np.ndarray] | None,
               offset: int = 0) -> None:
        """Write image features over the `<image>` slots of one row in place. `offset`: where `ids` starts in the row.

        `features` holds one [n_image_tokens, H] array per image, in the order the images' slot runs appear.
        A mismatch between slots and features is a ValueError: scoring with unfilled slots would silently be wrong.
        """
        slots = np.flatnonzero(np.asarray(ids) == self.image_token_id) if self.image_token_id is not None else []
        feats = np.concatenate([np.asarray(f, np.float32).reshape(-1, self.hidden) for f in features]) \
            if features else np.zeros((0, self.hidden), np.float32)
        if len(slots) != len(feats):
            raise ValueError(f"prompt has {len(slots)} <image> slots but {len(feats)} image feature rows were given")
        if len(slots):
            embeds[offset + slots] = feats

    def embed_rows(self, rows: Sequence[Sequence[int]], pad_id: int, left: bool,
                   features: Sequence[Sequence[np.ndarray] | None] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Pad rows (left or right) -> (inputs_embeds [B, T, H], mask [B, T]), image features spliced in."""
        width = max((len(r) for r in rows), default=0)
        ids = np.full((len(rows), width), pad_id, np.int64)
        mask = np.zeros((len(rows), width), np.int64)
        starts = []
        for r, row in enumerate(rows):
            s = width - len(row) if left else 0
            ids[r, s:s + len(row)] = row
            mask[r, s:s + len(row)] = 1
            starts.append(s)
        embeds = self(ids)
        # Only rows with `<image>` slots or features are touched (a per-row Python loop over every candidate cost
        # more than the embedding call itself); `splice` still raises on slots without features and vice versa.
        has_slot = (ids == self.image_token_id).any(axis=1) if self.image_token_id is not None \
            else np.zeros(len(rows), bool)
        todo = [r for r in range(len(rows))
                if has_slot[r] or (features and features[r] is not None and len(features[r]))]
        if todo:
            embeds = np.array(embeds)  # writable copy
            for r in todo:
                self.splice(embeds[r], rows[r], features[r] if features else None, starts[r])
        return embeds, mask


@dataclass(frozen=True)
class DecoderLayout:
    past_names: tuple[str, ...]
    present_names: tuple[str, ...]
    kv_heads: int
    head_dim: int
    head: str  # "last" | "yes_no"
    float_type: type

    @property
    def layers(self) -> int:
        return len(self.past_names) // 2


def decoder_layout(sess) -> DecoderLayout:
    inputs = {i.name: i for i in sess.get_inputs()}
    outputs = [o.name for o in sess.get_outputs()]
    past = tuple(n for n in inputs if n.startswith("past_key_values."))
    present = tuple(n for n in outputs if n.startswith("present."))
    missing = [n for n in ("inputs_embeds", "attention_mask", "position_ids") if n not in inputs]
    if missing or not past or len(past) != len(present):
        raise ValueError(f"not a merged decoder graph (missing {missing or 'KV inputs/outputs'})")
    shape = inputs[past[0]].shape
    head = "yes_no" if "yes_no_logits" in outputs else "last"
    if head == "yes_no" and "logits_index" not in inputs:
        raise ValueError("yes_no decoder graph without a logits_index input")
    return DecoderLayout(past, present, int(shape[1]), int(shape[3]), head,
                         _NP_TYPES.get(inputs["inputs_embeds"].type, np.float32))


class Decoder:
    """One merged decoder session. `run` takes embeddings, the 2D mask, positions and the past KV (a dict by input
    name, or None for past length 0) and returns (head output, present KV keyed by the *past* input names, so it can
    be fed straight back)."""

    def __init__(self, sess):
        self.sess = sess
        self.layout = decoder_layout(sess)
        self.output_names = [o.name for o in sess.get_outputs()]
        self._present_to_past = {p: "past_key_values." + p[len("present."):] for p in self.layout.present_names}

    def empty_past(self, batch: int) -> dict[str, np.ndarray]:
        lay = self.layout
        return {n: np.zeros((batch, lay.kv_heads, 0, lay.head_dim), lay.float_type) for n in lay.past_names}

    def run(self, embeds: np.ndarray, mask: np.ndarray, positions: np.ndarray, past: dict | None = None,
            logits_index: np.ndarray | None = None, want_present: bool = True) -> tuple[np.ndarray, dict]:
        lay = self.layout
        feeds = {"inputs_embeds": np.asarray(embeds, lay.float_type), "attention_mask": np.asarray(mask, np.int64),
                 "position_ids": np.asarray(positions, np.int64)}
        feeds.update(past if past is not None else self.empty_past(embeds.shape[0]))
        head_name = "yes_no_logits" if lay.head == "yes_no" else "logits"
        if lay.head == "yes_no":
            if logits_index is None:
                raise ValueError("the yes_no decoder needs logits_index")
            feeds["logits_index"] = np.asarray(logits_index, np.int64)
        names = [head_name, *lay.present_names] if want_present else [head_name]
        out = self.sess.run(names, feeds)
        present = {self._present_to_past[n]: v for n, v in zip(names[1:], out[1:])}
        return out[0].astype(np.float32, copy=False), present


class SuffixScorer:
    """The recommender's scorer graph (exporter/suffix_graph.py): the shared prefix (new tokens over an optional
    batch-1 past) and every right-padded candidate suffix in ONE call -> yes_no_logits [C, K, 2] and the prefix KV
    (batch 1), without ever copying the prefix KV per candidate."""

    def __init__(self, sess):
        self.sess = sess
        inputs = {i.name: i for i in sess.get_inputs()}
        self.past_names = tuple(n for n in inputs if n.startswith("past_key_values."))
        self.present_names = tuple(o.name for o in sess.get_outputs() if o.name.startswith("present."))
        # multimodal-rope decoders (exporter/qwen_vl.py): 3-D position inputs for the suffixes and the prefix
        self.takes_positions = "position_ids" in inputs and "prefix_position_ids" in inputs
        # A 1-layer decoder's graph has no suffix_mask input: only layers before the last read the mask (the last
        # runs at the read slots, which causal order already keeps off the right padding), so the exporter drops it.
        self.takes_mask = "suffix_mask" in inputs
        missing = [n for n in ("inputs_embeds", "logits_index", "prefix_embeds") if n not in inputs]
        outputs = [o.name for o in sess.get_outputs()]
        if missing or not self.past_names or "yes_no_logits" not in outputs or \
                len(self.present_names) != len(self.past_names):
            raise ValueError(f"not a suffix-scorer graph (missing {missing or 'KV inputs/outputs or yes_no_logits'})")
        shape = inputs[self.past_names[0]].shape
        self.kv_heads, self.head_dim = int(shape[1]), int(shape[3])
        self.float_type = _NP_TYPES.get(inputs["inputs_embeds"].type, np.float32)

    def empty_past(self) -> dict[str, np.ndarray]:
        return {n: np.zeros((1, self.kv_heads, 0, self.head_dim), self.float_type) for n in self.past_names}

    def run(self, embeds: np.ndarray, suffix_mask: np.ndarray, logits_index: np.ndarray, prefix_embeds: np.ndarray,
            past: dict[str, np.ndarray] | None = None, want_present: bool = False,
            positions: np.ndarray | None = None, prefix_positions: np.ndarray | None = None
            ) -> tuple[np.ndarray, dict]:
        """(yes_no_logits [C, K, 2], prefix KV keyed by the past input names, or {} unless `want_present`).
        `positions` [3, C, S] / `prefix_positions` [3, 1, Pn]: what a multimodal-rope graph takes (`takes_positions`;
        core/rope_index.py), ignored by others."""
        ft = self.float_type
        feeds = {"inputs_embeds": np.asarray(embeds, ft), "logits_index": np.asarray(logits_index, np.int64),
                 "prefix_embeds": np.asarray(prefix_embeds, ft)}
        if self.takes_mask:
            feeds["suffix_mask"] = np.asarray(suffix_mask, np.int64)
        if self.takes_positions:
            if positions is None or prefix_positions is None:
                raise ValueError("this scorer graph takes 3-D position ids: build the CandidateScorer with the rope")
            feeds["position_ids"] = np.asarray(positions, np.int64)
            feeds["prefix_position_ids"] = np.asarray(prefix_positions, np.int64)
        feeds.update(past if past is not None else self.empty_past())
        names = ["yes_no_logits", *self.present_names] if want_present else ["yes_no_logits"]
        out = self.sess.run(names, feeds)
        present = {"past_key_values." + n[len("present."):]: v for n, v in zip(names[1:], out[1:])}
        return out[0].astype(np.float32, copy=False), present
