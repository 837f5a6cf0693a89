"""Reading labelled texts from CSV/TSV/JSONL files, with errors that name the file, the row and the column."""

from __future__ import annotations

import csv
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd


class DataError(ValueError):
    """A problem with an input file, naming where it is."""


@dataclass
class LabeledTexts:
    """Texts with their labels: a (N, L) 0/1 float matrix (multilabel) or (N,) class ids (multiclass)."""

    texts: list[str]
    labels: np.ndarray
    label_names: list[str]
    source: str

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

    def __post_init__(self) -> None:
        if bool(self.label_columns) == bool(self.label_column):
            raise DataError("give either --label-columns (one 0/1 column per label) or --label-column "
                            "(one column of label names or ids), not both and not neither")


def file_format(path: Path) -> str:
    """csv, tsv or jsonl: by the file's suffix, or for a .txt file by its first lines."""
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".ndjson"):
        return "jsonl"
    if suffix in (".tsv", ".tab"):
        return "tsv"
    if suffix == ".csv":
        return "csv"
    if suffix == ".txt" and path.is_file():
        return sniff_format(path)
    raise DataError(f"{path}: unknown file type '{suffix}' (expected .csv, .tsv, .jsonl, or a .txt file of one of "
                    "those)")


def sniff_format(path: Path, sample_bytes: int = 65536) -> str:
    """A text file's format from its first lines: JSON objects, tab-separated (every line with the same number of
    tabs, as SemEval and many shared tasks publish them) or comma-separated."""
    with path.open(encoding="utf-8", errors="replace", newline="") as file:
        sample = file.read(sample_bytes)
    lines = [line for line in sample.splitlines()[:-1 if len(sample) == sample_bytes else None] if line.strip()]
    if not lines:
        return "csv"  # nothing to tell from; reading it reports the empty file
    if all(line.lstrip().startswith("{") for line in lines):
        return "jsonl"
    tabs = {line.count("\t") for line in lines}
    if len(tabs) == 1 and tabs != {0}:
        return "tsv"
    try:
        if csv.Sniffer().sniff("\n".join(lines), delimiters=",\t").delimiter == ",":
            return "csv"
    except csv.Error:
        pass
    if 0 not in tabs:
        return "tsv"
    raise DataError(f"{path}: cannot tell whether its columns are separated by tabs or commas; rename it .tsv or "
                    ".csv")


def iter_frames(path: Path, chunksize: int | None = None,
                column_names: Sequence[str] | None = None) -> Iterator[pd.DataFrame]:
    """The file as data frames of raw values (text stays text: no NA guessing), in chunks if asked."""
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    fmt = file_format(path)
    try:
        if fmt == "jsonl":
            result = pd.read_json(path, lines=True, dtype=False, chunksize=chunksize)
            yield from (result if chunksize else [result])
            return
        options: dict[str, Any] = {"sep": "\t" if fmt == "tsv" else ",", "dtype": str,
                                   "keep_default_na": False, "chunksize": chunksize}
        if column_names:
            options.update(header=None, names=list(column_names))
        if fmt == "tsv":
            options["quoting"] = 3  # csv.QUOTE_NONE: GoEmotions-style TSV carries raw quotes in text
        result = pd.read_csv(path, **options)
        yield from (result if chunksize else [result])
    except (ValueError, pd.errors.ParserError) as error:
        raise DataError(f"{path}: cannot be parsed as {fmt.upper()}: {error}") from error


def read_label_names(path: str | Path) -> list[str]:
    names = [line.strip() for line in Path(path).read_text().splitlines() if line.strip()]
    if len(set(names)) != len(names):
        raise DataError(f"{path}: label names are repeated")
    if not names:
        raise DataError(f"{path}: no label names")
    return names


def check_texts(frame: pd.DataFrame, column: str, path: Path, first_row: int = 1) -> list[str]:
    """The text column as strings; a missing column, a non-string or an empty text is an error."""
    require_columns(frame, [column], path)
    texts = frame[column].tolist()
    for offset, text in enumerate(texts):
        if not isinstance(text, str):
            raise DataError(f"{path}: row {first_row + offset}, column '{column}': expected text, "
                            f"got {text!r}")
        if not text.strip():
            raise DataError(f"{path}: row {first_row + offset}, column '{column}': empty text")
    return texts


def require_columns(frame: pd.DataFrame, columns: Sequence[str], path: Path) -> None:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise DataError(f"{path}: missing column(s) {', '.join(map(repr, missing))}; "
                        f"the file has {', '.join(map(repr, frame.columns))}")


_BINARY = {"0": 0.0, "1": 1.0, "0.0": 0.0, "1.0": 1.0, "true": 1.0, "false": 0.0}


def binary_value(value: Any, path: Path, row: int, column: str) -> float:
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, int | float) and value in (0, 1):
        return float(value)
    if isinstance(value, str) and value.strip().lower() in _BINARY:
        return _BINARY[value.strip().lower()]
    raise DataError(f"{path}: row {row}, column '{column}': label must be 0 or 1, got {value!r}")


