"""Fine-tuning, top to bottom: set up (data, model, optimizer, resume), the loop, then the checkpoint.

Runs unchanged on one CPU, one GPU or many processes (`torchrun` / `accelerate launch`) through Accelerate.
"""

from __future__ import annotations

import copy
import json
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.utils import broadcast_object_list, set_seed
from tqdm.auto import tqdm
from transformers import AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase, get_linear_schedule_with_warmup

from models import build_classifier, default_backbone_path
from models.losses import build_loss
from models.none_of_these import NoneRule
from models.scoring import with_temperature
from utils.checkpoint.atomic import output_folder
from utils.checkpoint.contract import LEXICAL, TRANSFORMER, ClassifierInfo, write_checkpoint
from utils.config import Config, TrainingArguments
from utils.data.prepare import DataSplits, prepare_splits
from utils.data.report import add_to_data_report, write_data_report
from utils.evaluation.metrics import SELECTION_METRIC, compute_metrics, tune_thresholds
from utils.inference.precision import accelerate_mixed_precision, resolve_precision
from utils.inference.reading import DEFAULT_MAX_WINDOWS, Reading
from utils.inference.tokens import pad_token_id
from utils.training import tracking
from utils.training.batching import EncodedDataset, PaddingCollator, training_loader
from utils.training.blend import Blend, FittedMember, fit_blend, fit_member, member_metrics
from utils.training.calibration import calibration_summary, fit_temperature
from utils.training.export_rows import write_export_rows
from utils.training.head_fit import HEAD_DECAYS, fit_linear, head_inputs, head_layer, set_head
from utils.training.none_threshold import fit_none_rule
from utils.training.optim import bytes_needed, encoder_layers, freeze, loss_weights, parameter_groups
from utils.training.recipe import (
    RECIPE_FIELDS,
    SPEED_FIELDS,
    Choices,
    DataShape,
    Recipe,
    choose_recipe,
    default_budget_seconds,
    measure_step_cost,
)
from utils.training.resume import (
    Progress,
    check_writable,
    find_resume_dir,
    load_training_state,
    restore_random_states,
    run_identity,
    save_training_state,
)
from utils.training.signals import StopRequest, TrainingInterrupted
from utils.training.validation import (
    PooledValidation,
    ValidationInputs,
    pooled_validation,
    pooling_candidates,
    predict_logits,
)

# Called after each evaluation with the step and the validation metric; it may raise to end the run (a search's
# pruning does), and run() lets that exception through after closing what it opened.
EvaluationHook = Callable[[int, float], None]


@dataclass
class TrainResult:
    checkpoint: Path
    best_metrics: dict[str, Any]
    steps: int
    seconds: float
    settings: Config  # as the checkpoint records them: what reading and the recipe decided in their places


@dataclass(kw_only=True)
class Run:
    """Everything one training run works with; `progress` owns the position and early stopping. Built with
    keywords only: many of its fields share a type."""

    config: Config
    accelerator: Accelerator
    splits: DataSplits
    tokenizer: PreTrainedTokenizerBase
    model: Any  # the model as Accelerate wraps it
    optimizer: torch.optim.Optimizer
    scheduler: Any
    loader: Any
    generator: torch.Generator
    validation: ValidationInputs
    collate: PaddingCollator
    backbone: str
    precision: str
    total_steps: int
    steps_per_epoch: int
    started: float
    progress: Progress
    recipe: Recipe
    member: FittedMember | None = None
    best_state: dict[str, torch.Tensor] | None = None
    best_validation: PooledValidation | None = None  # the validation scores of `best_state`, when this run made them
    random_states_to_restore: tuple[dict[str, torch.Tensor], dict[str, Any]] | None = None
    on_evaluation: EvaluationHook | None = None
    curves: tracking.Curves | None = None  # with --report-to
    bar: Any = field(default=None, repr=False)

    @property
    def output_dir(self) -> Path:
        return Path(self.config.output_dir)

    @property
    def task(self) -> str:
        """The task as the data was read (--task, or the data's own where it was auto)."""
        return self.splits.layout.task

    @property
    def choices(self) -> Choices:
        """The settings the recipe decided (or kept as given): max_length, epochs, frozen layers, ..."""
        return self.recipe.choices

    @property
    def eval_every(self) -> int:
        return self.config.eval_every or self.steps_per_epoch

    def say(self, message: str) -> None:
        self.accelerator.print(message)


