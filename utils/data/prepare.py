"""From the settings to the training, validation and test sets, the same way for every mode; what reading decides
(the task, the columns) is returned as a DataLayout, never written back into the settings."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from models.none_of_these import conventional_none_label
from utils.config import AUTO_TASK, Config, DataArguments, SettingsError
from utils.data.datasets import BUILTIN_DATASETS, DEFAULT_TEST_SPLIT, locate_file
from utils.data.extra import PLAIN_LABELS_COLUMN, PLAIN_TEXT_COLUMN, ExtraRows, merge_extra, newest_rows
from utils.data.files import FileReading, canonical, iter_frames, open_file
from utils.data.layout import infer_layout, infer_task
from utils.data.readers import ColumnLayout, DataError, LabeledTexts, read_label_names, read_labeled_texts
from utils.data.splits import stratified_split


@dataclass(frozen=True)
class DataLayout:
    """What reading the data decided beside the settings: the task (where it was auto) and a file's columns (where
    they were inferred). Training records these among the checkpoint's settings, as given ones."""

    task: str
    text_column: str | None = None
    label_columns: tuple[str, ...] = ()
    label_column: str | None = None
    label_delimiter: str | None = None

    @classmethod
    def as_given(cls, settings: DataArguments, task: str) -> DataLayout:
        """The columns as the settings give them (a built-in dataset's own are not settings), with `task`."""
        return cls(task, settings.text_column, tuple(settings.label_columns), settings.label_column,
                   settings.label_delimiter)

    def settings(self) -> dict[str, Any]:
        """The decisions under the names of the settings they stand for (training_config.json's keys)."""
        return {"task": self.task, "text_column": self.text_column, "label_columns": list(self.label_columns),
                "label_column": self.label_column, "label_delimiter": self.label_delimiter}


@dataclass
class DataSplits:
    train: LabeledTexts
    validation: LabeledTexts
    test: LabeledTexts | None
    notes: list[str]
    layout: DataLayout
    text_column: str | None = None  # where the texts came from, for scoring files of the same layout later
    files: list[dict[str, Any]] = field(default_factory=list)  # each file as read, for the data report
    none_label: str | None = None  # multi-class: the class that means "none of these" (--none-label)
    extra: ExtraRows | None = None  # what --extra-data added and replaced

    @property
    def label_names(self) -> list[str]:
        return self.train.label_names


@dataclass
class DataSource:
    """Resolved files and layout of the data a Config names."""

    train_path: Path
    test_path: Path | None
    test_split: float
    layout: ColumnLayout
    label_names: list[str] | None
    labels_by_id: bool
    validation_path: Path | None
    decided: DataLayout  # the task and columns as read


def resolve_source(settings: DataArguments, task: str) -> DataSource:
    """The files and layout of the data the settings name, read as `task` (auto: the data's own)."""
    validation = Path(settings.validation_data) if settings.validation_data else None
    builtin = BUILTIN_DATASETS.get(settings.data or "")
    if builtin is not None:
        task = builtin.task if task == AUTO_TASK else task
        if builtin.task != task:
            raise DataError(f"dataset '{builtin.name}' is {builtin.task}, but --task is {task}")
        layout = ColumnLayout(builtin.text_column, builtin.label_columns, builtin.label_column,
                              builtin.label_delimiter, builtin.column_names)
        names = (read_label_names(locate_file(builtin, builtin.labels_file, settings.data_dir))
                 if builtin.labels_file else None)
        test_path = (Path(settings.test_data) if settings.test_data else
                     locate_file(builtin, builtin.test_file, settings.data_dir) if builtin.test_file else None)
        test_split = settings.test_split if settings.test_split is not None else builtin.test_split
        return DataSource(locate_file(builtin, builtin.train_file, settings.data_dir),
                          test_path, 0.0 if settings.test_data or builtin.test_file else test_split,
                          layout, names, names is not None, validation, DataLayout.as_given(settings, task))
    if not settings.data or not Path(settings.data).is_file():
        raise DataError(f"{settings.data}: not a built-in dataset ({', '.join(BUILTIN_DATASETS)}) and no such file")
    layout, decided = infer_columns(settings, task)
    names = read_label_names(settings.labels_file) if settings.labels_file else None
    test_split = settings.test_split if settings.test_split is not None else DEFAULT_TEST_SPLIT
    return DataSource(Path(settings.data), Path(settings.test_data) if settings.test_data else None,
                      0.0 if settings.test_data else test_split, layout, names, names is not None, validation, decided)


