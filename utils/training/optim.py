"""What the optimizer sees: loss weights, layer-wise learning rates, decay groups and frozen parts."""

from __future__ import annotations

import re
from typing import Any

import numpy as np
from transformers import PreTrainedModel

from models.losses import auto_pos_weight, balanced_class_weights, parse_weights
from utils.config import Config
from utils.data.prepare import DataSplits

NO_DECAY = ("bias", "LayerNorm.weight", "layer_norm.weight", "_layer_norm.weight")
LAYER_PATTERN = re.compile(r"\.layer\.(\d+)\.")


def loss_weights(config: Config, splits: DataSplits) -> np.ndarray | None:
    """pos_weight (multi-label) or class weights (multi-class) from the training labels or the flag."""
    count = len(splits.label_names)
    labels = splits.train.labels
    if config.task == "multilabel":
        if config.pos_weight == "auto":
            return auto_pos_weight(labels, config.pos_weight_cap)
        return parse_weights(config.pos_weight, count, "pos-weight")
    if config.class_weights == "auto":
        return balanced_class_weights(labels, count)
    return parse_weights(config.class_weights, count, "class-weights")


def encoder_layers(model: PreTrainedModel) -> int:
    """How many transformer layers the encoder has (DistilBERT's config names it n_layers)."""
    return getattr(model.config, "num_hidden_layers", None) or model.config.n_layers


def layer_depth(name: str, num_layers: int) -> int:
    """0 for embeddings, i + 1 for encoder layer i, num_layers + 1 for the pooler and head."""
    if "embeddings" in name:
        return 0
    match = LAYER_PATTERN.search(name)
    return int(match.group(1)) + 1 if match else num_layers + 1


def parameter_groups(model: PreTrainedModel, config: Config) -> list[dict[str, Any]]:
    """AdamW groups: layer-wise decayed learning rates, and no weight decay on biases and LayerNorm."""
    num_layers = encoder_layers(model)
    head_lr = config.head_learning_rate or config.learning_rate
    groups: dict[tuple[int, bool], dict[str, Any]] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        depth = layer_depth(name, num_layers)
        decay = not any(marker in name for marker in NO_DECAY)
        lr = head_lr if depth == num_layers + 1 else config.learning_rate * config.layer_decay ** (num_layers - depth)
        group = groups.setdefault((depth, decay), {"params": [], "lr": lr,
                                                   "weight_decay": config.weight_decay if decay else 0.0})
        group["params"].append(param)
    return list(groups.values())


def freeze(model: PreTrainedModel, config: Config) -> None:
    """Fix the parts of the model that training leaves alone; gradients then stop above the frozen layers."""
    if config.freeze_encoder:
        model.base_model.requires_grad_(False)
        return
    if config.freeze_embeddings:
        model.get_input_embeddings().requires_grad_(False)
    if config.freeze_layers:
        num_layers = encoder_layers(model)
        if config.freeze_layers >= num_layers:
            raise ValueError(f"--freeze-layers {config.freeze_layers}: the encoder has {num_layers} layers; "
                             "--freeze-encoder trains the head alone")
        for name, param in model.base_model.named_parameters():
            if layer_depth(name, num_layers) <= config.freeze_layers:  # the embeddings, then layers 0 .. N-1
                param.requires_grad_(False)


def bytes_needed(model: PreTrainedModel, keep_last: int) -> int:
    """Rough disk need: the checkpoint, and per kept state the model, the best model and two Adam moments."""
    weights = sum(p.numel() for p in model.parameters()) * 4
    return weights * (1 + 4 * max(keep_last, 1) + 1)
