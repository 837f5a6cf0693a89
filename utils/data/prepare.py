"""From a Config to the training, validation and test sets, the same way for every mode."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from utils.config import Config
from utils.data.datasets import BUILTIN_DATASETS, locate_file
from utils.data.readers import (
    ColumnLayout,
    DataError,
    LabeledTexts,
    infer_layout,
    read_label_names,
    read_labeled_texts,
)
from utils.data.splits import stratified_split


@dataclass
class DataSplits:
    train: LabeledTexts
    validation: LabeledTexts
    test: LabeledTexts | None
    notes: list[str]
    text_column: str | None = None  # where the texts came from, for scoring files of the same layout later

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


def resolve_source(config: Config) -> DataSource:
    builtin = BUILTIN_DATASETS.get(config.data)
    if builtin is not None:
        if builtin.task != config.task:
            raise DataError(f"dataset '{builtin.name}' is {builtin.task}, but --task is {config.task}")
        layout = ColumnLayout(builtin.text_column, builtin.label_columns, builtin.label_column,
                              builtin.label_delimiter, builtin.column_names)
        names = (read_label_names(locate_file(builtin, builtin.labels_file, config.data_dir))
                 if builtin.labels_file else None)
        test_path = (Path(config.test_data) if config.test_data else
                     locate_file(builtin, builtin.test_file, config.data_dir) if builtin.test_file else None)
        test_split = config.test_split if config.test_split is not None else builtin.test_split
        return DataSource(locate_file(builtin, builtin.train_file, config.data_dir),
                          test_path, 0.0 if config.test_data or builtin.test_file else test_split,
                          layout, names, names is not None)
    if not Path(config.data).is_file():
        raise DataError(f"{config.data}: not a built-in dataset ({', '.join(BUILTIN_DATASETS)}) and no such file")
    if not config.text_column or not (config.label_columns or config.label_column):
        infer_columns(config)
    layout = ColumnLayout(config.text_column, tuple(config.label_columns), config.label_column,
                          config.label_delimiter or ("," if config.task == "multilabel" else None))
    names = read_label_names(config.labels_file) if config.labels_file else None
    return DataSource(Path(config.data), Path(config.test_data) if config.test_data else None,
                      0.0 if config.test_data else (config.test_split or 0.0), layout, names,
                      names is not None)


def infer_columns(config: Config) -> None:
    """Fill in the file's text and label columns the config leaves out, when only one layout fits, and say so.

    The config itself is completed, so that the checkpoint and its training config record the columns."""
    delimiter = config.label_delimiter or ("," if config.task == "multilabel" else None)
    layout, found = infer_layout(Path(config.data), config.task, config.text_column, config.label_columns,
                                 config.label_column, delimiter)
    config.text_column, config.label_column = layout.text_column, layout.label_column
    config.label_columns = list(layout.label_columns)
    print(f"{config.data}: inferred {found} (give --text-column and --label-column or --label-columns to choose "
          "otherwise)")


def read_with_labels(path: Path, config: Config, source: DataSource,
                     label_names: list[str] | None) -> LabeledTexts:
    return read_labeled_texts(path, config.task, source.layout, label_names, source.labels_by_id)


def prepare_splits(config: Config) -> DataSplits:
    """Read the data, hold out the test split (if the data has no test file) and the validation split."""
    source = resolve_source(config)
    full = read_with_labels(source.train_path, config, source, source.label_names)
    notes = [f"read {len(full)} rows from {source.train_path}"]
    test = None
    if source.test_path is not None:
        test = read_with_labels(source.test_path, config, source, full.label_names)
        notes.append(f"read {len(test)} test rows from {source.test_path}")
    elif source.test_split > 0:
        kept, held = stratified_split(full.labels, source.test_split, config.seed)
        full, test = full.subset(kept), full.subset(held)
        notes.append(f"held out {len(test)} rows ({source.test_split:.0%}, stratified, seed {config.seed}) "
                     "as the test set")
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
    return DataSplits(train, validation, test, notes, source.layout.text_column)


def read_test_set(config: Config, label_names: list[str]) -> LabeledTexts:
    """The data to evaluate a checkpoint on: --test-data, else the dataset's own test split."""
    if config.test_data:
        source = resolve_source(config)
        return read_with_labels(Path(config.test_data), config, source, label_names)
    splits = prepare_splits(config)
    if splits.test is None:
        raise DataError(f"{config.data}: has no test split; give --test-data or --test-split")
    if splits.label_names != label_names:
        raise DataError(f"{config.data}: labels {splits.label_names} differ from the checkpoint's {label_names}")
    return splits.test