def open_data_file(path: Path, settings: DataArguments) -> FileReading:
    """`path` as every mode reads it: --encoding, --delimiter and --sheet where given, detected elsewhere."""
    return open_file(path, settings.encoding, settings.delimiter, settings.sheet)


def infer_columns(settings: DataArguments, task: str) -> tuple[ColumnLayout, DataLayout]:
    """The user's file's layout: the columns the settings leave out inferred when only one layout fits (and said),
    the given ones matched ignoring case and spaces, a multi-label column's separator detected; with it, the task
    and columns as the checkpoint's training config records them."""
    reading = open_data_file(Path(str(settings.data)), settings)
    if not reading.header:
        print(f"{settings.data}: its first row holds data, not column names; the columns are called column_1, "
              "column_2, ... (in the file's order)")
    auto = task == AUTO_TASK
    layout, found = infer_layout(reading, "multilabel" if auto else task, settings.text_column,
                                 settings.label_columns, settings.label_column, settings.label_delimiter)
    why = None
    if auto:  # the most general reading first, then the task it implies
        task, why = infer_task(reading, layout)
        layout = layout if task == "multilabel" else dataclasses.replace(layout, label_delimiter=None)
    if found:
        print(f"{settings.data}: inferred {found} (give --text-column and --label-column or --label-columns to "
              "choose otherwise)")
    if why is not None:
        print(f"{settings.data}: inferred task {task}: {why} (give --task to choose otherwise)")
    decided = DataLayout(task, layout.text_column, tuple(layout.label_columns), layout.label_column,
                         layout.label_delimiter if layout.label_column else settings.label_delimiter)
    return layout, decided


def read_file(path: Path, role: str, settings: DataArguments, source: DataSource, label_names: list[str] | None,
              files: list[dict[str, Any]]) -> LabeledTexts:
    """One file read with the source's layout and task; what was read is appended to `files` for the report."""
    reading = open_data_file(path, settings)
    data = read_labeled_texts(reading, source.decided.task, source.layout, label_names, source.labels_by_id,
                              drop_invalid=settings.drop_invalid, keep_unseen=role in ("validation", "test"))
    layout = {"text_column": source.layout.text_column, "label_columns": list(source.layout.label_columns),
              "label_column": source.layout.label_column, "label_delimiter": source.layout.label_delimiter,
              "id_column": source.layout.id_column}
    files.append({"role": role, **reading.describe(), "layout": layout, "rows_read": data.rows_read,
                  "rows_used": len(data), "dropped": data.dropped, "unseen_label_rows": len(data.unseen_texts)})
    return data


def prepare_splits(config: Config, task: str | None = None) -> DataSplits:
    """Read the data as `task` (default: --task), hold out the test split (if the data has no test file) and the
    validation split (if there is no validation file); every file is read and checked here, before any training."""
    source = resolve_source(config, task or config.task)
    files: list[dict[str, Any]] = []
    full = read_file(source.train_path, "train", config, source, source.label_names, files)
    notes = [f"read {len(full)} rows from {source.train_path}" + dropped_note(full)]
    test = None
    if source.test_path is not None:
        test = read_file(source.test_path, "test", config, source, full.label_names, files)
        notes.append(f"read {len(test)} test rows from {source.test_path}" + dropped_note(test))
    elif source.test_split > 0:
        kept, held = stratified_split(full.labels, source.test_split, config.seed)
        full, test = full.subset(kept), full.subset(held)
        notes.append(f"held out {len(test)} rows ({source.test_split:.0%}, stratified, seed {config.seed}) "
                     "as the test set" + ("" if config.test_split is not None or config.data in BUILTIN_DATASETS
                                          else " (no --test-data given; --test-split 0 keeps them for training)"))
    if source.validation_path is not None:
        train = full
        validation = read_file(source.validation_path, "validation", config, source, full.label_names, files)
        notes.append(f"read {len(validation)} validation rows from {source.validation_path}"
                     + dropped_note(validation))
    else:
        kept, held = stratified_split(full.labels, config.val_split, config.seed + 1)
        train, validation = full.subset(kept), full.subset(held)
        notes.append(f"held out {len(validation)} rows ({config.val_split:.0%}) for validation")
    if config.max_train_samples and config.max_train_samples < len(train):
        fraction = 1 - config.max_train_samples / len(train)
        kept, _ = stratified_split(train.labels, fraction, config.seed + 2)
        notes.append(f"kept {len(kept)} of {len(train)} training rows (--max-train-samples)")
        train = train.subset(kept)
    if len(train) == 0 or len(validation) == 0:
        raise DataError(f"{source.train_path}: too few rows for a training and a validation set")
    splits = DataSplits(train, validation, test, notes, source.decided, source.layout.text_column, files)
    return with_none_label(with_extra_data(splits, config, source), config.none_label)


