""""None of these": a multi-class checkpoint's answer when a text fits none of its classes.

A text's none score, in [0, 1], is one of (`NoneScore`, the checkpoint says which):
- `none_share`, where the data had its own "none" class: that class's share of the contest with the best in-scope
  class, p(none) / (p(none) + p(best)), of the served probabilities;
- `energy`, where it had none: the probability of an implicit class of logit 0 beside the transformer's logits,
  1 / (1 + sum(exp(logits))), a monotone map of the energy score (Liu et al. 2020), which reads how strongly the
  transformer's logits speak for any class rather than how they share out;
- `top_probability`: 1 minus the best class's served probability (a threshold given to a checkpoint without a rule).
On CLINC150's validation rows (docs/RESULTS.md "None of these") the share ranked out-of-scope requests best for a
model trained with them (AUROC 0.985 against 0.971 for 1 - p(best)), and the energy score for a model trained
without (0.978 against 0.966). At or above the checkpoint's threshold, tuned on validation
(utils/training/none_threshold.py), the answer is "none of these": the data's none class when it had one, else no
label. Plain numpy, from what every backend computes, so that every backend answers alike.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from models.scoring import EPS, sigmoid

NoneScore = Literal["none_share", "energy", "top_probability"]
# Labels read as "none of these" without --none-label: CLINC150's `oos`, Rasa's `out_of_scope` and `nlu_fallback`
NONE_LABEL_NAMES = ("oos", "out_of_scope", "out-of-scope", "outofscope", "none", "none_of_these", "nlu_fallback")

# Without "none" validation rows, the share of validation rows answered "none of these" (--reject-rate): small, as
# most texts a model meets fit a class, so it costs in-scope accuracy at most this share; docs/RESULTS.md "None of
# these" measures what it buys
DEFAULT_REJECT_RATE = 0.02


def is_none_name(name: str) -> bool:
    """A label named "none of these" by convention (case and spaces aside)."""
    return name.strip().lower().replace(" ", "_") in NONE_LABEL_NAMES


def conventional_none_label(label_names: list[str]) -> str | None:
    """The one label named as "none of these" by convention, or None."""
    found = [name for name in label_names if is_none_name(name)]
    return found[0] if len(found) == 1 else None


@dataclass(frozen=True)
class NoneRule:
    """When a multi-class checkpoint answers "none of these": its none score at or above `threshold`."""

    threshold: float
    none_index: int | None  # the data's "none" class among the labels, or None
    score: NoneScore = "top_probability"

    def in_scope(self, label_count: int) -> np.ndarray:
        """(labels,) booleans: the classes a text can be answered with."""
        mask = np.ones(label_count, dtype=bool)
        if self.none_index is not None:
            mask[self.none_index] = False
        return mask

    def scores(self, probabilities: np.ndarray, evidence: np.ndarray | None = None) -> np.ndarray:
        """(N,) none scores in [0, 1] of served class probabilities (N, labels) and, for `energy`, the transformer's
        evidence (N,): the log-sum-exp of its (window-pooled) logits."""
        probabilities = np.atleast_2d(np.asarray(probabilities, dtype=np.float64))
        best = probabilities[:, self.in_scope(probabilities.shape[1])].max(axis=1)
        if self.score == "energy":
            if evidence is None:
                raise ValueError("the energy none score needs the transformer's logit evidence")
            return sigmoid(-np.asarray(evidence, dtype=np.float64))
        if self.score == "none_share" and self.none_index is not None:
            none = probabilities[:, self.none_index]
            return none / np.maximum(none + best, EPS)
        return 1.0 - best

    def is_none(self, labels: np.ndarray, label_count: int) -> np.ndarray:
        """(N,) booleans: which class ids `labels` are the data's none class."""
        return ~self.in_scope(label_count)[np.asarray(labels, dtype=int)]

    def answers(self, probabilities: np.ndarray,
                evidence: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(N,) the class each text is answered with (-1: none of these, with no none class), (N,) rejected and
        (N,) the none scores that decided it."""
        probabilities = np.atleast_2d(probabilities)
        in_scope = np.flatnonzero(self.in_scope(probabilities.shape[1]))
        best = in_scope[probabilities[:, in_scope].argmax(axis=1)]
        none_scores = self.scores(probabilities, evidence)
        rejected = none_scores >= self.threshold
        none = -1 if self.none_index is None else self.none_index
        return np.where(rejected, none, best), rejected, none_scores
