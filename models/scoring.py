"""Scores from logits: a sigmoid per label (multi-label) or a softmax over classes (multi-class).

Plain numpy (no scipy), so that the serving image needs only requirements_inference.txt.
"""

from __future__ import annotations

import numpy as np

EPS = 1e-12  # probabilities are clipped to [EPS, 1 - EPS] before taking logs


def chosen_labels(scores: np.ndarray, thresholds: np.ndarray, at_least_one: bool = False) -> np.ndarray:
    """(N, L) booleans: the multi-label answer, each label whose score reaches its threshold; with
    `at_least_one`, a text that reaches none gets its best-scoring label (training data where every row has a
    label)."""
    scores = np.atleast_2d(scores)
    chosen = scores >= thresholds
    if at_least_one:
        empty = np.flatnonzero(~chosen.any(axis=1))
        chosen[empty, scores[empty].argmax(axis=1)] = True
    return chosen


def logit(probabilities: np.ndarray) -> np.ndarray:
    """Log-odds of probabilities clipped to [EPS, 1 - EPS]."""
    clipped = np.clip(np.asarray(probabilities, dtype=np.float64), EPS, 1 - EPS)
    return np.log(clipped) - np.log1p(-clipped)


def with_temperature(task: str, scores: np.ndarray, temperature: float) -> np.ndarray:
    """Scores with their log-odds (multi-label) or log-probabilities (multi-class) divided by `temperature`:
    above 1 softens over-confident scores, below 1 sharpens; each label's order of texts stays the same."""
    if temperature == 1.0:
        return scores
    if task == "multilabel":
        return scores_from_logits(task, logit(scores) / temperature)
    return scores_from_logits(task, np.log(np.clip(np.asarray(scores, dtype=np.float64), EPS, 1 - EPS)) / temperature)


def logsumexp(logits: np.ndarray, axis: int = -1) -> np.ndarray:
    """log(sum(exp(logits))) along `axis`, without overflow."""
    logits = np.asarray(logits, dtype=np.float64)
    top = logits.max(axis=axis, keepdims=True)
    return np.squeeze(top, axis=axis) + np.log(np.exp(logits - top).sum(axis=axis))


def sigmoid(logits: np.ndarray) -> np.ndarray:
    """1 / (1 + exp(-logits)), without overflow for large |logits|."""
    return np.exp(-np.logaddexp(0.0, -np.asarray(logits, dtype=np.float64)))


def scores_from_logits(task: str, logits: np.ndarray) -> np.ndarray:
    logits = np.asarray(logits, dtype=np.float64)
    if task == "multilabel":
        return sigmoid(logits)
    shifted = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return shifted / shifted.sum(axis=-1, keepdims=True)
