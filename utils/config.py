"""Every setting of the toolkit: declared by job in frozen dataclasses, read once as one flat Config from defaults,
a JSON/YAML file and the command line, and never written to afterwards."""

from __future__ import annotations

import argparse
import dataclasses
import json
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import yaml

from models.none_of_these import DEFAULT_REJECT_RATE
from utils.checkpoint.errors import MissingFileError, UserError
from utils.inference.backends import AUTO, BACKENDS, torch_only_option
from utils.inference.reading import DEFAULT_MAX_WINDOWS, LONG_TEXTS, WINDOW_POOLINGS

TASKS = ("multilabel", "multiclass")
AUTO_TASK = "auto"  # the data's task: a built-in dataset's own; a file's from its label columns (utils/data/layout.py)
MODES = ("train", "eval", "predict", "export", "search", "audit", "suggest")
TRACKERS = ("none", "tensorboard", "mlflow")
ENGINES = ("single", "ray")
BLENDS = ("auto", "lexical", "none")
# Earlier names, still read from command lines, config files and checkpoints' training_config.json
RENAMED_SETTINGS = {"ensemble": "blend"}
RENAMED_VALUES = {"blend": {"tfidf": "lexical"}}


class SettingsError(UserError):
    """A setting with a wrong value or type, or a config file that cannot be read, naming the setting."""


def _opt(default: Any, help: str, choices: tuple[str, ...] | None = None) -> Any:
    """A field whose metadata build_parser turns into the flag's help (its default said once) and choices."""
    shown = f" (default: {default})" if default not in (None, []) else ""
    metadata: dict[str, Any] = {"help": help + shown}
    if choices:
        metadata["choices"] = choices
    if isinstance(default, list):  # repeatable: --text a --text b
        return field(default_factory=lambda: list(default), metadata=metadata)
    return field(default=default, metadata=metadata)


@dataclass(frozen=True)
class TaskArguments:
    """What to do, and the seed that splits, initialisation and batch order draw from."""

    _argument_group_name: ClassVar[str] = "what to do"

    task: str = _opt(AUTO_TASK, "Multi-label (sigmoid per label) or multi-class (softmax); auto: the data's (a file "
                     "with 0/1 label columns or several labels in a row is multi-label, one class a row "
                     "multi-class; an evaluated checkpoint's own).", (*TASKS, AUTO_TASK))
    mode: str = _opt("train", "train (then evaluate), eval, predict, export, search (an Optuna study of "
                     "trainings on the train and validation rows; the best written as a config file), audit (the rows "
                     "whose given labels the models most doubt) or suggest (the rows of --pool to label next).",
                     MODES)
    config: str | None = _opt(None, "JSON or YAML file with any of these fields; flags override it.")
    seed: int = _opt(42, "Seed for splits, initialisation and batch order.")


@dataclass(frozen=True)
class DataArguments:
    """Which files, which columns, how they are read and split."""

    _argument_group_name: ClassVar[str] = "data"

    data: str | None = _opt(
        None, "Built-in dataset (toxic, goemotions, conference) or a CSV/TSV/TXT/JSONL/XLSX/Parquet file. "
        "Default: toxic for multilabel, conference for multiclass.")
    test_data: str | None = _opt(None, "Held-out file to report on; default: the dataset's own test split.")
    data_dir: str | None = _opt(
        None, "Folder holding built-in datasets (else $BERT_CLASSIFIER_DATA_DIR, then ../shared/data, "
        "then a download into ~/.cache/bert-classifier).")
    text_column: str | None = _opt(None, "Column holding the text.")
    label_columns: list[str] = _opt([], "One 0/1 column per label (Jigsaw layout).")
    label_column: str | None = _opt(None, "One column of label names or ids (GoEmotions layout).")
    label_delimiter: str | None = _opt(
        None, "Separator of several labels inside --label-column (multilabel; default ',').")
    labels_file: str | None = _opt(None, "Text file of label names, one per line; ids in the data index it.")
    val_split: float = _opt(0.15, "Fraction of the training rows held out (stratified) for validation.")
    test_split: float | None = _opt(
        None, "Fraction of rows held out (stratified, before the validation split) as the test set when "
        "there is no --test-data and the data has no test file; default: 0.15.")
    max_train_samples: int | None = _opt(None, "Use at most this many training rows (stratified sample).")
    validation_data: str | None = _opt(
        None, "File of validation rows (thresholds, early stopping); no validation split is then taken from --data.")
    extra_data: list[str] = _opt([], "Files of more labelled training rows (e.g. labelled suggestions or corrections "
                                 "from the page), in --data's layout; a row whose text is already in the data "
                                 "replaces its labels, so that each text counts once.")
    encoding: str | None = _opt(None, "Text encoding of every file read (default: detected, e.g. utf-8, cp1252).")
    delimiter: str | None = _opt(None, "Column separator of CSV/TXT files (default: sniffed among , ; tab |).")
    sheet: str | None = _opt(None, "Sheet of .xlsx files to read (default: the first).")
    drop_invalid: bool = _opt(False, "Drop rows with an empty text or a missing label (counted in the data report) "
                              "instead of stopping at the first.")


