"""The checkpoint folder, the contract between training and serving, written atomically."""

from __future__ import annotations

import ctypes
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


def _exchange(first: Path, second: Path) -> bool:
    """Swap two folders in one atomic step (Linux renameat2 RENAME_EXCHANGE); False where unsupported."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    return renameat2(at_fdcwd, bytes(first), at_fdcwd, bytes(second), rename_exchange) == 0


def replace_folder(new: Path, target: Path) -> None:
    """Put `new` at `target` so that `target` is at every moment either the old folder or the new one."""
    if not target.exists():
        os.replace(new, target)
        return
    if _exchange(new, target):
        shutil.rmtree(new, ignore_errors=True)  # `new` now holds the previous checkpoint
        return
    old = target.with_name(f".{target.name}.old-{os.getpid()}")
    os.replace(target, old)
    os.replace(new, target)
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


