"""Evaluation of a checkpoint on held-out data: metrics, `eval_report.json`, `eval_report.html` (one page with
every table and figure), PNG plots and a summary table."""

from __future__ import annotations

import json
import time
from collections import Counter
from pathlib import Path
from typing import Any

from inferer import ModelInferer
from utils.config import Config
from utils.data.prepare import read_test_set
from utils.data.readers import LabeledTexts
from utils.data.report import REPORT_FILE as DATA_REPORT_FILE
from utils.data.report import report_lines
from utils.evaluation.metrics import calibration_metrics, compute_metrics
from utils.evaluation.plots import plot_confusion_matrix, plot_curves
from utils.evaluation.report_html import write_html_report

REPORT_FILE = "eval_report.json"


def evaluate(inferer: ModelInferer, data: LabeledTexts, batch_size: int = 128) -> dict[str, Any]:
    """Metrics of the inferer's scores on `data`, with the checkpoint's thresholds."""
    started = time.time()
    scores, truncated = inferer.score_batch(data.texts, batch_size=batch_size)
    metrics = compute_metrics(inferer.task, data.labels, scores, inferer.label_names, inferer.thresholds,
                              inferer.info.at_least_one_label)
    metrics["calibration"] = calibration_metrics(inferer.task, data.labels, scores, inferer.label_names)
    metrics["seconds"] = round(time.time() - started, 2)
    metrics["truncated_texts"] = int(sum(truncated))
    if len(inferer.info.members) > 1:  # each member alone, on the same rows, beside the blend
        members, _ = inferer.member_scores(data.texts, batch_size=batch_size)
        metrics["members"] = {name: compute_metrics(inferer.task, data.labels, member, inferer.label_names)
                              for name, member in members.items()}
    return {"metrics": metrics, "scores": scores}


def unseen_label_rows(inferer: ModelInferer, data: LabeledTexts, batch_size: int) -> dict[str, Any] | None:
    """The test rows set aside for labels the checkpoint never learnt: how many, which labels, and what the model
    predicted for them (they are in no metric)."""
    if not data.unseen_texts:
        return None
    predictions = inferer.predict_batch(data.unseen_texts, batch_size=batch_size)
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


def run(config: Config, checkpoint: str | Path) -> dict[str, Any]:
    """Evaluate `checkpoint` on the test data the config names; write the report and plots beside it."""
    inferer = ModelInferer(checkpoint, quantize=config.quantize, precision=config.precision)
    data = read_test_set(config, inferer.label_names)
    result = evaluate(inferer, data, config.eval_batch_size)
    metrics = result["metrics"]
    out_dir = Path(config.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    suffix = "_int8" if config.quantize else ("" if inferer.precision == "fp32" else f"_{inferer.precision}")
    if inferer.task == "multilabel":
        plots = [plot_curves(data.labels, result["scores"], inferer.label_names, out_dir / f"curves{suffix}.png",
                             inferer.thresholds)]
    else:
        plots = [plot_confusion_matrix(metrics["confusion_matrix"], inferer.label_names,
                                       out_dir / f"confusion_matrix{suffix}.png")]
    report = {"checkpoint": str(checkpoint), "data": data.source, "quantized": config.quantize,
              "precision": inferer.precision, "metrics": metrics, "plots": [str(p) for p in plots]}
    unseen = unseen_label_rows(inferer, data, config.eval_batch_size)
    if unseen:
        report["unseen_labels"] = unseen
    if (out_dir / DATA_REPORT_FILE).is_file():  # written by training into the same folder
        report["data_report"] = report_lines(json.loads((out_dir / DATA_REPORT_FILE).read_text(encoding="utf-8")))
    report_path = out_dir / REPORT_FILE.replace(".json", f"{suffix}.json")
    report_path.write_text(json.dumps(report, indent=2) + "\n")
    page = write_html_report(report_path.with_suffix(".html"), report, inferer.task, inferer.label_names,
                             data.labels, result["scores"], inferer.thresholds,
                             [out_dir, Path(checkpoint).parent])
    numbers = "int8" if config.quantize else inferer.precision
    print(f"\nevaluation on {data.source} ({len(data)} texts, {numbers}):")
    print(summary_table(inferer.task, metrics))
    for name, alone in metrics.get("members", {}).items():
        print(f"{name} alone: " + members_line(inferer.task, alone))
    if unseen:
        print(f"{unseen['rows']} test rows of labels the model never learnt ({', '.join(unseen['labels'])}), not in "
              f"the metrics; it said: {', '.join(f'{k} {v}' for k, v in unseen['predicted'].items())}")
    print(f"report: {report_path} and {page}")
    return report