@dataclass(frozen=True)
class ModelArguments:
    """The network and how it reads a text; training, evaluation and prediction alike."""

    _argument_group_name: ClassVar[str] = "model"

    model_type: str = _opt("bert", "Backbone family.", ("bert", "roberta", "distilbert"))
    model_name_or_path: str | None = _opt(
        None, "Hub name or local folder of the pretrained encoder; default: the shipped all-MiniLM-L6-v2.")
    pooling: str = _opt("mean", "Sentence vector for the head: mean of tokens, or the stock [CLS] head.",
                        ("mean", "cls"))
    max_length: int | None = _opt(
        None, "Tokens per text after truncation; default: the recipe's choice (covering 95 percent of the training "
        "texts within the time budget).")
    truncation: str = _opt("head_tail", "Keep the head of long texts, or head and tail.", ("head", "head_tail"))
    long_texts: str = _opt(
        "auto", "A text longer than max_length: cut it (truncate), or read it whole in windows of max_length tokens "
        "whose scores are pooled per label (cost grows with its length); auto: the recipe's choice in training "
        "(windows where over 1 percent of the training texts are longer), the checkpoint's in eval and predict.",
        ("auto", *LONG_TEXTS))
    window_stride: int | None = _opt(
        None, "Tokens between the starts of a long text's windows; default: three quarters of a window (or the "
        "checkpoint's).")
    max_windows: int | None = _opt(
        None, f"Windows per text at most; past it they spread evenly over the text; default: {DEFAULT_MAX_WINDOWS} "
        "(or the checkpoint's).")
    window_pooling: str = _opt(
        "auto", "A label's score over a text's windows: their highest (max) or mean; auto: chosen on validation in "
        "training, the checkpoint's in eval and predict.", ("auto", *WINDOW_POOLINGS))
    precision: str = _opt("auto", "auto: bf16 on AMX CPUs and bf16 GPUs, fp32 elsewhere.",
                          ("auto", "fp32", "bf16", "fp16"))

    def reading_overrides(self) -> dict[str, Any]:
        """How long texts are read where given, as ModelInferer takes it: None leaves a checkpoint's own."""
        return {"long_texts": None if self.long_texts == "auto" else self.long_texts,
                "window_stride": self.window_stride, "max_windows": self.max_windows,
                "window_pooling": None if self.window_pooling == "auto" else self.window_pooling}


