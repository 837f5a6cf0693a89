"""Losses and their weights: pos_weight, balanced class weights, focal loss, and weights kept out of checkpoints."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import TOXIC_LABELS
from safetensors import safe_open
from sklearn.utils.class_weight import compute_class_weight

from models import build_classifier
from models.losses import (
    FocalLoss,
    WeightedBCELoss,
    WeightedCrossEntropyLoss,
    auto_pos_weight,
    balanced_class_weights,
    build_loss,
    parse_weights,
)
from utils.data.readers import ColumnLayout, read_labeled_texts


@pytest.fixture(scope="module")
def toxic_labels(toxic_csv) -> np.ndarray:
    return read_labeled_texts(toxic_csv, "multilabel", ColumnLayout("comment_text", tuple(TOXIC_LABELS))).labels


@pytest.fixture
def logits_and_targets():
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(12, 4, generator=generator) * 3
    targets = (torch.rand(12, 4, generator=generator) < 0.3).float()
    return logits, targets


def test_pos_weight_is_negatives_over_positives_capped(toxic_labels):
    cap = 10.0
    weights = auto_pos_weight(toxic_labels, cap)
    positives = toxic_labels.sum(axis=0)
    expected = np.minimum((len(toxic_labels) - positives) / positives, cap)
    np.testing.assert_allclose(weights, expected, rtol=1e-6)
    assert weights.dtype == np.float32
    assert weights[TOXIC_LABELS.index("toxic")] < cap  # a common label gets its exact ratio
    assert weights[TOXIC_LABELS.index("threat")] == cap  # a rare one is capped


def test_pos_weight_by_hand():
    labels = np.array([[1, 0, 0], [1, 1, 0], [0, 0, 0], [0, 0, 0], [0, 0, 0]], dtype=np.float32)
    np.testing.assert_allclose(auto_pos_weight(labels, 3.0), [1.5, 3.0, 3.0])  # 3/2, min(4/1, 3), no positives
    np.testing.assert_allclose(auto_pos_weight(labels, 100.0), [1.5, 4.0, 100.0])


@pytest.mark.parametrize("labels", [
    np.array([0, 0, 0, 1, 2, 2, 3, 3, 3, 3, 3, 4]),
    np.repeat(np.arange(5), [60, 60, 60, 60, 60]),
    np.random.default_rng(0).integers(0, 5, 200),
])
def test_balanced_class_weights_match_scikit_learn(labels):
    expected = compute_class_weight("balanced", classes=np.arange(5), y=labels)
    np.testing.assert_allclose(balanced_class_weights(labels, 5), expected, rtol=1e-6)


def test_balanced_class_weights_of_absent_class_is_one():
    weights = balanced_class_weights(np.array([0, 0, 1]), 3)
    np.testing.assert_allclose(weights, [3 / (3 * 2), 3 / (3 * 1), 1.0])


def test_parse_weights():
    assert parse_weights("none", 3, "pos-weight") is None
    np.testing.assert_array_equal(parse_weights("1,2.5,3", 3, "pos-weight"), [1, 2.5, 3])
    with pytest.raises(ValueError, match="--pos-weight: expected 3"):
        parse_weights("1,2", 3, "pos-weight")
    with pytest.raises(ValueError, match="--class-weights"):
        parse_weights("1,0,2", 3, "class-weights")


def test_weighted_bce_is_torch_bce_with_pos_weight(logits_and_targets):
    logits, targets = logits_and_targets
    pos_weight = torch.tensor([1.0, 2.0, 5.0, 10.0])
    expected = F.binary_cross_entropy_with_logits(logits, targets, pos_weight=pos_weight)
    torch.testing.assert_close(WeightedBCELoss(pos_weight)(logits, targets), expected)
    torch.testing.assert_close(WeightedBCELoss()(logits, targets), F.binary_cross_entropy_with_logits(logits, targets))


@pytest.mark.parametrize("pos_weight", [None, torch.tensor([1.0, 2.0, 5.0, 10.0])])
def test_focal_loss_with_gamma_zero_is_bce(logits_and_targets, pos_weight):
    logits, targets = logits_and_targets
    expected = WeightedBCELoss(pos_weight)(logits, targets)
    torch.testing.assert_close(FocalLoss(0.0, pos_weight)(logits, targets), expected)


def test_focal_loss_by_hand():
    logits, targets = torch.tensor([[2.0, -1.0]]), torch.tensor([[1.0, 1.0]])
    p = torch.sigmoid(logits)
    expected = ((1 - p) ** 2 * -torch.log(p)).mean()
    torch.testing.assert_close(FocalLoss(2.0)(logits, targets), expected)
    assert FocalLoss(2.0)(logits, targets) < WeightedBCELoss()(logits, targets)


def test_cross_entropy_with_weights_and_smoothing():
    generator = torch.Generator().manual_seed(1)
    logits, targets = torch.randn(10, 5, generator=generator), torch.randint(0, 5, (10,), generator=generator)
    weight = torch.tensor([0.5, 1.0, 2.0, 1.0, 3.0])
    expected = F.cross_entropy(logits, targets, weight=weight, label_smoothing=0.1)
    torch.testing.assert_close(WeightedCrossEntropyLoss(weight, 0.1)(logits, targets), expected)


def test_build_loss_picks_the_class():
    weights = np.array([1.0, 2.0], dtype=np.float32)
    assert isinstance(build_loss("multilabel", "bce", weights), WeightedBCELoss)
    focal = build_loss("multilabel", "focal", weights, gamma=1.5)
    assert isinstance(focal, FocalLoss) and focal.gamma == 1.5
    torch.testing.assert_close(focal.pos_weight, torch.tensor([1.0, 2.0]))
    ce = build_loss("multiclass", "bce", None, label_smoothing=0.2)
    assert isinstance(ce, WeightedCrossEntropyLoss) and ce.weight is None and ce.label_smoothing == 0.2


@pytest.mark.parametrize("task, name", [("multilabel", "bce"), ("multilabel", "focal"), ("multiclass", "ce")])
def test_loss_weights_stay_out_of_the_state_dict(tiny_bert, task, name):
    model = build_classifier("bert", task, str(tiny_bert), ["a", "b", "c"], "mean")
    model.loss_fn = build_loss(task, name, np.array([1.0, 2.0, 3.0], dtype=np.float32))
    buffers = dict(model.named_buffers())
    assert any(key.startswith("loss_fn.") for key in buffers)  # the weights are there, on the model's device
    assert not any(key.startswith("loss_fn") for key in model.state_dict())


def test_trained_checkpoint_holds_no_loss_weights(multilabel_checkpoint):
    with safe_open(multilabel_checkpoint / "model.safetensors", "pt") as weights:
        keys = list(weights.keys())
    assert any(key.startswith("classifier.") for key in keys)
    assert not any("loss_fn" in key or "pos_weight" in key for key in keys)