def run(config: Config, on_evaluation: EvaluationHook | None = None) -> TrainResult:
    """Train, keep the best model by the validation metric, tune thresholds, write the checkpoint."""
    state = set_up(config)
    state.on_evaluation = on_evaluation
    with tracking.ended_on_error(state.accelerator):  # a failed or pruned run is marked so, not left running
        stop_request = StopRequest()
        try:
            if state.choices.transformer_fit == "head":
                fit_head(state)
            else:
                train_loop(state, stop_request)
        finally:
            stop_request.restore()
            state.bar.close()
        return finish(state)


# --- set-up ----------------------------------------------------------------------------------------------


def set_up(config: Config) -> Run:
    """Accelerator, data, tokenizer, model, optimizer and schedule; the saved state when resuming."""
    started = time.time()
    precision = resolve_precision(config.precision)
    accelerator = Accelerator(mixed_precision=accelerate_mixed_precision(precision),
                              gradient_accumulation_steps=config.gradient_accumulation_steps,
                              cpu=not torch.cuda.is_available(), log_with=tracking.trackers(config) or None,
                              project_dir=config.output_dir)
    set_seed(config.seed)
    backbone = config.model_name_or_path or default_backbone_path()
    accelerator.print(f"precision: {precision} (asked: {config.precision}); processes: "
                      f"{accelerator.num_processes}; device: {accelerator.device}; backbone: {backbone}")
    splits = prepare_splits(config)
    accelerator.print("\n".join(splits.notes))  # never empty: the rows read
    tokenizer = AutoTokenizer.from_pretrained(backbone)
    model = build_classifier(config.model_type, splits.layout.task, backbone, splits.label_names, config.pooling)
    if accelerator.is_main_process:  # before anything is written there
        check_writable(Path(config.output_dir), bytes_needed(model, config.keep_last))
        tracking.check_destination(config)  # a tracking URI where MLflow cannot record fails now, not after training
        write_data_report(splits, Path(config.output_dir))
    freeze(model, config, config.freeze_layers)  # what the user fixed; the recipe may fix more layers
    member = fit_member(splits.layout.task, splits) if config.blend != "none" else None
    recipe = plan_recipe(config, splits, tokenizer, model, member, accelerator)
    choices = recipe.choices
    train_set, validation = encode_splits(splits, tokenizer, config, choices, accelerator)
    prepare_model(model, config, splits, choices, accelerator)
    generator = torch.Generator()
    loader = training_loader(train_set, tokenizer, config.batch_size, generator, config.num_workers)
    optimizer = torch.optim.AdamW(parameter_groups(model, config), lr=config.learning_rate)
    steps_per_epoch = int(np.ceil(len(loader) / accelerator.num_processes / config.gradient_accumulation_steps))
    total_steps = max(1, int(np.ceil(steps_per_epoch * choices.epochs)))
    scheduler = get_linear_schedule_with_warmup(optimizer, int(config.warmup_ratio * total_steps), total_steps)
    progress = Progress(identity=run_identity(splits.layout.task, splits.label_names, backbone, config.model_type,
                                              config.pooling, choices.max_length))
    state = Run(config=config, accelerator=accelerator, splits=splits, tokenizer=tokenizer, model=model,
                optimizer=optimizer, scheduler=scheduler, loader=loader, generator=generator,
                validation=validation, collate=PaddingCollator(pad_token_id(tokenizer)), backbone=backbone,
                precision=precision, total_steps=total_steps, steps_per_epoch=steps_per_epoch, started=started,
                progress=progress, recipe=recipe, member=member)
    resume(state)
    state.model, state.optimizer, state.loader, state.scheduler = accelerator.prepare(model, optimizer, loader,
                                                                                      scheduler)
    start_tracking(state)
    state.say(training_plan(state))
    state.bar = tqdm(total=total_steps, initial=state.progress.step, desc="train",
                     disable=not accelerator.is_main_process)
    return state


