"""Fine-tuning: data, model, optimizer, the loop with evaluation and early stopping, then the checkpoint.

Runs unchanged on one CPU, one GPU or many processes (`torchrun` / `accelerate launch`) through Accelerate.
"""

from __future__ import annotations

import importlib.util
import json
import re
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.utils import gather_object, set_seed
from tqdm.auto import tqdm
from transformers import AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase, get_linear_schedule_with_warmup

from models import build_classifier, default_backbone_path
from models.losses import auto_pos_weight, balanced_class_weights, build_loss, parse_weights
from utils.checkpoint import ClassifierInfo, write_checkpoint
from utils.config import Config
from utils.data.prepare import DataSplits, prepare_splits
from utils.data.readers import DataError
from utils.encoding import encode, pad_token_id, sorted_batches
from utils.evaluation.metrics import PRIMARY_METRIC, compute_metrics, tune_thresholds
from utils.precision import accelerate_mixed_precision, resolve_precision
from utils.scoring import scores_from_logits
from utils.training.batching import EncodedDataset, PaddingCollator, training_loader
from utils.training.state import (
    Progress,
    check_writable,
    find_resume_dir,
    load_training_state,
    restore_random_states,
    run_identity,
    save_training_state,
)

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
def predict_logits(model: PreTrainedModel, dataset: EncodedDataset, collate: PaddingCollator, batch_size: int,
                   accelerator: Accelerator) -> np.ndarray:
    """Logits for every example in input order; each process scores a disjoint shard, so none is counted twice."""
    model.eval()
    shard = list(range(accelerator.process_index, len(dataset), accelerator.num_processes))
    local: list[tuple[list[int], np.ndarray]] = []
    for rows in sorted_batches([len(dataset.input_ids[i]) for i in shard], batch_size):
        batch = collate([dataset[shard[r]] for r in rows])
        logits = model(input_ids=batch["input_ids"].to(accelerator.device),
                       attention_mask=batch["attention_mask"].to(accelerator.device)).logits
        local.append((batch["index"].tolist(), logits.float().cpu().numpy()))
    model.train()
    pieces = gather_object(local) if accelerator.num_processes > 1 else local
    index = [i for indices, _ in pieces for i in indices]
    if sorted(index) != list(range(len(dataset))):
        raise RuntimeError(f"evaluation saw {len(index)} rows for {len(dataset)} examples")
    result = np.empty((len(dataset), pieces[0][1].shape[1]), dtype=np.float32)
    result[index] = np.concatenate([logits for _, logits in pieces])
    return result


def validate(model: PreTrainedModel, val_set: EncodedDataset, collate: PaddingCollator, splits: DataSplits,
             config: Config, accelerator: Accelerator) -> float:
    """The primary validation metric (mean ROC AUC or macro-F1) of the model as it is now."""
    metric_name = PRIMARY_METRIC[config.task]
    probs = scores_from_logits(config.task, predict_logits(model, val_set, collate, config.eval_batch_size,
                                                           accelerator))
    value = compute_metrics(config.task, splits.validation.labels, probs, splits.label_names)[metric_name]
    if value is None:
        raise DataError(f"validation split: no label has both positive and negative rows, so {metric_name} is "
                        "undefined; use more data or a larger --val-split")
    return value


def write_model_checkpoint(folder: Path, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase,
                           config: Config, label_names: list[str], thresholds: np.ndarray | None, backbone: str,
                           precision: str, summary: dict[str, Any]) -> None:
    """The checkpoint folder: weights, tokenizer, what readers need (ClassifierInfo), settings and metrics."""
    info = ClassifierInfo(task=config.task, labels=label_names,
                          thresholds=thresholds.tolist() if thresholds is not None else None,
                          max_length=config.max_length, truncation=config.truncation, pooling=config.pooling,
                          model_type=config.model_type, backbone=backbone, precision=precision,
                          text_column=config.text_column)
    write_checkpoint(folder, model, tokenizer, info, config.to_dict() | {"precision": precision,
                     "backbone": backbone}, summary)


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


class StopRequest:
    """Records SIGTERM / Ctrl-C so the loop can save a resumable state at the next step and stop."""

    def __init__(self) -> None:
        self.signal_number: int | None = None
        self._previous = {sig: signal.signal(sig, self._handle) for sig in (signal.SIGTERM, signal.SIGINT)}

    def _handle(self, signal_number: int, _frame: Any) -> None:
        self.signal_number = signal_number

    def agreed(self, accelerator: Accelerator) -> bool:
        """True on every process as soon as any process was asked to stop."""
        flag = torch.tensor([1.0 if self.signal_number is not None else 0.0], device=accelerator.device)
        return bool(accelerator.reduce(flag, reduction="sum").item() > 0)

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


