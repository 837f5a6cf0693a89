"""The data report shown before training: each file as read, rows used and dropped, label counts per split,
duplicate and conflicting texts, and test rows of labels training never saw (`data_report.json`)."""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from utils.data.prepare import DataSplits
from utils.data.readers import LabeledTexts

REPORT_FILE = "data_report.json"


def row_labels(data: LabeledTexts) -> list[tuple[str, ...]]:
    """Each row's label names: one class (multi-class) or the positive labels (multi-label)."""
    if data.labels.ndim == 1:
        return [(data.label_names[int(i)],) for i in data.labels]
    return [tuple(data.label_names[j] for j in np.flatnonzero(row)) for row in data.labels]


def label_counts(splits: dict[str, LabeledTexts], label_names: list[str]) -> dict[str, dict[str, int]]:
    counts = {name: Counter(n for labels in row_labels(data) for n in labels) for name, data in splits.items()}
    return {label: {name: counts[name][label] for name in splits} for label in label_names}


def duplicates(splits: dict[str, LabeledTexts]) -> dict[str, Any]:
    """Texts that occur more than once (compared without surrounding spaces), those with differing labels, and
    the splits they span (a text in both training and test flatters the test score)."""
    seen: dict[str, list[tuple[str, tuple[str, ...]]]] = defaultdict(list)
    for name, data in splits.items():
        for text, labels in zip(data.texts, row_labels(data), strict=True):
            seen[text.strip()].append((name, labels))
    repeated = {text: rows for text, rows in seen.items() if len(rows) > 1}
    conflicting = {text: rows for text, rows in repeated.items() if len({labels for _, labels in rows}) > 1}
    spans = Counter("+".join(sorted({name for name, _ in rows}, key=list(splits).index))
                    for rows in repeated.values())
    return {"texts": len(repeated), "extra_rows": sum(len(rows) - 1 for rows in repeated.values()),
            "conflicting_texts": len(conflicting), "by_splits": dict(spans),
            "conflicting_by_splits": dict(Counter("+".join(sorted({n for n, _ in rows}, key=list(splits).index))
                                                  for rows in conflicting.values())),
            "conflicting_examples": [{"text": text[:200], "labels": sorted({"|".join(labels) for _, labels in rows})}
                                     for text, rows in list(conflicting.items())[:5]]}


def data_report(splits: DataSplits) -> dict[str, Any]:
    parts = {"train": splits.train, "validation": splits.validation}
    if splits.test is not None:
        parts["test"] = splits.test
    unseen = [(name, labels) for name, data in parts.items() for labels in data.unseen_labels]
    return {"files": splits.files, "notes": splits.notes, "rows": {name: len(data) for name, data in parts.items()},
            "extra_data": splits.extra.describe() if splits.extra is not None else None,
            "labels": label_counts(parts, splits.label_names), "duplicates": duplicates(parts),
            "unseen_labels": {"rows": len(unseen), "labels": dict(Counter(n for _, labels in unseen for n in labels)),
                              "note": "set aside: evaluation reports what the model predicts for them, apart from "
                                      "the metrics"}}


def report_lines(report: dict[str, Any]) -> list[str]:
    """The report as a few printable lines."""
    lines = ["data report:", *(f"  {note}" for note in report["notes"])]
    for file in report["files"]:
        how = ", ".join(f"{key} {file[key]!r}" for key in ("encoding", "delimiter", "sheet") if file[key])
        layout = ", ".join(f"{key} {value!r}" for key, value in file["layout"].items() if value)
        dropped = ", ".join(f"{count} {reason}" for reason, count in file["dropped"].items())
        lines.append(f"  {file['role']}: {file['file']} ({file['format']}{', ' + how if how else ''}); {layout}")
        lines.append(f"    rows read {file['rows_read']}, used {file['rows_used']}"
                     + (f", dropped {dropped}" if dropped else "")
                     + (f", set aside {file['unseen_label_rows']} with unseen labels"
                        if file["unseen_label_rows"] else ""))
    rows = report["rows"]
    lines.append("  rows per split: " + ", ".join(f"{name} {count}" for name, count in rows.items()))
    width = max([len(label) for label in report["labels"]] + [5])
    lines.append(f"  {'label':<{width}}" + "".join(f"{name:>12}" for name in rows))
    for label, counts in report["labels"].items():
        lines.append(f"  {label:<{width}}" + "".join(f"{counts[name]:>12}" for name in rows))
    dup = report["duplicates"]
    if dup["texts"]:
        spans = ", ".join(f"{count} in {where}" for where, count in dup["by_splits"].items())
        lines.append(f"  duplicates: {dup['texts']} texts occur more than once ({spans}); "
                     f"{dup['conflicting_texts']} of them with different labels")
    unseen = report["unseen_labels"]
    if unseen["rows"]:
        names = ", ".join(f"{name} ({count})" for name, count in unseen["labels"].items())
        lines.append(f"  {unseen['rows']} held-out rows carry labels training never saw: {names}; {unseen['note']}")
    return lines


def add_to_data_report(folder: Path, key: str, value: Any) -> None:
    """One more entry in the run's data_report.json, known only once the recipe has chosen (the window)."""
    path = folder / REPORT_FILE
    report = json.loads(path.read_text(encoding="utf-8"))
    report[key] = value
    path.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def write_data_report(splits: DataSplits, folder: Path) -> Path:
    """Print the report and save it as data_report.json in `folder` (the run's output folder)."""
    report = data_report(splits)
    print("\n".join(report_lines(report)))
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / REPORT_FILE
    path.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return path
