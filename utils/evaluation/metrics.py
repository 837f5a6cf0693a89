"""Evaluation metrics (scikit-learn underneath), calibration, and F1-maximising thresholds for multi-label outputs."""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy.special import expit, logit
from sklearn.metrics import (
    accuracy_score,
    average_precision_score,
    classification_report,
    confusion_matrix,
    f1_score,
    hamming_loss,
    label_ranking_average_precision_score,
    precision_recall_curve,
    precision_score,
    recall_score,
    roc_auc_score,
)

from models.scoring import chosen_labels

# The metric that chooses on validation: the best evaluation to keep, the blend, the recipe's comparisons. (What an
# exported variant may cost is measured in its own metric: utils/inference/backends.py VARIANT_COST_METRIC.)
SELECTION_METRIC = {"multilabel": "mean_roc_auc", "multiclass": "macro_f1"}


def _defined(values: list[float | None]) -> list[float]:
    return [v for v in values if v is not None]


def per_label_auc(y_true: np.ndarray, probs: np.ndarray) -> tuple[list[float | None], list[float | None]]:
    """ROC AUC and PR AUC per label; None where the label has only one class in y_true."""
    roc, pr = [], []
    for j in range(y_true.shape[1]):
        if len(np.unique(y_true[:, j])) < 2:
            roc.append(None)
            pr.append(None)
        else:
            roc.append(float(roc_auc_score(y_true[:, j], probs[:, j])))
            pr.append(float(average_precision_score(y_true[:, j], probs[:, j])))
    return roc, pr


def per_label(score: Any, y_true: np.ndarray, y_pred: np.ndarray) -> np.ndarray:
    """A binary metric of each label column, one call per column: scikit-learn reads a (N, 1) matrix as
    one binary target and would score both of its classes."""
    return np.array([score(y_true[:, j], y_pred[:, j], zero_division=0) for j in range(y_true.shape[1])])


def threshold_metrics(y_true: np.ndarray, y_pred: np.ndarray) -> dict[str, float]:
    """Metrics of 0/1 multi-label predictions: micro pools every label's decisions, macro averages labels."""
    pooled = (y_true.ravel(), y_pred.ravel())
    return {
        "micro_f1": float(f1_score(*pooled, zero_division=0)),
        "macro_f1": float(per_label(f1_score, y_true, y_pred).mean()),
        "micro_precision": float(precision_score(*pooled, zero_division=0)),
        "micro_recall": float(recall_score(*pooled, zero_division=0)),
        "macro_precision": float(per_label(precision_score, y_true, y_pred).mean()),
        "macro_recall": float(per_label(recall_score, y_true, y_pred).mean()),
        "hamming_loss": float(hamming_loss(y_true, y_pred)),
        "subset_accuracy": float(accuracy_score(y_true, y_pred)),
        "jaccard_samples": jaccard_samples(y_true, y_pred),
    }


