"""The paper's candidate score: p(yes) / (p(yes) + p(no)) at the first answer token.

The softmax normalisation cancels, so the score is sigmoid(l_yes - l_no) of the two logits alone. Computed in float64
and overflow-safe, so that the runtime (ONNX logits), the PyTorch oracle and the benchmark peers rank alike.
"""

from __future__ import annotations

import numpy as np


def yes_probability(l_yes, l_no) -> np.ndarray:
    """sigmoid(l_yes - l_no) elementwise, float64; array-likes (numpy, CPU torch tensors, floats) broadcast."""
    d = np.asarray(l_yes, np.float64) - np.asarray(l_no, np.float64)
    e = np.exp(-np.abs(d))  # never overflows
    return np.where(d >= 0, 1.0 / (1.0 + e), e / (1.0 + e))
