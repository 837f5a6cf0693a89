"""The blend on real member scores: weights come from validation rows only, the extreme weights give each
member alone, and the per-label choice never does worse on validation than either member."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from conftest import TOXIC_LABELS
from sklearn.metrics import roc_auc_score

from models.blend import blend_scores
from models.lexical import LexicalSettings
from utils.data.datasets import SHARED_DATA_DIR
from utils.training.blend_weights import choose_blend_weights, roc_auc
from utils.training.lexical_fit import fit_lexical

# measured: at most 1.1e-16 between a weight-1 (or 0) logit blend and that member's probabilities here (exact
# for probability averaging); probabilities beyond [1e-12, 1 - 1e-12] are clipped before taking logits
EXTREME_WEIGHT_TOLERANCE = 1e-15


def member_scores(task: str, texts: list[str], labels: np.ndarray, n_fit: int, n_val: int) -> dict[str, np.ndarray]:
    """Two real, different members fitted on the first rows (a word model stands in for the transformer):
    their scores on the validation rows and on the remaining 'test' rows."""
    fit, val, test = slice(0, n_fit), slice(n_fit, n_fit + n_val), slice(n_fit + n_val, None)
    first = fit_lexical(texts[fit], labels[fit], task, LexicalSettings(char_ngrams=None, c=4.0))
    second = fit_lexical(texts[fit], labels[fit], task,
                              LexicalSettings(word_ngrams=(1, 1), char_ngrams=(3, 4), c=1.0))
    return {"val_labels": labels[val], "test_labels": labels[test],
            "first_val": first.scores(texts[val]), "second_val": second.scores(texts[val]),
            "first_test": first.scores(texts[test]), "second_test": second.scores(texts[test])}


@pytest.fixture(scope="module")
def toxic() -> dict[str, np.ndarray]:
    frame = pd.read_csv(SHARED_DATA_DIR / "toxic" / "train.csv")
    rare = frame[(frame.threat == 1) | (frame.identity_hate == 1) | (frame.severe_toxic == 1)].head(150)
    rows = pd.concat([rare, frame.drop(rare.index).head(1050)]).sample(frac=1.0, random_state=0)
    return member_scores("multilabel", np.array(rows.comment_text.tolist(), dtype=object),
                         np.asarray(rows[TOXIC_LABELS]), 700, 300)


@pytest.fixture(scope="module")
def conference() -> dict[str, np.ndarray]:
    frame = pd.read_csv(SHARED_DATA_DIR / "conference" / "title_conference.csv").sample(900, random_state=0)
    classes = sorted(frame.Conference.unique())
    return member_scores("multiclass", np.array(frame.Title.tolist(), dtype=object),
                         frame.Conference.map(classes.index).to_numpy(), 500, 200)


@pytest.mark.parametrize("task", ["multilabel", "multiclass"])
@pytest.mark.parametrize("method", ["logit", "probability"])
def test_weight_one_is_the_transformer_alone_and_zero_the_lexical_member(task, method, toxic, conference):
    scores = toxic if task == "multilabel" else conference
    first, second = scores["first_test"], scores["second_test"]
    np.testing.assert_allclose(blend_scores(task, 1.0, first, second, method), first, rtol=0,
                               atol=EXTREME_WEIGHT_TOLERANCE)
    np.testing.assert_allclose(blend_scores(task, 0.0, first, second, method), second, rtol=0,
                               atol=EXTREME_WEIGHT_TOLERANCE)


@pytest.mark.parametrize("task", ["multilabel", "multiclass"])
def test_weights_see_validation_rows_only(task, toxic, conference):
    """Permuting, dropping or relabelling test rows changes neither the weights nor any other row's score."""
    scores = toxic if task == "multilabel" else conference
    args = (scores["val_labels"], scores["first_val"], scores["second_val"])
    weights = choose_blend_weights(task, *args)
    order = np.random.default_rng(0).permutation(len(scores["first_test"]))
    blended = blend_scores(task, weights, scores["first_test"], scores["second_test"])
    permuted = blend_scores(task, weights, scores["first_test"][order], scores["second_test"][order])
    np.testing.assert_array_equal(permuted, blended[order])
    np.testing.assert_array_equal(blend_scores(task, weights, scores["first_test"][:7], scores["second_test"][:7]),
                                  blended[:7])
    # the validation rows' order does not matter either
    val_order = np.random.default_rng(1).permutation(len(args[0]))
    np.testing.assert_array_equal(choose_blend_weights(task, *(a[val_order] for a in args)), weights)


def test_per_label_weights_never_lose_to_either_member_on_validation(toxic):
    labels, first, second = toxic["val_labels"], toxic["first_val"], toxic["second_val"]
    weights = choose_blend_weights("multilabel", labels, first, second, shrinkage=0.0)
    blended = blend_scores("multilabel", weights, first, second)
    for j in range(labels.shape[1]):
        best_member = max(roc_auc_score(labels[:, j], first[:, j]), roc_auc_score(labels[:, j], second[:, j]))
        assert roc_auc_score(labels[:, j], blended[:, j]) >= best_member - 1e-12


def test_shrinkage_moves_weights_towards_the_pooled_weight(toxic):
    labels, first, second = toxic["val_labels"], toxic["first_val"], toxic["second_val"]
    own = choose_blend_weights("multilabel", labels, first, second, shrinkage=0.0)
    pooled = choose_blend_weights("multilabel", labels, first, second, shrinkage=np.inf)
    shrunk = choose_blend_weights("multilabel", labels, first, second, shrinkage=30.0)
    assert len(set(pooled)) == 1
    positives = labels.sum(axis=0)
    np.testing.assert_allclose(shrunk, (positives * own + 30.0 * pooled) / (positives + 30.0), rtol=0, atol=1e-15)


def test_multiclass_uses_one_weight_and_gives_distributions(conference):
    weights = choose_blend_weights("multiclass", conference["val_labels"], conference["first_val"],
                                   conference["second_val"])
    assert len(weights) == conference["first_val"].shape[1] and len(set(weights)) == 1
    blended = blend_scores("multiclass", weights, conference["first_test"], conference["second_test"])
    np.testing.assert_allclose(blended.sum(axis=1), 1.0, rtol=0, atol=1e-14)


def test_roc_auc_equals_sklearn_with_ties(toxic):
    labels, scores = toxic["val_labels"], toxic["first_val"]
    for j in range(labels.shape[1]):
        rounded = np.round(scores[:, j], 2)  # many tied scores
        assert roc_auc(labels[:, j], rounded) == pytest.approx(roc_auc_score(labels[:, j], rounded), abs=1e-14)