def jaccard_samples(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """|true & predicted| / |true | predicted| per text, averaged (the SemEval emotion tasks' metric); a text with
    no label that gets none counts 1, a correct answer. scikit-learn's jaccard_score(average="samples",
    zero_division=1) is the same but refuses a single label column, which it reads as binary."""
    true, predicted = np.asarray(y_true) > 0, np.asarray(y_pred) > 0
    union = (true | predicted).sum(axis=1)
    overlap = (true & predicted).sum(axis=1)
    return float(np.where(union == 0, 1.0, overlap / np.maximum(union, 1)).mean())


def difference(value: float | None, reference: float | None) -> float | None:
    """value - reference, or None when either is missing."""
    return None if value is None or reference is None else value - reference


def backend_cost(task: str, served: dict[str, Any], reference: dict[str, Any],
                 label_names: list[str]) -> dict[str, Any]:
    """served - reference (float32 PyTorch) on the same rows: the headline figures and each label's.

    Multi-label: mean ROC AUC and macro-F1 at the tuned thresholds, and per label ROC AUC and F1 (tuned).
    Multi-class: accuracy and macro-F1, and per class F1. A negative number is what the served backend loses.
    """
    if task == "multiclass":
        mine, theirs = served["per_class"], reference["per_class"]
        return {"accuracy": difference(served["accuracy"], reference["accuracy"]),
                "macro_f1": difference(served["macro_f1"], reference["macro_f1"]),
                "per_label": {name: {"f1": difference(mine[name]["f1-score"], theirs[name]["f1-score"])}
                              for name in label_names}}
    mine, theirs = served["per_label"], reference["per_label"]
    return {"mean_roc_auc": difference(served["mean_roc_auc"], reference["mean_roc_auc"]),
            "macro_f1": difference(served["at_tuned"]["macro_f1"], reference["at_tuned"]["macro_f1"]),
            "per_label": {name: {"roc_auc": difference(mine[name]["roc_auc"], theirs[name]["roc_auc"]),
                                 "f1": difference(mine[name]["f1_at_tuned"], theirs[name]["f1_at_tuned"])}
                          for name in label_names}}


def multilabel_metrics(y_true: np.ndarray, probs: np.ndarray, label_names: list[str],
                       thresholds: np.ndarray, at_least_one: bool = False) -> dict[str, Any]:
    """Ranking metrics, and threshold metrics at 0.5 and at the given (tuned) thresholds; `at_least_one`: the
    tuned answer gives a text that reaches no threshold its best label, as the checkpoint serves it."""
    roc, pr = per_label_auc(y_true, probs)
    at_half = (probs >= 0.5).astype(int)
    at_tuned = chosen_labels(probs, thresholds, at_least_one).astype(int)
    f1_half = per_label(f1_score, y_true, at_half)
    f1_tuned = per_label(f1_score, y_true, at_tuned)
    has_positives = y_true.sum(axis=1) > 0
    return {
        "mean_roc_auc": float(np.mean(_defined(roc))) if _defined(roc) else None,
        "mean_pr_auc": float(np.mean(_defined(pr))) if _defined(pr) else None,
        "label_ranking_average_precision": (
            float(label_ranking_average_precision_score(y_true[has_positives], probs[has_positives]))
            if has_positives.any() else None),
        "at_0.5": threshold_metrics(y_true, at_half),
        "at_tuned": threshold_metrics(y_true, at_tuned),
        "per_label": {
            name: {"roc_auc": roc[j], "pr_auc": pr[j], "f1_at_0.5": float(f1_half[j]),
                   "f1_at_tuned": float(f1_tuned[j]), "threshold": float(thresholds[j]),
                   "positives": int(y_true[:, j].sum())}
            for j, name in enumerate(label_names)},
        "examples": int(len(y_true)),
    }


# Validation positives at which a label's own threshold and the pooled one weigh the same ("shrunk"): measured on
# held-out halves of the validation split, 10 gave +0.021 macro-F1 over per-label thresholds on toxic and +0.003
# on goemotions (docs/RESULTS.md)
THRESHOLD_SHRINKAGE = 10.0
POOLED_GRID = np.linspace(0.02, 0.98, 97)


def best_f1_threshold(y_true: np.ndarray, scores: np.ndarray) -> float:
    """A threshold that maximises F1 on these examples (0.5 when there are no positives): midway between the
    lowest score it keeps and the next score below, so that a new example just under the kept one is not kept."""
    if y_true.sum() == 0:
        return 0.5
    precision, recall, thresholds = precision_recall_curve(y_true, scores)
    f1 = 2 * precision[:-1] * recall[:-1] / np.maximum(precision[:-1] + recall[:-1], 1e-12)
    kept = float(thresholds[int(np.argmax(f1))])
    below = scores[scores < kept]
    return (kept + float(below.max())) / 2 if len(below) else kept


def pooled_threshold(y_true: np.ndarray, probs: np.ndarray) -> float:
    """The one threshold for every label that maximises macro-F1 (on a grid of step 0.01)."""
    macro = [f1_score(y_true, probs >= t, average="macro", zero_division=0) for t in POOLED_GRID]
    return float(POOLED_GRID[int(np.argmax(macro))])


def tune_thresholds(y_true: np.ndarray, probs: np.ndarray, strategy: str = "shrunk") -> np.ndarray:
    """Thresholds per label: each label's F1-best one shrunk towards the pooled macro-F1 one in log-odds, by
    n / (n + THRESHOLD_SHRINKAGE) for n validation positives (shrunk); each label's own (per_label); one global
    value tuned for micro-F1 (global); or 0.5 (fixed)."""
    num_labels = y_true.shape[1]
    if strategy == "fixed":
        return np.full(num_labels, 0.5)
    if strategy == "global":
        return np.full(num_labels, best_f1_threshold(y_true.ravel(), probs.ravel()))
    own = np.array([best_f1_threshold(y_true[:, j], probs[:, j]) for j in range(num_labels)])
    if strategy == "per_label":
        return own
    positives = y_true.sum(axis=0)
    weight = positives / (positives + THRESHOLD_SHRINKAGE)
    return expit(weight * logit(own) + (1 - weight) * logit(pooled_threshold(y_true, probs)))


def multiclass_metrics(y_true: np.ndarray, probs: np.ndarray, label_names: list[str]) -> dict[str, Any]:
    y_pred = probs.argmax(axis=1)
    labels = list(range(len(label_names)))
    return {
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "macro_f1": float(f1_score(y_true, y_pred, average="macro", labels=labels, zero_division=0)),
        "weighted_f1": float(f1_score(y_true, y_pred, average="weighted", labels=labels, zero_division=0)),
        "per_class": classification_report(y_true, y_pred, labels=labels, target_names=label_names,
                                           output_dict=True, zero_division=0),
        "confusion_matrix": confusion_matrix(y_true, y_pred, labels=labels).tolist(),
        "examples": int(len(y_true)),
    }


def compute_metrics(task: str, y_true: np.ndarray, probs: np.ndarray, label_names: list[str],
                    thresholds: np.ndarray | None = None, at_least_one: bool = False) -> dict[str, Any]:
    if task == "multilabel":
        if thresholds is None:
            thresholds = np.full(len(label_names), 0.5)
        return multilabel_metrics(y_true, probs, label_names, thresholds, at_least_one)
    return multiclass_metrics(y_true, probs, label_names)


CALIBRATION_BINS = 10


def reliability_bins(y_true: np.ndarray, probs: np.ndarray, bins: int = CALIBRATION_BINS) -> dict[str, list]:
    """Equal-width score bins of one binary outcome: count, mean score and fraction positive per bin (None where
    a bin is empty)."""
    y_true, probs = np.asarray(y_true, dtype=np.float64), np.asarray(probs, dtype=np.float64)
    index = np.minimum((probs * bins).astype(int), bins - 1)
    counts = np.bincount(index, minlength=bins)
    score_sums = np.bincount(index, weights=probs, minlength=bins)
    positive_sums = np.bincount(index, weights=y_true, minlength=bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_score, positive_rate = score_sums / counts, positive_sums / counts
    return {"count": counts.tolist(),
            "mean_score": [float(v) if c else None for v, c in zip(mean_score, counts, strict=True)],
            "fraction_positive": [float(v) if c else None for v, c in zip(positive_rate, counts, strict=True)]}


def expected_calibration_error(y_true: np.ndarray, probs: np.ndarray, bins: int = CALIBRATION_BINS) -> float:
    """Sum over equal-width bins of (share of examples) x |fraction positive - mean score| (Naeini et al., 2015)."""
    table = reliability_bins(y_true, probs, bins)
    total = max(sum(table["count"]), 1)
    return float(sum(count / total * abs(rate - score) for count, rate, score in
                     zip(table["count"], table["fraction_positive"], table["mean_score"], strict=True) if count))


def calibration_metrics(task: str, y_true: np.ndarray, probs: np.ndarray, label_names: list[str],
                        bins: int = CALIBRATION_BINS) -> dict[str, Any]:
    """Expected calibration error per label (multi-class: each class against the rest), and for multi-class that
    of the top class's score against being right."""
    outcomes = y_true if task == "multilabel" else np.eye(len(label_names))[np.asarray(y_true, dtype=int)]
    result: dict[str, Any] = {"bins": bins, "per_label": {
        name: round(expected_calibration_error(outcomes[:, j], probs[:, j], bins), 6)
        for j, name in enumerate(label_names)}}
    if task == "multiclass":
        right = (probs.argmax(axis=1) == np.asarray(y_true)).astype(float)
        result["top_class"] = round(expected_calibration_error(right, probs.max(axis=1), bins), 6)
    return result
