"""Seeded, stratified splits: iterative stratification for multi-label, class-stratified for multi-class."""

from __future__ import annotations

import warnings

import numpy as np
from iterstrat.ml_stratifiers import MultilabelStratifiedKFold, MultilabelStratifiedShuffleSplit
from sklearn.model_selection import StratifiedKFold, StratifiedShuffleSplit


def stratified_split(labels: np.ndarray, held_out: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices (kept, held_out) with label proportions preserved on both sides, sorted."""
    n = len(labels)
    n_held = int(round(n * held_out))
    if n_held == 0:
        return np.arange(n), np.array([], dtype=int)
    target = labels[:, 0] if labels.ndim == 2 and labels.shape[1] == 1 else labels  # one 0/1 label: two classes
    if target.ndim == 2:
        splitter = MultilabelStratifiedShuffleSplit(n_splits=1, test_size=n_held, random_state=seed)
    else:
        _, counts = np.unique(target, return_counts=True)
        if counts.min() < 2 or n_held < len(counts):
            rng = np.random.default_rng(seed)
            order = rng.permutation(n)
            return cover_rare_labels(labels, order[n_held:], order[:n_held])
        splitter = StratifiedShuffleSplit(n_splits=1, test_size=n_held, random_state=seed)
    kept, held = next(splitter.split(np.zeros((n, 1)), target))
    return cover_rare_labels(labels, kept, held)


def cover_rare_labels(labels: np.ndarray, kept: np.ndarray, held: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Swap rows so that every label with two or more positives has one on each side, both sorted.

    Stratification rounds a label expected less than once on a side down to none, and a validation or
    test set without a label cannot measure it.
    """
    onehot = (labels > 0) if labels.ndim == 2 else np.eye(int(labels.max()) + 1, dtype=bool)[labels]
    sides = [list(kept), list(held)]
    for j in np.argsort(onehot.sum(axis=0), kind="stable"):
        for lacking, other in ((1, 0), (0, 1)):
            if onehot[:, j].sum() < 2 or not sides[lacking] or onehot[sides[lacking], j].any():
                continue
            give = _spare_row([i for i in sides[other] if onehot[i, j]], onehot, sides[other])
            take = _spare_row(sides[lacking], onehot, sides[lacking])
            sides[other][sides[other].index(give)] = take
            sides[lacking][sides[lacking].index(take)] = give
    return np.sort(np.array(sides[0], dtype=int)), np.sort(np.array(sides[1], dtype=int))


def _spare_row(candidates: list[int], onehot: np.ndarray, side: list[int]) -> int:
    """A candidate whose every label has another row on its side (so moving it empties no label), else the first."""
    counts = onehot[side].sum(axis=0)
    return next((i for i in candidates if (counts[onehot[i]] >= 2).all()), candidates[0])


def stratified_folds(labels: np.ndarray, folds: int, seed: int) -> np.ndarray:
    """Each row's fold (0 to folds - 1), seeded, with label proportions kept in every fold."""
    target = labels[:, 0] if labels.ndim == 2 and labels.shape[1] == 1 else labels  # one 0/1 label: two classes
    splitter = (MultilabelStratifiedKFold(n_splits=folds, shuffle=True, random_state=seed) if target.ndim == 2
                else StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed))
    fold_of = np.zeros(len(labels), dtype=np.int64)
    with warnings.catch_warnings():  # a class with fewer rows than folds is missing from some: said by the caller
        warnings.simplefilter("ignore", UserWarning)
        for fold, (_, held) in enumerate(splitter.split(np.zeros((len(labels), 1)), target)):
            fold_of[held] = fold
    return fold_of
