"""The scores a checkpoint serves from its members' scores: the transformer's and the TF-IDF member's blended at
the checkpoint's weights and method (models/blend.py), then at its temperature."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from models.blend import blend_scores
from models.scoring import with_temperature
from utils.checkpoint.contract import LEXICAL, TRANSFORMER, ClassifierInfo


@dataclass(frozen=True)
class Scored:
    """Texts as a checkpoint scores them: each member's scores, the served ones, the transformer's logit evidence
    (the log-sum-exp of its window-pooled logits: the energy none score's, models/none_of_these.py) and
    truncation flags, all in input order."""

    members: dict[str, np.ndarray]
    served: np.ndarray
    evidence: np.ndarray
    truncated: list[bool]


@dataclass(frozen=True)
class Blend:
    """A checkpoint's blend: the transformer's share of it per label, its method, and the temperature after."""

    task: str
    weights: np.ndarray  # the transformer's share, one per label
    method: str
    temperature: float

    @classmethod
    def of(cls, info: ClassifierInfo) -> Blend:
        weights = np.broadcast_to(np.asarray(info.blend_weights, dtype=np.float64), (len(info.labels),))
        return cls(info.task, weights, info.blend_method, info.temperature)

    def combine(self, transformer: np.ndarray, lexical: np.ndarray) -> np.ndarray:
        """The members' scores (N, labels) blended, before the temperature."""
        return blend_scores(self.task, self.weights, transformer, lexical, self.method)

    def calibrated(self, scores: np.ndarray) -> np.ndarray:
        """Scores at the checkpoint's temperature (fitted on validation)."""
        return with_temperature(self.task, scores, self.temperature)

    def served(self, members: Mapping[str, np.ndarray]) -> np.ndarray:
        """What predict, eval and the API give: the members' blend (the transformer alone without a TF-IDF
        member), at the temperature."""
        if LEXICAL not in members:
            return self.calibrated(members[TRANSFORMER])
        return self.calibrated(self.combine(members[TRANSFORMER], members[LEXICAL]))
