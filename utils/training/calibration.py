"""One temperature for the served scores, fitted on the validation rows after blending: scores that mean what
they say (a label scored 0.8 is right about 80% of the time), the order of every label's scores unchanged."""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy.optimize import minimize_scalar

from models.scoring import EPS, with_temperature
from utils.evaluation.metrics import calibration_metrics

LOG_TEMPERATURE_BOUNDS = (np.log(0.1), np.log(10.0))


def negative_log_likelihood(task: str, labels: np.ndarray, scores: np.ndarray) -> float:
    """Mean cross-entropy of the scores: per label and text (multi-label), or of the true class."""
    scores = np.clip(scores, EPS, 1 - EPS)
    if task == "multilabel":
        return float(-np.mean(labels * np.log(scores) + (1 - labels) * np.log1p(-scores)))
    return float(-np.mean(np.log(scores[np.arange(len(labels)), np.asarray(labels, dtype=int)])))


def fit_temperature(task: str, labels: np.ndarray, scores: np.ndarray) -> float:
    """The temperature in [0.1, 10] that minimises the validation rows' negative log-likelihood."""
    result = minimize_scalar(
        lambda log_t: negative_log_likelihood(task, labels, with_temperature(task, scores, float(np.exp(log_t)))),
        bounds=LOG_TEMPERATURE_BOUNDS, method="bounded", options={"xatol": 1e-4})
    return round(float(np.exp(result.x)), 4)


def mean_ece(task: str, labels: np.ndarray, scores: np.ndarray, label_names: list[str]) -> float:
    """The expected calibration error the report leads with: of the top class (multi-class), else the mean over
    labels."""
    figures = calibration_metrics(task, labels, scores, label_names)
    return figures["top_class"] if task == "multiclass" else float(np.mean(list(figures["per_label"].values())))


def calibration_summary(task: str, labels: np.ndarray, before: np.ndarray, after: np.ndarray,
                        label_names: list[str], temperature: float) -> dict[str, Any]:
    return {"temperature": temperature,
            "validation_ece_before": round(mean_ece(task, labels, before, label_names), 6),
            "validation_ece_after": round(mean_ece(task, labels, after, label_names), 6),
            "validation_nll_before": round(negative_log_likelihood(task, labels, before), 6),
            "validation_nll_after": round(negative_log_likelihood(task, labels, after), 6)}
