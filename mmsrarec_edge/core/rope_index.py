"""Multimodal rotary position ids (Qwen2-VL / Qwen2.5-VL "M-RoPE") in numpy, for the torch-free runtime.

A Qwen2-VL decoder rotates each query/key by three position ids (temporal, height, width) instead of one. transformers
computes them in `Qwen2VLModel.get_rope_index` (Qwen2.5-VL's is the same for images); `MRope` does exactly what it
does for text and image tokens:
- the images of a row are the `vision_start` tokens followed by the image token; for each, in order, the next run of
  image tokens (searched from the end of the previous image) is one image of `t * h * w` tokens (`grid`: the LLM grid,
  i.e. the vision patch grid divided by `spatial_merge_size`; fixed here, since bundles export the vision tower at one
  resolution);
- text before an image counts on from `start` (three equal ids); the image's tokens get (start + t_i, start + h_i,
  start + w_i) with start = where the text before it ended; text after an image starts at the image's largest id + 1;
- padding slots get 1 (transformers' fill value), and a row's next position (what decoding continues from, and where a
  candidate suffix after a shared prefix starts) is its largest id + 1: transformers' `rope_deltas` + the row's length.
Videos are not handled (bundles have none). Text-only rows give 0, 1, 2, ... in all three, as 1-D RoPE.

A candidate suffix after a prefix: `row(suffix, start=prefix_next)` equals the tail of `row(prefix + suffix)` unless an
image's `vision_start` and its image tokens straddle the split (the prompt builders never put one there).
Torch-free; tests/test_families_qwen_vl.py compares it with transformers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

PAD_POSITION = 1  # transformers fills padding slots' position ids with ones


@dataclass(frozen=True)
class MRope:
    image_token_id: int
    vision_start_token_id: int
    grid: tuple[int, int, int]  # (t, h, w) of one image in the decoder: patch grid // spatial_merge_size

    @property
    def image_tokens(self) -> int:
        t, h, w = self.grid
        return t * h * w

    def _image_block(self) -> np.ndarray:
        t, h, w = self.grid
        return np.stack([np.repeat(np.arange(t), h * w), np.tile(np.repeat(np.arange(h), w), t),
                         np.tile(np.arange(w), t * h)]).astype(np.int64)  # [3, t*h*w]

    def row(self, ids: Sequence[int], start: int = 0) -> tuple[np.ndarray, int]:
        """(position ids [3, n] of one unpadded row whose first token sits at `start`, the row's next position)."""
        ids = np.asarray(ids, np.int64).reshape(-1)
        n = len(ids)
        out = np.empty((3, n), np.int64)
        if n == 0:
            return out, int(start)
        starts = np.flatnonzero(ids[:-1] == self.vision_start_token_id)
        images = int((ids[starts + 1] == self.image_token_id).sum())
        image_slots = np.flatnonzero(ids == self.image_token_id)
        block, L = self._image_block(), self.image_tokens
        st, st_idx, top = 0, int(start), int(start) - 1
        for _ in range(images):
            later = image_slots[image_slots >= st]
            if not len(later):
                raise ValueError("an image's vision_start is not followed by its image tokens")
            ed = int(later[0])
            if ed + L > n:
                raise ValueError(f"an image needs {L} image tokens, the row has {n - ed} from its first")
            text = ed - st
            out[:, st:ed] = np.arange(text) + st_idx
            out[:, ed:ed + L] = block + text + st_idx
            top = int(out[:, ed:ed + L].max())
            st_idx, st = top + 1, ed + L
        if st < n:
            out[:, st:] = np.arange(n - st) + st_idx
            top = st_idx + n - st - 1
        return out, top + 1

    def batch(self, rows: Sequence[Sequence[int]], width: int, left: bool,
              starts: Sequence[int] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Padded rows (left or right, `width` slots) -> (position ids [3, B, width], next position per row [B])."""
        pos = np.full((3, len(rows), width), PAD_POSITION, np.int64)
        nxt = np.zeros(len(rows), np.int64)
        for r, ids in enumerate(rows):
            p, nxt[r] = self.row(ids, 0 if starts is None else int(starts[r]))
            s = width - len(ids) if left else 0
            pos[:, r, s:s + len(ids)] = p
        return pos, nxt

    def to_dict(self) -> dict:
        return {"type": "mrope", "image_token_id": int(self.image_token_id),
                "vision_start_token_id": int(self.vision_start_token_id), "grid": [int(g) for g in self.grid]}


def rope_from_config(section) -> MRope | None:
    """A stage's `rope` section of a bundle's config.json (None or absent: plain 1-D positions)."""
    if not section:
        return None
    from .errors import BundleError

    try:
        if section.get("type") != "mrope":
            raise ValueError(f"unknown rope type {section.get('type')!r}")
        t, h, w = (int(g) for g in section["grid"])
        return MRope(int(section["image_token_id"]), int(section["vision_start_token_id"]), (t, h, w))
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise BundleError(f"config.json: a rope section is malformed ({exc})", "re-export the bundle") from exc


def text_positions(mask: np.ndarray) -> np.ndarray:
    """1-D position ids of a 0/1 mask [B, T]: real tokens count 0, 1, ...; padding slots get 1."""
    return np.where(mask == 1, mask.cumsum(-1) - 1, PAD_POSITION)
