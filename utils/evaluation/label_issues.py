"""Which given labels out-of-sample probabilities doubt, ranked by cleanlab: each row's label quality (lower is more
doubtful; per label for multi-label) and whether confident learning flags it as a label issue."""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np

QUALITY_METHOD = "self_confidence"  # the probability of the given label: ranked flips best of cleanlab's three here


@dataclass(frozen=True)
class LabelIssues:
    """cleanlab's verdict on every row: `scores` (rows,) its label quality in [0, 1], lowest most doubtful;
    `label_scores` and `doubted` (rows, labels) each label's quality and whether it is flagged (multi-label: that
    label's 0 or 1; multi-class: the given class, flagged); `suspected` the labels the probabilities give instead
    (rows, labels) 0/1."""

    scores: np.ndarray
    label_scores: np.ndarray
    doubted: np.ndarray
    suspected: np.ndarray

    @property
    def flagged(self) -> np.ndarray:
        """The rows with a label issue."""
        return np.asarray(self.doubted.any(axis=1), dtype=bool)

    def order(self) -> np.ndarray:
        """Row indices, most doubtful first (ties in the file's order)."""
        return np.argsort(self.scores, kind="stable")


def find_label_issues(task: str, labels: np.ndarray, probabilities: np.ndarray) -> LabelIssues:
    """cleanlab's ranking and flags: `labels` class ids (multi-class) or a 0/1 matrix (multi-label), `probabilities`
    out of sample, one row per label row."""
    with warnings.catch_warnings():  # cleanlab warns of classes too rare to estimate their noise: fine here
        warnings.simplefilter("ignore")
        if task == "multiclass":
            return multiclass_issues(labels.astype(int), probabilities)
        return multilabel_issues((labels > 0).astype(int), probabilities)


def multiclass_issues(labels: np.ndarray, probabilities: np.ndarray) -> LabelIssues:
    from cleanlab.filter import find_label_issues as flag
    from cleanlab.rank import get_label_quality_scores

    probabilities = probabilities / probabilities.sum(axis=1, keepdims=True)
    given = np.eye(probabilities.shape[1], dtype=bool)[labels]
    scores = get_label_quality_scores(labels, probabilities, method=QUALITY_METHOD)
    flagged = flag(labels, probabilities) if len(np.unique(labels)) > 1 else np.zeros(len(labels), dtype=bool)
    label_scores = np.where(given, scores[:, None], 1.0)
    instead = np.where(given, -1.0, probabilities).argmax(axis=1)  # the likeliest class but the given one
    suspected = np.where(flagged[:, None], np.eye(given.shape[1], dtype=bool)[instead], given).astype(np.int64)
    return LabelIssues(scores, label_scores, given & flagged[:, None], suspected)


def multilabel_issues(labels: np.ndarray, probabilities: np.ndarray) -> LabelIssues:
    from cleanlab.multilabel_classification.filter import find_multilabel_issues_per_class
    from cleanlab.multilabel_classification.rank import get_label_quality_scores, get_label_quality_scores_per_class

    lists = [[int(j) for j in np.flatnonzero(row)] for row in labels]
    probabilities = np.clip(probabilities, 0.0, 1.0)
    scores = get_label_quality_scores(lists, probabilities, method=QUALITY_METHOD)
    label_scores = get_label_quality_scores_per_class(lists, probabilities, method=QUALITY_METHOD)
    doubted = np.asarray(find_multilabel_issues_per_class(lists, probabilities), dtype=bool)
    return LabelIssues(scores, label_scores, doubted, np.where(doubted, 1 - labels, labels))
