"""Seeded, stratified splits: iterative stratification for multi-label, class-stratified for multi-class."""

from __future__ import annotations

import numpy as np
from iterstrat.ml_stratifiers import MultilabelStratifiedShuffleSplit
from sklearn.model_selection import StratifiedShuffleSplit


def stratified_split(labels: np.ndarray, held_out: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices (kept, held_out) with label proportions preserved on both sides, sorted."""
    n = len(labels)
    n_held = int(round(n * held_out))
    if n_held == 0:
        return np.arange(n), np.array([], dtype=int)
    if labels.ndim == 2:
        splitter = MultilabelStratifiedShuffleSplit(n_splits=1, test_size=n_held, random_state=seed)
    else:
        _, counts = np.unique(labels, return_counts=True)
        if counts.min() < 2 or n_held < len(counts):
            rng = np.random.default_rng(seed)
            order = rng.permutation(n)
            return np.sort(order[n_held:]), np.sort(order[:n_held])
        splitter = StratifiedShuffleSplit(n_splits=1, test_size=n_held, random_state=seed)
    kept, held = next(splitter.split(np.zeros((n, 1)), labels))
    return np.sort(kept), np.sort(held)
