"""The checkpoint folder, the one contract between training and everything that reads a model.

Training writes it with `write_checkpoint`; evaluation, inference, export and serving read it through
`CheckpointFolder`. Every file name is defined here and nowhere else. `classifier.json` is described by the
versioned `ClassifierInfo`; a folder from a newer format is refused with a clear message, and folders of the
first format (written before the version field existed) still load. Export adds the ONNX graphs and
`variants.json` (`VariantsReport`: each graph's measured speed and validation cost, which BACKEND=auto reads,
and how the int8 graphs were quantized); a checkpoint without them stays complete. For plain transformers and the
Hugging Face Hub, the folder also holds its model card (`README.md`, utils/checkpoint/model_card.py) and, where the
head reads the mean of the tokens, the forward pass that computes it (`modeling_pooled.py`, named in config.json's
`auto_map`).
"""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, ValidationError

from models import WEIGHTS_FILE, lexical
from models.none_of_these import NoneScore
from utils.checkpoint.atomic import sha256_file, staged_file, staged_folder
from utils.checkpoint.errors import UserError

FORMAT_VERSION = 2  # 1: the first format, without `format_version`, `text_column` and `members`
CONFIG_FILE = "config.json"  # the transformers model config
# a mean-pooled checkpoint's forward pass for transformers' trust_remote_code=True (models/modeling_pooled.py)
MODELING_FILE = "modeling_pooled.py"
MODEL_CARD_FILE = "README.md"  # the Hugging Face Hub's model card (utils/checkpoint/model_card.py)
CLASSIFIER_FILE = "classifier.json"
TOKENIZER_JSON_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")  # transformers' names
TRAINING_CONFIG_FILE = "training_config.json"
METRICS_FILE = "metrics.json"
ONNX_FILES = {  # by serving backend
    "onnx": "model.onnx",  # the exported graph, standard ONNX operators only (any ONNX runtime)
    "onnx-int8": "model.int8.onnx",  # its MatMul weights int8, activations quantized per batch (dynamic)
    "onnx-fused": "model.fused.onnx",  # ONNX Runtime's transformer fusions (its contrib operators)
    "onnx-fused-int8": "model.fused.int8.onnx",  # the fused graph, dynamic int8
    "onnx-fused-int8-static": "model.fused.int8-static.onnx",  # the fused graph, int8 calibrated on training rows
}
VARIANTS_FILE = "variants.json"  # what export measured of each graph (VariantsReport)
# The token ids export measures the graphs on (validation rows, with their labels) and calibrates static int8 on
# (training rows), stored by training's finish; safetensors, read and written by utils/checkpoint/rows.py.
EXPORT_ROWS_FILE = "export_rows.safetensors"
LEXICAL_WEIGHTS_FILE, LEXICAL_CONFIG_FILE = lexical.WEIGHTS_FILE, lexical.CONFIG_FILE  # the member's own names
TRANSFORMER = "transformer"  # the name of the fine-tuned encoder among the checkpoint's members
# The lexical member (TF-IDF + logistic regression) as checkpoints name it in classifier.json's `members`: kept
# "tfidf", the name written since the first blended checkpoint, so that every checkpoint reads alike
LEXICAL = "tfidf"


DEFAULT_MAX_WINDOWS = 64  # a long text's windows at most, unless a flag or the checkpoint says otherwise

class CheckpointError(UserError):
    """A folder that is not a readable checkpoint of this toolkit, naming the folder and the problem."""