def parse_label_cell(value: Any, names: list[str] | None, delimiter: str | None, by_id: bool,
                     path: Path, row: int, column: str) -> list[str]:
    """Label names in one cell of a label column: names, or ids into the labels file."""
    if isinstance(value, list):
        items = [str(v).strip() for v in value]
    elif isinstance(value, str | int) and not isinstance(value, bool):
        text = str(value).strip()
        items = [p.strip() for p in text.split(delimiter)] if delimiter else [text]
        items = [p for p in items if p]
    else:
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
            if item not in names:
                raise DataError(f"{path}: row {row}, column '{column}': unknown label {item!r}; known: "
                                f"{', '.join(names)}")
    return items


def read_labeled_texts(path: str | Path, task: str, layout: ColumnLayout,
                       label_names: list[str] | None = None, labels_by_id: bool = False) -> LabeledTexts:
    """Every row of the file as a text with labels; any bad row stops the read with its location.

    `label_names` fixes the label set and order (from a labels file, the training data or a checkpoint);
    without it a label column's distinct names, sorted, become the label set.
    """
    path = Path(path)
    frame = next(iter_frames(path, column_names=layout.column_names))
    if frame.empty:
        raise DataError(f"{path}: no rows")
    texts = check_texts(frame, layout.text_column, path)
    if layout.label_columns:
        columns = list(layout.label_columns)
        require_columns(frame, columns, path)
        if label_names is not None and list(label_names) != columns:
            raise DataError(f"{path}: label columns {columns} differ from the expected labels {label_names}")
        labels = np.array([[binary_value(v, path, row + 1, c) for c, v in zip(columns, values, strict=True)]
                           for row, values in enumerate(frame[columns].itertuples(index=False))],
                          dtype=np.float32)
        if task == "multiclass":
            raise DataError(f"{path}: --label-columns describe multi-label data; use --label-column for "
                            "multi-class")
        return LabeledTexts(texts, labels, columns, str(path))
    column = layout.label_column
    require_columns(frame, [column], path)
    delimiter = layout.label_delimiter if task == "multilabel" else None
    cells = [parse_label_cell(v, label_names, delimiter, labels_by_id, path, row + 1, column)
             for row, v in enumerate(frame[column].tolist())]
    if task == "multiclass":
        for row, cell in enumerate(cells):
            if len(cell) != 1:
                raise DataError(f"{path}: row {row + 1}, column '{column}': expected exactly one class, "
                                f"got {cell!r}")
    names = list(label_names) if label_names is not None else sorted({n for cell in cells for n in cell})
    index = {name: i for i, name in enumerate(names)}
    if task == "multiclass":
        labels = np.array([index[cell[0]] for cell in cells], dtype=np.int64)
    else:
        labels = np.zeros((len(cells), len(names)), dtype=np.float32)
        for row, cell in enumerate(cells):
            labels[row, [index[n] for n in cell]] = 1.0
    return LabeledTexts(texts, labels, names, str(path))


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


def label_like(values: Sequence[Any], delimiter: str | None) -> bool:
    """Few distinct label names (split at `delimiter`): what a label column holds."""
    if not values or any(isinstance(v, float) and np.isnan(v) for v in values):
        return False
    names = {item.strip() for v in values
             for item in (v if isinstance(v, list) else (str(v).split(delimiter) if delimiter else [str(v)]))}
    return len(names) <= max(20, 0.05 * len(values)) and len(names) < len(values)


def infer_layout(path: Path, task: str, text_column: str | None = None, label_columns: Sequence[str] = (),
                 label_column: str | None = None, label_delimiter: str | None = None,
                 sample_rows: int = 2000) -> tuple[ColumnLayout, str]:
    """The column layout of a file with a header when only one reading fits: one text column, and either one
    label column or only 0/1 columns besides (multi-class: one label column). Given columns are kept. Returns the
    layout and a sentence saying what was inferred; a DataError lists the columns when the layout is ambiguous."""
    frame = next(iter_frames(path, chunksize=sample_rows))
    columns = [str(c) for c in frame.columns]
    if label_columns or label_column:
        given = set(label_columns) | ({label_column} if label_column else set())
        candidates = [c for c in columns if c not in given and text_like(frame[c].tolist())]
        if len(candidates) == 1:
            return (ColumnLayout(candidates[0], tuple(label_columns), label_column, label_delimiter),
                    f"text column {candidates[0]!r}")
        raise ambiguous(path, columns, "which column holds the text")
    if text_column:
        require_columns(frame, [text_column], path)
    texts = [text_column] if text_column else [c for c in columns if text_like(frame[c].tolist())]
    if len(texts) != 1:
        raise ambiguous(path, columns, "which column holds the text")
    rest = [c for c in columns if c != texts[0]]
    binary = [c for c in rest if binary_column(frame[c].tolist())]
    found = "" if text_column else f"text column {texts[0]!r}, "
    if task == "multilabel" and rest and binary == rest:
        return ColumnLayout(texts[0], tuple(rest)), found + f"0/1 label columns {', '.join(map(repr, rest))}"
    if len(rest) == 1 and (rest == binary or label_like(frame[rest[0]].tolist(), label_delimiter)):
        return (ColumnLayout(texts[0], label_column=rest[0], label_delimiter=label_delimiter),
                found + f"label column {rest[0]!r}")
    raise ambiguous(path, columns, "which columns hold the labels")


def ambiguous(path: Path, columns: list[str], question: str) -> DataError:
    return DataError(f"{path}: cannot tell {question} from its columns ({', '.join(map(repr, columns))}); give "
                     "--text-column and --label-columns (one 0/1 column per label) or --label-column")
