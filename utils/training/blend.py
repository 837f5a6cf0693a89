"""The lexical member beside the transformer: fitted on the training rows, blended on the validation rows."""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
from joblib.externals.loky import get_reusable_executor

from models.blend import DEFAULT_METHODS, blend_scores
from models.lexical import LexicalModel
from utils.data.prepare import DataSplits
from utils.evaluation.metrics import compute_metrics
from utils.training.blend_weights import choose_blend_weights
from utils.training.lexical_fit import fit_lexical


@dataclass
class Blend:
    """The fitted lexical member, the transformer's share per label (or for all classes) and the method."""

    lexical: LexicalModel
    weights: np.ndarray
    method: str
    seconds: float

    def scores(self, task: str, transformer_scores: np.ndarray, lexical_scores: np.ndarray) -> np.ndarray:
        return blend_scores(task, self.weights, transformer_scores, lexical_scores, self.method)


@dataclass
class FittedMember:
    """The TF-IDF member fitted on the transformer's training rows, its validation scores and its fitting time."""

    lexical: LexicalModel
    validation_scores: np.ndarray
    seconds: float


def fit_member(task: str, splits: DataSplits) -> FittedMember:
    """The TF-IDF member fitted on exactly the transformer's training rows, its C chosen on validation."""
    started = time.time()
    validation = splits.validation
    lexical = fit_lexical(splits.train.texts, splits.train.labels, task,
                               validation=(validation.texts, validation.labels))
    # the fit's worker processes end now rather than idle through training: a run killed later leaves none
    get_reusable_executor().shutdown(wait=True)
    return FittedMember(lexical, lexical.scores(validation.texts), time.time() - started)


def fit_blend(task: str, splits: DataSplits, transformer_validation: np.ndarray,
              member: FittedMember) -> Blend:
    """The blend weights chosen on the validation rows only."""
    started = time.time()
    method = DEFAULT_METHODS[task]
    weights = choose_blend_weights(task, splits.validation.labels, transformer_validation,
                                   member.validation_scores, method)
    return Blend(member.lexical, np.atleast_1d(weights), method, member.seconds + time.time() - started)


def member_metrics(task: str, splits: DataSplits, members: dict[str, np.ndarray]) -> dict[str, dict]:
    """Validation metrics of each member alone (at 0.5 / top class: threshold-free figures matter here)."""
    validation = splits.validation
    return {name: compute_metrics(task, validation.labels, scores, validation.label_names)
            for name, scores in members.items()}
