"""One classifier class per backbone and task, each a stock transformers class with a chosen pooling and loss.

The weights keep the stock names, so a checkpoint trained with `pooling="cls"` also loads with plain
`AutoModelForSequenceClassification`; `pooling="mean"` (mean of the token vectors, what sentence-embedding
backbones such as all-MiniLM-L6-v2 were trained for) needs the forward pass of models/modeling_pooled.py, which
these classes share and which training copies into the checkpoint for transformers' `trust_remote_code=True`.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import (
    BertForSequenceClassification,
    DistilBertForSequenceClassification,
    RobertaForSequenceClassification,
)

from models.losses import WeightedBCELoss, WeightedCrossEntropyLoss
from models.modeling_pooled import BertHead, DistilBertHead, PooledForward, RobertaHead


class PooledClassifierMixin(PooledForward):
    """The forward pass of models/modeling_pooled.py (`config.classifier_pooling`), with a swappable loss."""

    problem_type: str

    def __init__(self, config) -> None:
        super().__init__(config)
        self.config.problem_type = self.problem_type
        if not hasattr(self.config, "classifier_pooling"):
            self.config.classifier_pooling = "cls"
        self.loss_fn = self.default_loss()

    def default_loss(self) -> nn.Module:
        raise NotImplementedError

    def pooled_loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return self.loss_fn(logits, labels)


class MultiLabelMixin(PooledClassifierMixin):
    problem_type = "multi_label_classification"

    def default_loss(self) -> nn.Module:
        return WeightedBCELoss()


class MultiClassMixin(PooledClassifierMixin):
    problem_type = "single_label_classification"

    def default_loss(self) -> nn.Module:
        return WeightedCrossEntropyLoss()


class BertForMultiLabelSequenceClassification(MultiLabelMixin, BertHead, BertForSequenceClassification):
    """Bert encoder, sigmoid per label."""


class BertForMultiClassSequenceClassification(MultiClassMixin, BertHead, BertForSequenceClassification):
    """Bert encoder, softmax over classes."""


class RobertaForMultiLabelSequenceClassification(MultiLabelMixin, RobertaHead, RobertaForSequenceClassification):
    """Roberta encoder, sigmoid per label."""


class RobertaForMultiClassSequenceClassification(MultiClassMixin, RobertaHead, RobertaForSequenceClassification):
    """Roberta encoder, softmax over classes."""


class DistilBertForMultiLabelSequenceClassification(
    MultiLabelMixin, DistilBertHead, DistilBertForSequenceClassification
):
    """DistilBert encoder, sigmoid per label."""


class DistilBertForMultiClassSequenceClassification(
    MultiClassMixin, DistilBertHead, DistilBertForSequenceClassification
):
    """DistilBert encoder, softmax over classes."""


CLASSIFIERS: dict[tuple[str, str], type] = {
    ("bert", "multilabel"): BertForMultiLabelSequenceClassification,
    ("roberta", "multilabel"): RobertaForMultiLabelSequenceClassification,
    ("distilbert", "multilabel"): DistilBertForMultiLabelSequenceClassification,
    ("bert", "multiclass"): BertForMultiClassSequenceClassification,
    ("roberta", "multiclass"): RobertaForMultiClassSequenceClassification,
    ("distilbert", "multiclass"): DistilBertForMultiClassSequenceClassification,
}
