"""Metrics against scikit-learn on known arrays, calibration by hand, and thresholds that reach the best F1 the data
allows."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.metrics import (
    accuracy_score,
    average_precision_score,
    confusion_matrix,
    f1_score,
    hamming_loss,
    jaccard_score,
    label_ranking_average_precision_score,
    precision_score,
    recall_score,
    roc_auc_score,
)

from models.scoring import scores_from_logits
from utils.evaluation.metrics import (
    best_f1_threshold,
    calibration_metrics,
    compute_metrics,
    expected_calibration_error,
    reliability_bins,
    tune_thresholds,
)

LABELS = ["a", "b", "c", "d"]


@pytest.fixture
def multilabel_arrays():
    """Scores that carry some signal, every label with both classes."""
    rng = np.random.default_rng(0)
    y_true = (rng.random((200, 4)) < [0.5, 0.3, 0.1, 0.05]).astype(np.float32)
    probs = np.clip(0.35 * y_true + rng.random((200, 4)) * 0.7, 0, 1)
    assert (y_true.sum(axis=0) > 0).all()
    return y_true, probs


def f1_at(y_true, scores, threshold):
    predicted, positive = scores >= threshold, y_true > 0
    true_positives = (predicted & positive).sum()
    return 2 * true_positives / max(predicted.sum() + positive.sum(), 1)


def brute_force_best_f1(y_true, scores):
    """The best F1 over every threshold that changes a prediction (each distinct score)."""
    return max(f1_at(y_true, scores, t) for t in np.unique(scores))


def test_roc_auc_and_best_threshold_by_hand():
    y_true = np.array([[1], [0], [1], [0]], dtype=np.float32)
    probs = np.array([[0.9], [0.8], [0.3], [0.1]])
    metrics = compute_metrics("multilabel", y_true, probs, ["x"], tune_thresholds(y_true, probs, "per_label"))
    assert metrics["mean_roc_auc"] == pytest.approx(0.75)  # 3 of the 4 positive-negative pairs in order
    assert metrics["per_label"]["x"]["threshold"] == pytest.approx(0.2)  # midway between 0.3 (kept) and 0.1
    assert metrics["per_label"]["x"]["f1_at_tuned"] == pytest.approx(0.8)  # P 2/3, R 1
    assert metrics["per_label"]["x"]["f1_at_0.5"] == pytest.approx(0.5)  # P 1/2, R 1/2


def test_a_single_label_is_scored_as_one_label_not_two_classes():
    y_true = np.array([[1], [0], [1], [0], [0], [0]], dtype=np.float32)
    probs = np.array([[0.9], [0.8], [0.3], [0.1], [0.2], [0.1]])
    metrics = compute_metrics("multilabel", y_true, probs, ["toxic"])
    # at 0.5: one true positive, one false positive, one false negative
    assert metrics["per_label"]["toxic"]["f1_at_0.5"] == pytest.approx(0.5)
    assert metrics["at_0.5"]["micro_f1"] == pytest.approx(0.5)
    assert metrics["at_0.5"]["macro_f1"] == pytest.approx(0.5)
    assert metrics["at_0.5"]["micro_precision"] == pytest.approx(0.5)
    assert metrics["at_0.5"]["subset_accuracy"] == pytest.approx(4 / 6)


def test_multilabel_metrics_match_scikit_learn(multilabel_arrays):
    y_true, probs = multilabel_arrays
    thresholds = np.array([0.4, 0.5, 0.6, 0.7])
    metrics = compute_metrics("multilabel", y_true, probs, LABELS, thresholds)
    assert metrics["mean_roc_auc"] == pytest.approx(roc_auc_score(y_true, probs, average="macro"))
    assert metrics["mean_pr_auc"] == pytest.approx(average_precision_score(y_true, probs, average="macro"))
    assert metrics["label_ranking_average_precision"] == pytest.approx(
        label_ranking_average_precision_score(y_true[y_true.sum(axis=1) > 0], probs[y_true.sum(axis=1) > 0]))
    for key, predictions in (("at_0.5", probs >= 0.5), ("at_tuned", probs >= thresholds)):
        block = metrics[key]
        assert block["micro_f1"] == pytest.approx(f1_score(y_true, predictions, average="micro"))
        assert block["macro_f1"] == pytest.approx(f1_score(y_true, predictions, average="macro", zero_division=0))
        assert block["micro_precision"] == pytest.approx(precision_score(y_true, predictions, average="micro"))
        assert block["macro_recall"] == pytest.approx(recall_score(y_true, predictions, average="macro"))
        assert block["hamming_loss"] == pytest.approx(hamming_loss(y_true, predictions))
        assert block["subset_accuracy"] == pytest.approx(accuracy_score(y_true, predictions))
        assert block["jaccard_samples"] == pytest.approx(jaccard_score(y_true, predictions, average="samples",
                                                                       zero_division=1.0))
    for j, name in enumerate(LABELS):
        row = metrics["per_label"][name]
        assert row["roc_auc"] == pytest.approx(roc_auc_score(y_true[:, j], probs[:, j]))
        assert row["pr_auc"] == pytest.approx(average_precision_score(y_true[:, j], probs[:, j]))
        assert row["f1_at_tuned"] == pytest.approx(f1_score(y_true[:, j], probs[:, j] >= thresholds[j]))
        assert row["threshold"] == thresholds[j]
        assert row["positives"] == int(y_true[:, j].sum())
    assert metrics["examples"] == 200


def test_label_without_positives_has_no_auc_and_is_left_out_of_the_mean(multilabel_arrays):
    y_true, probs = multilabel_arrays
    y_true = y_true.copy()
    y_true[:, 3] = 0
    metrics = compute_metrics("multilabel", y_true, probs, LABELS)
    assert metrics["per_label"]["d"]["roc_auc"] is None and metrics["per_label"]["d"]["pr_auc"] is None
    assert metrics["mean_roc_auc"] == pytest.approx(roc_auc_score(y_true[:, :3], probs[:, :3], average="macro"))
    assert metrics["per_label"]["d"]["threshold"] == 0.5  # no thresholds given: 0.5


def test_per_label_thresholds_reach_the_best_f1(multilabel_arrays):
    y_true, probs = multilabel_arrays
    thresholds = tune_thresholds(y_true, probs, "per_label")
    assert thresholds.shape == (4,)
    for j in range(4):
        reached = f1_score(y_true[:, j], probs[:, j] >= thresholds[j])
        assert reached == pytest.approx(brute_force_best_f1(y_true[:, j], probs[:, j]), abs=1e-12)
        assert reached >= f1_score(y_true[:, j], probs[:, j] >= 0.5)


def test_global_threshold_reaches_the_best_micro_f1(multilabel_arrays):
    y_true, probs = multilabel_arrays
    thresholds = tune_thresholds(y_true, probs, "global")
    assert len(set(thresholds.tolist())) == 1
    micro = f1_score(y_true, probs >= thresholds, average="micro")
    assert micro == pytest.approx(brute_force_best_f1(y_true.ravel(), probs.ravel()), abs=1e-12)


def test_shrunk_thresholds_lean_towards_the_pooled_one_where_positives_are_few(multilabel_arrays):
    from scipy.special import logit

    from utils.evaluation.metrics import THRESHOLD_SHRINKAGE, pooled_threshold

    y_true, probs = multilabel_arrays
    y_true = y_true.copy()
    y_true[:, 3] = 0  # a label without validation positives takes the pooled threshold
    own, pooled = tune_thresholds(y_true, probs, "per_label"), pooled_threshold(y_true, probs)
    shrunk = tune_thresholds(y_true, probs)  # the default
    positives = y_true.sum(axis=0)
    share = (logit(shrunk) - logit(pooled)) / (logit(own) - logit(pooled))
    np.testing.assert_allclose(share[:3], positives[:3] / (positives[:3] + THRESHOLD_SHRINKAGE), atol=1e-9)
    assert shrunk[3] == pytest.approx(pooled, abs=1e-12)
    macro = f1_score(y_true[:, :3], probs[:, :3] >= pooled, average="macro")
    for other in (0.3, 0.5, 0.7):  # the pooled value is macro-F1's best single threshold
        assert macro >= f1_score(y_true[:, :3], probs[:, :3] >= other, average="macro") - 1e-12


def test_a_tuned_threshold_sits_midway_below_the_lowest_kept_score():
    y_true, scores = np.array([1, 1, 0, 1, 0]), np.array([0.9, 0.8, 0.6, 0.4, 0.2])
    assert best_f1_threshold(y_true, scores) == pytest.approx(0.3)  # keeps 0.9, 0.8, 0.6, 0.4 (F1 6/7)


def test_fixed_thresholds_are_one_half(multilabel_arrays):
    np.testing.assert_array_equal(tune_thresholds(*multilabel_arrays, "fixed"), [0.5] * 4)


def test_no_positives_gives_one_half():
    assert best_f1_threshold(np.zeros(5), np.linspace(0, 1, 5)) == 0.5


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.booleans(), st.sampled_from([0.0, 0.1, 0.25, 0.5, 0.5001, 0.8, 1.0])),
                min_size=1, max_size=30))
def test_tuned_threshold_is_optimal_even_with_tied_scores(pairs):
    y_true = np.array([int(t) for t, _ in pairs])
    scores = np.array([s for _, s in pairs])
    if y_true.sum() == 0:
        return
    threshold = best_f1_threshold(y_true, scores)
    assert f1_score(y_true, scores >= threshold) == pytest.approx(brute_force_best_f1(y_true, scores), abs=1e-12)


def test_multiclass_metrics_match_scikit_learn():
    rng = np.random.default_rng(1)
    y_true = rng.integers(0, 4, 150)
    logits = rng.normal(size=(150, 5))
    logits[np.arange(150), y_true] += 1.0  # class 4 never occurs, but is one of the labels
    probs = scores_from_logits("multiclass", logits)
    names = ["w", "x", "y", "z", "never"]
    metrics = compute_metrics("multiclass", y_true, probs, names)
    y_pred = probs.argmax(axis=1)
    labels = list(range(5))
    assert metrics["accuracy"] == pytest.approx(accuracy_score(y_true, y_pred))
    assert metrics["macro_f1"] == pytest.approx(f1_score(y_true, y_pred, average="macro", labels=labels,
                                                         zero_division=0))
    assert metrics["weighted_f1"] == pytest.approx(f1_score(y_true, y_pred, average="weighted", labels=labels,
                                                            zero_division=0))
    assert metrics["confusion_matrix"] == confusion_matrix(y_true, y_pred, labels=labels).tolist()
    assert np.asarray(metrics["confusion_matrix"]).sum() == 150
    assert metrics["per_class"]["x"]["support"] == int((y_true == 1).sum())
    assert metrics["per_class"]["never"]["support"] == 0


def test_scores_from_logits():
    logits = np.array([[0.0, 2.0, -2.0]])
    np.testing.assert_allclose(scores_from_logits("multilabel", logits), 1 / (1 + np.exp(-logits)))
    softmax = scores_from_logits("multiclass", logits)
    np.testing.assert_allclose(softmax, np.exp(logits) / np.exp(logits).sum())
    assert softmax.sum() == pytest.approx(1.0)


def test_jaccard_index_by_hand():
    """Per text |true & predicted| / |true | predicted|, averaged; no label and none predicted counts as 1."""
    y_true = np.array([[1, 1, 0], [0, 0, 0], [1, 0, 0], [0, 0, 0]], dtype=np.float32)
    probs = np.array([[0.9, 0.1, 0.8], [0.1, 0.1, 0.1], [0.1, 0.1, 0.1], [0.9, 0.1, 0.1]])
    block = compute_metrics("multilabel", y_true, probs, ["a", "b", "c"])["at_0.5"]
    assert block["jaccard_samples"] == pytest.approx((1 / 3 + 1 + 0 + 0) / 4)
    assert block["subset_accuracy"] == pytest.approx(1 / 4)


def test_calibration_error_by_hand():
    y_true = np.array([0, 0, 1, 1, 1, 0, 1, 1])
    probs = np.array([0.05, 0.15, 0.15, 0.55, 0.55, 0.55, 0.95, 0.95])
    table = reliability_bins(y_true, probs, bins=10)
    assert table["count"] == [1, 2, 0, 0, 0, 3, 0, 0, 0, 2]
    assert table["mean_score"][2] is None and table["fraction_positive"][5] == pytest.approx(2 / 3)
    expected = (1 * 0.05 + 2 * abs(0.5 - 0.15) + 3 * abs(2 / 3 - 0.55) + 2 * abs(1 - 0.95)) / 8
    assert expected_calibration_error(y_true, probs, bins=10) == pytest.approx(expected)
    assert expected_calibration_error(np.array([0, 1]), np.array([0.0, 1.0])) == 0.0  # the edges land in bins


def test_calibration_per_label_and_of_the_top_class():
    rng = np.random.default_rng(2)
    y_true = rng.integers(0, 3, 300)
    probs = scores_from_logits("multiclass", rng.normal(size=(300, 3)))
    result = calibration_metrics("multiclass", y_true, probs, ["x", "y", "z"])
    assert set(result["per_label"]) == {"x", "y", "z"}
    assert result["per_label"]["y"] == pytest.approx(expected_calibration_error(y_true == 1, probs[:, 1]), abs=1e-6)
    right = probs.argmax(axis=1) == y_true
    assert result["top_class"] == pytest.approx(expected_calibration_error(right, probs.max(axis=1)), abs=1e-6)
