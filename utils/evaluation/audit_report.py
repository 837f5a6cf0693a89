"""What a label audit writes: every row, most doubtful first, as `label_audit.csv` and `label_audit.jsonl`, and
`label_audit.html`, a page in the evaluation report's style (its stylesheet and tables): the summary, each label's
flagged rows, and the most doubtful rows with their texts, given and suspected labels."""

from __future__ import annotations

import json
from html import escape
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from utils.data.file_rows import FileRows
from utils.evaluation.label_issues import LabelIssues
from utils.evaluation.report_html import STYLE
from utils.evaluation.report_tables import FEW_LABELS, Html, bounded_table, folded, nouns, table

CSV_FILE, JSONL_FILE, HTML_FILE = "label_audit.csv", "label_audit.jsonl", "label_audit.html"
LABEL_SEPARATOR = "|"  # between label names in a CSV cell (the JSONL file holds lists)
PER_LABEL_SUSPECTS = 10  # at most, a multi-label page's most doubtful rows of each label (--k if fewer)
PAGE_TEXT_CHARS = 400  # a text on the page is cut past this


def names_of(row: np.ndarray, label_names: list[str]) -> list[str]:
    return [label_names[j] for j in np.flatnonzero(row)]


def audit_records(rows: FileRows, issues: LabelIssues) -> list[dict[str, Any]]:
    """One record a row, most doubtful first: its rank, number in the file (and id), text, given, suspected and
    doubted labels, label quality (lower: more doubtful; each label's too for multi-label) and cleanlab's flag."""
    data, names = rows.data, rows.data.label_names
    given = np.eye(len(names), dtype=np.int64)[data.labels] if rows.task == "multiclass" else data.labels > 0
    records = []
    for rank, i in enumerate(issues.order(), start=1):
        record: dict[str, Any] = {"rank": rank, "row": rows.numbers[i]}
        if rows.ids is not None:
            record["id"] = rows.ids[i]
        record.update({"text": data.texts[i], "given": names_of(given[i], names),
                       "suspected": names_of(issues.suspected[i], names),
                       "doubted": names_of(issues.doubted[i], names), "score": round(float(issues.scores[i]), 6),
                       "flagged": bool(issues.flagged[i])})
        if rows.task == "multilabel":
            record["label_scores"] = {name: round(float(v), 6) for name, v in zip(names, issues.label_scores[i],
                                                                                   strict=True)}
        records.append(record)
    return records


def audit_summary(rows: FileRows, issues: LabelIssues, how: dict[str, Any]) -> dict[str, Any]:
    """Rows checked and flagged, in all and per label (rows given it, rows whose label cleanlab doubts), and `how`
    (the members, folds, time)."""
    names, data = rows.data.label_names, rows.data
    given = (np.bincount(data.labels, minlength=len(names)) if rows.task == "multiclass"
             else (data.labels > 0).sum(axis=0))
    doubted = issues.doubted.sum(axis=0)
    return {"data": str(rows.path), "task": rows.task, "rows": len(data), "flagged": int(issues.flagged.sum()),
            "labels": {name: {"given": int(given[j]), "doubted": int(doubted[j])} for j, name in enumerate(names)},
            **how}


def write_tables(folder: Path, records: list[dict[str, Any]]) -> tuple[Path, Path]:
    """label_audit.csv (label lists joined by '|', each label's quality a column) and label_audit.jsonl."""
    jsonl = folder / JSONL_FILE
    jsonl.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    flat = []
    for record in records:
        row = {k: LABEL_SEPARATOR.join(v) if isinstance(v, list) else v for k, v in record.items()
               if k != "label_scores"}
        row.update({f"score_{name}": value for name, value in record.get("label_scores", {}).items()})
        flat.append(row)
    path = folder / CSV_FILE
    pd.DataFrame(flat).to_csv(path, index=False, encoding="utf-8")
    return path, jsonl


