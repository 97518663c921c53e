"""The popularity baseline: an item's score is its interaction count among training users. Torch-free."""

from __future__ import annotations

import numpy as np


class Popularity:
    def __init__(self, train_sequences: dict[int, list[int]]):
        counts: dict[int, int] = {}
        for seq in train_sequences.values():
            for i in seq:
                counts[i] = counts.get(i, 0) + 1
        self.counts = counts

    def score(self, histories, candidates: np.ndarray) -> np.ndarray:
        flat = [self.counts.get(int(i), 0) for i in np.asarray(candidates).ravel()]
        return np.asarray(flat, dtype=np.float64).reshape(np.shape(candidates))