def training_plan(state: Run) -> str:
    if state.choices.transformer_fit == "head":
        return "the encoder stays as pretrained: its head is fitted on every training text read once"
    return (f"training {state.total_steps} steps ({state.choices.epochs} epochs of {state.steps_per_epoch}), "
            f"evaluating every {state.eval_every}")


def start_tracking(state: Run) -> None:
    """With --report-to: the trackers' run opened with the settings, the recipe's choices and facts of the run as
    parameters, and the training curves to draw."""
    if not state.accelerator.log_with:
        return
    facts = {"task": state.task, "backbone": state.backbone, "precision": state.precision,
             "processes": state.accelerator.num_processes, "labels": len(state.splits.label_names),
             "train_rows": len(state.splits.train), "validation_rows": len(state.splits.validation),
             "total_steps": state.total_steps}
    tracking.start(state.accelerator, state.config, state.recipe, facts)
    state.curves = tracking.Curves(state.accelerator, state.total_steps, state.steps_per_epoch)


def encode_splits(splits: DataSplits, tokenizer: PreTrainedTokenizerBase, config: Config, choices: Choices,
                  accelerator: Accelerator) -> tuple[EncodedDataset, ValidationInputs]:
    """Token ids of the training rows (with labels), each cut to max_length; the validation rows as serving reads
    them (cut, or in windows). How many were longer goes into the data report."""
    reading = Reading(choices.max_length, config.truncation, choices.long_texts, config.window_stride,
                      config.max_windows or DEFAULT_MAX_WINDOWS)
    cut = Reading(reading.max_length, reading.truncation)
    train_encoded = cut.encode(tokenizer, splits.train.texts)
    validation_encoded = reading.encode(tokenizer, splits.validation.texts)
    longer = {"max_length": reading.max_length, "truncation": reading.truncation, "long_texts": reading.long_texts,
              "train": int(sum(train_encoded.truncated)),
              "validation": int(((validation_encoded.windows_per_text > 1) | validation_encoded.truncated).sum()),
              "validation_windows": len(validation_encoded.input_ids)}
    accelerator.print(f"{longer['train']} of {len(splits.train)} training texts were longer than "
                      f"{reading.max_length} tokens and were cut ({reading.truncation}) for training"
                      + (f"; validation reads {len(splits.validation)} texts in {len(validation_encoded.input_ids)} "
                         "windows" if reading.long_texts == "windows" else ""))
    if accelerator.is_main_process:
        add_to_data_report(Path(config.output_dir), "texts_longer_than_window", longer)
    validation = ValidationInputs(EncodedDataset(validation_encoded.input_ids), validation_encoded.owner,
                                  pooling_candidates(reading, config.window_pooling))
    return EncodedDataset(train_encoded.input_ids, splits.train.labels), validation


def plan_recipe(config: Config, splits: DataSplits, tokenizer: PreTrainedTokenizerBase, model: PreTrainedModel,
                member: FittedMember | None, accelerator: Accelerator) -> Recipe:
    """The recipe's choice of every unset setting (the settings themselves stay as given); a resumed run keeps its
    saved recipe.

    The main process measures and chooses; every process takes its choice, so that all train alike."""
    output_dir = Path(config.output_dir)
    recipe = Recipe.load(output_dir) if config.resume_from_checkpoint else None
    if recipe is None:
        given = {name: getattr(config, name) for name in RECIPE_FIELDS}
        shape = data_shape(splits.layout.task, splits, tokenizer, model, config.seed)
        needs_speed = any(given[name] is None for name in SPEED_FIELDS)
        cost = None
        if needs_speed and accelerator.is_main_process:
            sample = tokenizer(splits.train.texts[:config.batch_size], truncation=False)["input_ids"]
            cost = measure_step_cost(model, sample, pad_token_id(tokenizer), config.batch_size, accelerator.device)
        budget = (60 * config.time_budget if config.time_budget is not None
                  else default_budget_seconds(len(splits.train), float(np.mean(shape.token_lengths))))
        recipe = choose_recipe(shape, cost, given, config.batch_size * accelerator.num_processes, budget,
                               member.seconds if member is not None else 0.0, config.export_onnx)
        if accelerator.num_processes > 1:
            recipe = broadcast_object_list([recipe])[0]
        if accelerator.is_main_process:
            output_folder(output_dir)
            recipe.save(output_dir)
    if member is not None:
        accelerator.print(f"{LEXICAL} member fitted in {member.seconds:.0f} s")
    accelerator.print(recipe.describe())
    return recipe


