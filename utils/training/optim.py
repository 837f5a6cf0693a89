"""What the optimizer sees: loss weights, layer-wise learning rates, decay groups and frozen parts."""

from __future__ import annotations

import re
from typing import Any

import numpy as np
from transformers import PreTrainedModel

from models.losses import auto_pos_weight, balanced_class_weights, parse_weights
from utils.config import SettingsError, TrainingArguments
from utils.data.prepare import DataSplits

NO_DECAY = ("bias", "LayerNorm.weight", "layer_norm.weight", "_layer_norm.weight")
LAYER_PATTERN = re.compile(r"\.layer\.(\d+)\.")


def loss_weights(settings: TrainingArguments, task: str, splits: DataSplits) -> np.ndarray | None:
    """pos_weight (multi-label) or class weights (multi-class) from the training labels or the flag."""
    count = len(splits.label_names)
    labels = splits.train.labels
    if task == "multilabel":
        if settings.pos_weight == "auto":
            return auto_pos_weight(labels, settings.pos_weight_cap)
        return parse_weights(settings.pos_weight, count, "pos-weight")
    if settings.class_weights == "auto":
        return balanced_class_weights(labels, count)
    return parse_weights(settings.class_weights, count, "class-weights")


def encoder_layers(model: PreTrainedModel) -> int:
    """How many transformer layers the encoder has (DistilBERT's config names it n_layers)."""
    return getattr(model.config, "num_hidden_layers", None) or model.config.n_layers


def layer_depth(name: str, num_layers: int) -> int:
    """0 for embeddings, i + 1 for encoder layer i, num_layers + 1 for the pooler and head."""
    if "embeddings" in name:
        return 0
    match = LAYER_PATTERN.search(name)
    return int(match.group(1)) + 1 if match else num_layers + 1


def parameter_groups(model: PreTrainedModel, settings: TrainingArguments) -> list[dict[str, Any]]:
    """AdamW groups: layer-wise decayed learning rates, and no weight decay on biases and LayerNorm."""
    num_layers = encoder_layers(model)
    head_lr = settings.head_learning_rate or settings.learning_rate
    groups: dict[tuple[int, bool], dict[str, Any]] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        depth = layer_depth(name, num_layers)
        decay = not any(marker in name for marker in NO_DECAY)
        below_head = num_layers - depth
        lr = head_lr if depth == num_layers + 1 else settings.learning_rate * settings.layer_decay ** below_head
        group = groups.setdefault((depth, decay), {"params": [], "lr": lr,
                                                   "weight_decay": settings.weight_decay if decay else 0.0})
        group["params"].append(param)
    return list(groups.values())


def freeze(model: PreTrainedModel, settings: TrainingArguments, layers: int | None) -> None:
    """Fix the parts of the model that training leaves alone (--freeze-encoder, --freeze-embeddings, and all
    embeddings and the lowest `layers` encoder layers); gradients then stop above the frozen layers."""
    if settings.freeze_encoder:
        model.base_model.requires_grad_(False)
        return
    if settings.freeze_embeddings:
        model.get_input_embeddings().requires_grad_(False)
    if layers:
        num_layers = encoder_layers(model)
        if layers >= num_layers:
            raise SettingsError(f"--freeze-layers {layers}: the encoder has {num_layers} layers; "
                                "--freeze-encoder trains the head alone")
        for name, param in model.base_model.named_parameters():
            if layer_depth(name, num_layers) <= layers:  # the embeddings, then layers 0 .. N-1
                param.requires_grad_(False)


def bytes_needed(model: PreTrainedModel, keep_last: int) -> int:
    """Rough disk need: the checkpoint, and per kept state the model, the best model and two Adam moments."""
    weights = sum(p.numel() for p in model.parameters()) * 4
    return weights * (1 + 4 * max(keep_last, 1) + 1)