@dataclass(frozen=True)
class TrainingArguments:
    """The training loop: its length, optimisation, loss, evaluations and saved states."""

    _argument_group_name: ClassVar[str] = "training"

    freeze_encoder: bool = _opt(False, "Train only the classification head.")
    freeze_embeddings: bool = _opt(True, "Keep the word embeddings fixed (faster; they barely move).")
    freeze_layers: int | None = _opt(
        None, "Also fix all embeddings and the lowest N encoder layers (no backward pass through them); default: "
        "the recipe's choice (half the layers when the budget affords fewer than two epochs, else none).")
    epochs: float | None = _opt(
        None, "Passes over the training rows (fractions allowed); default: as many as the time budget affords.")
    transformer_fit: str = _opt(
        "auto", "How the transformer learns: fine-tune (the encoder and its head, pass after pass) or head (the "
        "encoder kept as pretrained, every training text read once and the head's last layer fitted on what it "
        "makes of them); auto: head where the budget affords under one epoch of fine-tuning, else fine-tune.",
        ("auto", "fine-tune", "head"))
    time_budget: float | None = _opt(
        None, "Minutes for training, the lexical member and the export's measurement together, which the recipe "
        "plans epochs and text length for; default: 40 s per 1,000 training rows, between 3 and 20 minutes.")
    batch_size: int = _opt(32, "Texts per optimizer step and process, before accumulation.")
    learning_rate: float = _opt(1e-4, "Peak AdamW learning rate of the encoder's top layer.")
    head_learning_rate: float | None = _opt(None, "Learning rate of the head; default: --learning-rate.")
    layer_decay: float = _opt(0.9, "Layer-wise learning-rate decay (1.0: the same rate for every layer).")
    warmup_ratio: float = _opt(0.06, "Fraction of steps with linear warm-up.")
    weight_decay: float = _opt(0.01, "AdamW weight decay (not on biases and LayerNorm).")
    gradient_accumulation_steps: int = _opt(1, "Batches per optimizer step.")
    max_grad_norm: float = _opt(1.0, "Gradient clipping norm (0 disables).")
    loss: str = _opt("bce", "Multi-label loss.", ("bce", "focal"))
    focal_gamma: float = _opt(2.0, "Focusing parameter of the focal loss.")
    pos_weight: str = _opt("auto", "Multi-label positive weights: auto ((N-pos)/pos, capped), none, or v1,v2,..")
    # 100 rather than 10 lifted validation ROC AUC on toxic (0.9504 -> 0.9562) and goemotions (0.9184 -> 0.9240)
    pos_weight_cap: float = _opt(100.0, "Upper bound of an automatic pos_weight.")
    class_weights: str = _opt("none", "Multi-class weights: auto (balanced), none, or v1,v2,..")
    label_smoothing: float | None = _opt(None, "Multi-class label smoothing; default: 0.1 (multi-class), 0.")
    eval_every: int = _opt(0, "Evaluate every N optimizer steps (0: once per epoch).")
    early_stopping_patience: int = _opt(0, "Stop after N evaluations without improvement (0: never).")
    output_dir: str = _opt("outputs/run", "Folder for the checkpoint, logs and reports.")
    resume_from_checkpoint: str | None = _opt(
        None, "Training state folder to resume from, or 'auto' for the latest one in --output-dir.")
    save_every: int = _opt(0, "Save a resumable training state every N optimizer steps (0: at evaluations).")
    keep_last: int = _opt(2, "How many training states to keep.")
    num_workers: int = _opt(0, "DataLoader worker processes.")


@dataclass(frozen=True)
class ScoringArguments:
    """What training's finish makes of the model's scores: the blend, the temperature, the thresholds."""

    _argument_group_name: ClassVar[str] = "served scores"

    blend: str = _opt("auto", "Blend the lexical member (TF-IDF + logistic regression) with the transformer, "
                      "weighted per label on the validation split; auto: fit it and keep it where it helps; "
                      "lexical: always keep it; none: the transformer alone.", BLENDS)
    temperature_scaling: bool = _opt(
        True, "Fit one temperature on the validation rows after blending, so that the served scores are "
        "calibrated (the thresholds are tuned on them after).")
    threshold_strategy: str = _opt("shrunk", "Multi-label thresholds tuned on validation for F1: each label's "
                                   "own, shrunk towards one pooled value where the label has few positives.",
                                   ("shrunk", "per_label", "global", "fixed"))
    at_least_one_label: str = _opt(
        "auto", "Multi-label: a text that reaches no threshold gets its best label; auto: yes when every training "
        "row has a label.", ("auto", "yes", "no"))
    none_label: str = _opt(
        "auto", "Multi-class: the label meaning 'none of these' (a text no class fits); its rows train as a class and "
        "tune the threshold. auto: a label named oos, out_of_scope, none, none_of_these or nlu_fallback; off: none.")
    reject_rate: float = _opt(
        DEFAULT_REJECT_RATE, "Multi-class without 'none' validation rows: the share of the validation rows the "
        "threshold answers 'none of these' (0: always the top class).")


@dataclass(frozen=True)
class PredictionArguments:
    """Scoring with a checkpoint: which one, what, and with which backend."""

    _argument_group_name: ClassVar[str] = "eval and predict"

    checkpoint: str | None = _opt(None, "Checkpoint folder to evaluate or predict with.")
    eval_batch_size: int = _opt(128, "Texts per forward pass when scoring: training's validation, eval, predict, Ray.")
    text: list[str] = _opt([], "Text to classify in predict mode (repeat for several).")
    input: str | None = _opt(None, "CSV/JSONL file to score in predict mode.")
    output: str | None = _opt(None, "Where predict mode writes the scored file; export mode: the float32 graph "
                               "(the other graphs beside it, nothing measured).")
    quantize: bool = _opt(False, "Dynamic int8 quantization of Linear layers for eval/predict (PyTorch only: "
                          "with --backend auto it means torch).")
    backend: str = _opt(
        AUTO, "What eval, predict and Ray score with, as the server's BACKEND: auto picks the fastest exported graph "
        "whose validation cost export measured within bounds, else torch (--quantize or a --precision other than "
        "auto/fp32 mean torch); or one backend by name.", (AUTO, *BACKENDS))


