"""Model classes, losses, the lexical member and the blend.

The names below are imported on first use, so that `models.lexical` and `models.blend` (numpy only) load in an
environment without torch, such as the ONNX serving image.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from models.classifiers import CLASSIFIERS
    from models.factory import build_classifier, default_backbone_path, load_classifier

WEIGHTS_FILE = "model.safetensors"  # the classifier's weights in a checkpoint folder (utils/checkpoint reads the name)
_HOMES = {"CLASSIFIERS": "models.classifiers", "build_classifier": "models.factory",
          "default_backbone_path": "models.factory", "load_classifier": "models.factory"}
__all__ = ["CLASSIFIERS", "build_classifier", "default_backbone_path", "load_classifier"]


def __getattr__(name: str) -> Any:
    if name not in _HOMES:
        raise AttributeError(f"module 'models' has no attribute {name!r}")
    return getattr(importlib.import_module(_HOMES[name]), name)
