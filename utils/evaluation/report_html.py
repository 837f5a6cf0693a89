"""`eval_report.html`: one self-contained page of an evaluation (every figure embedded as a base64 PNG).

What a person needs first comes first: the summary, the members alone beside the blend, the worst labels, the
mistakes with example texts; then the backend, the curves (a legend of the worst and best few), "none of these",
the confusion matrix (past 20 classes, that of the most confused classes), calibration (one pooled diagram past a
handful of labels), training, the recipe, the int8 / bf16 cost and the data. The tables are in report_tables.py;
every string that reaches the page is HTML-escaped there or here: label names, texts and paths come from data files.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Sequence
from html import escape
from pathlib import Path
from typing import Any

import numpy as np

from utils.evaluation.plots import (
    CALIBRATION_PANELS_MOST,
    CONFUSION_MOST,
    confusion_figure,
    curves_figure,
    none_scores_figure,
    png_bytes,
    pooled_reliability_figure,
    reliability_figure,
    training_figure,
)
from utils.evaluation.report_tables import (
    FEW_LABELS,
    backend_section,
    errors_section,
    folded,
    label_section,
    members_section,
    none_rows,
    nouns,
    recipe_section,
    summary_rows,
    table,
    variants_section,
)

DATA_REPORT_LINES_OPEN = 40  # a longer data report (a line per label) is folded
STYLE = """
body { font: 14px/1.5 system-ui, sans-serif; color: #1f2328; max-width: 1100px; margin: 24px auto; padding: 0 16px; }
h1 { font-size: 22px; } h2 { font-size: 17px; margin-top: 28px; border-bottom: 1px solid #d0d7de; }
table { border-collapse: collapse; margin: 8px 0; } th, td { padding: 3px 14px 3px 0; text-align: left; }
th { border-bottom: 1px solid #8c959f; } td { border-bottom: 1px solid #eaeef2; vertical-align: top; }
td.num { text-align: right; font-variant-numeric: tabular-nums; } .muted { color: #656d76; }
img { max-width: 100%; height: auto; display: block; margin: 8px 0; } .worse { color: #cf222e; }
details { margin: 6px 0 12px; } summary { cursor: pointer; color: #0969da; }
.example { display: block; max-width: 32em; margin-bottom: 4px; color: #424a53; font-size: 13px;
           overflow-wrap: anywhere; }
"""


def image(png: bytes, alt: str) -> str:
    return f'<img src="data:image/png;base64,{base64.b64encode(png).decode("ascii")}" alt="{escape(alt)}">'


def first_sections(report: dict[str, Any], task: str, label_names: list[str]) -> list[str]:
    """What a person reads first: the summary, the members side by side, the worst labels and the mistakes."""
    metrics = report["metrics"]
    one, many = nouns(task)
    parts = ["<h2>Summary</h2>", table(*summary_rows(task, metrics)),
             "<h2>Members alone and the blend</h2>", members_section(task, metrics),
             f"<h2>Worst {many}</h2>" if len(label_names) > FEW_LABELS else f"<h2>Per {one}</h2>",
             label_section(task, metrics, label_names)]
    if report.get("errors"):
        title = "Most confused pairs" if task == "multiclass" else "Labels most often missed or wrongly given"
        parts += [f"<h2>{title}</h2>", errors_section(task, report["errors"], metrics["examples"])]
    return parts + ["<h2>Backend</h2>", backend_section(task, report, label_names)]


def figure_sections(task: str, metrics: dict[str, Any], label_names: list[str], y_true: np.ndarray,
                    scores: np.ndarray, thresholds: np.ndarray | None) -> list[str]:
    """The curves, "none of these", the confusion matrix (multi-class) and calibration."""
    parts = ["<h2>ROC and precision-recall curves</h2>",
             image(png_bytes(curves_figure(y_true, scores, label_names, thresholds)),
                   "ROC and precision-recall curves per label")]
    if "none_of_these" in metrics:
        none = metrics["none_of_these"]
        parts += ["<h2>None of these</h2>", table(*none_rows(none)),
                  image(png_bytes(none_scores_figure(none)), "none scores of in-scope texts and of texts of no class")]
    if task == "multiclass":
        whole = len(label_names) <= CONFUSION_MOST
        parts += ["<h2>Confusion matrix</h2>",
                  "" if whole else f'<p class="muted">The rows and columns of the classes in the most confused '
                                   f"pairs; the whole {len(label_names)} x {len(label_names)} matrix is "
                                   "metrics.confusion_matrix in eval_report.json.</p>",
                  image(png_bytes(confusion_figure(metrics["confusion_matrix"], label_names)),
                        "confusion matrix" if whole else "confusion matrix of the most confused classes")]
    return parts + ["<h2>Calibration</h2>", calibration_section(task, label_names, y_true, scores)]


def calibration_section(task: str, label_names: list[str], y_true: np.ndarray, scores: np.ndarray) -> str:
    """A reliability diagram per label for a handful of labels, else one of every label's scores pooled."""
    note = ('<p class="muted">Texts binned by score (10 equal bins); a calibrated model lies on the diagonal. '
            "ECE: the examples' share-weighted gap between score and frequency")
    if len(label_names) <= CALIBRATION_PANELS_MOST:
        return note + ".</p>" + image(png_bytes(reliability_figure(y_true, scores, label_names)),
                                      "reliability diagrams per label")
    pooled = ("the top class's score against being right (the summary's top-class ECE)" if task == "multiclass"
              else f"all {len(label_names)} labels' scores pooled")
    return (note + f"; one diagram of {pooled}, each {nouns(task)[0]}'s ECE in its table.</p>" +
            image(png_bytes(pooled_reliability_figure(task, y_true, scores)), "reliability diagram, pooled"))


def render_report(report: dict[str, Any], task: str, label_names: list[str], y_true: np.ndarray,
                  scores: np.ndarray, thresholds: np.ndarray | None, run_log: list[dict[str, Any]],
                  folder: Path, recipe: str = "") -> str:
    """The whole page as a string."""
    metrics = report["metrics"]
    numbers = "int8" if report.get("quantized") else report.get("precision", "fp32")
    parts = [f"<h1>Evaluation of {escape(str(report['checkpoint']))}</h1>",
             f'<p class="muted">{escape(task)} &middot; {len(label_names)} {nouns(task)[1]} &middot; '
             f"{metrics['examples']} texts from {escape(str(report['data']))} &middot; {escape(str(numbers))} "
             f"&middot; {escape(str(report.get('backend', 'torch')))}</p>",
             *first_sections(report, task, label_names),
             *figure_sections(task, metrics, label_names, y_true, scores, thresholds)]
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


def read_run_log(folders: Sequence[Path]) -> list[dict[str, Any]]:
    """The evaluations recorded in the first metrics.jsonl found in `folders` (empty when there is none)."""
    for folder in folders:
        path = folder / "metrics.jsonl"
        if path.is_file():
            return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return []


def data_section(report: dict[str, Any]) -> list[str]:
    """The training data report (as printed before training; folded when long) and the test rows of labels never
    learnt."""
    parts = []
    unseen = report.get("unseen_labels")
    if unseen:
        said = ", ".join(f"{escape(name)} {count}" for name, count in unseen["predicted"].items())
        parts += ["<h2>Test rows of labels training never saw</h2>",
                  f"<p>{unseen['rows']} rows ({escape(', '.join(unseen['labels']))}), excluded from the metrics; "
                  f"the model said: {said or 'no label'}.</p>"]
    lines = report.get("data_report") or []
    if lines:
        text = f"<pre>{escape(chr(10).join(lines))}</pre>"
        parts += ["<h2>Data</h2>", text if len(lines) <= DATA_REPORT_LINES_OPEN
                  else folded(f"The data report ({len(lines)} lines: rows per split and label)", text)]
    return parts


def write_html_report(path: Path, report: dict[str, Any], task: str, label_names: list[str], y_true: np.ndarray,
                      scores: np.ndarray, thresholds: np.ndarray | None, log_folders: Sequence[Path]) -> Path:
    """Write the page beside the JSON report; the run's metrics.jsonl is looked for in `log_folders`."""
    html = render_report(report, task, label_names, y_true, scores, thresholds, read_run_log(log_folders),
                         path.parent, recipe_section(log_folders))
    path.write_text(html, encoding="utf-8")
    return path
