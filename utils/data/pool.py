"""A pool of unlabelled texts to choose from (`--mode suggest --pool FILE`), read with the training files' checks; the
texts already labelled, which a choice leaves out; the layout a labelled row must take to come back as training
data (`--extra-data`)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
from tqdm.auto import tqdm

from utils.config import DataArguments
from utils.data.datasets import BUILTIN_DATASETS
from utils.data.extra import PLAIN_LABELS_COLUMN, PLAIN_TEXT_COLUMN, text_key
from utils.data.files import DataError, canonical, find_columns, iter_frames, open_file
from utils.data.prepare import resolve_source
from utils.data.readers import ColumnLayout, check_texts

CHUNK_ROWS = 4096  # rows read at a time


@dataclass(frozen=True)
class Pool:
    """The pool's rows as read (every column kept, the text column under `text_column`) and its texts; row
    position p is the file's data row p + 1, as errors count."""

    path: Path
    frame: pd.DataFrame
    text_column: str
    texts: list[str]

    def unlabelled(self, labelled: set[str]) -> list[int]:
        """Positions of the rows to choose from: a text's first row, unless the text is already labelled."""
        seen, kept = set(labelled), []
        for position, text in enumerate(self.texts):
            if text_key(text) not in seen:
                seen.add(text_key(text))
                kept.append(position)
        return kept


def read_pool(path: Path, settings: DataArguments, text_column: str) -> Pool:
    """Every row of the pool file; a row without text (empty, not text, or unreadable) stops the read naming the
    file, the row and the column, as a training file's does."""
    reading = open_file(path, settings.encoding, settings.delimiter, settings.sheet)
    frames, texts = [], []
    with tqdm(unit=" rows", desc=f"read {path.name}") as bar:
        for frame in iter_frames(reading, chunksize=CHUNK_ROWS):
            column = find_columns(frame, [text_column], path)[0]
            texts += check_texts(frame, column, path, first_row=len(texts) + 1)
            frames.append(frame.rename(columns={column: text_column}))
            bar.update(len(frame))
    if not texts:
        raise DataError(f"{path}: no rows")
    return Pool(path, pd.concat(frames, ignore_index=True), text_column, texts)


def pool_text_column(path: Path, settings: DataArguments, candidates: Iterable[str | None]) -> str:
    """The pool's text column: --text-column, else the first of `candidates` (the checkpoint's training text
    column, then `text`) the file has."""
    if settings.text_column:
        return settings.text_column
    names = [name for name in candidates if name]
    reading = open_file(path, settings.encoding, settings.delimiter, settings.sheet)
    frame = next(iter_frames(reading, chunksize=1), None)
    columns = {canonical(c): str(c) for c in (frame.columns if frame is not None else [])}
    found = next((columns[canonical(name)] for name in names if canonical(name) in columns), None)
    if found is None:
        raise DataError(f"{path}: none of the columns {', '.join(map(repr, names))} holds the texts; the file has "
                        f"{', '.join(map(repr, columns.values()))}; give --text-column")
    return found


def training_layout(settings: DataArguments) -> ColumnLayout | None:
    """The columns a checkpoint's training data had, from its saved settings alone (the file may be gone)."""
    builtin = BUILTIN_DATASETS.get(settings.data or "")
    if builtin is not None:
        return ColumnLayout(builtin.text_column, builtin.label_columns, builtin.label_column, builtin.label_delimiter,
                            builtin.column_names)
    if bool(settings.label_columns) == bool(settings.label_column):
        return None
    return ColumnLayout(settings.text_column or PLAIN_TEXT_COLUMN, tuple(settings.label_columns),
                        settings.label_column, settings.label_delimiter)


def labelled_texts(sources: list[DataArguments], task: str) -> tuple[set[str], list[str]]:
    """The texts of every labelled file the settings name (--data, --validation-data, --test-data, --extra-data),
    as rows are matched; and a note for each data that could not be read (its rows are then not left out)."""
    keys: set[str] = set()
    notes = []
    for settings in sources:
        try:
            source = resolve_source(settings, task)
        except DataError as error:
            notes.append(f"rows already labelled in {settings.data} are not left out: {error}")
            continue
        paths = [source.train_path, source.test_path, source.validation_path, *map(Path, settings.extra_data)]
        for path in [p for p in paths if p is not None]:
            keys |= {text_key(text) for text in file_texts(path, settings, source.layout)}
    return keys, notes


def file_texts(path: Path, settings: DataArguments, layout: ColumnLayout) -> list[str]:
    """The texts of a labelled file: its layout's text column, or `text` (the page's form of --extra-data)."""
    reading = open_file(path, settings.encoding, settings.delimiter, settings.sheet)
    texts = []
    for frame in iter_frames(reading, chunksize=CHUNK_ROWS, column_names=layout.column_names):
        names = {canonical(c) for c in frame.columns}
        column = layout.text_column if canonical(layout.text_column) in names else PLAIN_TEXT_COLUMN
        column = find_columns(frame, [column], path)[0]
        texts += [text for text in frame[column].tolist() if isinstance(text, str)]
    return texts


def label_header(layout: ColumnLayout | None) -> tuple[str, list[str], str | None]:
    """How a file of new rows must hold its labels to be read as the training data is: the text column's name, the
    label columns (one 0/1 column per label, or one column of names) and the separator of several names in one cell
    (None: one name, or a JSON array). A headerless layout (GoEmotions' TSV), or none known, takes the plain form
    (`text` and `labels`), which --extra-data reads whatever the data's layout."""
    if layout is None or layout.column_names is not None:
        return PLAIN_TEXT_COLUMN, [PLAIN_LABELS_COLUMN], (layout.label_delimiter if layout else None) or "|"
    if layout.label_columns:
        return layout.text_column, list(layout.label_columns), None
    return layout.text_column, [str(layout.label_column)], layout.label_delimiter
