"""The tables of `eval_report.html`: summary, members, per label, mistakes with example texts, backend cost, "none of
these", int8 / bf16 cost and the recipe. A table of a few labels is listed whole in label order; past FEW_LABELS it
comes worst first, its worst rows open and every row folded, so that a 150-intent report stays a page.
Every string that reaches the page is HTML-escaped (label names, texts and paths come from data files) except the
`Html` this module builds itself from escaped parts.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from html import escape
from pathlib import Path
from typing import Any

from utils.evaluation.metrics import difference

FEW_LABELS = 12  # a table of up to this many labels is listed whole, in the checkpoint's label order
WORST_ROWS = 10  # past it: this many rows, worst first, open; every row in a folded <details>
VARIANT_REPORTS = {"fp32": "eval_report.json", "bf16": "eval_report_bf16.json", "int8": "eval_report_int8.json"}


class Html(str):
    """Markup built here from escaped parts: `table` puts it in a cell as it is."""


def number(value: Any, digits: int = 4) -> str:
    if value is None:
        return "&ndash;"
    if isinstance(value, bool) or not isinstance(value, int | float):
        return escape(str(value))
    return str(value) if isinstance(value, int) else f"{value:.{digits}f}"


def cell(value: Any) -> str:
    """One <td>: numbers formatted and right-aligned, Html as it is, anything else escaped."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return f'<td class="num">{number(value)}</td>'
    if isinstance(value, Html):
        return f"<td>{value}</td>"
    return f"<td>{escape(str(value)) if value is not None else '&ndash;'}</td>"


