"""Stratified splits: seeded, reproducible, disjoint and covering, with label proportions kept on both sides."""

from collections import Counter

import numpy as np
import pytest

from utils.config import make_config
from utils.data.datasets import BUILTIN_DATASETS, SHARED_DATA_DIR
from utils.data.prepare import prepare_splits
from utils.data.readers import ColumnLayout, read_labeled_texts
from utils.data.splits import stratified_split

TOXIC = BUILTIN_DATASETS["toxic"]
CONFERENCE = BUILTIN_DATASETS["conference"]


@pytest.fixture(scope="module")
def toxic_labels() -> np.ndarray:
    layout = ColumnLayout(TOXIC.text_column, label_columns=TOXIC.label_columns)
    return read_labeled_texts(SHARED_DATA_DIR / TOXIC.train_file, "multilabel", layout).labels


@pytest.fixture(scope="module")
def conference_labels() -> np.ndarray:
    layout = ColumnLayout(CONFERENCE.text_column, label_column=CONFERENCE.label_column)
    return read_labeled_texts(SHARED_DATA_DIR / CONFERENCE.train_file, "multiclass", layout).labels


def assert_partition(kept, held, n, n_held):
    assert len(held) == n_held
    assert len(np.intersect1d(kept, held)) == 0
    np.testing.assert_array_equal(np.sort(np.concatenate([kept, held])), np.arange(n))
    assert (np.diff(kept) > 0).all() and (np.diff(held) > 0).all()


def test_multilabel_split_is_disjoint_covering_and_stratified(toxic_labels):
    n = len(toxic_labels)
    kept, held = stratified_split(toxic_labels, 0.15, seed=0)
    assert_partition(kept, held, n, round(n * 0.15))
    overall = toxic_labels.mean(axis=0)
    for side in (kept, held):
        rates = toxic_labels[side].mean(axis=0)
        np.testing.assert_allclose(rates, overall, rtol=0.05, atol=0.002)
        assert (toxic_labels[side].sum(axis=0) > 0).all()  # threat (104 of 12,965) on both sides


def test_multiclass_split_keeps_class_proportions(conference_labels):
    n = len(conference_labels)
    kept, held = stratified_split(conference_labels, 0.2, seed=0)
    assert_partition(kept, held, n, round(n * 0.2))
    total = np.bincount(conference_labels)
    held_counts = np.bincount(conference_labels[held], minlength=len(total))
    assert np.abs(held_counts - total * 0.2).max() <= 1


def test_one_0_1_label_splits_as_its_two_classes(toxic_labels):
    """A file of one 0/1 label column (multi-label with one label) keeps its positives' share on both sides."""
    single = toxic_labels[:, :1]
    kept, held = stratified_split(single, 0.2, seed=0)
    assert_partition(kept, held, len(single), round(len(single) * 0.2))
    assert abs(single[held].sum() - single.sum() * 0.2) <= 1


@pytest.mark.parametrize("which", ["toxic_labels", "conference_labels"])
def test_same_seed_same_split_other_seed_other_split(request, which):
    labels = request.getfixturevalue(which)
    first = stratified_split(labels, 0.2, seed=7)
    again = stratified_split(labels, 0.2, seed=7)
    other = stratified_split(labels, 0.2, seed=8)
    np.testing.assert_array_equal(first[1], again[1])
    assert not np.array_equal(first[1], other[1])


def test_rare_label_lands_on_both_sides():
    rng = np.random.default_rng(0)
    labels = (rng.random((60, 3)) < 0.3).astype(np.float32)
    labels[:, 2] = 0
    labels[[5, 40], 2] = 1  # two positives only
    for seed in range(5):
        kept, held = stratified_split(labels, 0.25, seed)
        assert_partition(kept, held, 60, 15)
        assert labels[kept, 2].sum() == 1 and labels[held, 2].sum() == 1


def test_rare_class_lands_on_both_sides():
    labels = np.array([0] * 100 + [1] * 50 + [2] * 2 + [3] * 3)
    for seed in range(5):
        kept, held = stratified_split(labels, 0.15, seed)
        assert_partition(kept, held, len(labels), 23)
        assert (np.bincount(labels[held], minlength=4) > 0).all()
        assert (np.bincount(labels[kept], minlength=4) > 0).all()


def test_singleton_class_falls_back_to_a_seeded_shuffle():
    labels = np.array([0] * 10 + [1] * 9 + [2])
    kept, held = stratified_split(labels, 0.3, seed=3)
    assert_partition(kept, held, 20, 6)
    np.testing.assert_array_equal(held, stratified_split(labels, 0.3, seed=3)[1])


def test_nothing_held_out():
    kept, held = stratified_split(np.zeros((10, 2)), 0.0, seed=0)
    np.testing.assert_array_equal(kept, np.arange(10))
    assert len(held) == 0


def test_prepared_splits_partition_the_file(toxic_csv):
    config = make_config(data=str(toxic_csv), text_column="comment_text", label_columns=list(TOXIC.label_columns),
                         test_split=0.2, val_split=0.25, seed=5)
    splits = prepare_splits(config)
    everything = read_labeled_texts(toxic_csv, "multilabel",
                                    ColumnLayout("comment_text", label_columns=TOXIC.label_columns))
    assert splits.test is not None
    assert (len(splits.test), len(splits.validation), len(splits.train)) == (80, 80, 240)
    parts = splits.train.texts + splits.validation.texts + splits.test.texts
    assert Counter(parts) == Counter(everything.texts)
    for part in (splits.train, splits.validation, splits.test):
        assert (part.labels.sum(axis=0) > 0).all()  # every label, even threat, in every part
    again = prepare_splits(config)
    assert again.test is not None and again.test.texts == splits.test.texts
    assert again.validation.texts == splits.validation.texts


def test_max_train_samples_takes_a_stratified_subset(conference_csv):
    config = make_config(task="multiclass", data=str(conference_csv), text_column="Title",
                         label_column="Conference", val_split=0.2, max_train_samples=100, test_split=0.0)
    splits = prepare_splits(config)
    assert len(splits.train) == 100 and len(splits.validation) == 60
    assert np.bincount(splits.train.labels).tolist() == [20] * 5
