"""Readers: both label layouts in CSV/TSV/JSONL, every row kept, every error located by file, row and column."""

import csv
import json
import re

import numpy as np
import pandas as pd
import pytest
from conftest import CONFERENCES, TOXIC_LABELS

from utils.config import make_config
from utils.data.datasets import BUILTIN_DATASETS, SHARED_DATA_DIR
from utils.data.files import file_format
from utils.data.prepare import prepare_splits, resolve_source
from utils.data.readers import ColumnLayout, DataError, read_label_names, read_labeled_texts

JIGSAW = ColumnLayout("comment_text", label_columns=tuple(TOXIC_LABELS))
GOEMOTIONS = BUILTIN_DATASETS["goemotions"]
GOEMOTIONS_LAYOUT = ColumnLayout(GOEMOTIONS.text_column, label_column=GOEMOTIONS.label_column,
                                 label_delimiter=GOEMOTIONS.label_delimiter,
                                 column_names=GOEMOTIONS.column_names)
EMOTIONS = SHARED_DATA_DIR / "goemotions" / "emotions.txt"


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def located(error, path, row, column):
    """The message names the file, the row and the column."""
    message = str(error.value)
    assert str(path) in message
    assert re.search(rf"\brow {row}\b", message), message
    assert f"'{column}'" in message


# --- reading ------------------------------------------------------------------------------------------------

def test_jigsaw_layout_keeps_every_row_and_label(toxic_csv):
    frame = pd.read_csv(toxic_csv)
    data = read_labeled_texts(toxic_csv, "multilabel", JIGSAW)
    assert len(data) == len(frame) == 400
    assert data.texts == frame.comment_text.tolist()
    assert data.label_names == TOXIC_LABELS
    assert data.labels.dtype == np.float32
    np.testing.assert_array_equal(data.labels, frame[TOXIC_LABELS].to_numpy())


def test_full_toxic_file_keeps_every_row():
    path = SHARED_DATA_DIR / "toxic" / "train.csv"
    with path.open(newline="") as handle:
        rows = sum(1 for _ in csv.DictReader(handle))
    data = read_labeled_texts(path, "multilabel", JIGSAW)
    assert len(data) == rows == 12965
    assert int(data.labels[:, TOXIC_LABELS.index("threat")].sum()) == 104
    assert int(data.labels[:, TOXIC_LABELS.index("severe_toxic")].sum()) == 412


def test_goemotions_layout_label_ids_without_header():
    path = SHARED_DATA_DIR / "goemotions" / "dev.tsv"
    names = read_label_names(EMOTIONS)
    data = read_labeled_texts(path, "multilabel", GOEMOTIONS_LAYOUT, names, labels_by_id=True)
    lines = path.read_text(encoding="utf-8").splitlines()
    assert len(names) == 28
    assert len(data) == len(lines) == 5426  # no header row swallowed, no row dropped
    assert data.label_names == names
    for row in (0, 1, 2, 5425):
        text, ids, _ = lines[row].split("\t")
        assert data.texts[row] == text
        assert sorted(np.flatnonzero(data.labels[row]).tolist()) == sorted(int(i) for i in ids.split(","))
    assert data.labels.sum() == sum(len(line.split("\t")[1].split(",")) for line in lines)


def test_label_column_of_names_in_tsv_with_header(tmp_path):
    path = tmp_path / "names.tsv"
    path.write_text("text\tlabels\nso happy\tjoy\nhappy and scared\tjoy|fear\nmeh\t\n")
    data = read_labeled_texts(path, "multilabel", ColumnLayout("text", label_column="labels", label_delimiter="|"))
    assert data.label_names == ["fear", "joy"]  # the distinct names, sorted
    np.testing.assert_array_equal(data.labels, [[0, 1], [1, 1], [0, 0]])


def test_multiclass_label_column(conference_csv):
    frame = pd.read_csv(conference_csv)
    data = read_labeled_texts(conference_csv, "multiclass", ColumnLayout("Title", label_column="Conference"))
    assert data.label_names == sorted(frame.Conference.unique()) == CONFERENCES
    assert data.labels.dtype == np.int64
    assert [data.label_names[i] for i in data.labels] == frame.Conference.tolist()


