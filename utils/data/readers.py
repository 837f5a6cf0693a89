"""Reading labelled texts from any file files.py opens, with errors that name the file, the row and the column."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from utils.data.files import MAX_TEXT_CHARS, DataError, FileReading, find_columns, iter_frames, open_file


@dataclass
class LabeledTexts:
    """Texts with their labels: a (N, L) 0/1 float matrix (multilabel) or (N,) class ids (multiclass)."""

    texts: list[str]
    labels: np.ndarray
    label_names: list[str]
    source: str
    rows_read: int = 0
    dropped: dict[str, int] = field(default_factory=dict)  # reason -> rows (--drop-invalid)
    unseen_texts: list[str] = field(default_factory=list)  # rows whose labels the model never learnt, set aside
    unseen_labels: list[list[str]] = field(default_factory=list)  # those rows' unknown label names

    def __len__(self) -> int:
        return len(self.texts)

    def subset(self, indices: Sequence[int] | np.ndarray) -> LabeledTexts:
        indices = np.asarray(indices, dtype=int)
        return LabeledTexts([self.texts[i] for i in indices], self.labels[indices], self.label_names,
                            self.source)


@dataclass(frozen=True)
class ColumnLayout:
    """Which columns hold the text and the labels."""

    text_column: str
    label_columns: tuple[str, ...] = ()
    label_column: str | None = None
    label_delimiter: str | None = None
    column_names: tuple[str, ...] | None = None
    id_column: str | None = None  # distinct row identifiers: kept, never the text nor a label

    def __post_init__(self) -> None:
        if bool(self.label_columns) == bool(self.label_column):
            raise DataError("give either --label-columns (one 0/1 column per label) or --label-column "
                            "(one column of label names or ids), not both and not neither")


def read_label_names(path: str | Path) -> list[str]:
    if not Path(path).is_file():
        raise DataError(f"{path}: no such file (--labels-file)")
    names = [line.strip() for line in Path(path).read_text().splitlines() if line.strip()]
    if len(set(names)) != len(names):
        raise DataError(f"{path}: label names are repeated")
    if not names:
        raise DataError(f"{path}: no label names")
    return names


MISSING_TEXT, MISSING_LABEL = "empty or missing text", "missing label"


def missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and value != value) or (isinstance(value, str)
                                                                               and not value.strip())


def check_texts(frame: pd.DataFrame, column: str, path: Path, first_row: int = 1,
                invalid: dict[int, str] | None = None) -> list[str]:
    """The text column as strings, each kept whole however long; a non-string, an empty text or one over
    MAX_TEXT_CHARS is an error, or with `invalid` (a dict to fill) an empty or missing one is noted there by row
    offset."""
    texts = frame[column].tolist()
    for offset, text in enumerate(texts):
        if invalid is not None and missing(text):
            invalid.setdefault(offset, MISSING_TEXT)
        elif not isinstance(text, str):
            raise DataError(f"{path}: row {first_row + offset}, column '{column}': expected text, "
                            f"got {text!r}")
        elif not text.strip():
            raise DataError(f"{path}: row {first_row + offset}, column '{column}': empty text")
        elif len(text) > MAX_TEXT_CHARS:
            raise DataError(f"{path}: row {first_row + offset}, column '{column}': a text of {len(text):,} "
                            f"characters, over the {MAX_TEXT_CHARS:,} one text may hold (an unclosed quote joins "
                            "the rows after it into one text; else split the document)")
    return texts


def require_columns(frame: pd.DataFrame, columns: Sequence[str], path: Path) -> None:
    find_columns(frame, columns, path)


_BINARY = {"0": 0.0, "1": 1.0, "0.0": 0.0, "1.0": 1.0, "true": 1.0, "false": 0.0}


def binary_value(value: Any, path: Path, row: int, column: str) -> float:
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, int | float) and value in (0, 1):
        return float(value)
    if isinstance(value, str) and value.strip().lower() in _BINARY:
        return _BINARY[value.strip().lower()]
    raise DataError(f"{path}: row {row}, column '{column}': label must be 0 or 1, got {value!r}")


def cell_items(value: Any, delimiter: str | None) -> list[str] | None:
    """The label names in one cell: a list, a JSON array, or text split at `delimiter`; None if not labels."""
    if isinstance(value, list | tuple | np.ndarray):
        return [str(v).strip() for v in value if str(v).strip()]
    if not isinstance(value, str | int) or isinstance(value, bool):
        return None
    text = str(value).strip()
    if text.startswith("[") and text.endswith("]"):
        try:
            parsed = json.loads(text)
        except json.JSONDecodeError:
            parsed = None
        if isinstance(parsed, list):
            return [str(v).strip() for v in parsed if str(v).strip()]
    items = [p.strip() for p in text.split(delimiter)] if delimiter else [text]
    return [p for p in items if p]


def parse_label_cell(value: Any, names: list[str] | None, delimiter: str | None, by_id: bool,
                     path: Path, row: int, column: str, unseen: list[str] | None = None) -> list[str]:
    """Label names in one cell of a label column: names, or ids into the labels file. With `unseen` (a list to
    fill), names outside `names` are put there instead of stopping the read."""
    items = cell_items(value, delimiter)
    if items is None:
        raise DataError(f"{path}: row {row}, column '{column}': expected label names or ids, got {value!r}")
    if by_id and names is not None:
        resolved = []
        for item in items:
            if item.isdigit() and int(item) < len(names):
                resolved.append(names[int(item)])
            elif item in names:
                resolved.append(item)
            else:
                raise DataError(f"{path}: row {row}, column '{column}': label id {item!r} is not between 0 "
                                f"and {len(names) - 1} and not a label name")
        return resolved
    if names is not None:
        for item in items:
            if item in names:
                continue
            if unseen is None:
                raise DataError(f"{path}: row {row}, column '{column}': unknown label {item!r}; known: "
                                f"{', '.join(names)}")
            unseen.append(item)
    return items


def read_labeled_texts(source: str | Path | FileReading, task: str, layout: ColumnLayout,
                       label_names: list[str] | None = None, labels_by_id: bool = False,
                       drop_invalid: bool = False, keep_unseen: bool = False) -> LabeledTexts:
    """Every row of the file as a text with labels; any bad row stops the read with its location.

    `label_names` fixes the label set and order (from a labels file, the training data or a checkpoint);
    without it a label column's distinct names, sorted, become the label set. `drop_invalid` drops rows with an
    empty text or a missing label (counted by reason); `keep_unseen` sets aside rows whose labels are outside
    `label_names` (a test file's new class) instead of stopping.
    """
    reading = source if isinstance(source, FileReading) else open_file(source)
    path = reading.path
    frame = next(iter_frames(reading, column_names=layout.column_names))
    if frame.empty:
        raise DataError(f"{path}: no rows")
    invalid: dict[int, str] | None = {} if drop_invalid else None
    text_column = find_columns(frame, [layout.text_column], path)[0]
    texts = check_texts(frame, text_column, path, invalid=invalid)
    if layout.label_columns:
        if task == "multiclass":
            raise DataError(f"{path}: --label-columns describe multi-label data; use --label-column for "
                            "multi-class")
        columns = find_columns(frame, layout.label_columns, path)
        names = [c.strip() for c in columns]
        if label_names is not None:
            if [n.casefold() for n in label_names] != [n.casefold() for n in names]:
                raise DataError(f"{path}: label columns {names} differ from the expected labels {label_names}")
            names = list(label_names)
        rows = []
        for row, values in enumerate(frame[columns].itertuples(index=False)):
            if invalid is not None and any(missing(v) for v in values):
                invalid.setdefault(row, MISSING_LABEL)
                rows.append([0.0] * len(columns))
            else:
                rows.append([binary_value(v, path, row + 1, c) for c, v in zip(columns, values, strict=True)])
        data = LabeledTexts(texts, np.array(rows, dtype=np.float32).reshape(len(rows), len(columns)), names,
                            str(path))
        return without_rows(data, invalid or {}, len(frame))
    return read_label_column(frame, texts, path, task, layout, label_names, labels_by_id, invalid, keep_unseen)


def read_label_column(frame: pd.DataFrame, texts: list[str], path: Path, task: str, layout: ColumnLayout,
                      label_names: list[str] | None, labels_by_id: bool, invalid: dict[int, str] | None,
                      keep_unseen: bool) -> LabeledTexts:
    """The one-column layout: names (or ids) per row, split at the layout's delimiter for multi-label."""
    drop = invalid is not None
    invalid = {} if invalid is None else invalid
    column = find_columns(frame, [layout.label_column or ""], path)[0]
    delimiter = layout.label_delimiter if task == "multilabel" else None
    cells, unseen_rows = [], {}
    for row, value in enumerate(frame[column].tolist()):
        empty_class = task == "multiclass" and missing(value)
        if drop and (empty_class or value is None or (isinstance(value, float) and value != value)):
            invalid.setdefault(row, MISSING_LABEL)
            cells.append([])
            continue
        unseen: list[str] | None = [] if keep_unseen else None
        cell = parse_label_cell(value, label_names, delimiter, labels_by_id, path, row + 1, column, unseen)
        if task == "multiclass" and len(cell) != 1:
            raise DataError(f"{path}: row {row + 1}, column '{column}': expected exactly one class, got {cell!r} "
                            "(--task multilabel reads rows with several labels, or none)")
        if unseen:
            unseen_rows[row] = unseen
            cell = []
        cells.append(cell)
    names = (list(label_names) if label_names is not None else
             sorted({n for row, cell in enumerate(cells) if row not in invalid for n in cell}, key=label_order))
    index = {name: i for i, name in enumerate(names)}
    if task == "multiclass":
        labels = np.array([index[cell[0]] if cell else 0 for cell in cells], dtype=np.int64)
    else:
        labels = np.zeros((len(cells), len(names)), dtype=np.float32)
        for row, cell in enumerate(cells):
            labels[row, [index[n] for n in cell]] = 1.0
    data = without_rows(LabeledTexts(texts, labels, names, str(path)), invalid | dict.fromkeys(unseen_rows, ""),
                        len(frame))
    data.unseen_texts = [texts[row] for row in unseen_rows]
    data.unseen_labels = list(unseen_rows.values())
    return data


def label_order(name: str) -> tuple[int, int | str]:
    """Label names in order: integer ids by value (2 before 10), then the others alphabetically."""
    return (0, int(name)) if name.lstrip("-").isdigit() else (1, name)


def without_rows(data: LabeledTexts, rows: dict[int, str], rows_read: int) -> LabeledTexts:
    """`data` less the rows set aside, with the count read and the reasons for dropping."""
    kept = data.subset([i for i in range(len(data)) if i not in rows]) if rows else data
    kept.rows_read, kept.dropped = rows_read, count_reasons({r: why for r, why in rows.items() if why})
    if len(kept) == 0:
        raise DataError(f"{data.source}: no rows left to use (of {rows_read} read)")
    return kept


def count_reasons(invalid: dict[int, str]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for reason in invalid.values():
        if reason:
            counts[reason] = counts.get(reason, 0) + 1
    return counts