@dataclass(frozen=True)
class Planned:
    """What `plan` finds: the recipe's choice, the data's task, and the backbone's depth and positions."""

    recipe: Recipe
    task: str
    layers: int
    position_limit: int


def plan(config: Config) -> Planned:
    """The recipe's choices for this data and budget, made as training makes them but without training: what a
    search centres its space on. Writes recipe.json and the data report into --output-dir."""
    accelerator = Accelerator(cpu=not torch.cuda.is_available())
    backbone = config.model_name_or_path or default_backbone_path()
    splits = prepare_splits(config)
    tokenizer = AutoTokenizer.from_pretrained(backbone)
    model = build_classifier(config.model_type, splits.layout.task, backbone, splits.label_names, config.pooling)
    write_data_report(splits, Path(config.output_dir))
    freeze(model, config, config.freeze_layers)
    member = fit_member(splits.layout.task, splits) if config.blend != "none" else None
    recipe = plan_recipe(config, splits, tokenizer, model, member, accelerator)
    return Planned(recipe, splits.layout.task, encoder_layers(model), position_limit(model, tokenizer))


def data_shape(task: str, splits: DataSplits, tokenizer: PreTrainedTokenizerBase, model: PreTrainedModel,
               seed: int, sample_rows: int = 5000) -> DataShape:
    """Rows, labels and the untruncated token lengths of (a seeded sample of up to 5,000) training texts."""
    texts = splits.train.texts
    if len(texts) > sample_rows:
        rows = np.random.default_rng(seed).choice(len(texts), sample_rows, replace=False)
        texts = [texts[i] for i in sorted(rows)]
    lengths = tuple(len(ids) for ids in tokenizer(texts, truncation=False)["input_ids"])
    labels = splits.train.labels
    unlabelled = int((labels.sum(axis=1) == 0).sum()) if task == "multilabel" else 0
    return DataShape(task, len(splits.train), len(splits.validation), len(splits.label_names), lengths,
                     position_limit(model, tokenizer), unlabelled)


