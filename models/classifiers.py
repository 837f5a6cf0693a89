"""One classifier class per backbone and task, each a stock transformers class with a chosen pooling and loss.

The weights keep the stock names, so a checkpoint trained with `pooling="cls"` also loads with plain
`AutoModelForSequenceClassification`; `pooling="mean"` (mean of the token vectors, what sentence-embedding
backbones such as all-MiniLM-L6-v2 were trained for) needs these classes to predict the same.
"""
# pyright: reportAttributeAccessIssue=false
# (the mixins below use attributes of the transformers classes they are combined with)

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from transformers import (
    BertForSequenceClassification,
    DistilBertForSequenceClassification,
    RobertaForSequenceClassification,
)
from transformers.modeling_outputs import SequenceClassifierOutput

from models.losses import WeightedBCELoss, WeightedCrossEntropyLoss


def mean_pool(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)


class PooledClassifierMixin:
    """Forward pass with `config.classifier_pooling` ("cls" stock head, or "mean") and a swappable loss."""

    problem_type: str
    # provided by the transformers class this mixin is combined with
    config: Any
    base_model: Any

    def __init__(self, config) -> None:
        super().__init__(config)
        self.config.problem_type = self.problem_type
        if not hasattr(self.config, "classifier_pooling"):
            self.config.classifier_pooling = "cls"
        self.loss_fn = self.default_loss()

    def default_loss(self) -> nn.Module:
        raise NotImplementedError

    def forward(self, input_ids: torch.Tensor | None = None, attention_mask: torch.Tensor | None = None,
                labels: torch.Tensor | None = None, **kwargs) -> SequenceClassifierOutput:
        kwargs.pop("return_dict", None)
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        if self.config.classifier_pooling == "cls":
            logits = super().forward(input_ids=input_ids, attention_mask=attention_mask, **kwargs).logits
        else:
            hidden = self.base_model(input_ids=input_ids, attention_mask=attention_mask, **kwargs)[0]
            logits = self.classify_pooled(mean_pool(hidden, attention_mask))
        loss = self.loss_fn(logits, labels) if labels is not None else None
        return SequenceClassifierOutput(loss=loss, logits=logits)


class MultiLabelMixin(PooledClassifierMixin):
    problem_type = "multi_label_classification"

    def default_loss(self) -> nn.Module:
        return WeightedBCELoss()


class MultiClassMixin(PooledClassifierMixin):
    problem_type = "single_label_classification"

    def default_loss(self) -> nn.Module:
        return WeightedCrossEntropyLoss()


class BertHead:
    """`classify_pooled`: the backbone's own head applied to a pooled sentence vector."""

    def classify_pooled(self, pooled: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.dropout(pooled))


class RobertaHead:
    def classify_pooled(self, pooled: torch.Tensor) -> torch.Tensor:
        return self.classifier(pooled.unsqueeze(1))  # the stock head reads position 0


class DistilBertHead:
    def classify_pooled(self, pooled: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.dropout(torch.relu(self.pre_classifier(pooled))))


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
