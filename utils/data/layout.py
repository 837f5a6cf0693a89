"""Which columns of a user's file hold the row id, the text and the labels, and how a label column joins labels."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from utils.data.files import DataError, FileReading, find_columns, iter_frames
from utils.data.readers import _BINARY, ColumnLayout, cell_items

LABEL_DELIMITERS = "|;,"


def binary_column(values: Sequence[Any]) -> bool:
    """Every value is 0/1 (as numbers, booleans or their spellings)."""
    return bool(values) and all(
        (isinstance(v, bool) or (isinstance(v, int | float) and v in (0, 1)))
        or (isinstance(v, str) and v.strip().lower() in _BINARY) for v in values)


def text_like(values: Sequence[Any]) -> bool:
    """Mostly distinct strings of several words: what a text column holds."""
    strings = [v for v in values if isinstance(v, str)]
    if len(strings) < len(values) or not strings:
        return False
    words = np.mean([len(v.split()) for v in strings])
    return bool(len(set(strings)) >= 0.5 * len(strings) and words >= 2)


def id_like(values: Sequence[Any]) -> bool:
    """Distinct identifiers without spaces (strings or whole numbers), as exports carry for each row."""
    items = [str(v).strip() for v in values if isinstance(v, str | int) and not isinstance(v, bool)]
    return (len(items) == len(values) >= 2 and len(set(items)) == len(items)
            and all(item and not any(ch.isspace() for ch in item) for item in items))


def small_vocabulary(names: set[str], rows: int) -> bool:
    return 0 < len(names) <= max(20, 0.05 * rows)


def label_like(values: Sequence[Any], delimiter: str | None) -> bool:
    """Few distinct label names (split at `delimiter`): what a label column holds."""
    if not values or any(isinstance(v, float) and np.isnan(v) for v in values):
        return False
    cells = [cell_items(v, delimiter) for v in values]
    names = {item for cell in cells for item in (cell or [str(None)])}
    return small_vocabulary(names, len(values)) and len(names) < len(values)


def repeats(values: Sequence[Any]) -> bool:
    """Two rows or more a value on average: the one column left beside the text is its labels, however many (150
    intents of 3 examples each have too many names for `label_like`)."""
    return bool(values) and 2 * len({str(v) for v in values}) <= len(values)


def detect_label_delimiter(values: Sequence[Any], where: str) -> str | None:
    """The one of | ; , that splits the column into a small vocabulary of names (JSON arrays and lists need
    none); None when no cell joins several; several that fit, or none that fits, stop with the readings."""
    strings = [v.strip() for v in values if isinstance(v, str) and not v.strip().startswith("[")]
    fits, joined = [], []
    for delimiter in LABEL_DELIMITERS:
        if not any(delimiter in s for s in strings):
            continue
        joined.append(delimiter)
        names = {item for s in strings for item in cell_items(s, delimiter) or []}
        if small_vocabulary(names, len(values)) and len(names) < len(set(strings)):
            fits.append(delimiter)
    if len(fits) == 1:
        return fits[0]
    if not joined or (not fits and small_vocabulary(set(strings), len(values))):
        return None
    readings = "; ".join(f"{d!r}: {len({i for s in strings for i in cell_items(s, d) or []})} names"
                         for d in joined)
    raise DataError(f"{where}: cannot tell which separator joins several labels ({readings}); give "
                    "--label-delimiter")


def infer_layout(reading: FileReading, task: str, text_column: str | None = None,
                 label_columns: Sequence[str] = (), label_column: str | None = None,
                 label_delimiter: str | None = None, sample_rows: int = 2000) -> tuple[ColumnLayout, str]:
    """The column layout of a file with a header when only one reading fits: a row id column (distinct values
    without spaces) set aside, one text column, and either one label column or only 0/1 columns besides
    (multi-class: one label column). Given columns are kept, matched ignoring case and surrounding spaces.
    Returns the layout and a sentence saying what was inferred; a DataError lists the columns when the layout is
    ambiguous."""
    frame = next(iter_frames(reading, chunksize=sample_rows))
    path, columns = reading.path, [str(c) for c in frame.columns]
    text_column = find_columns(frame, [text_column], path)[0] if text_column else None
    label_columns = find_columns(frame, label_columns, path) if label_columns else []
    label_column = find_columns(frame, [label_column], path)[0] if label_column else None
    given = {text_column, label_column, *label_columns} - {None}
    values = {c: frame[c].tolist() for c in columns}
    ids = [c for c in columns if c not in given and not binary_column(values[c]) and id_like(values[c])]
    found = [f"row id column {ids[0]!r}"] if len(ids) == 1 else []
    free = [c for c in columns if c not in given and c not in ids[:1]]
    texts = [text_column] if text_column else [c for c in free if text_like(values[c])]
    if len(texts) != 1:
        raise ambiguous(reading, columns, "which column holds the text")
    found += [] if text_column else [f"text column {texts[0]!r}"]
    rest = list(label_columns) or ([label_column] if label_column else [c for c in free if c != texts[0]])
    binary = [c for c in rest if binary_column(values[c])]
    id_column = ids[0] if len(ids) == 1 else None
    if label_columns or (task == "multilabel" and rest and binary == rest and not label_column):
        found += [] if label_columns else [f"0/1 label columns {', '.join(map(repr, rest))}"]
        return (ColumnLayout(texts[0].strip(), tuple(c.strip() for c in rest), id_column=id_column),
                ", ".join(found))
    if len(rest) == 1:
        delimiter = label_delimiter
        if task == "multilabel" and delimiter is None:
            delimiter = detect_label_delimiter(values[rest[0]], f"{path}, column '{rest[0]}'")
        if label_column or rest == binary or label_like(values[rest[0]], delimiter) or repeats(values[rest[0]]):
            found += [] if label_column else [f"label column {rest[0]!r}"]
            found += [f"labels joined by {delimiter!r}"] if delimiter and not label_delimiter else []
            return (ColumnLayout(texts[0].strip(), label_column=rest[0].strip(), label_delimiter=delimiter,
                                 id_column=id_column), ", ".join(found))
    raise ambiguous(reading, columns, "which columns hold the labels")


def infer_task(reading: FileReading, layout: ColumnLayout, sample_rows: int = 2000) -> tuple[str, str]:
    """The task a file's layout (as read for multi-label) implies, and why: 0/1 label columns, or a label column
    with several labels in a row among its first `sample_rows`, are multi-label; one class a row is multi-class."""
    if layout.label_columns:
        return "multilabel", "one 0/1 column per label"
    frame = next(iter_frames(reading, chunksize=sample_rows))
    column = find_columns(frame, [layout.label_column or ""], reading.path)[0]
    if any(len(cell_items(value, layout.label_delimiter) or []) > 1 for value in frame[column].tolist()):
        return "multilabel", f"rows of column '{column}' hold several labels"
    return "multiclass", f"every row of column '{column}' holds one class (of the first {sample_rows} read)"


def ambiguous(reading: FileReading, columns: list[str], question: str) -> DataError:
    return DataError(f"{reading.path}: cannot tell {question} from its columns ({', '.join(map(repr, columns))}); "
                     "give --text-column and --label-columns (one 0/1 column per label) or --label-column")
