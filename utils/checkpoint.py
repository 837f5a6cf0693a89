"""The checkpoint folder, the one contract between training and everything that reads a model.

Training writes it with `write_checkpoint`; evaluation, inference, export and serving read it through
`CheckpointFolder`. Every file name is defined here and nowhere else. `classifier.json` is described by the
versioned `ClassifierInfo`; a folder from a newer format is refused with a clear message, and folders of the
first format (written before the version field existed) still load.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, ValidationError

from utils.atomic import sha256_file, staged_folder

FORMAT_VERSION = 2  # 1: the first format, without `format_version`, `text_column` and `members`
WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"  # the transformers model config
CLASSIFIER_FILE = "classifier.json"
TRAINING_CONFIG_FILE = "training_config.json"
METRICS_FILE = "metrics.json"
ONNX_FILES = {"onnx": "model.onnx", "onnx-int8": "model.int8.onnx"}  # by serving backend
LEXICAL_WEIGHTS_FILE = "lexical.safetensors"  # the TF-IDF member's arrays
LEXICAL_CONFIG_FILE = "lexical.json"  # the TF-IDF member's vocabularies and settings
TRANSFORMER = "transformer"  # the name of the fine-tuned encoder among the checkpoint's members
LEXICAL = "tfidf"  # the name of the TF-IDF + logistic regression member


class CheckpointError(ValueError):
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
    pooling: Literal["mean", "cls"] = "cls"
    model_type: str
    backbone: str
    precision: str = "fp32"  # what training ran in; the weights are always stored as float32
    text_column: str | None = None  # the column training read the texts from
    members: list[str] = [TRANSFORMER]  # the models whose scores the checkpoint blends
    # The transformer's share in the blend: one per label (multi-label) or one for every class; the lexical
    # member has the rest. Chosen on the validation split (models/blend.py).
    blend_weights: list[float] | None = None
    blend_method: Literal["logit", "probability"] = "logit"


class CheckpointFolder:
    """Read access to one checkpoint folder: its description, files and digests."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.info = read_info(self.path)

    @property
    def weights(self) -> Path:
        return self.path / WEIGHTS_FILE

    def onnx_file(self, backend: str) -> Path:
        return self.path / ONNX_FILES[backend]

    def metrics(self) -> dict[str, Any]:
        """The validation figures training recorded (empty when absent)."""
        return _read_json(self.path / METRICS_FILE)

    def training_config(self) -> dict[str, Any]:
        return _read_json(self.path / TRAINING_CONFIG_FILE)

    def checkpoint_id(self) -> str:
        """A short digest of the weights: identifies the exact model a server answers with."""
        return sha256_file(self.weights)[:16]

    def verify(self, backend: str = "torch") -> None:
        """Check, without loading a model, that the files a reader opens first are whole: `config.json` parses and
        the weights' safetensors header describes exactly the bytes the file holds (or the backend's ONNX graph is
        there). A CheckpointError names the damaged file. This catches a truncated, empty or overwritten file, not
        flipped bits inside the tensors: no digest of the weights is stored to compare with."""
        config = self.path / CONFIG_FILE
        try:
            if not isinstance(json.loads(config.read_text()), dict):
                raise ValueError("expected a JSON object")
        except (OSError, ValueError) as error:
            raise CheckpointError(f"{config}: unreadable ({error}); the checkpoint is damaged, train or copy it "
                                  "again") from None
        if backend != "torch":
            graph = self.onnx_file(backend)
            if not graph.is_file() or graph.stat().st_size == 0:
                raise CheckpointError(f"{graph}: missing or empty; run `main.py --mode export` on the checkpoint")
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
    members other than the transformer. A crash at any point leaves the previous checkpoint or the new one.
    """
    target = Path(target)
    with staged_folder(target, "checkpoint") as staging:
        float_state = {k: v.float() if v.is_floating_point() else v for k, v in model.state_dict().items()}
        model.save_pretrained(staging, state_dict=float_state, safe_serialization=True)
        tokenizer.save_pretrained(staging)
        if write_members is not None:
            write_members(staging)
        _write_json(staging / CLASSIFIER_FILE, info.model_dump())
        _write_json(staging / TRAINING_CONFIG_FILE, training_config)
        _write_json(staging / METRICS_FILE, metrics)
    return target