def table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """An HTML table; strings are escaped, numbers formatted and right-aligned."""
    head = "".join(f"<th>{escape(str(h))}</th>" for h in header)
    body = "".join("<tr>" + "".join(cell(value) for value in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def folded(summary: str, body: str) -> str:
    """`body` folded under a one-line summary the reader clicks to open."""
    return f"<details><summary>{escape(summary)}</summary>{body}</details>"


def bounded_table(header: Sequence[str], rows: Sequence[Sequence[Any]], every: str) -> str:
    """A table whole up to FEW_LABELS rows; past it the first WORST_ROWS rows open and all of them folded under
    `every` (the caller puts the worst rows first)."""
    if len(rows) <= FEW_LABELS:
        return table(header, rows)
    return table(header, rows[:WORST_ROWS]) + folded(f"{every} ({len(rows)} rows)", table(header, rows))


def nouns(task: str) -> tuple[str, str]:
    return ("class", "classes") if task == "multiclass" else ("label", "labels")


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


def headline(task: str, metrics: dict[str, Any]) -> dict[str, float | None]:
    if task == "multiclass":
        return {"accuracy": metrics.get("accuracy"), "macro-F1": metrics.get("macro_f1")}
    return {"mean ROC AUC": metrics.get("mean_roc_auc"),
            "macro-F1 (tuned)": metrics.get("at_tuned", {}).get("macro_f1")}


def members_section(task: str, metrics: dict[str, Any]) -> str:
    """Each member alone beside the blend, on the same rows: whether the model beats the simplest thing."""
    if not metrics.get("members"):
        return ('<p class="muted">One member: the TF-IDF member was left out in training, because the transformer '
                "alone scored best on the validation rows (or --blend none).</p>")
    figures = {**{f"{name} alone": m for name, m in metrics["members"].items()}, "served (blend)": metrics}
    rows = [[name, *headline(task, m).values()] for name, m in figures.items()]
    return table(["model", *headline(task, metrics)], rows)


def worst_first(task: str, metrics: dict[str, Any], label_names: list[str]) -> list[str]:
    """The labels by F1 on the test rows (tuned thresholds for multi-label), lowest first; those without a test
    row (F1 says nothing of them) last."""
    if task == "multiclass":
        def key(name: str) -> tuple[bool, float, str]:
            row = metrics["per_class"][name]
            return row["support"] == 0, row["f1-score"], name
    else:
        def key(name: str) -> tuple[bool, float, str]:
            row = metrics["per_label"][name]
            return row["positives"] == 0, row["f1_at_tuned"], name
    return sorted(label_names, key=key)


def label_rows(task: str, metrics: dict[str, Any], label_names: list[str]) -> tuple[list[str], list[list[Any]]]:
    """A row per label of `label_names`, in that order; beside a blend, each member's F1 (multi-class) or ROC AUC
    (multi-label, threshold-free: the members were not tuned) alone."""
    ece = metrics.get("calibration", {}).get("per_label", {})
    members = metrics.get("members", {})
    if task == "multiclass":
        report = metrics["per_class"]
        return (["class", "support", "precision", "recall", "F1", *(f"F1 {m} alone" for m in members),
                 "ECE (one vs rest)"],
                [[name, int(report[name]["support"]), report[name]["precision"], report[name]["recall"],
                  report[name]["f1-score"], *(m["per_class"][name]["f1-score"] for m in members.values()),
                  ece.get(name)] for name in label_names])
    per_label = metrics["per_label"]
    return (["label", "positives", "ROC AUC", *(f"ROC AUC {m} alone" for m in members), "PR AUC", "threshold",
             "F1 (tuned)", "F1 (0.5)", "ECE"],
            [[name, per_label[name]["positives"], per_label[name]["roc_auc"],
              *(m["per_label"][name]["roc_auc"] for m in members.values()), per_label[name]["pr_auc"],
              per_label[name]["threshold"], per_label[name]["f1_at_tuned"], per_label[name]["f1_at_0.5"],
              ece.get(name)] for name in label_names])


def label_section(task: str, metrics: dict[str, Any], label_names: list[str]) -> str:
    """The per-label table: whole in label order for a few labels, else the worst open and every one folded."""
    one, many = nouns(task)
    if len(label_names) <= FEW_LABELS:
        return table(*label_rows(task, metrics, label_names))
    header, rows = label_rows(task, metrics, worst_first(task, metrics, label_names))
    return (f'<p class="muted">The {WORST_ROWS} {many} of lowest F1 on the test rows; every {one} below, worst '
            f"first ({many} without a test row last).</p>" + bounded_table(header, rows, f"All {many}, worst first"))


def texts_cell(texts: Sequence[str]) -> Html:
    """Example texts one per line, each quoted and escaped."""
    return Html("".join(f'<span class="example">&ldquo;{escape(text)}&rdquo;</span>' for text in texts))


def errors_section(task: str, errors: dict[str, Any], examples: int) -> str:
    """The most confused class pairs (multi-class) or the labels most often missed or wrongly given, with texts."""
    if task == "multiclass":
        pairs = errors["confused_pairs"]
        if not pairs:
            return f'<p class="muted">None of the {examples} test texts was given another class.</p>'
        intro = (f"{errors['wrong_rows']} of {examples} test texts were given another class, in {errors['pairs']} "
                 f"(true, predicted) pairs; the {len(pairs)} most frequent, with the texts the model was surest of.")
        rows = [[p["true"], p["predicted"], p["count"], f"{p['share']:.0%}", texts_cell(p["examples"])]
                for p in pairs]
        return (f'<p class="muted">{escape(intro)}</p>' +
                table(["true class", "predicted as", "texts", "of the class's texts", "examples"], rows))
    shown = errors["label_errors"]
    more = f" (the {len(shown)} of {errors['labels']} with most mistakes)" if len(shown) < errors["labels"] else ""
    intro = (f"At the served thresholds, on {examples} test texts{more}; the examples are the texts scored "
             "furthest from right.")
    rows = [[row["label"], row["positives"], row["missed"], row["wrongly_given"], texts_cell(row["missed_examples"]),
             texts_cell(row["wrongly_given_examples"])] for row in shown]
    return (f'<p class="muted">{escape(intro)}</p>' +
            table(["label", "positives", "missed", "wrongly given", "missed, e.g.", "wrongly given, e.g."], rows))


def cost_rows(task: str, served: dict[str, Any], reference: dict[str, Any], cost: dict[str, Any],
              label_names: list[str], backend: str) -> tuple[list[str], list[list[Any]]]:
    """Per label, the backend's figure beside float32 PyTorch's and the cost; past FEW_LABELS, most lost first."""
    if len(label_names) > FEW_LABELS:
        label_names = sorted(label_names, key=lambda n: (cost["per_label"][n]["f1"] or 0.0, n))
    if task == "multiclass":
        return (["class", f"F1 {backend}", "F1 torch", "F1 cost"],
                [[name, served["per_class"][name]["f1-score"], reference["per_class"][name]["f1-score"],
                  cost["per_label"][name]["f1"]] for name in label_names])
    mine, theirs = served["per_label"], reference["per_label"]
    return (["label", f"ROC AUC {backend}", "ROC AUC torch", "ROC AUC cost", f"F1 {backend}", "F1 torch",
             "F1 cost"],
            [[name, mine[name]["roc_auc"], theirs[name]["roc_auc"], cost["per_label"][name]["roc_auc"],
              mine[name]["f1_at_tuned"], theirs[name]["f1_at_tuned"], cost["per_label"][name]["f1"]]
             for name in label_names])


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
    header, rows = cost_rows(task, served, reference, cost, label_names, backend)
    return "".join(parts) + bounded_table(header, rows, f"Every {nouns(task)[0]}, most F1 lost first")


def torch_metrics(report: dict[str, Any]) -> dict[str, Any]:
    """PyTorch's figures of a report: its own, or those measured beside another backend on the same rows."""
    return report["torch"]["metrics"] if "torch" in report else report["metrics"]


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


def none_rows(none: dict[str, Any]) -> tuple[list[str], list[list[Any]]]:
    """The "none of these" figures as a table: what each rate means beside its value."""
    return ["figure", "value", "of"], [
        [f"threshold (a {none['score']} none score at or over it: 'none of these')", f"{none['threshold']:.4g}",
         ""],  # table() escapes each cell once, and shows a missing figure (no row of a side) as a dash
        ["in-scope accuracy ('none' counts as wrong)", none["in_scope_accuracy"], none["in_scope_rows"]],
        ["in-scope texts answered 'none'", none["in_scope_rejected"], none["in_scope_rows"]],
        ["recall of 'none' on texts of no class", none["none_recall"], none["none_rows"]],
        ["precision of 'none'", none["none_precision"], ""],
        ["AUROC of the none score", none["auroc"], ""],
        ["in-scope texts rejected at 95% recall (FPR at 95% TPR)", none["fpr_at_95_tpr"], ""]]

