"""The blend's weights, chosen by training on validation rows only (models/blend.py computes the blend).

Multi-label: one weight per label, each label's best by ROC AUC shrunk towards the pooled weight for labels with
few validation positives. Multi-class: one weight for every class, by smoothed macro-F1. Each default is what won
on held-out halves of the validation rows (docs/lexical_experiments.md).
"""

from __future__ import annotations

import numpy as np

from models.blend import DEFAULT_METHODS, blend_scores

DEFAULT_STEP = 0.05  # the weight grid: 0, 0.05, ..., 1
SMOOTHING_WINDOW = 2  # multi-class: the weight's macro-F1 is averaged with two grid neighbours on each side
DEFAULT_SHRINKAGE = 30.0  # validation positives at which a label's own weight and the pooled one count equally


def weight_grid(step: float) -> np.ndarray:
    count = int(round(1 / step))
    return np.linspace(0.0, 1.0, count + 1)


def roc_auc(y: np.ndarray, scores: np.ndarray) -> float:
    """Binary ROC AUC by the rank-sum formula with tied scores sharing their mean rank (sklearn's value)."""
    order = np.argsort(scores, kind="mergesort")
    sorted_scores = scores[order]
    ranks = np.empty(len(scores))
    # tied runs get the mean of their 1-based positions
    starts = np.r_[0, np.flatnonzero(np.diff(sorted_scores)) + 1]
    ends = np.r_[starts[1:], len(scores)]
    ranks[order] = np.repeat((starts + ends + 1) / 2.0, ends - starts)
    positives = y == 1
    n_pos, n_neg = positives.sum(), (~positives).sum()
    return float((ranks[positives].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def label_auc_grid(labels: np.ndarray, transformer_scores: np.ndarray, lexical_scores: np.ndarray,
                   grid: np.ndarray, method: str) -> np.ndarray:
    """(G, L) validation ROC AUC of each label at each grid weight; NaN where a label lacks a class."""
    aucs = np.full((len(grid), labels.shape[1]), np.nan)
    for g, w in enumerate(grid):
        blended = blend_scores("multilabel", w, transformer_scores, lexical_scores, method)
        for j in range(labels.shape[1]):
            if 0 < labels[:, j].sum() < len(labels):
                aucs[g, j] = roc_auc(labels[:, j], blended[:, j])
    return aucs


def closest_to_half(grid: np.ndarray, values: np.ndarray) -> float:
    """The grid weight of the best value; among exact ties, the one nearest an even blend."""
    tied = np.flatnonzero(values == np.nanmax(values))
    return float(grid[tied[np.argmin(np.abs(grid[tied] - 0.5))]])


def choose_multilabel_weights(labels: np.ndarray, transformer_scores: np.ndarray, lexical_scores: np.ndarray,
                              method: str = DEFAULT_METHODS["multilabel"], step: float = DEFAULT_STEP,
                              shrinkage: float = DEFAULT_SHRINKAGE) -> np.ndarray:
    """Per label, the weight maximising its ROC AUC, shrunk towards the weight that maximises the mean AUC.

    w_j = (n_j * own_j + shrinkage * pooled) / (n_j + shrinkage), n_j = the label's validation positives:
    a label with few positives (a noisy AUC) leans on the pooled weight. shrinkage=inf: one weight for all.
    """
    grid = weight_grid(step)
    aucs = label_auc_grid(labels, transformer_scores, lexical_scores, grid, method)
    defined = ~np.isnan(aucs).all(axis=0)
    pooled = closest_to_half(grid, np.nanmean(aucs[:, defined], axis=1)) if defined.any() else 0.5
    if np.isinf(shrinkage):
        return np.full(labels.shape[1], pooled)
    weights = np.full(labels.shape[1], pooled)
    positives = labels.sum(axis=0).astype(np.float64)
    for j in np.flatnonzero(defined):
        own = closest_to_half(grid, aucs[:, j])
        weights[j] = (positives[j] * own + shrinkage * pooled) / (positives[j] + shrinkage)
    return weights


def choose_multiclass_weight(labels: np.ndarray, transformer_scores: np.ndarray, lexical_scores: np.ndarray,
                             method: str = DEFAULT_METHODS["multiclass"], step: float = DEFAULT_STEP,
                             window: int = SMOOTHING_WINDOW) -> np.ndarray:
    """One weight for all classes: the best validation macro-F1 averaged over the `window` grid weights on each
    side (a curve of argmax decisions is jagged on a few hundred rows: on held-out halves of the validation rows
    the smoothed choice gained 0.003 macro-F1 on conference and 0.0006 on CLINC150), ties broken by accuracy,
    then nearest 0.5."""
    grid = weight_grid(step)
    num_classes = transformer_scores.shape[1]
    curves = []
    for w in grid:
        predicted = blend_scores("multiclass", w, transformer_scores, lexical_scores, method).argmax(axis=1)
        curves.append((macro_f1(labels, predicted, num_classes), float(np.mean(predicted == labels))))
    smoothed = [moving_average(np.array(curve), window) for curve in zip(*curves, strict=True)]
    keys = list(zip(*smoothed, strict=True))
    best = max(keys)
    tied = np.array([key == best for key in keys])
    return np.full(num_classes, closest_to_half(grid, np.where(tied, 1.0, 0.0)))


def moving_average(values: np.ndarray, window: int) -> np.ndarray:
    """Each value averaged with its `window` neighbours on each side (the ends repeated)."""
    padded = np.pad(values, window, mode="edge")
    return np.convolve(padded, np.ones(2 * window + 1) / (2 * window + 1), mode="valid")


def macro_f1(labels: np.ndarray, predicted: np.ndarray, num_classes: int) -> float:
    """Unweighted mean over classes of F1 (0 for a class never predicted nor present)."""
    scores = []
    for k in range(num_classes):
        tp = np.sum((predicted == k) & (labels == k))
        denominator = np.sum(predicted == k) + np.sum(labels == k)
        scores.append(2 * tp / denominator if denominator else 0.0)
    return float(np.mean(scores))


def choose_blend_weights(task: str, val_labels: np.ndarray, transformer_scores: np.ndarray,
                         lexical_scores: np.ndarray, method: str | None = None, step: float = DEFAULT_STEP,
                         shrinkage: float = DEFAULT_SHRINKAGE) -> np.ndarray:
    """One transformer weight per label (multi-label) or the same one for every class (multi-class).

    Every argument is a validation-split array: the weights see no other rows. `method`: blend_scores'; by
    default the task's DEFAULT_METHODS entry. `shrinkage` applies to multi-label only.
    """
    method = method or DEFAULT_METHODS[task]
    if task == "multilabel":
        return choose_multilabel_weights(np.asarray(val_labels), transformer_scores, lexical_scores,
                                         method, step, shrinkage)
    return choose_multiclass_weight(np.asarray(val_labels), transformer_scores, lexical_scores, method, step)
