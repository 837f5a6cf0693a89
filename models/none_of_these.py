""""None of these": a multi-class checkpoint's answer when a text fits none of its classes.

A text's none score, from the served class probabilities: where the data had its own "none" class, that class's
share of the contest with the best in-scope class, p(none) / (p(none) + p(best)); else 1 minus the best class's
probability. (On CLINC150's validation rows the share ranked out-of-scope requests best, AUROC 0.985 against 0.975
for 1 - p(best) and 0.985 for p(none) alone: docs/RESULTS.md.) At or above the checkpoint's threshold, tuned on
validation (utils/training/none_threshold.py), the answer is "none of these": the data's none class when it had
one, else no label. Plain numpy, computed from the served scores, so that every backend answers alike.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from models.scoring import EPS

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

    def in_scope(self, label_count: int) -> np.ndarray:
        """(labels,) booleans: the classes a text can be answered with."""
        mask = np.ones(label_count, dtype=bool)
        if self.none_index is not None:
            mask[self.none_index] = False
        return mask

    def scores(self, probabilities: np.ndarray) -> np.ndarray:
        """(N,) none scores of served class probabilities (N, labels), in [0, 1]."""
        probabilities = np.atleast_2d(np.asarray(probabilities, dtype=np.float64))
        best = probabilities[:, self.in_scope(probabilities.shape[1])].max(axis=1)
        if self.none_index is None:
            return 1.0 - best
        none = probabilities[:, self.none_index]
        return none / np.maximum(none + best, EPS)

    def answers(self, probabilities: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(N,) the class each text is answered with (-1: none of these, with no none class) and (N,) rejected."""
        probabilities = np.atleast_2d(probabilities)
        in_scope = np.flatnonzero(self.in_scope(probabilities.shape[1]))
        best = in_scope[probabilities[:, in_scope].argmax(axis=1)]
        rejected = self.scores(probabilities) >= self.threshold
        none = -1 if self.none_index is None else self.none_index
        return np.where(rejected, none, best), rejected