def position_limit(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> int:
    """The most tokens the backbone takes: its position embeddings (RoBERTa's first two are reserved)."""
    positions = getattr(model.config, "max_position_embeddings", 512)
    if model.config.model_type == "roberta":
        positions -= 2
    return int(min(positions, tokenizer.model_max_length))


def prepare_model(model: PreTrainedModel, settings: TrainingArguments, splits: DataSplits, choices: Choices,
                  accelerator: Accelerator) -> None:
    """The recipe's frozen layers and the loss."""
    freeze(model, settings, choices.freeze_layers)
    weights = loss_weights(settings, splits.layout.task, splits)
    model.loss_fn = build_loss(splits.layout.task, settings.loss, weights, settings.focal_gamma,
                               choices.label_smoothing)
    if weights is not None:
        accelerator.print("loss weights: " + ", ".join(
            f"{name}={weight:.2f}" for name, weight in zip(splits.label_names, weights, strict=True)))


def resume(state: Run) -> None:
    """With --resume-from-checkpoint: the weights, optimizer, schedule, position and best model saved."""
    spec = state.config.resume_from_checkpoint
    folder = find_resume_dir(spec, state.output_dir) if spec else None
    if folder is None:
        if spec:
            state.say(f"no training state in {state.output_dir}; starting from the beginning")
        return
    saved = load_training_state(folder, state.progress.identity)
    state.model.load_state_dict(saved.model_state)
    state.optimizer.load_state_dict(saved.optimizer_state)
    state.scheduler.load_state_dict(saved.scheduler_state)
    state.progress, state.best_state = saved.progress, saved.best_state
    state.random_states_to_restore = (saved.rng_tensors, saved.rng_meta)
    state.say(f"resuming from {folder} at step {state.progress.step}")


# --- the loop --------------------------------------------------------------------------------------------


def train_loop(state: Run, stop_request: StopRequest) -> None:
    """One optimizer step per iteration; then evaluate, stop on a signal, finish, or save, as each is due."""
    config, progress, accelerator = state.config, state.progress, state.accelerator
    state.model.train()
    for batch in batches(state):
        loss, grad_norm = optimization_step(state, batch)
        progress.batch_in_epoch += 1
        if state.curves is not None:
            state.curves.add(loss, grad_norm)
        if not accelerator.sync_gradients:  # accumulating: no optimizer step yet
            continue
        progress.step += 1
        state.bar.update(1)
        state.bar.set_postfix(loss=f"{loss:.4f}", lr=f"{state.scheduler.get_last_lr()[-1]:.2e}")
        if state.curves is not None:
            state.curves.step(progress.step, max(state.scheduler.get_last_lr()))
        evaluation_due = progress.step % state.eval_every == 0 or progress.step == state.total_steps
        if evaluation_due:
            evaluate(state, loss)
        if stop_request.agreed(accelerator):
            raise TrainingInterrupted(save_state(state), stop_request.exit_code)
        if progress.step >= state.total_steps or progress.should_stop(config.early_stopping_patience):
            break
        if (progress.step % config.save_every == 0) if config.save_every else evaluation_due:
            save_state(state)


def fit_head(state: Run) -> None:
    """transformer_fit = head: the encoder as pretrained; every training text's windows (up to the recipe's
    head_windows) read once, each an example with its text's labels, and the last layer fitted on them at the
    weight decay validation scores best (utils/training/head_fit.py)."""
    config, splits, choices, validation = state.config, state.splits, state.choices, state.validation
    model = state.accelerator.unwrap_model(state.model)
    layer = head_layer(model, len(splits.label_names))
    windows = state.recipe.head_windows or config.max_windows or DEFAULT_MAX_WINDOWS
    reading = Reading(choices.max_length, config.truncation, choices.long_texts, config.window_stride, windows)
    train = reading.encode(state.tokenizer, splits.train.texts)
    pad, device = pad_token_id(state.tokenizer), state.accelerator.device
    state.bar.reset(total=len(train.input_ids) + len(validation.dataset))
    state.bar.set_description("encoder, forward passes (windows)")
    train_vectors = head_inputs(model, layer, train.input_ids, pad, device, state.bar.update)
    validation_vectors = head_inputs(model, layer, validation.dataset.input_ids, pad, device, state.bar.update)
    targets = splits.train.labels[train.owner]
    loss_fn = copy.deepcopy(model.loss_fn).cpu()
    best: tuple[PooledValidation, np.ndarray, np.ndarray] | None = None
    for decay in HEAD_DECAYS:
        weight, bias = fit_linear(train_vectors, targets, loss_fn, decay, len(splits.label_names))
        logits = validation_vectors @ weight.T + bias
        pooled = pooled_validation(state.task, splits.validation, logits, validation.owner, validation.readings)
        state.say(f"\nhead fitted on {len(train.input_ids)} windows of {len(splits.train)} texts, weight decay "
                  f"{decay:g}: validation {SELECTION_METRIC[state.task]} {pooled.value:.4f}")
        if best is None or pooled.value > best[0].value:
            best = (pooled, weight, bias)
    assert best is not None  # noqa: S101 (HEAD_DECAYS is not empty)
    set_head(layer, best[1], best[2])
    state.progress.record_evaluation(best[0].value)
    state.best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    state.best_validation = best[0]
    if state.on_evaluation is not None:
        state.on_evaluation(state.progress.step, best[0].value)


def batches(state: Run) -> Iterator[Any]:
    """Training batches epoch after epoch, each epoch's order seeded, resuming mid-epoch where a state stopped."""
    progress = state.progress
    while True:
        state.generator.manual_seed(state.config.seed + progress.epoch)
        loader = (state.accelerator.skip_first_batches(state.loader, progress.batch_in_epoch)
                  if progress.batch_in_epoch else state.loader)
        for batch in loader:
            if state.random_states_to_restore is not None:  # once the loader has drawn its seed, as before
                restore_random_states(*state.random_states_to_restore)
                state.random_states_to_restore = None
            yield batch
        progress.epoch += 1
        progress.batch_in_epoch = 0


def optimization_step(state: Run, batch: dict[str, torch.Tensor]) -> tuple[float, torch.Tensor | None]:
    """Forward, backward, clipping and (once enough batches are accumulated) the optimizer step; the loss, and the
    gradients' norm before clipping where it was measured (an optimizer step that clips, or tracks the norm)."""
    accelerator, grad_norm = state.accelerator, None
    with accelerator.accumulate(state.model):
        outputs = state.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                              labels=batch["labels"])
        accelerator.backward(outputs.loss)
        if accelerator.sync_gradients and (state.config.max_grad_norm > 0 or state.curves is not None):
            grad_norm = accelerator.clip_grad_norm_(state.model.parameters(), state.config.max_grad_norm or math.inf)
        state.optimizer.step()
        state.scheduler.step()
        state.optimizer.zero_grad()
    return outputs.loss.item(), grad_norm