def with_extra_data(splits: DataSplits, settings: DataArguments, source: DataSource) -> DataSplits:
    """The splits with the --extra-data rows added to training (never to validation or test), each text once: a
    text already in a split keeps its place and takes the extra file's labels."""
    if not settings.extra_data:
        return splits
    extras = [read_extra(Path(path), settings, source, splits.label_names, splits.files)
              for path in settings.extra_data]
    report = ExtraRows([str(path) for path in settings.extra_data], sum(len(extra) for extra in extras))
    held = {"validation": splits.validation} | ({"test": splits.test} if splits.test is not None else {})
    newest = newest_rows(extras)
    report.texts = len(newest)
    train, held = merge_extra(splits.train, held, newest, report)
    return dataclasses.replace(splits, train=train, validation=held["validation"], test=held.get("test"),
                               notes=[*splits.notes, report.note()], extra=report)


def read_extra(path: Path, settings: DataArguments, source: DataSource, label_names: list[str],
               files: list[dict[str, Any]]) -> LabeledTexts:
    """One --extra-data file, in the data's layout or in the plain form the page writes (a `text` and a `labels`
    field: a list of label names, or one class)."""
    reading = open_data_file(path, settings)
    first = next(iter_frames(reading, 1), None) if reading.header else None  # the page's form has a header
    columns = {canonical(c) for c in first.columns} if first is not None else set()
    theirs = source.layout.column_names is None and canonical(source.layout.text_column) in columns
    if not theirs and {PLAIN_TEXT_COLUMN, PLAIN_LABELS_COLUMN} <= columns:
        delimiter = (source.layout.label_delimiter or "|") if source.decided.task == "multilabel" else None
        plain = ColumnLayout(PLAIN_TEXT_COLUMN, label_column=PLAIN_LABELS_COLUMN, label_delimiter=delimiter)
        source = dataclasses.replace(source, layout=plain, labels_by_id=False)
    return read_file(path, "extra", settings, source, label_names, files)


def none_label_of(setting: str, task: str, label_names: list[str]) -> str | None:
    """The data's "none of these" class as --none-label names it (a label, auto or off), or None."""
    if setting in ("auto", "off") and task != "multiclass":
        return None
    if task != "multiclass":
        raise SettingsError(f"--none-label {setting!r}: only multi-class data has a 'none of these' class")
    name = {"auto": conventional_none_label(label_names), "off": None}.get(setting, setting)
    if name is not None and name not in label_names:
        shown = ", ".join(label_names[:20]) + (", ..." if len(label_names) > 20 else "")
        raise SettingsError(f"--none-label {setting!r} is not a label of the training data (its labels: {shown})")
    return name


def with_none_label(splits: DataSplits, setting: str) -> DataSplits:
    """The splits with their "none of these" class named, and said."""
    name = none_label_of(setting, splits.layout.task, splits.label_names)
    if name is not None:
        index = splits.label_names.index(name)
        rows = [int((split.labels == index).sum()) for split in (splits.train, splits.validation)]
        splits.notes.append(f"'{name}' read as 'none of these' ({rows[0]} training, {rows[1]} validation rows): it "
                            "trains as a class, and its validation rows tune when the model answers it "
                            "(--none-label off reads it as any class)")
    return dataclasses.replace(splits, none_label=name)


def dropped_note(data: LabeledTexts) -> str:
    parts = [f"{count} with {reason}" for reason, count in data.dropped.items()]
    parts += [f"{len(data.unseen_texts)} with labels training never saw (set aside)"] if data.unseen_texts else []
    return f"; dropped {', '.join(parts)} (of {data.rows_read})" if parts else ""


def read_test_set(config: Config, label_names: list[str], task: str | None = None) -> LabeledTexts:
    """The data to evaluate a checkpoint on, read as `task` (default: --task): --test-data, else the dataset's own
    test split. Rows of labels the checkpoint never learnt are set aside in the result (`unseen_texts`), not an
    error."""
    if config.test_data:
        source = resolve_source(config, task or config.task)
        return read_file(Path(config.test_data), "test", config, source, label_names, [])
    splits = prepare_splits(config, task)
    if splits.test is None:
        raise DataError(f"{config.data}: has no test split; give --test-data or --test-split")
    if splits.label_names != label_names:
        raise DataError(f"{config.data}: labels {splits.label_names} differ from the checkpoint's {label_names}")
    return splits.test
