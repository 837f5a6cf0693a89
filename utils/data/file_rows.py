"""Every labelled row of one file, in the file's order, named as read errors name rows: what an audit of the labels
reads (training's splits would lose each row's place)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from utils.config import Config, SettingsError
from utils.data.files import find_columns, iter_frames
from utils.data.prepare import open_data_file, read_file, resolve_source
from utils.data.readers import LabeledTexts


@dataclass(frozen=True)
class FileRows:
    """The rows as training reads them (layout and task inferred as for training), with each row's number in the
    file (1 = the first row of data, as "row 12" in a read error) and its value in the file's id column, if any."""

    data: LabeledTexts
    task: str
    path: Path
    numbers: list[int]
    ids: list[str] | None
    notes: list[str]


def read_file_rows(config: Config) -> FileRows:
    """Every row of --data (a built-in dataset's training file), none held out; a bad row stops the read with its
    file, row and column."""
    if config.drop_invalid:
        raise SettingsError("--drop-invalid: an audit names every row by its number in the file, so it reads every "
                            "row; fix or remove the rows a training run's data report says it dropped")
    source = resolve_source(config, config.task)
    files: list[dict] = []
    data = read_file(source.train_path, "train", config, source, source.label_names, files)
    id_column = source.layout.id_column
    ids = None
    if id_column:
        frame = next(iter_frames(open_data_file(source.train_path, config), column_names=source.layout.column_names))
        ids = [str(value) for value in frame[find_columns(frame, [id_column], source.train_path)[0]].tolist()]
    notes = [f"read {len(data)} rows from {source.train_path}"]
    return FileRows(data, source.decided.task, source.train_path, list(range(1, len(data) + 1)), ids, notes)
