"""Model classes, losses and their construction."""

from models.classifiers import CLASSIFIERS
from models.factory import build_classifier, default_backbone_path, load_classifier

__all__ = ["CLASSIFIERS", "build_classifier", "default_backbone_path", "load_classifier"]
