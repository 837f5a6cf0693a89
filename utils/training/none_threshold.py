"""The "none of these" threshold of a multi-class checkpoint, tuned on the validation rows' served scores.

With validation rows of the data's none class, the threshold is the one that maximises validation accuracy with
"none" counted as a class (the rule of the CLINC150 paper, Larson et al. 2019). Without, it answers "none of these"
for a target share of the in-scope validation rows (--reject-rate).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from models.none_of_these import NoneRule

NO_REJECTION = 1.0 + 1e-9  # above every none score: nothing is rejected


def accuracy_threshold(none_scores: np.ndarray, correct_in_scope: np.ndarray, is_none: np.ndarray) -> float:
    """The threshold of the highest accuracy with "none" as a class: a row is right when rejected and of the none
    class, or kept, in scope and answered with its class. Midway between neighbouring scores."""
    order = np.argsort(none_scores, kind="stable")
    scores, kept_right, rejected_right = none_scores[order], correct_in_scope[order], is_none[order]
    # keeping the first k rows (ascending scores) and rejecting the rest, for k = 0..n
    right = np.concatenate([[0], np.cumsum(kept_right)]) + np.concatenate([np.cumsum(rejected_right[::-1])[::-1], [0]])
    cuts = np.flatnonzero(np.concatenate([[True], scores[1:] > scores[:-1], [True]]))  # only between distinct scores
    best = int(cuts[np.argmax(right[cuts])])
    if best == len(scores):
        return NO_REJECTION
    return float(scores[0] / 2 if best == 0 else (scores[best - 1] + scores[best]) / 2)


def fit_none_rule(labels: np.ndarray, scores: np.ndarray, evidence: np.ndarray, none_index: int | None,
                  reject_rate: float) -> tuple[NoneRule | None, dict[str, Any]]:
    """The rule tuned on validation (class ids `labels`, served probabilities `scores`, the transformer's logit
    `evidence`) and what it does there: the none class's share where the data has one, else the energy score; no
    rule without a none class when `reject_rate` is 0."""
    labels = np.asarray(labels, dtype=int)
    probe = NoneRule(NO_REJECTION, none_index, "none_share" if none_index is not None else "energy")
    is_none = probe.is_none(labels, scores.shape[1])
    answered, _, none_scores = probe.answers(scores, evidence)
    if is_none.any():
        threshold, how = accuracy_threshold(none_scores, answered == labels, is_none), "validation accuracy"
    elif reject_rate > 0 and len(labels) * reject_rate < 1:  # even the top score would reject more than the rate
        return None, {"none_threshold": None, "note": f"'none of these' is off: {len(labels)} validation rows are "
                      f"too few to place a cut at {reject_rate:g} of them (it takes {int(np.ceil(1 / reject_rate))})"}
    elif reject_rate > 0:
        threshold = float(np.quantile(none_scores, 1 - reject_rate, method="higher"))
        how = f"{reject_rate:g} of the validation rows"
    else:
        return None, {}
    rule = NoneRule(float(f"{threshold:.6g}"), none_index, probe.score)
    chosen, rejected, _ = rule.answers(scores, evidence)
    summary = {"none_threshold": rule.threshold, "none_score": rule.score, "chosen_by": how,
               "validation_in_scope_rows": int((~is_none).sum()), "validation_none_rows": int(is_none.sum()),
               "validation_in_scope_rejected": round(float(rejected[~is_none].mean()), 6) if (~is_none).any() else None,
               "validation_in_scope_accuracy": round(float((chosen == labels)[~is_none].mean()), 6)
               if (~is_none).any() else None,
               "validation_none_recall": round(float(rejected[is_none].mean()), 6) if is_none.any() else None}
    return rule, summary
