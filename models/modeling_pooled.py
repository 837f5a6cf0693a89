"""Sequence classifiers that read the mean of the token vectors (`config.classifier_pooling = "mean"`) or `[CLS]`.

Self-contained (torch and transformers only): training copies this file into every mean-pooled checkpoint and names
its class in config.json's `auto_map`, so `AutoModelForSequenceClassification.from_pretrained(folder,
trust_remote_code=True)` and `pipeline("text-classification", model=folder, trust_remote_code=True)` compute the
model this toolkit trained. The weights keep the stock names; `problem_type` tells the pipeline to apply a sigmoid
per label (multi_label_classification) or a softmax over classes (single_label_classification).
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


def mean_pool(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """The average of the vectors of the tokens the mask keeps."""
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)


class PooledForward:
    """Logits from `[CLS]` through the stock head ("cls"), or from the tokens' mean through the same head."""

    config: Any  # provided by the transformers class this mixin is combined with
    base_model: Any

    def forward(self, input_ids: torch.Tensor | None = None, attention_mask: torch.Tensor | None = None,
                labels: torch.Tensor | None = None, **kwargs: Any) -> SequenceClassifierOutput:
        kwargs.pop("return_dict", None)
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        if getattr(self.config, "classifier_pooling", "cls") == "cls":
            logits = super().forward(input_ids=input_ids, attention_mask=attention_mask, **kwargs).logits
        else:
            hidden = self.base_model(input_ids=input_ids, attention_mask=attention_mask, **kwargs)[0]
            logits = self.classify_pooled(mean_pool(hidden, attention_mask))
        loss = self.pooled_loss(logits, labels) if labels is not None else None
        return SequenceClassifierOutput(loss=loss, logits=logits)

    def pooled_loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """The plain loss of the task (training in this toolkit swaps it for its own)."""
        if self.config.problem_type == "multi_label_classification":
            return nn.functional.binary_cross_entropy_with_logits(logits, labels.to(logits.dtype))
        return nn.functional.cross_entropy(logits.view(-1, logits.shape[-1]), labels.view(-1))


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


class PooledBertForSequenceClassification(PooledForward, BertHead, BertForSequenceClassification):
    """BERT with the chosen pooling."""


class PooledRobertaForSequenceClassification(PooledForward, RobertaHead, RobertaForSequenceClassification):
    """RoBERTa with the chosen pooling."""


class PooledDistilBertForSequenceClassification(PooledForward, DistilBertHead, DistilBertForSequenceClassification):
    """DistilBERT with the chosen pooling."""


POOLED_CLASSES: dict[str, type] = {"bert": PooledBertForSequenceClassification,
                                   "roberta": PooledRobertaForSequenceClassification,
                                   "distilbert": PooledDistilBertForSequenceClassification}