def evaluate(state: Run, loss: float) -> None:
    """The validation metric now: logged, counted for early stopping, and the weights kept when best."""
    config, progress, accelerator = state.config, state.progress, state.accelerator
    pooled = validation_pooled(state, state.model)
    value = pooled.value
    improved = progress.record_evaluation(value)
    metric_name = f"val_{SELECTION_METRIC[state.task]}"
    record = {"step": progress.step, "epoch": round(progress.step / state.steps_per_epoch, 3), "loss": loss,
              metric_name: value, "best": improved, "seconds": round(time.time() - state.started, 1)}
    if accelerator.is_main_process:
        with (state.output_dir / "metrics.jsonl").open("a") as handle:
            handle.write(json.dumps(record) + "\n")
    if state.curves is not None and accelerator.is_main_process:  # every validation metric, while at hand
        metrics = compute_metrics(state.task, state.splits.validation.labels, pooled.scores, state.splits.label_names)
        tracking.log_metrics(accelerator, "val", metrics, progress.step, leave_out=tracking.UNTUNED)
    state.say(f"\nstep {progress.step}: validation {metric_name[4:]} {value:.4f}{' (best)' if improved else ''}")
    if improved:
        weights = accelerator.unwrap_model(state.model).state_dict()
        state.best_state = {k: v.detach().clone() for k, v in weights.items()}
        state.best_validation = pooled
    if progress.should_stop(config.early_stopping_patience):
        state.say(f"early stopping: no gain in {config.early_stopping_patience} evaluations")
    if state.on_evaluation is not None:
        state.on_evaluation(progress.step, value)


def save_state(state: Run) -> Path:
    """A resumable state (main process writes, every process waits); its folder."""
    folder = state.output_dir / "states"
    if state.accelerator.is_main_process:
        folder = save_training_state(state.output_dir, state.progress,
                                     state.accelerator.unwrap_model(state.model).state_dict(), state.best_state,
                                     state.optimizer, state.scheduler, state.config.keep_last)
    state.accelerator.wait_for_everyone()
    return folder


# --- finish ----------------------------------------------------------------------------------------------


@dataclass(kw_only=True)
class Served:
    """What finish chose on the validation rows for serving, and the validation metrics it reached."""

    blend: Blend | None
    calibration: dict[str, Any] | None
    thresholds: np.ndarray | None
    at_least_one: bool
    metrics: dict[str, Any]
    members_alone: dict[str, dict]
    reading: PooledValidation  # how long texts are read, and each pooling's validation metric
    none_rule: NoneRule | None = None  # multi-class: when it answers "none of these"
    none_summary: dict[str, Any] = field(default_factory=dict)