def test_jsonl_both_layouts(tmp_path):
    path = write_jsonl(tmp_path / "rows.jsonl", [
        {"text": "first", "tags": ["b", "a"], "a": 1, "b": True},
        {"text": "second", "tags": "a", "a": 0, "b": "0"},
        {"text": "third", "tags": [], "a": 0.0, "b": False},
    ])
    by_list = read_labeled_texts(path, "multilabel", ColumnLayout("text", label_column="tags"))
    np.testing.assert_array_equal(by_list.labels, [[1, 1], [1, 0], [0, 0]])
    by_columns = read_labeled_texts(path, "multilabel", ColumnLayout("text", label_columns=("a", "b")))
    np.testing.assert_array_equal(by_columns.labels, [[1, 1], [0, 0], [0, 0]])
    assert by_columns.texts == ["first", "second", "third"]


def test_texts_that_look_like_missing_values_stay_text(tmp_path):
    path = tmp_path / "na.csv"
    path.write_text("text,y\nNA,1\nnan,0\nNone,1\nnull,0\n")
    data = read_labeled_texts(path, "multilabel", ColumnLayout("text", label_columns=("y",)))
    assert data.texts == ["NA", "nan", "None", "null"]


def test_subset_keeps_labels_aligned(toxic_csv):
    data = read_labeled_texts(toxic_csv, "multilabel", JIGSAW)
    part = data.subset([3, 0])
    assert part.texts == [data.texts[3], data.texts[0]]
    np.testing.assert_array_equal(part.labels, data.labels[[3, 0]])


# --- errors -------------------------------------------------------------------------------------------------

