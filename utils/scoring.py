"""Scores from logits: a sigmoid per label (multi-label) or a softmax over classes (multi-class).

Plain numpy (no scipy), so that the serving image needs only requirements_inference.txt.
"""

from __future__ import annotations

import numpy as np


def scores_from_logits(task: str, logits: np.ndarray) -> np.ndarray:
    logits = np.asarray(logits, dtype=np.float64)
    if task == "multilabel":
        return np.exp(-np.logaddexp(0.0, -logits))  # sigmoid without overflow for large |logits|
    shifted = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return shifted / shifted.sum(axis=-1, keepdims=True)
