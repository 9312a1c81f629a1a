"""The tests' own softmax: the reference every served probability is held to, written here rather
than imported from `app.postprocess`, so a bug there cannot hide in both sides of a comparison."""

from __future__ import annotations

import numpy as np


def softmax(logits: np.ndarray) -> np.ndarray:
    """Softmax of one logit vector in float64."""
    values = np.asarray(logits, dtype=np.float64)
    exp = np.exp(values - values.max())
    return exp / exp.sum()
