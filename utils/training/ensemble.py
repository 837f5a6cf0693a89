"""The lexical member beside the transformer: fitted on the training rows, blended on the validation rows."""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from models.blend import DEFAULT_METHODS, blend_scores, choose_blend_weights
from models.lexical import LexicalModel
from utils.data.prepare import DataSplits
from utils.evaluation.metrics import compute_metrics


@dataclass
class Blend:
    """The fitted lexical member, the transformer's share per label (or for all classes) and the method."""

    lexical: LexicalModel
    weights: np.ndarray
    method: str
    seconds: float

    def scores(self, task: str, transformer_scores: np.ndarray, lexical_scores: np.ndarray) -> np.ndarray:
        return blend_scores(task, self.weights, transformer_scores, lexical_scores, self.method)


def fit_blend(task: str, splits: DataSplits, transformer_validation: np.ndarray) -> tuple[Blend, np.ndarray]:
    """The TF-IDF member fitted on exactly the transformer's training rows (its C chosen on validation), and the
    blend weights chosen on the validation rows; returns the blend and the member's validation scores."""
    started = time.time()
    validation = splits.validation
    lexical = LexicalModel.fit(splits.train.texts, splits.train.labels, task,
                               validation=(validation.texts, validation.labels))
    lexical_validation = lexical.scores(validation.texts)
    method = DEFAULT_METHODS[task]
    weights = choose_blend_weights(task, validation.labels, transformer_validation, lexical_validation, method)
    return Blend(lexical, np.atleast_1d(weights), method, time.time() - started), lexical_validation


def member_metrics(task: str, splits: DataSplits, members: dict[str, np.ndarray]) -> dict[str, dict]:
    """Validation metrics of each member alone (at 0.5 / top class: threshold-free figures matter here)."""
    validation = splits.validation
    return {name: compute_metrics(task, validation.labels, scores, validation.label_names)
            for name, scores in members.items()}
