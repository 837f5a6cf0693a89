"""The transformer + lexical blend: the blended scores of the two members, as serving computes them.

A weight w is the transformer's share: 1 gives the transformer alone, 0 the lexical member alone.
Multi-label: both members' probabilities are mapped to logits, averaged with (w, 1 - w) and mapped back through
the sigmoid, one weight per label. Multi-class: the class probabilities are averaged, one weight for every class.
Each task's default method won on held-out halves of the validation rows (docs/lexical_experiments.md); training
chooses the weights on validation rows (utils/training/blend_weights.py) and the checkpoint keeps them.
"""

from __future__ import annotations

import numpy as np

from models.scoring import EPS, logit, scores_from_logits

METHODS = ("logit", "probability")
DEFAULT_METHODS = {"multilabel": "logit", "multiclass": "probability"}


def blend_scores(task: str, weights: np.ndarray | float, transformer_scores: np.ndarray,
                 lexical_scores: np.ndarray, method: str | None = None) -> np.ndarray:
    """(N, L) blended probabilities; `weights` is one transformer share per label, or one for all."""
    method = method or DEFAULT_METHODS[task]
    weights = np.broadcast_to(np.asarray(weights, dtype=np.float64), (transformer_scores.shape[1],))
    first, second = np.asarray(transformer_scores, np.float64), np.asarray(lexical_scores, np.float64)
    if first.shape != second.shape:
        raise ValueError(f"member scores differ in shape: {first.shape} and {second.shape}")
    if method == "probability":
        return weights * first + (1 - weights) * second
    if method != "logit":
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if task == "multilabel":
        return scores_from_logits(task, weights * logit(first) + (1 - weights) * logit(second))
    log_first, log_second = np.log(np.clip(first, EPS, 1)), np.log(np.clip(second, EPS, 1))
    return scores_from_logits(task, weights * log_first + (1 - weights) * log_second)