@dataclass(frozen=True)
class RayArguments:
    """predict --engine ray: Ray Data actors over files, globs or folders."""

    _argument_group_name: ClassVar[str] = "Ray"

    engine: str = _opt("single", "predict --input on one process, or on Ray Data (files, globs or folders; "
                       "a folder of Parquet or CSV shards out).", ENGINES)
    num_actors: int | None = _opt(None, "Ray: scoring actors, each loading the model once (default: the "
                                  "cluster's CPUs / --cpus-per-actor).")
    cpus_per_actor: int = _opt(1, "Ray: CPUs (and torch threads) per scoring actor.")
    ray_address: str | None = _opt(None, "Ray: address of a running cluster to join (host:port or 'auto'); "
                                   "default: start a local one on this machine's cores.")


@dataclass(frozen=True)
class ExportArguments:
    """The graphs written beside the checkpoint and measured for serving."""

    _argument_group_name: ClassVar[str] = "ONNX export"

    export_onnx: bool = _opt(
        True, "After training, export the ONNX graphs into the checkpoint and measure each one's speed and "
        "validation cost (what serving's BACKEND=auto picks from); needs requirements_onnx.txt.")
    onnx_static_int8: bool = _opt(
        False, "Export also writes a static int8 graph, its activation ranges calibrated on training rows.")
    onnx_int8_reduce_range: str = _opt(
        "auto", "Export's int8 graphs with 7-bit weights (yes) or 8-bit (no); auto: 7-bit only on an x86 CPU "
        "without VNNI or AMX, whose int8 kernels can saturate 8-bit ones.", ("auto", "yes", "no"))


@dataclass(frozen=True)
class TrackingArguments:
    """Where a training's settings, curves, metrics and reports are recorded, and where its checkpoint is shared."""

    _argument_group_name: ClassVar[str] = "tracking and sharing"

    report_to: list[str] = _opt([], f"Trackers that record each training ({', '.join(TRACKERS)}; several allowed): "
                                "its settings and the recipe's choices, loss, learning rate, grad norm and validation "
                                "curves, test metrics and reports; default: none.")
    tracking_uri: str | None = _opt(None, "MLflow tracking URI (a server URL, or a database such as "
                                    "sqlite:///mlflow.db); default: sqlite:///mlflow.db in the working folder.")
    experiment_name: str = _opt("bert-classifier", "MLflow experiment (TensorBoard: the run's folder name).")
    push_to_hub: str | None = _opt(None, "After training, upload the checkpoint (with its model card) to this "
                                   "Hugging Face Hub repository (user/name; needs a network and a token).")


@dataclass(frozen=True)
class DataImprovementArguments:
    """--mode audit and --mode suggest: which labels to check, and which unlabelled rows to label next."""

    _argument_group_name: ClassVar[str] = "audit and suggest"

    pool: str | None = _opt(None, "suggest: file of unlabelled texts (CSV/TSV/TXT/JSONL/XLSX/Parquet, --text-column) "
                            "to choose from.")
    k: int = _opt(200, "suggest: how many rows to pick; audit: how many suspect rows to list first.")


@dataclass(frozen=True)
class SearchArguments:
    """--mode search: an Optuna study over the settings around the recipe's choice."""

    _argument_group_name: ClassVar[str] = "search"

    trials: int = _opt(20, "Trainings the search runs at most (with --time-budget the whole search's minutes).")
    storage: str | None = _opt(None, "Optuna storage URL (any SQLAlchemy URL, e.g. postgresql://...; several "
                               "processes may share one study); default: sqlite:///OUTPUT_DIR/study.db.")
    study_name: str | None = _opt(None, "Study to create or resume in --storage; default: named after the data.")


# The parts in the order --help lists them. build_parser reads them as one command line, and Config is their fields
# as one object: the bases of a dataclass give their fields from the last one, hence Config's reversed list.
@dataclass(frozen=True)
class Config(DataImprovementArguments, SearchArguments, TrackingArguments, ExportArguments, RayArguments,
             PredictionArguments, ScoringArguments, TrainingArguments, ModelArguments, DataArguments, TaskArguments):
    """Every setting as one frozen object; each field is a command-line flag (`max_length` -> `--max-length`),
    declared in the part of its job. A Config is an instance of every part, so that a function that needs one job's
    settings takes that part (`freeze(model, settings: TrainingArguments, ...)`)."""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


