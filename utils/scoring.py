"""Scores from logits: a sigmoid per label (multi-label) or a softmax over classes (multi-class)."""

from __future__ import annotations

import numpy as np
from scipy.special import expit, softmax


def scores_from_logits(task: str, logits: np.ndarray) -> np.ndarray:
    logits = np.asarray(logits, dtype=np.float64)
    return expit(logits) if task == "multilabel" else softmax(logits, axis=-1)
