"""`eval_report.html`: one self-contained page of an evaluation (every figure embedded as a base64 PNG).

Summary and per-label tables, ROC and precision-recall curves (AUC in the legend, tuned thresholds marked), the
validation metric over training from the run's metrics.jsonl, the confusion matrix (multi-class), reliability
diagrams with each label's expected calibration error, the backend measured (beside one that is not torch, float32
PyTorch on the same rows and the cost per label), and the cost of int8 / bf16 when their reports exist.
Every string that reaches the page is HTML-escaped: label names and paths come from data files.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Sequence
from html import escape
from pathlib import Path
from typing import Any

import numpy as np

from utils.evaluation.metrics import difference
from utils.evaluation.plots import (
    confusion_figure,
    curves_figure,
    none_scores_figure,
    png_bytes,
    reliability_figure,
    training_figure,
)

VARIANT_REPORTS = {"fp32": "eval_report.json", "bf16": "eval_report_bf16.json", "int8": "eval_report_int8.json"}
STYLE = """
body { font: 14px/1.5 system-ui, sans-serif; color: #1f2328; max-width: 1100px; margin: 24px auto; padding: 0 16px; }
h1 { font-size: 22px; } h2 { font-size: 17px; margin-top: 28px; border-bottom: 1px solid #d0d7de; }
table { border-collapse: collapse; margin: 8px 0; } th, td { padding: 3px 14px 3px 0; text-align: left; }
th { border-bottom: 1px solid #8c959f; } td { border-bottom: 1px solid #eaeef2; }
td.num { text-align: right; font-variant-numeric: tabular-nums; } .muted { color: #656d76; }
img { max-width: 100%; height: auto; display: block; margin: 8px 0; } .worse { color: #cf222e; }
"""


def number(value: Any, digits: int = 4) -> str:
    if value is None:
        return "&ndash;"
    if isinstance(value, bool) or not isinstance(value, int | float):
        return escape(str(value))
    return str(value) if isinstance(value, int) else f"{value:.{digits}f}"


def table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """An HTML table; strings are escaped, numbers formatted and right-aligned."""
    head = "".join(f"<th>{escape(str(h))}</th>" for h in header)
    body = "".join("<tr>" + "".join(
        f'<td class="num">{number(cell)}</td>' if isinstance(cell, int | float) and not isinstance(cell, bool)
        else f"<td>{escape(str(cell)) if cell is not None else '&ndash;'}</td>" for cell in row) + "</tr>"
        for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def image(png: bytes, alt: str) -> str:
    return f'<img src="data:image/png;base64,{base64.b64encode(png).decode("ascii")}" alt="{escape(alt)}">'


def summary_rows(task: str, metrics: dict[str, Any]) -> tuple[list[str], list[list[Any]]]:
    if task == "multiclass":
        rows = [["accuracy", metrics["accuracy"]], ["macro-F1", metrics["macro_f1"]],
                ["weighted-F1", metrics["weighted_f1"]],
                ["expected calibration error of the top class", metrics.get("calibration", {}).get("top_class")],
                ["texts", metrics["examples"]], ["texts cut to max length", metrics.get("truncated_texts")]]
        return ["metric", "value"], rows
    tuned, half = metrics["at_tuned"], metrics["at_0.5"]
    rows = [["mean ROC AUC", metrics["mean_roc_auc"], None], ["mean PR AUC", metrics["mean_pr_auc"], None],
            ["label ranking average precision", metrics["label_ranking_average_precision"], None]]
    names = {"macro_f1": "macro-F1", "micro_f1": "micro-F1", "macro_precision": "macro precision",
             "macro_recall": "macro recall", "micro_precision": "micro precision", "micro_recall": "micro recall",
             "hamming_loss": "Hamming loss", "subset_accuracy": "subset accuracy (exact match)",
             "jaccard_samples": "Jaccard index (samples-averaged)"}
    rows += [[label, tuned.get(key), half.get(key)] for key, label in names.items() if key in tuned]
    rows += [["texts", metrics["examples"], None], ["texts cut to max length", metrics.get("truncated_texts"), None]]
    return ["metric", "at the tuned thresholds", "at 0.5"], rows


def label_rows(task: str, metrics: dict[str, Any], label_names: list[str]) -> tuple[list[str], list[list[Any]]]:
    ece = metrics.get("calibration", {}).get("per_label", {})
    if task == "multiclass":
        report = metrics["per_class"]
        return (["class", "support", "precision", "recall", "F1", "ECE (one vs rest)"],
                [[name, int(report[name]["support"]), report[name]["precision"], report[name]["recall"],
                  report[name]["f1-score"], ece.get(name)] for name in label_names])
    per_label = metrics["per_label"]
    return (["label", "positives", "ROC AUC", "PR AUC", "threshold", "F1 (tuned)", "F1 (0.5)", "ECE"],
            [[name, row["positives"], row["roc_auc"], row["pr_auc"], row["threshold"], row["f1_at_tuned"],
              row["f1_at_0.5"], ece.get(name)] for name, row in per_label.items()])


def headline(task: str, metrics: dict[str, Any]) -> dict[str, float | None]:
    if task == "multiclass":
        return {"accuracy": metrics.get("accuracy"), "macro-F1": metrics.get("macro_f1")}
    return {"mean ROC AUC": metrics.get("mean_roc_auc"),
            "macro-F1 (tuned)": metrics.get("at_tuned", {}).get("macro_f1")}


def variants_section(task: str, folder: Path) -> str:
    """The int8 / bf16 reports beside this one against float32: their headline figures and the difference."""
    found = {name: json.loads((folder / file).read_text()) for name, file in VARIANT_REPORTS.items()
             if (folder / file).is_file()}
    if len(found) < 2 or "fp32" not in found:
        return ('<p class="muted">No int8 or bf16 evaluation beside this report yet: run <code>python main.py '
                "--mode eval --checkpoint DIR --quantize</code> (or <code>--precision bf16</code>) and the next "
                "report compares them.</p>")
    reference = headline(task, torch_metrics(found["fp32"]))
    header = ["numbers", *reference, *(f"{name} vs fp32" for name in reference), "seconds"]
    rows = []
    for name, report in found.items():
        figures = headline(task, torch_metrics(report))
        deltas = [difference(figures[k], reference[k]) for k in reference]
        rows.append([name, *figures.values(), *(d if name != "fp32" else None for d in deltas),
                     torch_metrics(report).get("seconds")])
    return table(header, rows)


def torch_metrics(report: dict[str, Any]) -> dict[str, Any]:
    """PyTorch's figures of a report: its own, or those measured beside another backend on the same rows."""
    return report["torch"]["metrics"] if "torch" in report else report["metrics"]


def backend_section(task: str, report: dict[str, Any], label_names: list[str]) -> str:
    """The backend measured and why (as the server chooses), and beside a backend that is not torch, float32
    PyTorch's figures on the same rows and the cost per label."""
    choice = report.get("backend_choice") or {}
    parts = [f"<p>Measured with <b>{escape(str(report.get('backend', 'torch')))}</b> (asked for "
             f"{escape(str(choice.get('requested', 'torch')))}: {escape(str(choice.get('reason', '')))}), the "
             "backend the server's BACKEND setting of the same value runs.</p>"]
    if "torch" not in report:
        return "".join(parts)
    served, reference, cost = report["metrics"], report["torch"]["metrics"], report["torch"]["cost"]
    backend = str(report["backend"])
    parts.append(f'<p class="muted">float32 PyTorch on the same rows; cost = {escape(backend)} minus torch. Largest '
                 f"score difference {report['torch']['max_score_difference']:.2e}.</p>")
    mine, theirs = headline(task, served), headline(task, reference)
    parts.append(table(["metric", backend, "torch", "cost"],
                       [[k, mine[k], theirs[k], difference(mine[k], theirs[k])] for k in mine]))
    if task == "multiclass":
        rows = [[name, served["per_class"][name]["f1-score"], reference["per_class"][name]["f1-score"],
                 cost["per_label"][name]["f1"]] for name in label_names]
        return "".join(parts) + table(["class", f"F1 {backend}", "F1 torch", "F1 cost"], rows)
    rows = [[name, served["per_label"][name]["roc_auc"], reference["per_label"][name]["roc_auc"],
             cost["per_label"][name]["roc_auc"], served["per_label"][name]["f1_at_tuned"],
             reference["per_label"][name]["f1_at_tuned"], cost["per_label"][name]["f1"]] for name in label_names]
    return "".join(parts) + table(["label", f"ROC AUC {backend}", "ROC AUC torch", "ROC AUC cost",
                                   f"F1 {backend}", "F1 torch", "F1 cost"], rows)


def members_section(task: str, metrics: dict[str, Any]) -> str:
    """Each member alone beside the blend, on the same rows: whether the model beats the simplest thing."""
    if not metrics.get("members"):
        return ('<p class="muted">One member: the TF-IDF member was left out in training, because the transformer '
                "alone scored best on the validation rows (or --blend none).</p>")
    figures = {**{f"{name} alone": m for name, m in metrics["members"].items()}, "served (blend)": metrics}
    rows = [[name, *headline(task, m).values()] for name, m in figures.items()]
    return table(["model", *headline(task, metrics)], rows)


def recipe_section(folders: Sequence[Path]) -> str:
    """The training recipe's choices and reasons, from the first recipe.json found in `folders`."""
    for folder in folders:
        path = folder / "recipe.json"
        if path.is_file():
            recipe = json.loads(path.read_text())
            note = (f'<p class="muted">Time budget {recipe["budget_seconds"] / 60:.1f} min; planned seconds: '
                    + ", ".join(f"{k} {v:g}" for k, v in recipe["planned_seconds"].items()) + "</p>")
            rows = [[name, value, recipe["reasons"].get(name, "")] for name, value in recipe["values"].items()]
            return note + table(["setting", "value", "why"], rows)
    return '<p class="muted">No recipe.json from the training run beside this report.</p>'


def read_run_log(folders: Sequence[Path]) -> list[dict[str, Any]]:
    """The evaluations recorded in the first metrics.jsonl found in `folders` (empty when there is none)."""
    for folder in folders:
        path = folder / "metrics.jsonl"
        if path.is_file():
            return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return []


def none_rows(none: dict[str, Any]) -> tuple[list[str], list[list[Any]]]:
    """The "none of these" figures as a table: what each rate means beside its value."""
    return ["figure", "value", "of"], [
        [f"threshold (a {escape(none['score'])} none score at or over it: 'none of these')",
         f"{none['threshold']:.4g}", ""],
        ["in-scope accuracy ('none' counts as wrong)", number(none["in_scope_accuracy"]), none["in_scope_rows"]],
        ["in-scope texts answered 'none'", number(none["in_scope_rejected"]), none["in_scope_rows"]],
        ["recall of 'none' on texts of no class", number(none["none_recall"]), none["none_rows"]],
        ["precision of 'none'", number(none["none_precision"]), ""],
        ["AUROC of the none score", number(none["auroc"]), ""],
        ["in-scope texts rejected at 95% recall (FPR at 95% TPR)", number(none["fpr_at_95_tpr"]), ""]]


def render_report(report: dict[str, Any], task: str, label_names: list[str], y_true: np.ndarray,
                  scores: np.ndarray, thresholds: np.ndarray | None, run_log: list[dict[str, Any]],
                  folder: Path, recipe: str = "") -> str:
    """The whole page as a string."""
    metrics = report["metrics"]
    numbers = "int8" if report.get("quantized") else report.get("precision", "fp32")
    parts = [f"<h1>Evaluation of {escape(str(report['checkpoint']))}</h1>",
             f'<p class="muted">{escape(task)} &middot; {metrics["examples"]} texts from '
             f"{escape(str(report['data']))} &middot; {escape(str(numbers))} &middot; "
             f"{escape(str(report.get('backend', 'torch')))}</p>",
             "<h2>Summary</h2>", table(*summary_rows(task, metrics)),
             "<h2>Backend</h2>", backend_section(task, report, label_names),
             f"<h2>Per {'class' if task == 'multiclass' else 'label'}</h2>",
             table(*label_rows(task, metrics, label_names)),
             "<h2>Members alone and the blend</h2>", members_section(task, metrics),
             "<h2>ROC and precision-recall curves</h2>",
             image(png_bytes(curves_figure(y_true, scores, label_names, thresholds)),
                   "ROC and precision-recall curves per label")]
    if "none_of_these" in metrics:
        none = metrics["none_of_these"]
        parts += ["<h2>None of these</h2>", table(*none_rows(none)),
                  image(png_bytes(none_scores_figure(none)), "none scores of in-scope texts and of texts of no class")]
    if task == "multiclass":
        parts += ["<h2>Confusion matrix</h2>",
                  image(png_bytes(confusion_figure(metrics["confusion_matrix"], label_names)), "confusion matrix")]
    parts += ["<h2>Calibration</h2>",
              '<p class="muted">Texts binned by score (10 equal bins); a calibrated label lies on the diagonal. '
              "ECE: the examples' share-weighted gap between score and frequency.</p>",
              image(png_bytes(reliability_figure(y_true, scores, label_names)), "reliability diagrams per label")]
    training = training_figure(run_log)
    parts.append("<h2>Training</h2>")
    parts.append(image(png_bytes(training), "validation metric over training steps") if training is not None
                 else '<p class="muted">No metrics.jsonl from the training run beside this report.</p>')
    parts += ["<h2>Recipe</h2>", recipe]
    parts += ["<h2>Cost of int8 and bf16</h2>", variants_section(task, folder)]
    parts += data_section(report)
    title = f"Evaluation: {report['checkpoint']}"
    return (f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{escape(title)}</title>'
            f"<style>{STYLE}</style></head><body>{''.join(parts)}</body></html>\n")


def data_section(report: dict[str, Any]) -> list[str]:
    """The training data report (as printed before training) and the test rows of labels never learnt."""
    parts = []
    unseen = report.get("unseen_labels")
    if unseen:
        said = ", ".join(f"{escape(name)} {count}" for name, count in unseen["predicted"].items())
        parts += ["<h2>Test rows of labels training never saw</h2>",
                  f"<p>{unseen['rows']} rows ({escape(', '.join(unseen['labels']))}), excluded from the metrics; "
                  f"the model said: {said or 'no label'}.</p>"]
    if report.get("data_report"):
        parts += ["<h2>Data</h2>", f"<pre>{escape(chr(10).join(report['data_report']))}</pre>"]
    return parts


def write_html_report(path: Path, report: dict[str, Any], task: str, label_names: list[str], y_true: np.ndarray,
                      scores: np.ndarray, thresholds: np.ndarray | None, log_folders: Sequence[Path]) -> Path:
    """Write the page beside the JSON report; the run's metrics.jsonl is looked for in `log_folders`."""
    html = render_report(report, task, label_names, y_true, scores, thresholds, read_run_log(log_folders),
                         path.parent, recipe_section(log_folders))
    path.write_text(html, encoding="utf-8")
    return path