class TrainingInterrupted(Exception):
    """Training stopped on a signal after saving a state it can resume from."""

    def __init__(self, state_dir: Path, exit_code: int) -> None:
        super().__init__(f"training interrupted; a resumable state is in {state_dir}. Resume with the same "
                         "command and --resume-from-checkpoint auto")
        self.state_dir = state_dir
        self.exit_code = exit_code


def bytes_needed(model: PreTrainedModel, keep_last: int) -> int:
    """Rough disk need: the checkpoint, and per kept state the model, the best model and two Adam moments."""
    weights = sum(p.numel() for p in model.parameters()) * 4
    return weights * (1 + 4 * max(keep_last, 1) + 1)


def run(config: Config) -> TrainResult:
    """Train, keep the best model by the validation metric, tune thresholds, write the checkpoint."""
    started = time.time()
    precision = resolve_precision(config.precision)
    output_dir = Path(config.output_dir)
    tensorboard = importlib.util.find_spec("tensorboard") is not None
    accelerator = Accelerator(mixed_precision=accelerate_mixed_precision(precision),
                              gradient_accumulation_steps=config.gradient_accumulation_steps,
                              cpu=not torch.cuda.is_available(), log_with="tensorboard" if tensorboard else None,
                              project_dir=str(output_dir))
    say = accelerator.print
    set_seed(config.seed)
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
    collate = PaddingCollator(pad_token_id(tokenizer))

    model = build_classifier(config.model_type, config.task, backbone, splits.label_names, config.pooling)
    if accelerator.is_main_process:
        check_writable(output_dir, bytes_needed(model, config.keep_last))
    freeze(model, config)
    weights = loss_weights(config, splits)
    model.loss_fn = build_loss(config.task, config.loss, weights, config.focal_gamma, config.label_smoothing)
    if weights is not None:
        say("loss weights: " + ", ".join(f"{n}={w:.2f}" for n, w in zip(splits.label_names, weights, strict=True)))

    generator = torch.Generator()
    loader = training_loader(train_set, tokenizer, config.batch_size, generator, config.num_workers)
    optimizer = torch.optim.AdamW(parameter_groups(model, config), lr=config.learning_rate)
    steps_per_epoch = int(np.ceil(len(loader) / accelerator.num_processes / config.gradient_accumulation_steps))
    total_steps = max(1, int(np.ceil(steps_per_epoch * config.epochs)))
    scheduler = get_linear_schedule_with_warmup(optimizer, int(config.warmup_ratio * total_steps), total_steps)

    identity = run_identity(config.task, splits.label_names, backbone, config.model_type, config.pooling,
                            config.max_length)
    progress = Progress(identity=identity)
    best_state: dict[str, torch.Tensor] | None = None
    resumed = None
    resume_dir = find_resume_dir(config.resume_from_checkpoint, output_dir) if config.resume_from_checkpoint else None
    if resume_dir is not None:
        resumed = load_training_state(resume_dir, identity)
        model.load_state_dict(resumed.model_state)
        optimizer.load_state_dict(resumed.optimizer_state)
        scheduler.load_state_dict(resumed.scheduler_state)
        progress, best_state = resumed.progress, resumed.best_state
        say(f"resuming from {resume_dir} at step {progress.step}")
    elif config.resume_from_checkpoint:
        say(f"no training state in {output_dir}; starting from the beginning")
    model, optimizer, loader, scheduler = accelerator.prepare(model, optimizer, loader, scheduler)
    if tensorboard:
        accelerator.init_trackers("tensorboard")
    eval_every = config.eval_every or steps_per_epoch
    say(f"training {total_steps} steps ({config.epochs} epochs of {steps_per_epoch}), evaluating every "
        f"{eval_every}")

    metric_name = PRIMARY_METRIC[config.task]
    stopper = EarlyStopping(config.early_stopping_patience)
    stopper.best, stopper.bad_evaluations = progress.best_value, progress.bad_evaluations
    log_path = output_dir / "metrics.jsonl"
    stop_request = StopRequest()

    def save_state() -> Path:
        progress.best_value, progress.bad_evaluations = stopper.best, stopper.bad_evaluations
        state_dir = output_dir / "states"
        if accelerator.is_main_process:
            state_dir = save_training_state(output_dir, progress, accelerator.unwrap_model(model).state_dict(),
                                            best_state, optimizer, scheduler, config.keep_last)
        accelerator.wait_for_everyone()
        return state_dir

    progress_bar = tqdm(total=total_steps, initial=progress.step, desc="train",
                        disable=not accelerator.is_main_process)
    model.train()
    try:
        while progress.step < total_steps and not stopper.should_stop:
            generator.manual_seed(config.seed + progress.epoch)
            batches = (accelerator.skip_first_batches(loader, progress.batch_in_epoch)
                       if progress.batch_in_epoch else loader)
            finished_epoch = True
            for batch in batches:
                if resumed is not None:  # once the loader has drawn its seed, as the interrupted run had
                    restore_random_states(resumed.rng_tensors, resumed.rng_meta)
                    resumed = None
                with accelerator.accumulate(model):
                    outputs = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                                    labels=batch["labels"])
                    accelerator.backward(outputs.loss)
                    if accelerator.sync_gradients and config.max_grad_norm > 0:
                        accelerator.clip_grad_norm_(model.parameters(), config.max_grad_norm)
                    optimizer.step()
                    scheduler.step()
                    optimizer.zero_grad()
                progress.batch_in_epoch += 1
                if not accelerator.sync_gradients:
                    continue
                progress.step += 1
                progress_bar.update(1)
                progress_bar.set_postfix(loss=f"{outputs.loss.item():.4f}", lr=f"{scheduler.get_last_lr()[-1]:.2e}")
                evaluated = progress.step % eval_every == 0 or progress.step == total_steps
                if evaluated:
                    value = validate(model, val_set, collate, splits, config, accelerator)
                    improved = stopper.update(value)
                    record = {"step": progress.step, "epoch": round(progress.step / steps_per_epoch, 3),
                              "loss": outputs.loss.item(), f"val_{metric_name}": value, "best": improved,
                              "seconds": round(time.time() - started, 1)}
                    if accelerator.is_main_process:
                        with log_path.open("a") as handle:
                            handle.write(json.dumps(record) + "\n")
                    if tensorboard:
                        accelerator.log({k: v for k, v in record.items() if k != "best"}, step=progress.step)
                    say(f"\nstep {progress.step}: validation {metric_name} {value:.4f}{' (best)' if improved else ''}")
                    if improved:
                        best_state = {k: v.detach().clone() for k, v in
                                      accelerator.unwrap_model(model).state_dict().items()}
                    if stopper.should_stop:
                        say(f"early stopping: no gain in {stopper.patience} evaluations")
                done = progress.step >= total_steps or stopper.should_stop
                due = (progress.step % config.save_every == 0) if config.save_every else evaluated
                if stop_request.agreed(accelerator):
                    state_dir = save_state()
                    raise TrainingInterrupted(state_dir, 128 + (stop_request.signal_number or signal.SIGTERM))
                if due and not done:
                    save_state()
                if done:
                    finished_epoch = False
                    break
            if finished_epoch:
                progress.epoch += 1
                progress.batch_in_epoch = 0
    finally:
        stop_request.restore()
        progress_bar.close()

    model = accelerator.unwrap_model(model)
    model.load_state_dict(best_state)
    best_probs = scores_from_logits(config.task, predict_logits(model, val_set, collate, config.eval_batch_size,
                                                                accelerator))
    thresholds = (tune_thresholds(splits.validation.labels, best_probs, config.threshold_strategy)
                  if config.task == "multilabel" else None)
    best_metrics = compute_metrics(config.task, splits.validation.labels, best_probs, splits.label_names, thresholds)
    checkpoint = output_dir / "checkpoint"
    if accelerator.is_main_process:
        summary = {"validation": best_metrics, "steps": progress.step,
                   "train_seconds": round(time.time() - started, 1),
                   "train_rows": len(splits.train), "validation_rows": len(splits.validation),
                   "data_notes": splits.notes}
        write_model_checkpoint(checkpoint, model, tokenizer, config, splits.label_names, thresholds, backbone,
                               precision, summary)
        say(f"checkpoint written to {checkpoint}")
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return TrainResult(checkpoint, best_metrics, progress.step, time.time() - started)