PARTS = (TaskArguments, DataArguments, ModelArguments, TrainingArguments, ScoringArguments, PredictionArguments,
         RayArguments, ExportArguments, TrackingArguments, SearchArguments, DataImprovementArguments)


def field_types() -> dict[str, Any]:
    """Each field's resolved annotation (`float | None`, `list[str]`, ...)."""
    return typing.get_type_hints(Config)


def scalar_type(annotation: Any) -> type:
    """The scalar type behind an annotation: float for `float | None`, list for `list[str]`."""
    if typing.get_origin(annotation) in (types.UnionType, typing.Union):
        annotation = next(a for a in typing.get_args(annotation) if a is not type(None))
    return typing.get_origin(annotation) or annotation


def build_parser() -> argparse.ArgumentParser:
    """One flag per field under its part's heading, spelled with hyphens; a flag not given stays None, so that
    --config can sit under the flags that were given."""
    parser = argparse.ArgumentParser(description=(
        "Fine-tune, evaluate and run BERT-family text classifiers. Every flag can also be set in a --config "
        "file; settings left unset in training are chosen from the data and the time budget (the recipe)."))
    annotations = field_types()
    for part in PARTS:
        group = parser.add_argument_group(part._argument_group_name)
        for f in dataclasses.fields(part):
            add_flag(group, f, scalar_type(annotations[f.name]))
    return parser


def add_flag(group: argparse._ArgumentGroup, f: dataclasses.Field, kind: type) -> None:
    """--x-y with its help; --x_y and an earlier name as hidden aliases (commands written for them still run);
    --no-x-y beside every boolean."""
    flag = f.name.replace("_", "-")
    earlier = [old for old, new in RENAMED_SETTINGS.items() if new == f.name]
    spellings = {f"--{name}" for name in [f.name, *earlier]} | {f"--{name.replace('_', '-')}" for name in earlier}
    hidden = sorted(spellings - {f"--{flag}"})
    options = flag_options(f, kind)
    group.add_argument(f"--{flag}", dest=f.name, default=None, help=f.metadata["help"], **options)
    if hidden:
        group.add_argument(*hidden, dest=f.name, default=None, help=argparse.SUPPRESS, **options)
    if kind is bool:
        group.add_argument(f"--no-{flag}", dest=f.name, action="store_false", default=None,
                           help=f"Turn --{flag} off.")
        group.add_argument(f"--no_{f.name}", dest=f.name, action="store_false", default=None, help=argparse.SUPPRESS)


def flag_options(f: dataclasses.Field, kind: type) -> dict[str, Any]:
    """How argparse reads the flag's value: a boolean alone or with yes/no, a list repeated or with several
    values, a choice under its current or earlier name."""
    if kind is bool:  # --freeze-encoder, or --freeze-encoder false as before
        return {"type": to_bool, "nargs": "?", "const": True, "metavar": "BOOL"}
    if kind is list:
        return {"type": str, "nargs": "+", "action": "extend"}
    choices = f.metadata.get("choices")
    if choices:
        renamed = RENAMED_VALUES.get(f.name, {})
        return {"type": lambda value: renamed.get(value, value), "choices": choices}
    return {"type": kind}


def to_bool(value: str) -> bool:
    if value.lower() in ("yes", "true", "t", "y", "1"):
        return True
    if value.lower() in ("no", "false", "f", "n", "0"):
        return False
    raise argparse.ArgumentTypeError(f"expected yes or no (true or false), got {value!r}")


def current_names(values: dict[str, Any]) -> dict[str, Any]:
    """Settings under their current names and values: `ensemble: tfidf` (an earlier version's) is `blend: lexical`;
    keys with hyphens are read with underscores."""
    current: dict[str, Any] = {}
    for key, value in values.items():
        name = key.replace("-", "_")
        name = RENAMED_SETTINGS.get(name, name)
        current[name] = RENAMED_VALUES.get(name, {}).get(value, value) if isinstance(value, str) else value
    return current


