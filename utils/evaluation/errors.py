"""The mistakes a person reads first, with test texts: the class pairs most often confused (multi-class) and the
labels most often missed or wrongly given (multi-label), as eval_report.json's `errors` and the report shows them."""

from __future__ import annotations

from typing import Any

import numpy as np

from models.scoring import chosen_labels

MOST_ERRORS = 15  # pairs (or labels) kept, most errors first: the full matrix is the confusion matrix
EXAMPLES = 2  # texts shown per pair or per kind of mistake
EXAMPLE_CHARS = 160  # a text is cut here: a toxic comment can run to thousands of characters


def shortened(text: str) -> str:
    """The text on one line, cut to EXAMPLE_CHARS with an ellipsis."""
    flat = " ".join(text.split())
    return flat if len(flat) <= EXAMPLE_CHARS else flat[:EXAMPLE_CHARS - 1].rstrip() + "\u2026"


def examples(texts: list[str], rows: np.ndarray, confidence: np.ndarray) -> list[str]:
    """Up to EXAMPLES texts of `rows`, the most confident mistakes first (the clearest to read)."""
    order = rows[np.argsort(-confidence[rows], kind="stable")]
    return [shortened(texts[i]) for i in order[:EXAMPLES]]


def confused_pairs(y_true: np.ndarray, scores: np.ndarray, label_names: list[str],
                   texts: list[str]) -> dict[str, Any]:
    """The (true, predicted) pairs of different classes by count, each with its share of the true class's test
    rows and the texts the model was surest of; the top class is the prediction, as in the confusion matrix."""
    y_true = np.asarray(y_true, dtype=int)
    predicted, confidence = scores.argmax(axis=1), scores.max(axis=1)
    wrong = np.flatnonzero(predicted != y_true)
    pairs, counts = np.unique(np.stack([y_true[wrong], predicted[wrong]], axis=1), axis=0, return_counts=True)
    support = np.bincount(y_true, minlength=len(label_names))
    order = sorted(range(len(pairs)), key=lambda k: (-counts[k], -counts[k] / support[pairs[k][0]], k))
    kept = []
    for k in order[:MOST_ERRORS]:
        true, said = (int(v) for v in pairs[k])
        rows = wrong[(y_true[wrong] == true) & (predicted[wrong] == said)]
        kept.append({"true": label_names[true], "predicted": label_names[said], "count": int(counts[k]),
                     "share": float(counts[k] / support[true]), "examples": examples(texts, rows, confidence)})
    return {"wrong_rows": int(len(wrong)), "pairs": int(len(pairs)), "confused_pairs": kept}


def label_errors(y_true: np.ndarray, scores: np.ndarray, label_names: list[str], texts: list[str],
                 thresholds: np.ndarray, at_least_one: bool) -> dict[str, Any]:
    """Per label, the test rows where the served answer missed it and where it gave it wrongly, with the texts
    scored furthest from right; the labels with most mistakes first."""
    y_true = np.asarray(y_true, dtype=int)
    predicted = chosen_labels(scores, thresholds, at_least_one)
    rows = []
    for j, name in enumerate(label_names):
        missed = np.flatnonzero((y_true[:, j] == 1) & ~predicted[:, j])
        wrongly = np.flatnonzero((y_true[:, j] == 0) & predicted[:, j])
        rows.append({"label": name, "positives": int(y_true[:, j].sum()), "missed": int(len(missed)),
                     "wrongly_given": int(len(wrongly)),
                     "missed_examples": examples(texts, missed, -scores[:, j]),
                     "wrongly_given_examples": examples(texts, wrongly, scores[:, j])})
    rows.sort(key=lambda row: -(row["missed"] + row["wrongly_given"]))
    return {"labels": len(label_names), "label_errors": rows[:MOST_ERRORS]}


def error_summary(task: str, y_true: np.ndarray, scores: np.ndarray, label_names: list[str], texts: list[str],
                  thresholds: np.ndarray | None, at_least_one: bool) -> dict[str, Any]:
    """The task's mistakes with examples (multi-label at the served thresholds, 0.5 where there are none)."""
    if task == "multiclass":
        return confused_pairs(y_true, scores, label_names, texts)
    cut = thresholds if thresholds is not None else np.full(len(label_names), 0.5)
    return label_errors(y_true, scores, label_names, texts, cut, at_least_one)