def finish(state: Run) -> TrainResult:
    """The best model back; the blend, the temperature and thresholds fitted on validation; the checkpoint written."""
    config, accelerator, splits, task = state.config, state.accelerator, state.splits, state.task
    model = accelerator.unwrap_model(state.model)
    model.load_state_dict(state.best_state)
    pooled = state.best_validation or validation_pooled(state, model)  # a resumed run scores its best model again
    transformer = pooled.scores
    if len(pooled.by_pooling) > 1:
        state.say(f"long texts read in windows, pooled by {pooled.reading.window_pooling}: validation "
                  + ", ".join(f"{name} {value:.4f}" for name, value in pooled.by_pooling.items()))
    blend, scores = blend_member(state, transformer)  # on every process alike: all report the same metrics
    scores, calibration = calibrate(state, scores)  # before thresholds: they are tuned on the served scores
    thresholds = (tune_thresholds(splits.validation.labels, scores, config.threshold_strategy)
                  if task == "multilabel" else None)
    at_least_one = task == "multilabel" and state.choices.at_least_one_label == "yes"
    metrics = compute_metrics(task, splits.validation.labels, scores, splits.label_names, thresholds,
                              at_least_one)
    none_rule, none_summary = none_of_these(state, scores, pooled.evidence)
    served = Served(blend=blend, calibration=calibration, thresholds=thresholds, at_least_one=at_least_one,
                    metrics=metrics, members_alone=members_alone(state, transformer, blend, metrics), reading=pooled,
                    none_rule=none_rule, none_summary=none_summary)
    checkpoint = state.output_dir / "checkpoint"
    if accelerator.is_main_process:
        save_checkpoint(state, model, served, checkpoint)
        write_export_rows(checkpoint, splits.validation, splits.train,  # what export measures and calibrates on
                          state.recipe.export_sequences)
        tracking.log_metrics(accelerator, "served_val", metrics, state.progress.step)
    tracking.finish(accelerator, state.output_dir, state.progress.step)
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return TrainResult(checkpoint, metrics, state.progress.step, time.time() - state.started,
                       resolved_settings(state))


def validation_pooled(state: Run, model: Any) -> PooledValidation:
    """The transformer's validation scores, its windows' logits pooled the way that scores best there."""
    validation = state.validation
    logits = predict_logits(model, validation.dataset, state.collate, state.config.eval_batch_size,
                            state.accelerator)
    return pooled_validation(state.task, state.splits.validation, logits, validation.owner, validation.readings)


def blend_member(state: Run, transformer: np.ndarray) -> tuple[Blend | None, np.ndarray]:
    """The TF-IDF member's blend, its weights chosen on validation, and the blended validation scores; no blend
    and the transformer's scores without a member, or where the transformer alone scored best."""
    member = state.member
    if member is None:
        return None, transformer
    report = member.lexical.fit_report
    if report.get("unconverged_fits"):  # liblinear's own warning, once per fit, is muted
        state.say(f"{LEXICAL} member: {report['unconverged_fits']} of its logistic regressions stopped at "
                  f"max_iter={member.lexical.settings.max_iter} before converging")
    blend = fit_blend(state.task, state.splits, transformer, member)
    if np.all(blend.weights >= 1.0):
        state.say(f"{LEXICAL} member left out: the transformer alone scored best on validation")
        return None, transformer
    state.say(f"{LEXICAL} member blended; transformer share " + ", ".join(f"{w:.2f}" for w in blend.weights))
    return blend, blend.scores(state.task, transformer, member.validation_scores)


def calibrate(state: Run, scores: np.ndarray) -> tuple[np.ndarray, dict[str, Any] | None]:
    """With --temperature-scaling: the scores under one temperature fitted on validation, and its summary."""
    task, splits = state.task, state.splits
    if not state.config.temperature_scaling:
        return scores, None
    temperature = fit_temperature(task, splits.validation.labels, scores)
    tempered = with_temperature(task, scores, temperature)
    calibration = calibration_summary(task, splits.validation.labels, scores, tempered, splits.label_names,
                                      temperature)
    state.say(f"temperature {temperature:g}: validation expected calibration error "
              f"{calibration['validation_ece_before']:.4f} -> {calibration['validation_ece_after']:.4f}")
    return tempered, calibration


