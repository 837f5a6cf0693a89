"""Evaluation of a checkpoint on held-out data: metrics, `eval_report.json`, `eval_report.html` (one page with
every table and figure), PNG plots and a summary table."""

from __future__ import annotations

import dataclasses
import json
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from inferer import ModelInferer
from models.none_of_these import is_none_name
from utils.checkpoint.atomic import output_folder
from utils.config import AUTO_TASK, Config, PredictionArguments
from utils.data.datasets import BUILTIN_DATASETS
from utils.data.prepare import read_test_set
from utils.data.readers import LabeledTexts
from utils.data.report import REPORT_FILE as DATA_REPORT_FILE
from utils.data.report import report_lines
from utils.evaluation.errors import error_summary
from utils.evaluation.metrics import backend_cost, calibration_metrics, compute_metrics
from utils.evaluation.none_metrics import none_metrics
from utils.evaluation.plots import none_scores_figure, plot_confusion_matrix, plot_curves, save_png
from utils.evaluation.report_html import write_html_report
from utils.inference.backends import AUTO

REPORT_FILE = "eval_report.json"


REFERENCE_SEQUENCES = 2000  # float32 PyTorch re-scores at least this many sequences (windows) of the test rows


def evaluate(inferer: ModelInferer, data: LabeledTexts, batch_size: int = 128) -> dict[str, Any]:
    """Metrics of the inferer's scores on `data`, with the checkpoint's thresholds."""
    started = time.time()
    scored = inferer.score_texts(data.texts, batch_size=batch_size)  # each member scores once
    members, truncated, scores = scored.members, scored.truncated, scored.served
    metrics = compute_metrics(inferer.task, data.labels, scores, inferer.label_names, inferer.thresholds,
                              inferer.info.at_least_one_label)
    metrics["calibration"] = calibration_metrics(inferer.task, data.labels, scores, inferer.label_names)
    metrics["seconds"] = round(time.time() - started, 2)
    metrics["truncated_texts"] = int(sum(truncated))
    if len(inferer.info.members) > 1:  # each member alone, on the same rows, beside the blend
        metrics["members"] = {name: compute_metrics(inferer.task, data.labels, member, inferer.label_names)
                              for name, member in members.items()}
    return {"metrics": metrics, "scores": scores, "evidence": scored.evidence}


def none_of_these(inferer: ModelInferer, data: LabeledTexts, result: dict[str, Any],
                  unseen_answers: list[dict[str, Any]]) -> dict[str, Any] | None:
    """How well a checkpoint with a "none of these" rule says it: on the rows of its classes, and on the rows set
    aside with a "none" label it never learnt (such as `oos` for a checkpoint trained without it), whose answers
    are `unseen_answers`."""
    rule = inferer.rules.none_rule
    if rule is None:
        return None
    extra = [answer["none_score"] for answer, names in zip(unseen_answers, data.unseen_labels, strict=True)
             if any(is_none_name(name) for name in names)]
    return none_metrics(rule, data.labels, result["scores"], result["evidence"], np.array(extra, dtype=np.float64))


