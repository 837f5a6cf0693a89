"""The training recipe chosen from the data and a time budget: tokens per text, epochs, frozen layers, the blend.

Every setting the user left unset ("auto") is chosen here from the training rows (their number, labels and token
lengths) and from this CPU's speed, measured on the model itself before training; a setting given by a flag or a
config file is kept as given. The choices and the reason for each are printed, saved as `recipe.json` in the run
folder and recorded in the checkpoint's training config.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from utils.config import RENAMED_SETTINGS, current_names
from utils.inference.reading import DEFAULT_MAX_WINDOWS, Reading
from utils.training.export_rows import MEASURED_SEQUENCES, MIN_MEASURED_ROWS, measured_rows
from utils.training.optim import encoder_layers, layer_depth

RECIPE_FILE = "recipe.json"
SECONDS_PER_1000_ROWS = 40.0  # the default budget grows with the file: 40 s per 1,000 training rows ...
LONG_TEXT_TOKENS, MAX_LENGTH_FACTOR = 128, 1.5  # ... times mean tokens / 128 (1 to 1.5: long texts cost windows) ...
MIN_BUDGET_MINUTES, MAX_BUDGET_MINUTES = 3.0, 20.0  # ... between these bounds
COVERED_QUANTILE = 0.95  # max_length covers this share of the training texts ...
MIN_LENGTH_FOR_BUDGET = 64  # ... unless the budget forces it down towards this many tokens
MAX_STEPS_FOR_EPOCH_CAP = 1000  # small files may take up to this many steps ...
MIN_EPOCH_CAP, MAX_EPOCH_CAP = 10.0, 30.0  # ... within these epoch caps
EPOCHS_BEFORE_SHORTENING = 2.0  # texts are cut shorter (down to MIN_LENGTH_FOR_BUDGET) to afford this many epochs
EXPORT_SECONDS = 15.0  # graph export and quantization, before measuring each graph on the validation rows ...
EXPORT_PASSES = 6  # ... which costs about six forward passes of torch over them (measured: 4 on toxic on a Zen 5,
# 5.5 on 7,000 long documents on a Zen 4: five graphs at one thread each)
MULTICLASS_LABEL_SMOOTHING = 0.1  # a common regulariser of softmax heads; it also won conference's validation
SPECIAL_TOKENS = 2  # [CLS] and [SEP] (<s> and </s>) around every sequence
MEGABATCH = 50  # batches that training's length-grouped sampler sorts together
SPEED_FIELDS = ("max_length", "freeze_layers", "epochs")  # the choices that depend on the measured speed
LONG_SHARE = 0.01  # texts are read whole in windows where more than this share of the training texts is longer
MIN_FINE_TUNE_STEPS = 250  # under one epoch, fine-tuning still wins the head fit's place with this many steps


@dataclass(frozen=True)
class DataShape:
    """What the recipe reads from the training rows."""

    task: str
    train_rows: int
    validation_rows: int
    num_labels: int
    token_lengths: tuple[int, ...]  # untruncated, special tokens included, one per training text
    model_max_length: int  # the backbone's position limit
    rows_without_label: int = 0  # multi-label training rows that carry no label


@dataclass(frozen=True)
class StepCost:
    """Seconds of one training step of `batch_size` texts padded to each of `lengths`, measured on this machine
    (not linear in the length: the larger activations fall out of the caches), and a step's share of that with
    the lower half of the encoder fixed."""

    batch_size: int
    lengths: tuple[int, ...]
    seconds: tuple[float, ...]
    frozen_share: float
    frozen_layers: int  # how many layers the frozen measurement fixed

    def seconds_per_text(self, length: float, frozen: bool = False) -> float:
        """One text's share of a training step at this padded length: interpolated between the measured lengths,
        extended along the last two beyond them."""
        x, y = np.asarray(self.lengths, dtype=float), np.asarray(self.seconds) / self.batch_size
        if length <= x[-1]:
            share = float(np.interp(length, x, y))
        else:
            share = float(y[-1] + (y[-1] - y[-2]) / (x[-1] - x[-2]) * (length - x[-1]))
        return share * (self.frozen_share if frozen else 1.0)


@dataclass(frozen=True)
class Choices:
    """The settings the recipe decides, every one set: what training reads for them (a value given by a flag or
    a config file is kept as given)."""

    max_length: int
    epochs: float
    freeze_layers: int
    blend: str  # lexical or none: whether the lexical member is fitted and blended
    label_smoothing: float
    at_least_one_label: str  # yes or no
    long_texts: str  # truncate or windows: how a text longer than max_length is read
    transformer_fit: str  # fine-tune (the encoder and its head) or head (the encoder fixed, its head fitted)


RECIPE_FIELDS = tuple(f.name for f in fields(Choices))


@dataclass(frozen=True)
class Recipe:
    """The chosen values (under the names of the settings they stand for), why each was chosen, and the time they
    were planned to take; `choices` is the same values, typed."""

    budget_seconds: float
    values: dict[str, Any]
    reasons: dict[str, str] = field(default_factory=dict)
    planned_seconds: dict[str, float] = field(default_factory=dict)
    cost: dict[str, float] | None = None
    head_windows: int | None = None  # transformer_fit = head: windows a training text is read in, at most
    export_sequences: int = MEASURED_SEQUENCES  # sequences (texts or windows) export's measurement scores, at most

    @property
    def choices(self) -> Choices:
        return Choices(**{name: self.values[name] for name in RECIPE_FIELDS})

    def describe(self) -> str:
        lines = [f"recipe (time budget {self.budget_seconds / 60:.1f} min; --time-budget MINUTES to change; any "
                 "flag overrides a choice):"]
        lines += [f"  {name} = {self.values[name]}: {self.reasons.get(name, '')}" for name in self.values]
        if self.planned_seconds:
            lines.append("  planned: " + ", ".join(f"{part} {seconds:.0f} s" for part, seconds in
                                                  self.planned_seconds.items()) + self.export_note())
        return "\n".join(lines)

    def export_note(self) -> str:
        if self.export_sequences >= MEASURED_SEQUENCES:
            return ""
        return (f"; export measures its graphs on {self.export_sequences} validation sequences (texts or windows), "
                f"not {MEASURED_SEQUENCES}, to stay within the budget")

    def save(self, folder: Path) -> None:
        (folder / RECIPE_FILE).write_text(json.dumps(asdict(self), indent=2) + "\n")

    @classmethod
    def load(cls, folder: Path) -> Recipe | None:
        """The recipe saved in `folder` (an earlier version's `ensemble: tfidf` read as `blend: lexical`)."""
        path = folder / RECIPE_FILE
        if not path.is_file():
            return None
        saved = json.loads(path.read_text())
        earlier = {"long_texts": "truncate", "transformer_fit": "fine-tune"}  # before windows and head fits
        saved["values"] = earlier | current_names(saved["values"])
        saved["reasons"] = {RENAMED_SETTINGS.get(name, name): why for name, why in saved["reasons"].items()}
        return cls(**saved)


def default_budget_seconds(train_rows: int, mean_tokens: float = 0.0) -> float:
    """40 s per 1,000 training rows, up to 1.5 times that for texts averaging over 128 tokens (each is read in several
    windows in every validation pass and in export's measurement), between 3 and 20 minutes."""
    factor = min(MAX_LENGTH_FACTOR, max(1.0, mean_tokens / LONG_TEXT_TOKENS))
    minutes = factor * SECONDS_PER_1000_ROWS * train_rows / 1000 / 60
    return 60 * min(MAX_BUDGET_MINUTES, max(MIN_BUDGET_MINUTES, minutes))


def padded_length(lengths: np.ndarray, max_length: int, batch_size: int, seed: int = 0, draws: int = 20) -> float:
    """Expected length of one padded training batch, batched as training batches (transformers'
    LengthGroupedSampler): megabatches of 50 batches of random texts sorted by length, each batch padded to its
    longest text, cut at max_length. Random batches would pad short texts to about twice their length."""
    rng = np.random.default_rng(seed)
    clipped = np.minimum(lengths, max_length)
    size = min(MEGABATCH * batch_size, len(clipped))
    padded = []
    for _ in range(draws):
        mega = np.sort(clipped[rng.choice(len(clipped), size, replace=False)])
        padded += [mega[start:start + batch_size].max() for start in range(0, size, batch_size)]
    return float(np.mean(padded))


def round_up(value: float, multiple: int) -> int:
    return int(math.ceil(value / multiple) * multiple)


def round_epochs(epochs: float) -> float:
    """Down to a coarse grid (0.25 below one epoch, 0.5 below four, whole epochs above), so that a slightly
    faster or slower measurement rarely changes the choice."""
    step = 0.25 if epochs < 1 else 0.5 if epochs < 4 else 1.0
    return max(0.25, math.floor(epochs / step) * step)


def epoch_cap(steps_per_epoch: int) -> float:
    """Small files get more passes (up to 1,000 steps in all), within 10 to 30 epochs."""
    return min(MAX_EPOCH_CAP, max(MIN_EPOCH_CAP, MAX_STEPS_FOR_EPOCH_CAP / max(1, steps_per_epoch)))


def epoch_seconds(shape: DataShape, cost: StepCost, max_length: int, batch_size: int, frozen: bool,
                  windows: bool = False) -> float:
    """One pass over the training rows (each cut to max_length) plus one evaluation of the validation rows (a
    forward pass is about a third of a training step), which reads long texts in windows under `windows`."""
    lengths = np.asarray(shape.token_lengths)
    train_texts = math.ceil(shape.train_rows / batch_size) * batch_size
    train = train_texts * cost.seconds_per_text(padded_length(lengths, max_length, batch_size), frozen)
    return train + forward_seconds(shape, cost, max_length, windows)


def window_counts(lengths: np.ndarray, max_length: int) -> np.ndarray:
    """Windows per text, as the default reading (utils/inference/reading.py) cuts texts of these token lengths."""
    reading = Reading(max_length, long_texts="windows")
    content = max_length - SPECIAL_TOKENS
    return np.array([len(reading.window_starts(max(0, int(n) - SPECIAL_TOKENS), content)[0]) for n in lengths])


def forward_seconds(shape: DataShape, cost: StepCost, max_length: int, windows: bool = False,
                    rows: int | None = None) -> float:
    """One pass over the validation rows (or `rows` of them), batched by length, long texts cut or in windows of
    max_length tokens (a forward pass is about a third of a step)."""
    lengths = np.asarray(shape.token_lengths)
    mean_length = float(np.minimum(lengths, max_length).mean())
    sequences = float(window_counts(lengths, max_length).mean()) if windows else 1.0
    return (shape.validation_rows if rows is None else rows) * sequences * cost.seconds_per_text(mean_length) / 3


def choose_recipe(shape: DataShape, cost: StepCost | None, given: dict[str, Any], batch_size: int,
                  budget_seconds: float, member_seconds: float, export: bool = True) -> Recipe:
    """Fill every unset value of `given` (None or 'auto'); `cost` may be None when nothing depends on speed.
    `export`: the export's graphs and measurement follow training and share its budget."""
    values: dict[str, Any] = {}
    reasons: dict[str, str] = {}
    planned = {"member": round(member_seconds, 1)}
    recipe = Recipe(budget_seconds, values, reasons, planned, cost=asdict(cost) if cost is not None else None)
    choose_blend(given, values, reasons)
    choose_label_smoothing(shape.task, given, values, reasons)
    choose_at_least_one_label(shape, given, values, reasons)
    lengths = np.asarray(shape.token_lengths)
    covered = min(shape.model_max_length, max(16, round_up(np.quantile(lengths, COVERED_QUANTILE), 16)))
    for name in SPEED_FIELDS:
        if given.get(name) is not None:
            values[name], reasons[name] = given[name], "given"
    if cost is None:  # nothing left that depends on speed
        choose_long_texts(shape, given, values, reasons)
        choose_transformer_fit(shape, None, batch_size, 0.0, given, values, reasons, planned)
        return recipe

    def training_budget(length: int) -> float:
        """What the budget leaves for training once the member and the export at this length are paid."""
        windows = reads_windows(shape, given, length)
        return budget_seconds - member_seconds - (export_seconds(shape, cost, length, windows) if export else 0)

    choose_length(shape, cost, batch_size, training_budget, covered, given, values, reasons)
    length = values["max_length"]
    choose_long_texts(shape, given, values, reasons)
    choose_freezing(shape, cost, batch_size, training_budget(length), values, reasons)
    choose_epochs(shape, cost, batch_size, training_budget(length), values, reasons)
    windows = values["long_texts"] == "windows"
    planned["export"] = round(export_seconds(shape, cost, length, windows) if export else 0, 1)
    if values["epochs"] < 1 and reasons["epochs"] != "given":  # say where the time went
        reasons["epochs"] += (f"; of the {budget_seconds:.0f}-s budget the TF-IDF member took {member_seconds:.0f} s "
                              f"and export's graphs and full measurement need {planned['export']:.0f} s")
    planned["training"] = round(values["epochs"] * epoch_seconds(
        shape, cost, length, batch_size, bool(values["freeze_layers"]), windows), 1)
    head_windows = choose_transformer_fit(shape, cost, batch_size, training_budget(length), given, values, reasons,
                                          planned)
    sequences = MEASURED_SEQUENCES
    if export:  # training's floor (a quarter epoch, or every text read once) may pass the budget: export gives way
        sequences = export_within_budget(shape, cost, length, windows, budget_seconds - sum(planned.values())
                                         + planned["export"])
        planned["export"] = round(export_seconds(shape, cost, length, windows, sequences), 1)
    return replace(recipe, head_windows=head_windows, export_sequences=sequences)


def export_seconds(shape: DataShape, cost: StepCost | None, max_length: int, windows: bool = False,
                   sequences: int = MEASURED_SEQUENCES) -> float:
    """The export's graphs and its measurement: each graph scores the rows export measures once (the validation
    rows, as many as their sequences stay within `sequences`)."""
    if cost is None:
        return EXPORT_SECONDS
    per_text = float(window_counts(np.asarray(shape.token_lengths), max_length).mean()) if windows else 1.0
    rows = min(shape.validation_rows, measured_rows(per_text, sequences))
    return EXPORT_SECONDS + EXPORT_PASSES * forward_seconds(shape, cost, max_length, windows, rows)


def export_within_budget(shape: DataShape, cost: StepCost, max_length: int, windows: bool, seconds: float) -> int:
    """The sequences export measures: MEASURED_SEQUENCES, or as many as `seconds` (what the budget leaves after
    the member and training) afford where that is less, but those of MIN_MEASURED_ROWS rows at least."""
    lengths = np.asarray(shape.token_lengths)
    per_sequence = EXPORT_PASSES * cost.seconds_per_text(float(np.minimum(lengths, max_length).mean())) / 3
    per_text = float(window_counts(lengths, max_length).mean()) if windows else 1.0
    affordable = int(max(0.0, seconds - EXPORT_SECONDS) / per_sequence)
    return min(MEASURED_SEQUENCES, max(math.ceil(MIN_MEASURED_ROWS * per_text), affordable))


def reads_windows(shape: DataShape, given: dict[str, Any], max_length: int) -> bool:
    """Whether texts are read in windows at this length: as given, else where over LONG_SHARE are longer."""
    if given.get("long_texts", "auto") != "auto":
        return given["long_texts"] == "windows"
    return float(np.mean(np.asarray(shape.token_lengths) > max_length)) > LONG_SHARE


def choose_long_texts(shape: DataShape, given: dict[str, Any], values: dict[str, Any],
                      reasons: dict[str, str]) -> None:
    """Windows where long texts are more than a few: the model then reads every part of them, at a cost that
    grows with their length; truncation where nearly every text fits."""
    if given.get("long_texts", "auto") != "auto":
        values["long_texts"], reasons["long_texts"] = given["long_texts"], "given"
        return
    length = values.get("max_length")
    if length is None:  # not chosen yet: nothing measured
        return
    lengths = np.asarray(shape.token_lengths)
    longer = float(np.mean(lengths > length))
    windows = reads_windows(shape, given, length)
    values["long_texts"] = "windows" if windows else "truncate"
    mean_windows = float(window_counts(lengths, length).mean())
    reasons["long_texts"] = (f"{longer:.0%} of the training texts are longer than {length} tokens" + (
        f": read whole in windows ({mean_windows:.1f} a text on average), each label's score pooled over them"
        if windows else f" (at most {LONG_SHARE:.0%}): cut, as reading them whole would change little"))


def choose_blend(given: dict[str, Any], values: dict[str, Any], reasons: dict[str, str]) -> None:
    if given.get("blend", "auto") == "auto":
        values["blend"] = "lexical"
        reasons["blend"] = ("the lexical member (TF-IDF + logistic regression) is fitted for every file and blended "
                            "per label on validation; it is dropped when it does not help there")
    else:
        values["blend"], reasons["blend"] = given["blend"], "given"


def choose_label_smoothing(task: str, given: dict[str, Any], values: dict[str, Any],
                           reasons: dict[str, str]) -> None:
    if given.get("label_smoothing") is not None:
        values["label_smoothing"], reasons["label_smoothing"] = given["label_smoothing"], "given"
    elif task == "multiclass":
        values["label_smoothing"] = MULTICLASS_LABEL_SMOOTHING
        reasons["label_smoothing"] = "a softmax head over classes: a common regulariser"
    else:
        values["label_smoothing"], reasons["label_smoothing"] = 0.0, "multi-label: not used"


def choose_at_least_one_label(shape: DataShape, given: dict[str, Any], values: dict[str, Any],
                              reasons: dict[str, str]) -> None:
    """Data where every row has a label never answers with none: a text reaching no threshold gets its best."""
    if given.get("at_least_one_label", "auto") != "auto":
        values["at_least_one_label"], reasons["at_least_one_label"] = given["at_least_one_label"], "given"
    elif shape.task == "multiclass":
        values["at_least_one_label"], reasons["at_least_one_label"] = "no", "multi-class: one class per text"
    elif shape.rows_without_label == 0:
        values["at_least_one_label"] = "yes"
        reasons["at_least_one_label"] = "every training row has a label, so no text is answered with none"
    else:
        values["at_least_one_label"] = "no"
        reasons["at_least_one_label"] = (f"{shape.rows_without_label} of {shape.train_rows} training rows have "
                                         "no label")


def choose_length(shape: DataShape, cost: StepCost, batch_size: int, budget: Callable[[int], float], covered: int,
                  given: dict[str, Any], values: dict[str, Any], reasons: dict[str, str]) -> None:
    """The length covering 95% of the training texts, halved while the budget affords fewer than two epochs
    (no lower than 64 tokens: head and tail of longer texts are kept, and the TF-IDF member reads them whole)."""
    if "max_length" in values:
        return
    lengths = np.asarray(shape.token_lengths)
    length = covered
    frozen = bool(values.get("freeze_layers"))
    while (length > MIN_LENGTH_FOR_BUDGET and budget(length) / epoch_seconds(
            shape, cost, length, batch_size, frozen, reads_windows(shape, given, length)) < EPOCHS_BEFORE_SHORTENING):
        length = max(MIN_LENGTH_FOR_BUDGET, round_up(length / 2, 16))
    share = float(np.mean(lengths <= length))
    values["max_length"] = length
    reasons["max_length"] = (f"{share:.0%} of the training texts fit (95th percentile "
                             f"{int(np.quantile(lengths, COVERED_QUANTILE))} tokens"
                             + (f"; cut from {covered} to afford {EPOCHS_BEFORE_SHORTENING:g} epochs in the budget"
                                if length < covered else "") + ")")


def choose_freezing(shape: DataShape, cost: StepCost, batch_size: int, budget: float, values: dict[str, Any],
                    reasons: dict[str, str]) -> None:
    """The lower half of the encoder stays fixed when the budget affords fewer than two full epochs and fixing
    it buys more passes over the data."""
    if "freeze_layers" in values:
        return
    full = budget / epoch_seconds(shape, cost, values["max_length"], batch_size, False,
                                  values["long_texts"] == "windows")
    if full < EPOCHS_BEFORE_SHORTENING and cost.frozen_share < 0.95:
        values["freeze_layers"] = cost.frozen_layers
        reasons["freeze_layers"] = (f"the budget affords {max(0.0, full):.1f} epochs of the whole encoder; fixing "
                                    f"the lowest {cost.frozen_layers} layers makes a step {1 - cost.frozen_share:.0%} "
                                    "cheaper")
    else:
        values["freeze_layers"] = 0
        reasons["freeze_layers"] = f"the budget affords {max(0.0, full):.1f} epochs of the whole encoder"


def choose_epochs(shape: DataShape, cost: StepCost, batch_size: int, budget: float, values: dict[str, Any],
                  reasons: dict[str, str]) -> None:
    """As many passes as the budget affords, up to the cap for the file's size."""
    if "epochs" in values:
        return
    seconds = epoch_seconds(shape, cost, values["max_length"], batch_size, bool(values["freeze_layers"]),
                            values["long_texts"] == "windows")
    affordable = budget / seconds
    cap = epoch_cap(math.ceil(shape.train_rows / batch_size))
    values["epochs"] = min(cap, round_epochs(affordable))
    reasons["epochs"] = (f"an epoch takes about {seconds:.0f} s here; the budget affords {max(0.0, affordable):.1f}"
                         + (f", capped at {cap:g} for a file of this size" if affordable > cap else "")
                         + (" (less than one: --time-budget raises it)" if affordable < 1 else ""))


def fine_tune_steps(shape: DataShape, epochs: float, batch_size: int) -> int:
    return int(epochs * math.ceil(shape.train_rows / batch_size))


def choose_transformer_fit(shape: DataShape, cost: StepCost | None, batch_size: int, budget: float,
                           given: dict[str, Any], values: dict[str, Any], reasons: dict[str, str],
                           planned: dict[str, float]) -> int | None:
    """Fine-tuning where the budget affords an epoch or MIN_FINE_TUNE_STEPS steps; under both (long texts, a short
    budget), the encoder is kept as pretrained and only its head is fitted: every training text read once (forward
    passes only, a third of a step), in as many windows a text as the budget affords. A few dozen steps of
    fine-tuning see a fraction of the rows at a learning rate still warming up."""
    steps = fine_tune_steps(shape, values["epochs"], batch_size) if "epochs" in values else 0
    if given.get("transformer_fit", "auto") != "auto":
        fit, why = given["transformer_fit"], "given"
    elif given.get("epochs") is not None:
        fit, why = "fine-tune", "epochs given"
    elif cost is None:
        fit, why = "fine-tune", "nothing was measured"
    elif values["epochs"] >= 1:
        fit, why = "fine-tune", "the budget affords at least one epoch of fine-tuning"
    elif steps >= MIN_FINE_TUNE_STEPS:
        fit, why = "fine-tune", f"the budget affords {steps} steps of fine-tuning (at least {MIN_FINE_TUNE_STEPS})"
    else:
        fit, why = "head", (f"the budget affords {values['epochs']:g} epochs of fine-tuning ({steps} steps): the "
                            "encoder is kept as pretrained and its head fitted on every training text read once")
    values["transformer_fit"], reasons["transformer_fit"] = fit, why
    if values["transformer_fit"] != "head" or cost is None:
        return None
    length, windows = values["max_length"], values["long_texts"] == "windows"
    per_window = cost.seconds_per_text(length) / 3
    validation = forward_seconds(shape, cost, length, windows)
    counts = window_counts(np.asarray(shape.token_lengths), length) if windows else np.ones(1)
    affordable = max(1, int((budget - validation) / max(per_window * shape.train_rows, 1e-9)))
    head_windows = int(min(affordable, counts.max(), DEFAULT_MAX_WINDOWS))
    planned["training"] = round(validation + per_window * float(np.minimum(counts, head_windows).mean())
                                * shape.train_rows, 1)
    if windows:
        reasons["transformer_fit"] += (f", in {head_windows} windows each at most" if head_windows > 1
                                       else ", in one window each")
    return head_windows


def measure_step_cost(model: Any, input_ids: list[list[int]], pad_token_id: int, batch_size: int,
                      device: torch.device | str = "cpu", lengths: tuple[int, ...] = (16, 64, 128)) -> StepCost:
    """Time forward + backward of real training texts at two lengths, and with the lower half of the encoder
    fixed, on the device training uses; the model's weights and gradients are left as they were (no optimizer
    step)."""
    model.to(device).train()
    frozen_layers = encoder_layers(model) // 2
    timings = {length: step_time(model, input_ids, pad_token_id, batch_size, length, device) for length in lengths}
    long = lengths[-1]
    trainable = {name: p.requires_grad for name, p in model.named_parameters()}
    try:
        for name, parameter in model.named_parameters():
            if layer_depth(name, encoder_layers(model)) <= frozen_layers:
                parameter.requires_grad_(False)
        frozen = step_time(model, input_ids, pad_token_id, batch_size, long, device)
    finally:
        for name, parameter in model.named_parameters():
            parameter.requires_grad_(trainable[name])
    model.zero_grad(set_to_none=True)
    return StepCost(batch_size, tuple(lengths), tuple(timings[length] for length in lengths),
                    min(1.0, frozen / timings[long]), frozen_layers)


def step_time(model: Any, input_ids: list[list[int]], pad_token_id: int, batch_size: int, length: int,
              device: torch.device | str = "cpu", repeats: int = 3) -> float:
    """The fastest of `repeats` forward + backward passes on one batch padded to `length`, after one warm-up
    pass: the least disturbed by other work on the machine."""
    rows = [(ids + [pad_token_id] * length)[:length] for ids in (input_ids * batch_size)[:batch_size]]
    ids = torch.tensor(rows, device=device)
    mask = (ids != pad_token_id).long()
    mask[:, 0] = 1
    synchronize = torch.cuda.synchronize if torch.device(device).type == "cuda" else (lambda: None)
    times = []
    for attempt in range(repeats + 1):
        synchronize()
        started = time.perf_counter()
        logits = model(input_ids=ids, attention_mask=mask).logits
        logits.float().pow(2).mean().backward()
        synchronize()
        if attempt:
            times.append(time.perf_counter() - started)
    model.zero_grad(set_to_none=True)
    return float(min(times))
