"""A text's answer from its scores: the labels chosen (each label at its threshold, or the top class), every
label's score in the checkpoint's order, the best k on request; and which labels an explanation covers."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from models.none_of_these import NoneRule
from models.scoring import chosen_labels
from utils.checkpoint.contract import ClassifierInfo

Threshold = float | Sequence[float] | None


@dataclass(frozen=True)
class LabelRules:
    """The checkpoint's labels and how scores choose among them: a multi-label checkpoint's thresholds (tuned in
    training, or one number or one per label given by the caller), a multi-class one's top class, or "none of
    these" where its rule says so."""

    task: str
    label_names: list[str]
    thresholds: np.ndarray | None  # multi-label only
    at_least_one: bool = False
    none_rule: NoneRule | None = None  # multi-class only
    none_class: int | None = None  # multi-class: the data's "none" class, where it had one

    @classmethod
    def of(cls, info: ClassifierInfo, threshold: Threshold = None) -> LabelRules:
        """The checkpoint's rules; `threshold` replaces its tuned thresholds (multi-label: 0.5 where none were tuned)
        or its "none of these" threshold (multi-class: one number, which gives a checkpoint without one a rule)."""
        none_index = info.labels.index(info.none_label) if info.none_label else None
        kind = info.none_score or ("none_share" if none_index is not None else "top_probability")
        none_rule = NoneRule(info.none_threshold, none_index, kind) if info.none_threshold is not None else None
        rules = cls(info.task, list(info.labels), None, info.at_least_one_label,
                    none_rule if info.task == "multiclass" else None, none_index)
        if threshold is None and info.task == "multilabel":
            return replace(rules, thresholds=np.array(info.thresholds or [0.5] * len(info.labels), dtype=np.float64))
        return rules if threshold is None else rules.with_threshold(threshold)

    def with_threshold(self, threshold: Threshold) -> LabelRules:
        """These rules with `threshold`: one number or one per label (multi-label), the none threshold (multi-class)."""
        if self.task == "multilabel":
            return replace(self, thresholds=self.parse(threshold))
        if isinstance(threshold, bool) or not isinstance(threshold, int | float) or not 0 <= threshold <= 1:
            raise ValueError(f"threshold of a multi-class checkpoint is its 'none of these' threshold: one number in "
                             f"[0, 1], got {threshold!r}")
        if self.none_rule is not None:
            return replace(self, none_rule=replace(self.none_rule, threshold=float(threshold)))
        kind = "none_share" if self.none_class is not None else "top_probability"
        return replace(self, none_rule=NoneRule(float(threshold), self.none_class, kind))

    def parse(self, threshold: Threshold) -> np.ndarray:
        """A multi-label `threshold` as one number per label."""
        try:
            values = np.asarray(threshold, dtype=np.float64)
        except (TypeError, ValueError):
            values = np.array([np.nan])
        if values.ndim == 0:
            values = np.full(len(self.label_names), float(values))
        if values.shape != (len(self.label_names),) or not ((values >= 0) & (values <= 1)).all():
            raise ValueError(f"threshold must be one number or {len(self.label_names)} numbers in [0, 1]")
        return values

    def answer(self, scores: np.ndarray, truncated: bool, top_k: int | None = None,
               evidence: float | None = None) -> dict[str, Any]:
        """One text's answer: predicted labels, every label's score (checkpoint order), truncation.

        Multi-label: the labels whose score reaches their threshold. Multi-class: the top class; with a none rule,
        "none of these" (`none_of_these` true, no label or the data's none class) where the text's `none_score` (of
        `scores`, and the transformer's logit `evidence` for the energy score) reaches its threshold. `top_k` adds
        the k best labels with their scores, best first.
        """
        names = self.label_names
        none: dict[str, Any] = {}
        if self.task == "multilabel":
            chosen = chosen_labels(scores, self.thresholds, self.at_least_one)
            labels = [name for name, keep in zip(names, chosen[0], strict=True) if keep]
        elif self.none_rule is None:
            labels = [names[int(np.argmax(scores))]]
        else:
            given = None if evidence is None else np.array([evidence])
            answered, rejected, none_scores = self.none_rule.answers(scores, given)
            labels = [names[int(answered[0])]] if answered[0] >= 0 else []
            none = {"none_of_these": bool(rejected[0]), "none_score": float(none_scores[0])}
        answer = {"labels": labels, "scores": {name: float(s) for name, s in zip(names, scores, strict=True)},
                  "truncated": bool(truncated)} | none
        if top_k:
            order = np.argsort(-scores, kind="stable")[:top_k]
            answer["top_k"] = [{"label": names[i], "score": float(scores[i])} for i in order]
        return answer

    def to_explain(self, labels: Sequence[str] | None, predicted: list[str], scores: np.ndarray) -> list[str]:
        """The labels an explanation covers: those asked for, else the predicted ones, else the best-scoring."""
        if labels is None:
            return predicted or [self.label_names[int(np.argmax(scores))]]
        if isinstance(labels, str) or not isinstance(labels, Sequence) or not labels:
            raise ValueError(f"labels must be a non-empty list of label names, got {labels!r}")
        unknown = [name for name in labels if name not in self.label_names]
        if unknown:
            raise ValueError(f"unknown label(s) {unknown}; the checkpoint's labels are {self.label_names}")
        return list(dict.fromkeys(labels))


def check_top_k(top_k: Any) -> None:
    """A caller's top_k: None, or a positive integer."""
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1):
        raise ValueError(f"top_k must be a positive integer, got {top_k!r}")
