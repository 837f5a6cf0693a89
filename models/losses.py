"""Losses for the two tasks and the class weights they use, computed from the training labels."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


def auto_pos_weight(labels: np.ndarray, cap: float) -> np.ndarray:
    """(N - pos) / pos per label, at most `cap`; a label with no positives gets the cap."""
    positives = labels.sum(axis=0)
    negatives = len(labels) - positives
    with np.errstate(divide="ignore"):
        weights = np.where(positives > 0, negatives / np.maximum(positives, 1), cap)
    return np.minimum(weights, cap).astype(np.float32)


def balanced_class_weights(labels: np.ndarray, num_classes: int) -> np.ndarray:
    """n_samples / (n_classes * count) per class, as scikit-learn's 'balanced'; absent classes get 1."""
    counts = np.bincount(labels, minlength=num_classes).astype(np.float64)
    weights = np.where(counts > 0, len(labels) / (num_classes * np.maximum(counts, 1)), 1.0)
    return weights.astype(np.float32)


def parse_weights(spec: str, count: int, what: str) -> np.ndarray | None:
    """'none' -> None; 'v1,v2,..' -> one float per label; 'auto' is resolved by the caller."""
    if spec == "none":
        return None
    values = [float(v) for v in spec.split(",")]
    if len(values) != count or min(values) <= 0:
        raise ValueError(f"--{what}: expected {count} positive numbers, got {spec!r}")
    return np.array(values, dtype=np.float32)


class WeightedBCELoss(nn.Module):
    """BCE on logits with optional per-label positive weights, kept out of the model's saved weights."""

    def __init__(self, pos_weight: torch.Tensor | None = None) -> None:
        super().__init__()
        self.register_buffer("pos_weight", pos_weight, persistent=False)

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return F.binary_cross_entropy_with_logits(logits, targets, pos_weight=self.pos_weight)


class FocalLoss(nn.Module):
    """Binary focal loss (Lin et al. 2017) on logits, optionally with per-label positive weights."""

    def __init__(self, gamma: float = 2.0, pos_weight: torch.Tensor | None = None) -> None:
        super().__init__()
        self.gamma = gamma
        self.register_buffer("pos_weight", pos_weight, persistent=False)

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        bce = F.binary_cross_entropy_with_logits(logits, targets, pos_weight=self.pos_weight, reduction="none")
        probs = torch.sigmoid(logits)
        p_true = targets * probs + (1 - targets) * (1 - probs)
        return ((1 - p_true) ** self.gamma * bce).mean()


class WeightedCrossEntropyLoss(nn.Module):
    """Cross-entropy with optional class weights and label smoothing, kept out of the saved weights."""

    def __init__(self, weight: torch.Tensor | None = None, label_smoothing: float = 0.0) -> None:
        super().__init__()
        self.label_smoothing = label_smoothing
        self.register_buffer("weight", weight, persistent=False)

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits, targets, weight=self.weight, label_smoothing=self.label_smoothing)


def build_loss(task: str, name: str, weights: np.ndarray | None, gamma: float = 2.0,
               label_smoothing: float = 0.0) -> nn.Module:
    tensor = torch.tensor(weights) if weights is not None else None
    if task == "multiclass":
        return WeightedCrossEntropyLoss(tensor, label_smoothing)
    if name == "focal":
        return FocalLoss(gamma, tensor)
    return WeightedBCELoss(tensor)