class ClassifierInfo(BaseModel):
    """What `classifier.json` holds: everything a reader needs to turn texts into labels."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    format_version: int = FORMAT_VERSION
    task: Literal["multilabel", "multiclass"]
    labels: list[str]
    thresholds: list[float] | None = None  # tuned per label on validation (multi-label only)
    max_length: int
    truncation: Literal["head", "head_tail"]
    # a text longer than max_length: cut by `truncation`, or read whole in windows pooled per label
    # (utils/inference/reading.py); checkpoints written before windows read "truncate"
    long_texts: Literal["truncate", "windows"] = "truncate"
    window_stride: int | None = None  # content tokens between window starts; None: 3/4 of a window
    max_windows: int = DEFAULT_MAX_WINDOWS  # windows per text at most: past it they spread evenly over the text
    window_pooling: Literal["max", "mean"] = "max"  # chosen on validation
    pooling: Literal["mean", "cls"] = "cls"
    model_type: str
    backbone: str
    precision: str = "fp32"  # what training ran in; the weights are always stored as float32
    text_column: str | None = None  # the column training read the texts from
    members: list[str] = [TRANSFORMER]  # the models whose scores the checkpoint blends
    # The transformer's share in the blend: one per label (multi-label) or one for every class; the lexical
    # member has the rest. Chosen on the validation split (utils/training/blend_weights.py).
    blend_weights: list[float] | None = None
    blend_method: Literal["logit", "probability"] = "logit"
    # multi-label: a text whose scores reach no threshold gets its best label (every training row had one)
    at_least_one_label: bool = False
    # the served scores' log-odds (log-probabilities) are divided by this, fitted on validation after blending
    temperature: float = 1.0
    # multi-class: "none of these" where a text's none score reaches none_threshold (tuned on validation,
    # models/none_of_these.py); none_label is the data's own "none" class among `labels`, the answer then;
    # checkpoints written before read None: always the top class
    none_threshold: float | None = None
    none_label: str | None = None
    none_score: NoneScore | None = None  # None: none_share with a none_label, else top_probability


def backbone_name(backbone: str) -> str:
    """The backbone as a server shows it: a hub name as recorded; a local folder by its name, or a packaged one
    (site-packages/PACKAGE/...) by its package, never a path of the machine that trained it."""
    parts = [part for part in re.split(r"[\\/]+", backbone) if part]
    if not (backbone.startswith(("/", "\\", "~", ".")) or re.match(r"^[A-Za-z]:", backbone)) or not parts:
        return backbone
    if "site-packages" in parts[:-1]:
        return parts[parts.index("site-packages") + 1]
    return parts[-1]


class VariantRecord(BaseModel):
    """One way of running the checkpoint, as export measured it on validation rows."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    backend: str
    texts_per_s: float  # scoring the validation rows in batches, at the report's threads and batch size
    value: float | None  # the report's metric on those rows (None where it is undefined)
    cost: float | None  # the reference's value minus this one: positive is a loss
    max_score_difference: float  # largest |score - reference score| over the rows and labels


class Int8Quantization(BaseModel):
    """How export stored the int8 graphs' weights, and why: the CPU's int8 instructions decide."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    cpu_features: list[str]  # the int8 dot-product instructions the CPU listed (avx512_vnni, avx_vnni, amx_int8)
    reduce_range: bool  # 7-bit weights (-64..64), whose u8 x s8 pair sums cannot saturate 16 bits, or 8-bit
    reason: str


class VariantsReport(BaseModel):
    """What `variants.json` holds: the measured speed and validation cost of each runnable variant."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    format_version: int = 1
    checkpoint_id: str  # the weights the graphs were exported from; a report of other weights is ignored
    metric: str  # mean_roc_auc (multi-label) or accuracy (multi-class)
    reference: str = "torch"  # the variant costs are measured against (the float32 PyTorch model)
    rows: int  # validation rows scored
    batch_size: int
    threads: int
    machine: str  # the CPU the speeds were measured on
    measured_at: str  # UTC, ISO 8601
    variants: list[VariantRecord]
    int8: Int8Quantization | None = None  # absent from the reports written before export recorded it

    def record(self, backend: str) -> VariantRecord | None:
        return next((v for v in self.variants if v.backend == backend), None)


class CheckpointFolder:
    """Read access to one checkpoint folder: its description, files and digests."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.info = read_info(self.path)
        self._checkpoint_id: str | None = None

    @property
    def weights(self) -> Path:
        return self.path / WEIGHTS_FILE

    def onnx_file(self, backend: str) -> Path:
        return self.path / ONNX_FILES[backend]

    def has_graph(self, backend: str) -> bool:
        """Whether export wrote the backend's graph here (a file, not empty)."""
        graph = self.onnx_file(backend)
        return graph.is_file() and graph.stat().st_size > 0

    def variants(self) -> VariantsReport | None:
        """What export measured, if it did, for these weights; None otherwise (or for a damaged file)."""
        path = self.path / VARIANTS_FILE
        if not path.is_file():
            return None
        try:
            report = VariantsReport.model_validate_json(path.read_text())
        except ValidationError:
            return None
        return report if report.checkpoint_id == self.checkpoint_id() else None

    def write_variants(self, report: VariantsReport) -> Path:
        """Write `variants.json` atomically (a reader sees the old report or the new one)."""
        path = self.path / VARIANTS_FILE
        with staged_file(path) as partial:
            partial.write_text(report.model_dump_json(indent=2) + "\n")
        return path

    def metrics(self) -> dict[str, Any]:
        """The validation figures training recorded (empty when absent)."""
        return _read_json(self.path / METRICS_FILE)

    def training_config(self) -> dict[str, Any]:
        return _read_json(self.path / TRAINING_CONFIG_FILE)

    def checkpoint_id(self) -> str:
        """A short digest of the weights: identifies the exact model a server answers with."""
        if self._checkpoint_id is None:  # 90 MB to hash: once per folder object
            self._checkpoint_id = sha256_file(self.weights)[:16]
        return self._checkpoint_id

    def verify(self, backend: str = "torch") -> None:
        """Check, without loading a model, that the files a reader opens first are whole: `config.json` and the
        tokenizer's JSON files parse, and
        the weights' safetensors header describes exactly the bytes the file holds (or the backend's ONNX graph is
        there). A CheckpointError names the damaged file. This catches a truncated, empty or overwritten file, not
        flipped bits inside the tensors: no digest of the weights is stored to compare with."""
        # the model config, and the tokenizer's JSON files where the folder has them
        for path in [self.path / CONFIG_FILE] + [self.path / name for name in TOKENIZER_JSON_FILES
                                                 if (self.path / name).exists()]:
            try:
                if not isinstance(json.loads(path.read_text()), dict):
                    raise ValueError("expected a JSON object")
            except (OSError, ValueError) as error:
                raise CheckpointError(f"{path}: unreadable ({error}); the checkpoint is damaged, train or copy it "
                                      "again") from None
        if backend != "torch":
            if not self.has_graph(backend):
                raise CheckpointError(f"{self.onnx_file(backend)}: missing or empty; run `main.py --mode export` on "
                                      "the checkpoint")
            return
        from safetensors import safe_open  # reads only the header, and checks it against the file's size

        try:
            with safe_open(self.weights, framework="np") as weights:
                if not list(weights.keys()):
                    raise ValueError("no tensors")
        except Exception as error:  # safetensors raises its own error type, or OSError for a missing file
            raise CheckpointError(f"{self.weights}: not a complete safetensors file ({error}); the checkpoint is "
                                  "damaged, train or copy it again") from None