def read_config_file(path: str | Path) -> dict[str, Any]:
    """Fields from a JSON or YAML file, keys with hyphens or underscores; unknown keys are an error."""
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"{path}: no such config file (--config)")
    text = path.read_text()
    try:
        values = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as error:
        raise SettingsError(f"{path}: not valid {'JSON' if path.suffix == '.json' else 'YAML'}: {error}") from None
    if not isinstance(values, dict):
        raise SettingsError(f"{path}: expected a mapping of settings, got {type(values).__name__}")
    values = current_names(values)
    unknown = sorted(set(values) - {f.name for f in dataclasses.fields(Config)})
    if unknown:
        raise SettingsError(f"{path}: unknown setting(s) {', '.join(unknown)}")
    return values


def parse_config(argv: list[str] | None = None) -> Config:
    """Defaults, then --config FILE, then the flags given."""
    args = {k: v for k, v in vars(build_parser().parse_args(argv)).items() if v is not None}
    values: dict[str, Any] = read_config_file(args["config"]) if args.get("config") else {}
    values.update(args)
    for name in ("label_columns", "report_to"):  # --report-to mlflow,tensorboard as well as two values
        if name in values:
            values[name] = _split_commas(values[name])
    return make_config(**values)


def default_dataset(task: str) -> str:
    return "conference" if task == "multiclass" else "toxic"


def config_from_saved(settings: dict[str, Any]) -> Config:
    """The Config of a checkpoint's training_config.json, one flat mapping in every version; its keys that are no
    setting (the resolved backbone, a setting an older version had) are left out, and renamed ones read."""
    known = {f.name for f in dataclasses.fields(Config)}
    return make_config(**{k: v for k, v in current_names(settings).items() if k in known})


def _split_commas(items: list[str] | str) -> list[str]:
    items = [items] if isinstance(items, str) else items
    return [part.strip() for item in items for part in item.split(",") if part.strip()]


def make_config(**values: Any) -> Config:
    """A Config from keyword values (earlier names read), each value checked before the Config is built, so that a
    config file cannot smuggle in a wrong type."""
    values = current_names(values)
    fields = {f.name: f for f in dataclasses.fields(Config)}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise SettingsError(f"unknown setting(s) {', '.join(unknown)}")
    annotations = field_types()
    checked = {name: checked_value(f, values[name] if name in values else default_of(f), annotations[name])
               for name, f in fields.items()}
    checked["data"] = checked["data"] or default_dataset(checked["task"])
    config = Config(**checked)
    check_together(config)
    return config


def default_of(f: dataclasses.Field) -> Any:
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default


def checked_value(f: dataclasses.Field, value: Any, annotation: Any) -> Any:
    """`value` as field `f` holds it (an int where a float is expected becomes a float); a SettingsError when it
    is not one of the field's choices or not of its type."""
    choices = f.metadata.get("choices")
    if choices and value not in choices:
        raise SettingsError(f"--{f.name.replace('_', '-')}: {value!r} is not one of {', '.join(choices)}")
    expected = scalar_type(annotation)
    if value is None or expected is list:
        return value
    if expected is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if not isinstance(value, expected) or (expected is not bool and isinstance(value, bool)):
        raise SettingsError(f"setting {f.name}: expected {expected.__name__}, got {value!r}")
    return value


def check_together(config: Config) -> None:
    """The checks that read several settings at once."""
    if not 0.0 <= config.val_split < 1.0 or not 0.0 <= (config.test_split or 0.0) < 1.0:
        raise SettingsError("--val-split and --test-split must lie in [0, 1)")
    only_torch = torch_only_option(config.quantize, config.precision, None)
    if only_torch and config.backend not in (AUTO, "torch"):
        raise SettingsError(f"--{only_torch} runs in PyTorch only, and --backend {config.backend} "
                            "runs the exported graph as it is: drop it, or use --backend auto or torch (an int8 graph "
                            "is --backend onnx-int8 or onnx-fused-int8)")
    if config.batch_size < 1 or (config.max_length or 8) < 8 or config.gradient_accumulation_steps < 1:
        raise SettingsError("--batch-size and --gradient-accumulation-steps must be >= 1, --max-length >= 8")
    if (config.window_stride or 1) < 1 or (config.max_windows or 1) < 1:
        raise SettingsError("--window-stride and --max-windows must be >= 1")
    if not 0.0 <= config.reject_rate < 1.0:
        raise SettingsError("--reject-rate must lie in [0, 1)")
    unknown_trackers = sorted(set(config.report_to) - set(TRACKERS))
    if unknown_trackers:
        raise SettingsError(f"--report-to: {', '.join(unknown_trackers)} is not one of {', '.join(TRACKERS)}")
    if config.trials < 1 or config.k < 1:
        raise SettingsError("--trials and --k must be >= 1")
