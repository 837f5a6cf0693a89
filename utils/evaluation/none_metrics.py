"""How well a multi-class checkpoint says "none of these": in-scope accuracy with its rejections counted as errors,
recall and precision of "none" on the rows that fit no class, the none score's AUROC and its false-positive rate
at 95% true-positive rate (the out-of-distribution literature's figures)."""

from __future__ import annotations

from typing import Any

import numpy as np
from sklearn.metrics import roc_auc_score, roc_curve

from models.none_of_these import NoneRule

# the none scores' histogram of each side, for the report's plot: bins even in log-odds (1e-4 to 1 - 1e-4), as
# the scores of a calibrated model crowd near 0 and 1; a score beyond counts in the outer bin
HISTOGRAM_EDGES = 1.0 / (1.0 + np.exp(-np.linspace(-9.21, 9.21, 41)))


def histogram(scores: np.ndarray) -> list[int]:
    """Counts per bin of HISTOGRAM_EDGES, every score in one (the outer bins take what lies beyond)."""
    return np.histogram(np.clip(scores, HISTOGRAM_EDGES[0], HISTOGRAM_EDGES[-1]), HISTOGRAM_EDGES)[0].tolist()


def fpr_at_95_tpr(is_none: np.ndarray, none_scores: np.ndarray) -> float:
    """The share of in-scope rows rejected by the lowest threshold that rejects 95% of the none rows."""
    fpr, tpr, _ = roc_curve(is_none, none_scores)
    return float(fpr[np.searchsorted(tpr, 0.95, side="left")])


def none_metrics(rule: NoneRule, labels: np.ndarray, scores: np.ndarray, evidence: np.ndarray | None,
                 none_scores_extra: np.ndarray) -> dict[str, Any]:
    """Figures of `rule` on rows of known classes (`labels`, possibly the none class, with their served `scores`
    and the transformer's logit `evidence`), plus `none_scores_extra`: the none scores of rows of a "none" label
    the checkpoint never learnt."""
    labels = np.asarray(labels, dtype=int)
    chosen, rejected, none_scores = rule.answers(scores, evidence)
    none_scores = np.concatenate([none_scores, none_scores_extra])
    is_none = np.concatenate([rule.is_none(labels, np.atleast_2d(scores).shape[1]),
                              np.ones(len(none_scores_extra), dtype=bool)])
    rejected = np.concatenate([rejected, none_scores_extra >= rule.threshold])
    in_scope = ~is_none
    right = np.concatenate([chosen == labels, np.zeros(len(none_scores_extra), dtype=bool)])
    both = bool(in_scope.any() and is_none.any())
    return {
        "threshold": rule.threshold, "score": rule.score, "in_scope_rows": int(in_scope.sum()),
        "none_rows": int(is_none.sum()),
        "in_scope_accuracy": float(right[in_scope].mean()) if in_scope.any() else None,
        "in_scope_rejected": float(rejected[in_scope].mean()) if in_scope.any() else None,
        "none_recall": float(rejected[is_none].mean()) if is_none.any() else None,
        "none_precision": float(is_none[rejected].mean()) if rejected.any() else None,
        "accuracy_none_as_class": float(np.where(is_none, rejected, right).mean()),
        "auroc": float(roc_auc_score(is_none, none_scores)) if both else None,
        "fpr_at_95_tpr": fpr_at_95_tpr(is_none, none_scores) if both else None,
        "histogram": {"edges": HISTOGRAM_EDGES.round(6).tolist(),
                      "in_scope": histogram(none_scores[in_scope]), "none": histogram(none_scores[is_none])},
    }