def read_info(folder: Path) -> ClassifierInfo:
    """The folder's `classifier.json` as a ClassifierInfo; a clear CheckpointError otherwise."""
    path = folder / CLASSIFIER_FILE
    if not path.is_file():
        raise CheckpointError(f"{folder}: not a checkpoint folder of this toolkit (no {CLASSIFIER_FILE})")
    try:
        raw = json.loads(path.read_text())
    except ValueError as error:
        raise CheckpointError(f"{path}: not valid JSON ({error}); the checkpoint is damaged, train or copy it "
                              "again") from None
    if not isinstance(raw, dict):
        raise CheckpointError(f"{path}: expected a JSON object")
    version = raw.get("format_version", 1)
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise CheckpointError(f"{path}: format version {version!r} is newer than this toolkit reads "
                              f"({FORMAT_VERSION}); upgrade the toolkit")
    if version == 1:
        raw = _upgrade_first_format(folder, raw)
    try:
        return ClassifierInfo.model_validate(raw)
    except ValidationError as error:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in error.errors())
        raise CheckpointError(f"{path}: {problems}") from None


def _upgrade_first_format(folder: Path, raw: dict[str, Any]) -> dict[str, Any]:
    """A first-format description in today's shape: the text column came from the training config."""
    text_column = _read_json(folder / TRAINING_CONFIG_FILE).get("text_column")
    return raw | {"format_version": FORMAT_VERSION, "text_column": text_column}


def _read_json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text()) if path.is_file() else {}


def _write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=2) + "\n")


def write_checkpoint(target: str | Path, model: Any, tokenizer: Any, info: ClassifierInfo,
                     training_config: dict[str, Any], metrics: dict[str, Any],
                     write_members: Callable[[Path], None] | None = None) -> Path:
    """Write the whole folder into a temporary sibling, then swap it into place in one rename.

    The weights are stored as float32 whatever the training precision. `write_members` adds the files of
    members other than the transformer. A mean-pooled model gets its forward pass for transformers'
    `trust_remote_code=True`; every folder gets a model card. A crash at any point leaves the previous checkpoint or
    the new one.
    """
    target = Path(target)
    with staged_folder(target, "checkpoint") as staging:
        float_state = {k: v.float() if v.is_floating_point() else v for k, v in model.state_dict().items()}
        model.save_pretrained(staging, state_dict=float_state, safe_serialization=True)
        tokenizer.save_pretrained(staging)
        if write_members is not None:
            write_members(staging)
        if info.pooling == "mean":
            write_remote_code(staging, info.model_type)
        _write_json(staging / CLASSIFIER_FILE, info.model_dump())
        _write_json(staging / TRAINING_CONFIG_FILE, training_config)
        _write_json(staging / METRICS_FILE, metrics)
        from utils.checkpoint.model_card import write_model_card  # it reads the folder through this module

        write_model_card(staging)  # with the validation metrics; main.py rewrites it with the test metrics
    return target


def write_remote_code(folder: Path, model_type: str) -> None:
    """Copy models/modeling_pooled.py into the folder and name its class for the backbone in config.json's
    `auto_map`, so transformers' Auto classes with `trust_remote_code=True` pool as this toolkit does."""
    from models import modeling_pooled  # torch: imported here, as only training (with torch) writes checkpoints

    shutil.copyfile(modeling_pooled.__file__, folder / MODELING_FILE)
    config = json.loads((folder / CONFIG_FILE).read_text())
    name = modeling_pooled.POOLED_CLASSES[model_type].__name__
    config["auto_map"] = {"AutoModelForSequenceClassification": f"{Path(MODELING_FILE).stem}.{name}"}
    _write_json(folder / CONFIG_FILE, config)
