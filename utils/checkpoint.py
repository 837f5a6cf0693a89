"""The checkpoint folder, the contract between training and serving, written atomically."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any


from transformers import PreTrainedModel, PreTrainedTokenizerBase

CLASSIFIER_FILE = "classifier.json"
TRAINING_CONFIG_FILE = "training_config.json"
METRICS_FILE = "metrics.json"


def write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n")


def save_checkpoint(target: str | Path, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase,
                    classifier: dict[str, Any], training_config: dict[str, Any],
                    metrics: dict[str, Any]) -> Path:
    """Write everything into a temporary sibling folder, then swap it into place in one rename.

    A crash at any point leaves either the previous checkpoint or the new one, never a mix.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        float_state = {k: v.float() if v.is_floating_point() else v for k, v in model.state_dict().items()}
        model.save_pretrained(staging, state_dict=float_state, safe_serialization=True)
        tokenizer.save_pretrained(staging)
        write_json(staging / CLASSIFIER_FILE, classifier)
        write_json(staging / TRAINING_CONFIG_FILE, training_config)
        write_json(staging / METRICS_FILE, metrics)
        for path in staging.iterdir():
            with path.open("rb") as handle:
                os.fsync(handle.fileno())
        replace_folder(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return target


def replace_folder(new: Path, target: Path) -> None:
    """Put `new` at `target`; an existing `target` is moved aside first and removed only afterwards."""
    old = None
    if target.exists():
        old = target.with_name(f".{target.name}.old-{os.getpid()}")
        os.replace(target, old)
    os.replace(new, target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def read_classifier_info(checkpoint: str | Path) -> dict[str, Any]:
    """Task, label names, thresholds and input settings of a checkpoint folder."""
    path = Path(checkpoint) / CLASSIFIER_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{checkpoint}: not a checkpoint folder of this toolkit (no {CLASSIFIER_FILE})")
    return json.loads(path.read_text())


def read_json_file(checkpoint: str | Path, name: str) -> dict[str, Any]:
    path = Path(checkpoint) / name
    return json.loads(path.read_text()) if path.is_file() else {}