def suspects_table(records: list[dict[str, Any]], ids: bool, label: str | None = None) -> str:
    """Rows with their texts (cut past PAGE_TEXT_CHARS: the files hold them whole); the score is `label`'s own when
    given, else the row's."""
    header = ["rank", "row", *(["id"] if ids else []), f"score ({label})" if label else "score", "given",
              "in question", "suspected", "text"]
    rows = [[r["rank"], r["row"], *([r["id"]] if ids else []), r["label_scores"][label] if label else r["score"],
             ", ".join(r["given"]) or "none", ", ".join(r["doubted"]) or "-", ", ".join(r["suspected"]) or "none",
             Html(f'<span class="example">{escape(shortened(r["text"]))}</span>')] for r in records]
    return table(header, rows)


def shortened(text: str) -> str:
    return text if len(text) <= PAGE_TEXT_CHARS else text[:PAGE_TEXT_CHARS].rstrip() + " ..."


def label_rows(summary: dict[str, Any]) -> tuple[list[str], list[list[Any]]]:
    """Per label: rows given it and flagged, most flagged first."""
    labels = sorted(summary["labels"].items(), key=lambda item: (-item[1]["doubted"], item[0]))
    one = nouns(summary["task"])[0]
    return ([one, "rows given it", "flagged", "share flagged"],
            [[name, c["given"], c["doubted"], f"{c['doubted'] / c['given']:.1%}" if c["given"] else "-"]
             for name, c in labels])


def per_label_suspects(records: list[dict[str, Any]], label_names: list[str], ids: bool, count: int) -> list[str]:
    """A multi-label page's `count` most doubtful rows of each label (by that label's own quality: each label's
    ranking, which finds a label's flips where the rows' overall score mixes in every label's doubts), folded past
    a few labels."""
    parts = []
    for name in label_names:
        worst = sorted(records, key=lambda r: (r["label_scores"][name], r["rank"]))[:count]
        body = suspects_table(worst, ids, name)
        parts.append(f"<h3>{escape(name)}</h3>{body}" if len(label_names) <= FEW_LABELS
                     else folded(f"{name}: its {len(worst)} most doubtful rows", body))
    return parts


def render_audit(summary: dict[str, Any], records: list[dict[str, Any]], k: int) -> str:
    """The whole page as a string."""
    ids = bool(records) and "id" in records[0]
    many = nouns(summary["task"])[1]
    members = " + ".join(summary["members"])
    parts = [f"<h1>Label audit of {escape(summary['data'])}</h1>",
             f'<p class="muted">{escape(summary["task"])} &middot; {len(summary["labels"])} {many} &middot; '
             f"{summary['rows']} rows &middot; out-of-fold probabilities of {escape(members)} "
             f"({summary['folds']} folds) &middot; {summary['seconds']['total']:.0f} s</p>",
             "<h2>Summary</h2>",
             table(["rows checked", "flagged by cleanlab", "share"],
                   [[summary["rows"], summary["flagged"], f"{summary['flagged'] / max(1, summary['rows']):.1%}"]]),
             f'<p class="muted">{escape(summary["note"])}</p>',
             f"<h2>Flagged per {nouns(summary['task'])[0]}</h2>",
             bounded_table(*label_rows(summary), f"All {many}, most flagged first"),
             f"<h2>The {min(k, len(records))} most doubtful rows</h2>",
             '<p class="muted">Score: cleanlab\'s label quality, the out-of-fold probability of the given '
             "label(s); the lower, the more the models doubt it. Every row is in label_audit.csv and .jsonl, in this "
             "order.</p>", suspects_table(records[:k], ids)]
    if summary["task"] == "multilabel":
        count = min(k, PER_LABEL_SUSPECTS)
        parts += [f"<h2>Each label's {count} most doubtful rows</h2>",
                  '<p class="muted">Ranked by the label\'s own score (score_LABEL in label_audit.csv): the order '
                  "that finds one label's wrong values; the rows' order above weighs all their labels.</p>",
                  *per_label_suspects(records, list(summary["labels"]), ids, count)]
    return (f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>Label audit: '
            f"{escape(summary['data'])}</title><style>{STYLE}</style></head><body>{''.join(parts)}</body></html>\n")


def write_audit(folder: Path, summary: dict[str, Any], records: list[dict[str, Any]], k: int) -> list[Path]:
    """The three files in `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    page = folder / HTML_FILE
    page.write_text(render_audit(summary, records, k), encoding="utf-8")
    return [*write_tables(folder, records), page]
