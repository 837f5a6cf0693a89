"""Fine-tuning: data, model, optimizer, the loop with evaluation and early stopping, then the checkpoint.

Runs unchanged on one CPU, one GPU or many processes (`torchrun` / `accelerate launch`) through Accelerate.
"""

from __future__ import annotations

import copy
import json
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from tqdm.auto import tqdm
from transformers import AutoTokenizer, PreTrainedModel, get_linear_schedule_with_warmup

from models import build_classifier, default_backbone_path
from models.losses import auto_pos_weight, balanced_class_weights, build_loss, parse_weights
from utils.batching import EncodedDataset, inference_loader, training_loader
from utils.checkpoint import save_checkpoint
from utils.config import Config
from utils.metrics import PRIMARY_METRIC, compute_metrics, tune_thresholds
from utils.precision import accelerate_mixed_precision, resolve_precision
from utils.prepare import DataSplits, prepare_splits
from utils.scoring import scores_from_logits
from utils.tokenize import encode

NO_DECAY = ("bias", "LayerNorm.weight", "layer_norm.weight", "_layer_norm.weight")
LAYER_PATTERN = re.compile(r"\.layer\.(\d+)\.")


@dataclass
class TrainResult:
    checkpoint: Path
    best_metrics: dict[str, Any]
    steps: int
    seconds: float


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


def layer_depth(name: str, num_layers: int) -> int:
    """0 for embeddings, i + 1 for encoder layer i, num_layers + 1 for the pooler and head."""
    if "embeddings" in name:
        return 0
    match = LAYER_PATTERN.search(name)
    return int(match.group(1)) + 1 if match else num_layers + 1


def parameter_groups(model: PreTrainedModel, config: Config) -> list[dict[str, Any]]:
    """AdamW groups: layer-wise decayed learning rates, and no weight decay on biases and LayerNorm."""
    num_layers = model.config.num_hidden_layers if hasattr(model.config, "num_hidden_layers") else model.config.n_layers
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
    if config.freeze_encoder:
        model.base_model.requires_grad_(False)
    elif config.freeze_embeddings:
        model.get_input_embeddings().requires_grad_(False)


@torch.no_grad()
def predict_logits(model: PreTrainedModel, dataset: EncodedDataset, tokenizer, batch_size: int,
                   accelerator: Accelerator) -> np.ndarray:
    """Logits for every example in input order, each counted once even when processes share the work."""
    model.eval()
    loader = accelerator.prepare(inference_loader(dataset, tokenizer, batch_size))
    outputs, indices = [], []
    for batch in loader:
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.float()
        logits, index = accelerator.gather_for_metrics((logits, batch["index"]))
        outputs.append(logits.cpu())
        indices.append(index.cpu())
    model.train()
    logits = torch.cat(outputs).numpy()
    index = torch.cat(indices).numpy()
    if sorted(index.tolist()) != list(range(len(dataset))):
        raise RuntimeError(f"evaluation saw {len(index)} rows for {len(dataset)} examples")
    result = np.empty_like(logits)
    result[index] = logits
    return result


class EarlyStopping:
    """Tracks the best value of the validation metric and how many evaluations passed without a gain."""

    def __init__(self, patience: int) -> None:
        self.patience = patience
        self.best: float | None = None
        self.bad_evaluations = 0

    def update(self, value: float) -> bool:
        """Record a value; True when it is the best so far."""
        if self.best is None or value > self.best:
            self.best, self.bad_evaluations = value, 0
            return True
        self.bad_evaluations += 1
        return False

    @property
    def should_stop(self) -> bool:
        return self.patience > 0 and self.bad_evaluations >= self.patience