def none_of_these(state: Run, scores: np.ndarray, evidence: np.ndarray) -> tuple[NoneRule | None, dict[str, Any]]:
    """Multi-class: when the served scores (and the transformer's logit `evidence`) answer "none of these", tuned
    on validation, and what it does there."""
    splits = state.splits
    if state.task != "multiclass":
        return None, {}
    none_index = splits.label_names.index(splits.none_label) if splits.none_label else None
    rule, summary = fit_none_rule(splits.validation.labels, scores, evidence, none_index, state.config.reject_rate)
    if "note" in summary:
        state.say(summary["note"])
    if rule is not None:
        recall = summary["validation_none_recall"]
        state.say(f"'none of these' at a none score ({rule.score}) >= {rule.threshold:.4g} (chosen by "
                  f"{summary['chosen_by']}): "
                  f"validation in-scope accuracy {summary['validation_in_scope_accuracy']:.4f}, "
                  f"{summary['validation_in_scope_rejected']:.1%} of in-scope rows answered 'none'"
                  + (f", none recall {recall:.4f}" if recall is not None else ""))
    return rule, summary


def members_alone(state: Run, transformer: np.ndarray, blend: Blend | None,
                  served_metrics: dict[str, Any]) -> dict[str, dict]:
    """Each member's validation metrics alone, told beside the served scores'; none without a TF-IDF member."""
    if state.member is None:
        return {}
    task = state.task
    alone = member_metrics(task, state.splits, {TRANSFORMER: transformer, LEXICAL: state.member.validation_scores})
    metric = SELECTION_METRIC[task]
    state.say(f"validation {metric}: " + " / ".join(f"{name} alone {m[metric]:.4f}" for name, m in alone.items())
              + f" / {'blend' if blend is not None else 'served (transformer)'} {served_metrics[metric]:.4f}")
    return alone


def save_checkpoint(state: Run, model: PreTrainedModel, served: Served, checkpoint: Path) -> None:
    """The checkpoint folder: weights, tokenizer, what serving needs (ClassifierInfo), settings and metrics."""
    config, splits, blend, reading = state.config, state.splits, served.blend, served.reading.reading
    summary = {"validation": served.metrics, "steps": state.progress.step,
               "train_seconds": round(time.time() - state.started, 1), "train_rows": len(splits.train),
               "validation_rows": len(splits.validation), "data_notes": splits.notes,
               "recipe": asdict(state.recipe), "calibration": served.calibration}
    if served.members_alone:
        summary["validation_members"] = served.members_alone
    if len(served.reading.by_pooling) > 1:
        summary["validation_window_pooling"] = served.reading.by_pooling
    if served.none_summary:
        summary["none_of_these"] = served.none_summary
    info = ClassifierInfo(task=state.task, labels=splits.label_names,
                          thresholds=served.thresholds.tolist() if served.thresholds is not None else None,
                          max_length=reading.max_length, truncation=reading.truncation, pooling=config.pooling,
                          long_texts=reading.long_texts, window_stride=reading.window_stride,
                          max_windows=reading.max_windows, window_pooling=reading.window_pooling,
                          model_type=config.model_type, backbone=state.backbone, precision=state.precision,
                          text_column=splits.text_column,
                          members=[TRANSFORMER] if blend is None else [TRANSFORMER, LEXICAL],
                          blend_weights=blend.weights.tolist() if blend is not None else None,
                          blend_method=blend.method if blend is not None else "logit",
                          at_least_one_label=served.at_least_one,
                          temperature=served.calibration["temperature"] if served.calibration else 1.0,
                          none_threshold=served.none_rule.threshold if served.none_rule else None,
                          none_label=splits.none_label if served.none_rule else None,
                          none_score=served.none_rule.score if served.none_rule else None)
    recorded = resolved_settings(state).to_dict() | {"precision": state.precision, "backbone": state.backbone}
    write_checkpoint(checkpoint, model, state.tokenizer, info, recorded, summary,
                     write_members=blend.lexical.save if blend is not None else None)
    state.say(f"checkpoint written to {checkpoint}")


def resolved_settings(state: Run) -> Config:
    """The run's settings with what reading the data decided (task, columns) and the recipe's choices in their
    places: what training_config.json records (one flat mapping), and what evaluation after training reads the
    test rows with."""
    return replace(state.config, **state.splits.layout.settings(), **state.recipe.values)