def test_missing_text_column_names_file_and_column(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text("body,toxic\nhello,0\n")
    with pytest.raises(DataError, match="missing column") as error:
        read_labeled_texts(path, "multilabel", ColumnLayout("text", label_columns=("toxic",)))
    assert str(path) in str(error.value) and "'text'" in str(error.value) and "'body'" in str(error.value)


def test_missing_label_column(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text("text,toxic\nhello,0\n")
    with pytest.raises(DataError, match="missing column.*'insult'") as error:
        read_labeled_texts(path, "multilabel", ColumnLayout("text", label_columns=("toxic", "insult")))
    assert str(path) in str(error.value)


@pytest.mark.parametrize("cell", ['""', '"   "'])
def test_empty_text_row(tmp_path, cell):
    path = tmp_path / "d.csv"
    path.write_text(f"text,toxic\nfine,0\nalso fine,1\n{cell},0\n")
    with pytest.raises(DataError, match="empty text") as error:
        read_labeled_texts(path, "multilabel", ColumnLayout("text", label_columns=("toxic",)))
    located(error, path, 3, "text")


@pytest.mark.parametrize("value", [17, None, 2.5, ["a"]])
def test_jsonl_text_that_is_not_text(tmp_path, value):
    path = write_jsonl(tmp_path / "d.jsonl", [{"text": "ok", "y": 1}, {"text": value, "y": 0}])
    with pytest.raises(DataError, match="expected text") as error:
        read_labeled_texts(path, "multilabel", ColumnLayout("text", label_columns=("y",)))
    located(error, path, 2, "text")


def test_short_csv_row_is_an_error_not_a_drop(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text("text,toxic,insult\nfine,0,1\nshort row,1\n")
    with pytest.raises(DataError) as error:
        read_labeled_texts(path, "multilabel", ColumnLayout("text", label_columns=("toxic", "insult")))
    located(error, path, 2, "insult")


@pytest.mark.parametrize("value", ["2", "yes", "-1", "0.5"])
def test_label_that_is_not_0_or_1(tmp_path, value):
    path = tmp_path / "d.csv"
    path.write_text(f"text,toxic,insult\na,0,0\nb,1,0\nc,0,{value}\n")
    with pytest.raises(DataError, match="0 or 1") as error:
        read_labeled_texts(path, "multilabel", ColumnLayout("text", label_columns=("toxic", "insult")))
    located(error, path, 3, "insult")


def test_jsonl_null_label(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [{"text": "a", "y": 1}, {"text": "b", "y": None}])
    with pytest.raises(DataError, match="0 or 1") as error:
        read_labeled_texts(path, "multilabel", ColumnLayout("text", label_columns=("y",)))
    located(error, path, 2, "y")


def test_unknown_class_name(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text("Title,Conference\nx,VLDB\ny,NeurIPS\n")
    with pytest.raises(DataError, match="unknown label 'NeurIPS'") as error:
        read_labeled_texts(path, "multiclass", ColumnLayout("Title", label_column="Conference"),
                           label_names=["VLDB", "WWW"])
    located(error, path, 2, "Conference")


def test_label_id_out_of_range(tmp_path):
    path = tmp_path / "d.tsv"
    path.write_text("one\t1\tid1\ntwo\t3,28\tid2\n")
    with pytest.raises(DataError, match="'28'") as error:
        read_labeled_texts(path, "multilabel", GOEMOTIONS_LAYOUT, read_label_names(EMOTIONS), labels_by_id=True)
    located(error, path, 2, "labels")


def test_multiclass_row_with_two_classes(tmp_path):
    path = tmp_path / "d.jsonl"
    write_jsonl(path, [{"t": "a", "c": "x"}, {"t": "b", "c": ["x", "y"]}])
    with pytest.raises(DataError, match="exactly one class") as error:
        read_labeled_texts(path, "multiclass", ColumnLayout("t", label_column="c"))
    located(error, path, 2, "c")


def test_layout_needs_exactly_one_label_description():
    with pytest.raises(DataError):
        ColumnLayout("text")
    with pytest.raises(DataError):
        ColumnLayout("text", label_columns=("a",), label_column="b")


def test_unknown_extension_missing_file_and_empty_file(tmp_path):
    layout = ColumnLayout("text", label_columns=("y",))
    (tmp_path / "d.docx").write_text("x")
    with pytest.raises(DataError, match="unknown file type"):
        read_labeled_texts(tmp_path / "d.docx", "multilabel", layout)
    with pytest.raises(DataError, match="no such file"):
        read_labeled_texts(tmp_path / "absent.csv", "multilabel", layout)
    (tmp_path / "empty.csv").write_text("text,y\n")
    with pytest.raises(DataError, match="no rows"):
        read_labeled_texts(tmp_path / "empty.csv", "multilabel", layout)


def test_repeated_label_names(tmp_path):
    path = tmp_path / "labels.txt"
    path.write_text("joy\nfear\njoy\n")
    with pytest.raises(DataError, match="repeated"):
        read_label_names(path)


# --- train and test must share the label set ----------------------------------------------------------------

def test_test_file_with_a_class_unknown_to_training(tmp_path, conference_csv):
    """Read before training and set aside, not an error: evaluation reports those rows apart."""
    test = tmp_path / "test.csv"
    test.write_text("Title,Conference\nA survey of caching,WWW\nScaling laws for vision,NeurIPS\n")
    config = make_config(task="multiclass", data=str(conference_csv), test_data=str(test), text_column="Title",
                         label_column="Conference")
    splits = prepare_splits(config)
    assert splits.test is not None and splits.test.texts == ["A survey of caching"]
    assert splits.test.unseen_texts == ["Scaling laws for vision"] and splits.test.unseen_labels == [["NeurIPS"]]
    assert splits.files[1]["unseen_label_rows"] == 1


def test_test_file_missing_a_label_column(tmp_path, toxic_csv):
    test = tmp_path / "test.csv"
    pd.read_csv(toxic_csv).drop(columns=["threat"]).head(5).to_csv(test, index=False)
    config = make_config(data=str(toxic_csv), test_data=str(test), text_column="comment_text",
                         label_columns=TOXIC_LABELS)
    with pytest.raises(DataError, match="'threat'") as error:
        prepare_splits(config)
    assert str(test) in str(error.value)


def test_test_file_with_a_matching_label_set(tmp_path, toxic_csv):
    test = tmp_path / "test.csv"
    pd.read_csv(toxic_csv).tail(30).to_csv(test, index=False)
    config = make_config(data=str(toxic_csv), test_data=str(test), text_column="comment_text",
                         label_columns=TOXIC_LABELS, val_split=0.25)
    splits = prepare_splits(config)
    assert splits.test is not None and len(splits.test) == 30
    assert len(splits.train) + len(splits.validation) == 400  # no test_split taken from the training file
    assert splits.test.label_names == splits.label_names == TOXIC_LABELS


# --- layouts inferred, delimiters detected ---------------------------------------------------------------------


def test_conference_like_file_needs_no_column_flags(conference_csv, capsys):
    """`--data my.csv` on a `Title, Conference` file: the text and the label column are inferred and said."""
    config = make_config(task="multiclass", data=str(conference_csv))
    splits = prepare_splits(config)
    assert "inferred text column 'Title', label column 'Conference'" in capsys.readouterr().out
    assert (splits.layout.text_column, splits.layout.label_column) == ("Title", "Conference")  # for the checkpoint
    assert (config.text_column, config.label_column) == (None, None)  # the settings stay as given
    assert splits.label_names == CONFERENCES
    assert splits.test is not None and len(splits.test) == 45  # the default held-out 15%, stratified
    assert len(splits.train) + len(splits.validation) == 255
    assert any("held out 45 rows (15%" in note and "no --test-data" in note for note in splits.notes)


def test_jigsaw_like_file_without_its_id_column_needs_no_column_flags(toxic_csv, tmp_path, capsys):
    path = tmp_path / "comments.csv"
    pd.read_csv(toxic_csv).drop(columns=["id"]).to_csv(path, index=False)
    source = resolve_source(make_config(data=str(path)), "multilabel")
    assert source.layout.text_column == "comment_text" and list(source.layout.label_columns) == TOXIC_LABELS
    assert "0/1 label columns 'toxic', 'severe_toxic'" in capsys.readouterr().out


def test_a_given_column_is_kept_and_the_rest_inferred(conference_csv, toxic_csv, capsys):
    source = resolve_source(make_config(data=str(conference_csv), label_column="Conference"), "multiclass")
    assert source.layout.text_column == "Title" and "inferred text column 'Title'" in capsys.readouterr().out
    source = resolve_source(make_config(data=str(toxic_csv), text_column="comment_text"), "multilabel")
    assert source.layout.id_column == "id" and list(source.layout.label_columns) == TOXIC_LABELS  # 'id' set aside


@pytest.mark.parametrize(("header", "row", "task"), [
    ("id,comment_text,toxic,insult", "a {i},you fool number {i},{odd},0", "multilabel"),  # ids with spaces
    ("title,abstract,venue", "title number {i},a long abstract number {i},WWW", "multiclass"),  # two texts
    ("text,score", "some words number {i},0.{i}5", "multiclass"),  # numbers, not labels
    ("text,a,b", "some words number {i},{odd},{even}", "multiclass"),  # 0/1 columns cannot hold one class
])
def test_an_ambiguous_layout_keeps_the_clear_error(tmp_path, header, row, task):
    path = tmp_path / "data.csv"
    rows = [row.format(i=i, odd=i % 2, even=1 - i % 2) for i in range(60)]
    path.write_text("\n".join([header, *rows]) + "\n")
    with pytest.raises(DataError, match="cannot tell .* give --text-column and --label-columns") as error:
        prepare_splits(make_config(task=task, data=str(path)))
    assert str(path) in str(error.value) and header.split(",")[0] in str(error.value)


def test_a_missing_file_or_unknown_name_is_said_plainly(tmp_path):
    with pytest.raises(DataError, match="not a built-in dataset .* and no such file"):
        resolve_source(make_config(data=str(tmp_path / "absent.csv")), "multilabel")


def test_tab_separated_txt_file_is_read_like_a_tsv(toxic_csv, tmp_path, capsys):
    """SemEval-style: a header, tab-separated, named .txt."""
    frame = pd.read_csv(toxic_csv).drop(columns=["id"]).head(120)
    frame["comment_text"] = frame.comment_text.str.replace(r"\s+", " ", regex=True).str.strip()
    path = tmp_path / "2018-E-c-En-train.txt"
    lines = ["\t".join(frame.columns)] + ["\t".join(map(str, row)) for row in frame.itertuples(index=False)]
    path.write_text("\n".join(lines) + "\n")  # raw text, quotes and all, as shared tasks publish it
    assert file_format(path) == "tsv"
    source = resolve_source(make_config(data=str(path)), "multilabel")
    data = read_labeled_texts(path, "multilabel", source.layout)
    assert data.texts == frame.comment_text.tolist() and data.label_names == TOXIC_LABELS
    np.testing.assert_array_equal(data.labels, frame[TOXIC_LABELS].to_numpy())


def test_comma_separated_and_json_lines_txt_files_are_recognised(conference_csv, tmp_path):
    comma = tmp_path / "titles.txt"
    comma.write_text(conference_csv.read_text())
    assert file_format(comma) == "csv"
    data = read_labeled_texts(comma, "multiclass", ColumnLayout("Title", label_column="Conference"))
    assert len(data) == 300
    lines = write_jsonl(tmp_path / "rows.txt", [{"text": "first words", "y": 1}, {"text": "second", "y": 0}])
    assert file_format(lines) == "jsonl"
    mixed = tmp_path / "mixed.txt"
    mixed.write_text("a\tb\nno separator here\n")
    with pytest.raises(DataError, match="tabs or commas"):
        file_format(mixed)