def run(config: Config) -> TrainResult:
    """Train, keep the best model by the validation metric, tune thresholds, write the checkpoint."""
    started = time.time()
    precision = resolve_precision(config.precision)
    accelerator = Accelerator(mixed_precision=accelerate_mixed_precision(precision),
                              gradient_accumulation_steps=config.gradient_accumulation_steps,
                              cpu=not torch.cuda.is_available())
    say = accelerator.print
    set_seed(config.seed)
    output_dir = Path(config.output_dir)
    if accelerator.is_main_process:
        output_dir.mkdir(parents=True, exist_ok=True)
    backbone = config.model_name_or_path or default_backbone_path()
    say(f"precision: {precision} (asked: {config.precision}); processes: {accelerator.num_processes}; "
        f"device: {accelerator.device}; backbone: {backbone}")

    splits = prepare_splits(config)
    for note in splits.notes:
        say(note)
    tokenizer = AutoTokenizer.from_pretrained(backbone)
    train_encoded = encode(tokenizer, splits.train.texts, config.max_length, config.truncation)
    val_encoded = encode(tokenizer, splits.validation.texts, config.max_length, config.truncation)
    say(f"{sum(train_encoded.truncated)} of {len(splits.train)} training texts were longer than "
        f"{config.max_length} tokens and were cut ({config.truncation})")
    train_set = EncodedDataset(train_encoded.input_ids, splits.train.labels)
    val_set = EncodedDataset(val_encoded.input_ids)

    model = build_classifier(config.model_type, config.task, backbone, splits.label_names, config.pooling)
    freeze(model, config)
    weights = loss_weights(config, splits)
    model.loss_fn = build_loss(config.task, config.loss, weights, config.focal_gamma, config.label_smoothing)
    if weights is not None:
        say("loss weights: " + ", ".join(f"{n}={w:.2f}" for n, w in zip(splits.label_names, weights, strict=True)))

    loader = training_loader(train_set, tokenizer, config.batch_size, config.seed, config.num_workers)
    optimizer = torch.optim.AdamW(parameter_groups(model, config), lr=config.learning_rate)
    steps_per_epoch = int(np.ceil(len(loader) / accelerator.num_processes / config.gradient_accumulation_steps))
    total_steps = max(1, int(np.ceil(steps_per_epoch * config.epochs)))
    scheduler = get_linear_schedule_with_warmup(optimizer, int(config.warmup_ratio * total_steps), total_steps)
    model, optimizer, loader, scheduler = accelerator.prepare(model, optimizer, loader, scheduler)
    eval_every = config.eval_every or steps_per_epoch
    say(f"training {total_steps} steps ({config.epochs} epochs of {steps_per_epoch}), evaluating every "
        f"{eval_every}")

    metric_name = PRIMARY_METRIC[config.task]
    stopper = EarlyStopping(config.early_stopping_patience)
    best_state: dict[str, torch.Tensor] | None = None
    best_probs: np.ndarray | None = None
    best_metrics: dict[str, Any] = {}
    log_path = output_dir / "metrics.jsonl"
    step, epoch = 0, 0
    progress = tqdm(total=total_steps, desc="train", disable=not accelerator.is_main_process)
    model.train()
    while step < total_steps and not stopper.should_stop:
        for batch in loader:
            with accelerator.accumulate(model):
                outputs = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                                labels=batch["labels"])
                accelerator.backward(outputs.loss)
                if accelerator.sync_gradients and config.max_grad_norm > 0:
                    accelerator.clip_grad_norm_(model.parameters(), config.max_grad_norm)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad()
            if not accelerator.sync_gradients:
                continue
            step += 1
            progress.update(1)
            progress.set_postfix(loss=f"{outputs.loss.item():.4f}", lr=f"{scheduler.get_last_lr()[-1]:.2e}")
            if step % eval_every == 0 or step == total_steps:
                logits = predict_logits(model, val_set, tokenizer, config.eval_batch_size, accelerator)
                probs = scores_from_logits(config.task, logits)
                metrics = compute_metrics(config.task, splits.validation.labels, probs, splits.label_names)
                value = metrics[metric_name]
                improved = stopper.update(value)
                record = {"step": step, "epoch": round(step / steps_per_epoch, 3), "loss": outputs.loss.item(),
                          f"val_{metric_name}": value, "best": improved, "seconds": round(time.time() - started, 1)}
                if accelerator.is_main_process:
                    with log_path.open("a") as handle:
                        handle.write(json.dumps(record) + "\n")
                say(f"\nstep {step}: validation {metric_name} {value:.4f}" + (" (best)" if improved else ""))
                if improved:
                    best_state = copy.deepcopy(accelerator.unwrap_model(model).state_dict())
                    best_probs, best_metrics = probs, metrics
                if stopper.should_stop:
                    say(f"early stopping: no gain in {stopper.patience} evaluations")
            if step >= total_steps or stopper.should_stop:
                break
        epoch += 1
    progress.close()

    model = accelerator.unwrap_model(model)
    model.load_state_dict(best_state)
    thresholds = None
    if config.task == "multilabel":
        thresholds = tune_thresholds(splits.validation.labels, best_probs, config.threshold_strategy)
        best_metrics = compute_metrics(config.task, splits.validation.labels, best_probs, splits.label_names,
                                       thresholds)
    checkpoint = output_dir / "checkpoint"
    if accelerator.is_main_process:
        classifier = {
            "task": config.task, "labels": splits.label_names,
            "thresholds": thresholds.tolist() if thresholds is not None else None,
            "max_length": config.max_length, "truncation": config.truncation, "pooling": config.pooling,
            "model_type": config.model_type, "backbone": backbone, "precision": precision,
        }
        summary = {"validation": best_metrics, "steps": step, "train_seconds": round(time.time() - started, 1),
                   "train_rows": len(splits.train), "validation_rows": len(splits.validation),
                   "data_notes": splits.notes}
        save_checkpoint(checkpoint, model, tokenizer, classifier, config.to_dict() | {"precision": precision,
                        "backbone": backbone}, summary)
        say(f"checkpoint written to {checkpoint}")
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return TrainResult(checkpoint, best_metrics, step, time.time() - started)