def unseen_label_rows(data: LabeledTexts, predictions: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The test rows set aside for labels the checkpoint never learnt: how many, which labels, and what the model
    predicted for them (`predictions`; they are in no metric)."""
    if not data.unseen_texts:
        return None
    said = Counter("|".join(p["labels"]) or "(none)" for p in predictions)
    return {"rows": len(data.unseen_texts), "labels": dict(Counter(n for row in data.unseen_labels for n in row)),
            "predicted": dict(said.most_common()), "note": "excluded from the metrics"}


def summary_table(task: str, metrics: dict[str, Any]) -> str:
    """A few readable lines: headline figures, then one row per label."""
    if task == "multiclass":
        lines = [f"accuracy {metrics['accuracy']:.4f}   macro-F1 {metrics['macro_f1']:.4f}   "
                 f"weighted-F1 {metrics['weighted_f1']:.4f}   ({metrics['examples']} texts)",
                 f"{'class':<20}{'precision':>10}{'recall':>10}{'f1':>10}{'support':>10}"]
        for name, row in metrics["per_class"].items():
            if isinstance(row, dict) and name not in ("macro avg", "weighted avg"):
                lines.append(f"{name:<20}{row['precision']:>10.3f}{row['recall']:>10.3f}{row['f1-score']:>10.3f}"
                             f"{int(row['support']):>10}")
        return "\n".join(lines)
    tuned, half = metrics["at_tuned"], metrics["at_0.5"]
    lines = [f"mean ROC AUC {metrics['mean_roc_auc']:.4f}   mean PR AUC {metrics['mean_pr_auc']:.4f}   "
             f"({metrics['examples']} texts)",
             f"macro-F1 {tuned['macro_f1']:.4f} (tuned thresholds) / {half['macro_f1']:.4f} (0.5)   "
             f"micro-F1 {tuned['micro_f1']:.4f} / {half['micro_f1']:.4f}",
             f"subset accuracy {tuned['subset_accuracy']:.4f} / {half['subset_accuracy']:.4f}   "
             f"Jaccard (samples) {tuned['jaccard_samples']:.4f} / {half['jaccard_samples']:.4f}",
             f"{'label':<16}{'ROC AUC':>9}{'PR AUC':>9}{'F1':>8}{'thresh':>8}{'pos':>7}"]
    for name, row in metrics["per_label"].items():
        roc = f"{row['roc_auc']:.4f}" if row["roc_auc"] is not None else "-"
        pr = f"{row['pr_auc']:.4f}" if row["pr_auc"] is not None else "-"
        lines.append(f"{name:<16}{roc:>9}{pr:>9}{row['f1_at_tuned']:>8.3f}{row['threshold']:>8.3f}"
                     f"{row['positives']:>7}")
    return "\n".join(lines)


def members_line(task: str, metrics: dict[str, Any]) -> str:
    """One member's headline figures and per-label ROC AUC (multi-label) or accuracy and macro-F1."""
    if task == "multiclass":
        return f"accuracy {metrics['accuracy']:.4f}   macro-F1 {metrics['macro_f1']:.4f}"
    per_label = "  ".join(f"{name} {row['roc_auc']:.4f}" for name, row in metrics["per_label"].items()
                          if row["roc_auc"] is not None)
    return f"mean ROC AUC {metrics['mean_roc_auc']:.4f}   ({per_label})"


def torch_reference(inferer: ModelInferer, data: LabeledTexts, metrics: dict[str, Any], scores: np.ndarray,
                    batch_size: int) -> dict[str, Any]:
    """Float32 PyTorch beside a backend that is not torch: its figures, and what the backend costs against them
    per label, on the same rows (scored twice): every row, or where long texts make more windows than there are
    rows (and 2,000), a seeded sample of rows whose windows stay within that."""
    windows = inferer.reading.encode(inferer.tokenizer, data.texts).windows_per_text
    most = max(len(data), REFERENCE_SEQUENCES)
    if windows.sum() > most:
        order = np.random.default_rng(0).permutation(len(data))
        rows = np.sort(order[:max(1, int(np.searchsorted(np.cumsum(windows[order]), most, side="right")))])
        data, scores = data.subset(rows), scores[rows]
        metrics = compute_metrics(inferer.task, data.labels, scores, inferer.label_names, inferer.thresholds,
                                  inferer.info.at_least_one_label)
    reference = ModelInferer(inferer.checkpoint_path, backend="torch", precision="fp32",
                             **dataclasses.asdict(inferer.reading))
    result = evaluate(reference, data, batch_size)
    torch_scores = result["scores"]
    return {"rows": len(data), "metrics": result["metrics"],
            "cost": backend_cost(inferer.task, metrics, result["metrics"], inferer.label_names),
            "max_score_difference": float(np.abs(scores - torch_scores).max()) if len(scores) else 0.0}


LAYOUT_FIELDS = ("text_column", "label_columns", "label_column", "label_delimiter", "labels_file")


def with_training_columns(config: Config, inferer: ModelInferer) -> Config:
    """A --test-data file read as training read its own file: with training's columns where no flag names them
    (a built-in dataset's test file, or --data naming training's source, keep that source's layout)."""
    saved = inferer.checkpoint.training_config()
    if not config.test_data or config.data == saved.get("data") or saved.get("data") in BUILTIN_DATASETS:
        return config
    given = any(getattr(config, name) for name in LAYOUT_FIELDS)
    columns = {} if given else {name: saved[name] for name in LAYOUT_FIELDS if saved.get(name)}
    return dataclasses.replace(config, data=config.test_data, **columns)


def report_suffix(settings: PredictionArguments, inferer: ModelInferer) -> str:
    """"" for what --backend auto measures (what the server serves); torch's int8 and bf16, and a backend asked
    for by name, in reports of their own."""
    if settings.quantize:
        return "_int8"
    if inferer.precision != "fp32":
        return f"_{inferer.precision}"
    return "" if settings.backend == AUTO else f"_{settings.backend}"


def run(config: Config, checkpoint: str | Path) -> dict[str, Any]:
    """Evaluate `checkpoint` on the test data the config names with --backend (auto: what the server serves);
    write the report and plots beside it."""
    inferer = ModelInferer(checkpoint, quantize=config.quantize, precision=config.precision, backend=config.backend,
                           **config.reading_overrides())
    config = with_training_columns(config, inferer)
    task = inferer.task if config.task == AUTO_TASK else config.task  # the data is read as it was trained
    data = read_test_set(config, inferer.label_names, task)
    result = evaluate(inferer, data, config.eval_batch_size)
    metrics = result["metrics"]
    unseen_answers = inferer.predict_batch(data.unseen_texts, batch_size=config.eval_batch_size)  # scored once
    none = none_of_these(inferer, data, result, unseen_answers)
    if none is not None:
        metrics["none_of_these"] = none
    out_dir = output_folder(Path(config.output_dir))
    suffix = report_suffix(config, inferer)
    if inferer.task == "multilabel":
        plots = [plot_curves(data.labels, result["scores"], inferer.label_names, out_dir / f"curves{suffix}.png",
                             inferer.thresholds)]
    else:
        plots = [plot_confusion_matrix(metrics["confusion_matrix"], inferer.label_names,
                                       out_dir / f"confusion_matrix{suffix}.png")]
    if none is not None:
        plots.append(save_png(none_scores_figure(none), out_dir / f"none_scores{suffix}.png"))
    report = {"checkpoint": str(checkpoint), "data": data.source, "backend": inferer.backend,
              "backend_choice": inferer.backend_choice.describe(), "quantized": config.quantize,
              "precision": inferer.precision, "metrics": metrics, "plots": [str(p) for p in plots],
              "errors": error_summary(inferer.task, data.labels, result["scores"], inferer.label_names, data.texts,
                                      inferer.thresholds, inferer.info.at_least_one_label)}
    if inferer.backend != "torch":
        report["torch"] = torch_reference(inferer, data, metrics, result["scores"], config.eval_batch_size)
    unseen = unseen_label_rows(data, unseen_answers)
    if unseen:
        report["unseen_labels"] = unseen
    if (out_dir / DATA_REPORT_FILE).is_file():  # written by training into the same folder
        report["data_report"] = report_lines(json.loads((out_dir / DATA_REPORT_FILE).read_text(encoding="utf-8")))
    report_path = out_dir / REPORT_FILE.replace(".json", f"{suffix}.json")
    report_path.write_text(json.dumps(report, indent=2) + "\n")
    page = write_html_report(report_path.with_suffix(".html"), report, inferer.task, inferer.label_names,
                             data.labels, result["scores"], inferer.thresholds,
                             [out_dir, Path(checkpoint).parent])
    print_summary(inferer, report, len(data))
    print(f"report: {report_path} and {page}")
    return report


def print_summary(inferer: ModelInferer, report: dict[str, Any], rows: int) -> None:
    """The figures, the backend measured and why, torch's figures and the per-label cost beside another backend."""
    task, metrics = inferer.task, report["metrics"]
    numbers = "int8" if report["quantized"] else report["precision"]
    print(f"\nevaluation on {report['data']} ({rows} texts, {numbers}, {inferer.backend_choice.line()}):")
    print(summary_table(task, metrics))
    if "none_of_these" in metrics:
        print(none_line(metrics["none_of_these"]))
    for name, alone in metrics.get("members", {}).items():
        print(f"{name} alone: " + members_line(task, alone))
    if "torch" in report:
        print(f"float32 PyTorch on the same rows: {members_line(task, report['torch']['metrics'])}")
        print(cost_table(task, inferer.backend, report["torch"]["cost"]))
    unseen = report.get("unseen_labels")
    if unseen:
        print(f"{unseen['rows']} test rows of labels the model never learnt ({', '.join(unseen['labels'])}), not in "
              f"the metrics; it said: {', '.join(f'{k} {v}' for k, v in unseen['predicted'].items())}")


def none_line(none: dict[str, Any]) -> str:
    """The "none of these" figures in a line; '-' where undefined (no row of one side)."""
    def shown(key: str) -> str:
        return "-" if none[key] is None else f"{none[key]:.4f}"

    return (f"'none of these' at a none score ({none['score']}) >= {none['threshold']:.4g}: in-scope accuracy "
            f"{shown('in_scope_accuracy')} ({shown('in_scope_rejected')} of {none['in_scope_rows']} in-scope texts "
            f"answered 'none'); on {none['none_rows']} texts of no class: recall {shown('none_recall')}, precision "
            f"{shown('none_precision')}, AUROC {shown('auroc')}, FPR at 95% TPR {shown('fpr_at_95_tpr')}")


def cost_table(task: str, backend: str, cost: dict[str, Any]) -> str:
    """What `backend` costs against float32 PyTorch (backend - torch): headline, then one row per label."""
    def signed(value: float | None) -> str:
        return "-" if value is None else f"{value:+.4f}"

    keys = ("accuracy", "macro_f1") if task == "multiclass" else ("mean_roc_auc", "macro_f1")
    lines = [f"cost of {backend} (minus torch): " + "   ".join(f"{k} {signed(cost[k])}" for k in keys)]
    columns = ("f1",) if task == "multiclass" else ("roc_auc", "f1")
    lines.append(f"{'label':<16}" + "".join(f"{c:>10}" for c in columns))
    for name, row in cost["per_label"].items():
        lines.append(f"{name:<16}" + "".join(f"{signed(row[c]):>10}" for c in columns))
    return "\n".join(lines)
