"""The original project's call, `ModelInferer(config=config, checkpoint_path=path, quantize=True)`: its config must
agree with the checkpoint on task and labels; its input settings, which the checkpoint decides, only warn."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any


def check_original_config(config: Any, checkpoint: Path, task: str, labels: list[str],
                          inputs: dict[str, tuple[Any, Any]]) -> None:
    """Raise for a task or labels the checkpoint does not have; warn for each input setting in `inputs` (name ->
    (trained, used)) that the config gives otherwise. The warning points at the caller of ModelInferer."""
    given = getattr(config, "task", None)
    if given not in (None, "auto", task):  # auto (utils.config.AUTO_TASK): the checkpoint's own
        raise ValueError(f"config.task is {given!r} but the checkpoint {checkpoint} is {task!r}; "
                         "drop or correct the config")
    for name, (trained, used) in inputs.items():
        value = getattr(config, name, None)
        if value is not None and value != used:
            warnings.warn(f"config.{name} is {value!r} but the checkpoint {checkpoint} was trained with "
                          f"{trained!r}; using {used!r}", UserWarning, stacklevel=3)
    given_labels = getattr(config, "label_columns", None) or getattr(config, "labels", None)
    if given_labels and list(given_labels) != labels:
        raise ValueError(f"config labels {list(given_labels)} differ from the checkpoint's {labels}")
