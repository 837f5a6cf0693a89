"""The files users bring (issue #29): Windows encodings, semicolons, spreadsheets, Parquet, joined labels, id
columns and odd headers are read without flags; what was read, dropped, duplicated or never learnt is reported."""

import json

import numpy as np
import pandas as pd
import pytest
from conftest import CONFERENCES, TOXIC_LABELS

import eval as evaluation
from inferer import ModelInferer
from predict import predict_file
from utils.config import make_config
from utils.data.datasets import SHARED_DATA_DIR
from utils.data.files import MAX_TEXT_CHARS, SAMPLE_BYTES, has_header, open_file, sniff_delimiter
from utils.data.prepare import prepare_splits, resolve_source
from utils.data.readers import DataError
from utils.data.report import REPORT_FILE, data_report, write_data_report


@pytest.fixture
def titles(conference_csv) -> pd.DataFrame:
    """300 conference titles, some with the accents a Windows export carries."""
    frame = pd.read_csv(conference_csv)
    frame.loc[:9, "Title"] = [f"Über café résumé naïve señor {title}" for title in frame.Title[:10]]
    return frame


def read_user_file(path, task="multiclass", **settings):
    """Everything a training run reads, with no test rows held out unless asked."""
    return prepare_splits(make_config(task=task, data=str(path), **{"test_split": 0.0, **settings}))


def all_texts(splits):
    return splits.train.texts + splits.validation.texts + (splits.test.texts if splits.test else [])


def test_a_windows_1252_file_is_decoded_and_its_encoding_said(titles, tmp_path):
    path = tmp_path / "titles.csv"
    titles.to_csv(path, index=False, encoding="cp1252")
    with pytest.raises(UnicodeDecodeError):
        path.read_text(encoding="utf-8")
    splits = read_user_file(path)
    assert splits.files[0]["encoding"] in ("cp1252", "latin-1", "iso8859-1", "iso8859-15")
    assert "encoding" in splits.files[0]["detected"]
    assert sorted(all_texts(splits)) == sorted(titles.Title)  # "Über café ..." intact
    assert splits.label_names == CONFERENCES
    given = read_user_file(path, encoding="latin-1")
    assert given.files[0]["encoding"] == "latin-1" and sorted(all_texts(given)) == sorted(titles.Title)


def test_a_file_without_a_header_row_is_read_from_its_first_row(toxic_csv, titles, tmp_path, capsys):
    """GoEmotions' own layout: text, label ids joined by commas, a row id, and no header; the ids become label
    names in numeric order. A class-per-row CSV without a header: its first class repeats below."""
    toxic = pd.read_csv(toxic_csv).head(200)
    ids = [",".join(str(j) for j in np.flatnonzero(row)) or "11" for row in toxic[TOXIC_LABELS].to_numpy()]
    path = tmp_path / "emotions.tsv"
    pd.DataFrame({"text": toxic.comment_text.str.replace(r"\s+", " ", regex=True), "labels": ids,
                  "id": [f"e{i:06x}" for i in range(200)]}).to_csv(path, sep="\t", header=False, index=False)
    splits = read_user_file(path, task="multilabel")
    assert splits.files[0]["header"] is False and splits.files[0]["rows_used"] == 200
    assert splits.files[0]["layout"]["text_column"] == "column_1"
    assert splits.files[0]["layout"]["id_column"] == "column_3"
    assert splits.label_names == sorted(set(",".join(ids).split(",")), key=int)  # "2" before "11"
    assert "its first row holds data" in capsys.readouterr().out
    plain = tmp_path / "titles.csv"
    titles.sort_values("Conference").to_csv(plain, header=False, index=False)
    assert read_user_file(plain).files[0]["header"] is False
    assert read_user_file(plain).label_names == CONFERENCES


@pytest.mark.parametrize("first_row", ["id,comment_text,toxic", "Comment Text,Label,Row", "text,intent,2nd"])
def test_a_header_row_is_kept_as_names(first_row):
    rows = "\n".join(f"r{i},this is the text of row number {i} in the file,{i % 2}" for i in range(30))
    assert has_header(f"{first_row}\n{rows}\n", ",", "csv", truncated=False)
    assert not has_header(rows, ",", "csv", truncated=False)


def test_a_semicolon_separated_file_is_sniffed(titles, tmp_path):
    path = tmp_path / "titles.csv"
    titles.to_csv(path, index=False, sep=";", encoding="utf-8-sig", lineterminator="\r\n")  # Excel, Europe
    splits = read_user_file(path)
    assert (splits.files[0]["delimiter"], splits.files[0]["encoding"]) == (";", "utf-8-sig")
    assert splits.files[0]["layout"]["text_column"] == "Title"
    assert splits.files[0]["rows_used"] == 300 and sorted(all_texts(splits)) == sorted(titles.Title)
    with pytest.raises(DataError, match="cannot be parsed as CSV"):  # --delimiter ',' is obeyed, and wrong here
        read_user_file(path, delimiter=",")


def test_an_xlsx_workbook_first_sheet_or_the_one_named(titles, tmp_path):
    path = tmp_path / "titles.xlsx"
    with pd.ExcelWriter(path) as writer:
        titles.to_excel(writer, sheet_name="all", index=False)
        titles.head(100).to_excel(writer, sheet_name="some", index=False)
    splits = read_user_file(path)
    assert splits.files[0]["format"] == "xlsx" and splits.files[0]["rows_used"] == 300
    assert sorted(all_texts(splits)) == sorted(titles.Title) and splits.label_names == CONFERENCES
    assert read_user_file(path, sheet="some").files[0]["rows_used"] == 100
    with pytest.raises(DataError, match="no sheet 'none'.*'all', 'some'"):
        read_user_file(path, sheet="none")


def test_a_parquet_file_keeps_its_numbers(toxic_csv, tmp_path):
    frame = pd.read_csv(toxic_csv).drop(columns=["id"])
    path = tmp_path / "comments.parquet"
    frame.to_parquet(path, index=False)
    splits = read_user_file(path, task="multilabel")
    assert splits.label_names == TOXIC_LABELS and splits.files[0]["rows_used"] == 400
    every = pd.concat([pd.DataFrame(part.labels, columns=TOXIC_LABELS).assign(text=part.texts)
                       for part in (splits.train, splits.validation)])
    expected = frame.rename(columns={"comment_text": "text"})
    pd.testing.assert_frame_equal(every.sort_values("text").reset_index(drop=True)[expected.columns],
                                  expected.sort_values("text").reset_index(drop=True), check_dtype=False)


def joined_labels(toxic_csv, join):
    frame = pd.read_csv(toxic_csv)
    tags = [join([n for n in TOXIC_LABELS if int(row[n]) == 1]) for _, row in frame.iterrows()]
    return pd.DataFrame({"comment": frame.comment_text, "tags": tags}), frame


@pytest.mark.parametrize(("join", "delimiter"), [("|".join, "|"), (json.dumps, None)])
def test_labels_joined_in_one_column_are_split_into_the_six_labels(toxic_csv, tmp_path, join, delimiter):
    tagged, frame = joined_labels(toxic_csv, join)
    path = tmp_path / "tagged.csv"
    tagged.to_csv(path, index=False)
    assert tagged.tags.nunique() > 6  # combinations such as toxic|insult
    source = resolve_source(make_config(data=str(path)), "multilabel")
    assert (source.layout.label_column, source.layout.label_delimiter) == ("tags", delimiter)
    splits = read_user_file(path, task="multilabel")
    assert splits.label_names == sorted(TOXIC_LABELS)
    counts = splits.train.labels.sum(axis=0) + splits.validation.labels.sum(axis=0)
    assert counts.tolist() == frame[sorted(TOXIC_LABELS)].sum().tolist()


def test_two_separators_that_both_fit_stop_and_name_the_flag(tmp_path):
    path = tmp_path / "tags.csv"
    rows = [f"some words number {i},{['a|b', 'a|c', 'a;b', 'b;c', 'a', 'b', 'c'][i % 7]}" for i in range(70)]
    path.write_text("text,tags\n" + "\n".join(rows) + "\n")
    with pytest.raises(DataError, match=r"column 'tags'.*'\|': 5 names; ';': 5 names.*--label-delimiter"):
        read_user_file(path, task="multilabel")
    splits = read_user_file(path, task="multilabel", label_delimiter=";")
    assert splits.label_names == ["a", "a|b", "a|c", "b", "c"]


def test_an_id_column_a_spaced_text_header_and_capital_label_columns(toxic_csv, tmp_path, capsys):
    frame = pd.read_csv(toxic_csv)
    path = tmp_path / "export.csv"
    frame.rename(columns={"comment_text": " Comment Text ", **{n: n.upper() for n in TOXIC_LABELS}}).to_csv(
        path, index=False)
    splits = read_user_file(path, task="multilabel", test_split=None)
    layout = splits.files[0]["layout"]
    assert (layout["id_column"], layout["text_column"]) == ("id", "Comment Text")
    assert splits.label_names == [n.upper() for n in TOXIC_LABELS]
    inferred = "inferred row id column 'id', text column ' Comment Text ', 0/1 label columns 'TOXIC'"
    assert inferred in capsys.readouterr().out
    assert sorted(all_texts(splits)) == sorted(frame.comment_text)
    # the same layout, named in any case, reads a test file whose headers are written otherwise
    test = tmp_path / "test.csv"
    frame.head(20).rename(columns={"comment_text": "comment text "}).to_csv(test, index=False)
    given = read_user_file(path, task="multilabel", test_data=str(test), text_column="comment text")
    assert given.test is not None and given.test.texts == frame.comment_text.head(20).tolist()


def test_a_user_file_gets_a_test_split_announced_before_training(conference_csv, tmp_path, capsys):
    splits = prepare_splits(make_config(task="multiclass", data=str(conference_csv)))
    assert splits.test is not None and len(splits.test) == 45
    assert sorted(np.bincount(splits.test.labels).tolist()) == [9] * 5  # stratified
    path = write_data_report(splits, tmp_path)
    printed = capsys.readouterr().out
    assert "held out 45 rows (15%, stratified" in printed and "no --test-data given" in printed
    assert "rows per split: train 217, validation 38, test 45" in printed
    assert json.loads(path.read_text())["rows"] == {"train": 217, "validation": 38, "test": 45}
    assert path.name == REPORT_FILE


def test_validation_file_replaces_the_validation_split(conference_csv, titles, tmp_path):
    validation = tmp_path / "validation.csv"
    titles.tail(50).to_csv(validation, index=False)
    splits = read_user_file(conference_csv, validation_data=str(validation))
    assert len(splits.train) == 300 and splits.validation.texts == titles.Title.tail(50).tolist()
    assert [f["role"] for f in splits.files] == ["train", "validation"]


def test_duplicates_and_conflicting_labels_are_reported_with_their_splits(titles, tmp_path):
    relabelled = titles.head(30).assign(Conference=lambda f: f.Conference.map(
        lambda c: CONFERENCES[(CONFERENCES.index(c) + 1) % 5]))
    path = tmp_path / "titles.csv"
    pd.concat([titles, relabelled]).to_csv(path, index=False)
    splits = read_user_file(path, test_split=0.2)
    duplicates = data_report(splits)["duplicates"]
    assert (duplicates["texts"], duplicates["extra_rows"], duplicates["conflicting_texts"]) == (30, 30, 30)
    assert sum(duplicates["by_splits"].values()) == 30
    assert set(duplicates["by_splits"]) <= {"train", "validation", "test", "train+validation", "train+test",
                                            "validation+test"}
    assert len(duplicates["conflicting_examples"][0]["labels"]) == 2


def test_drop_invalid_drops_empty_texts_and_missing_labels_with_a_count(titles, tmp_path):
    broken = titles.copy()
    broken.loc[[3, 50, 100], "Title"] = ["", "  ", ""]
    broken.loc[[7, 200], "Conference"] = ""
    path = tmp_path / "titles.csv"
    broken.to_csv(path, index=False)
    with pytest.raises(DataError, match=r"row 4, column 'Title': empty text"):
        read_user_file(path)
    splits = read_user_file(path, drop_invalid=True)
    assert splits.files[0]["dropped"] == {"empty or missing text": 3, "missing label": 2}
    assert (splits.files[0]["rows_read"], splits.files[0]["rows_used"]) == (300, 295)
    assert len(all_texts(splits)) == 295 and splits.label_names == CONFERENCES
    assert "dropped 3 with empty or missing text, 2 with missing label (of 300)" in splits.notes[0]


def test_evaluation_counts_test_rows_of_a_class_training_never_had(multiclass_checkpoint, conference_csv, tmp_path):
    test = tmp_path / "test.csv"
    known = pd.read_csv(conference_csv).tail(20)
    novel = pd.DataFrame({"Title": [f"Scaling laws for vision transformers, part {i}" for i in range(7)],
                          "Conference": "NeurIPS"})
    pd.concat([known, novel]).to_csv(test, index=False)
    config = make_config(task="multiclass", data=str(conference_csv), test_data=str(test), text_column="Title",
                         label_column="Conference", output_dir=str(tmp_path / "eval"))
    report = evaluation.run(config, multiclass_checkpoint)
    assert report["metrics"]["examples"] == 20  # the new class's rows are outside the metrics
    unseen = report["unseen_labels"]
    assert unseen["rows"] == 7 and unseen["labels"] == {"NeurIPS": 7}
    assert sum(unseen["predicted"].values()) == 7 and set(unseen["predicted"]) <= set(CONFERENCES)
    assert "never saw" in (tmp_path / "eval" / "eval_report.html").read_text()


def test_predict_writes_a_latin1_semicolon_file_back_in_kind(multilabel_checkpoint, toxic_csv, tmp_path):
    frame = pd.read_csv(toxic_csv, dtype=str, keep_default_na=False).head(40)
    frame = frame[frame.comment_text.map(lambda t: t.isascii())].head(30).copy()
    frame.loc[frame.index[:5], "comment_text"] = "Grüße aus Köln, très bien; à bientôt " + frame.comment_text[:5]
    source, target = tmp_path / "kommentare.csv", tmp_path / "scored.csv"
    frame.to_csv(source, index=False, sep=";", encoding="latin-1")
    inferer = ModelInferer(multilabel_checkpoint)
    rows = predict_file(inferer, open_file(source), target, "comment_text")
    assert rows == 30
    written = open_file(target)
    assert written.delimiter == ";" and written.encoding != "utf-8"
    target.read_bytes().decode("latin-1")
    back = pd.read_csv(target, sep=";", encoding="latin-1", dtype=str, keep_default_na=False)
    added = [f"score_{n}" for n in TOXIC_LABELS] + ["labels", "truncated"]
    assert list(back.columns) == list(frame.columns) + added
    pd.testing.assert_frame_equal(back[frame.columns], frame.reset_index(drop=True))
    parquet_in, parquet_out = tmp_path / "in.parquet", tmp_path / "out.parquet"
    frame.to_parquet(parquet_in, index=False)
    predict_file(inferer, open_file(parquet_in), parquet_out, "comment_text")
    scored = pd.read_parquet(parquet_out)
    pd.testing.assert_frame_equal(scored[frame.columns], frame.reset_index(drop=True))
    assert list(scored.columns[len(frame.columns):]) == added


@pytest.mark.parametrize(("labels", "task", "reason"), [
    (lambda frame: frame.Conference, "multiclass", "holds one class"),  # one class a row, as clinc150's intents
    (lambda frame: ["|".join([c] + ([CONFERENCES[0]] if i % 3 == 0 and c != CONFERENCES[0] else []))
                    for i, c in enumerate(frame.Conference)], "multilabel", "hold several labels"),
])
def test_without_task_a_files_label_column_says_which_task(titles, tmp_path, capsys, labels, task, reason):
    path = tmp_path / "file.csv"
    pd.DataFrame({"Title": titles.Title, "Venue": labels(titles)}).to_csv(path, index=False)
    config = make_config(data=str(path), test_split=0.0)
    splits = prepare_splits(config)
    out = capsys.readouterr().out
    assert splits.layout.task == task and f"inferred task {task}: " in out and reason in out
    assert config.task == "auto"  # what reading decided is its own result; the settings stay as given
    assert splits.label_names == sorted(CONFERENCES)
    assert splits.train.labels.ndim == (1 if task == "multiclass" else 2)
    asked = make_config(task="multilabel", data=str(path), test_split=0.0)  # a given task is kept
    assert (given := prepare_splits(asked)).train.labels.ndim == 2 and given.layout.task == "multilabel"


def test_without_task_0_1_columns_json_lists_and_built_in_datasets_keep_their_task(toxic_csv, tmp_path, capsys):
    assert (splits := prepare_splits(make_config(data=str(toxic_csv)))).train.labels.shape[1] == 6
    assert splits.layout.task == "multilabel" and "one 0/1 column per label" in capsys.readouterr().out
    tagged, _ = joined_labels(toxic_csv, json.dumps)
    tagged.to_json(path := tmp_path / "tagged.jsonl", orient="records", lines=True)
    assert (splits := prepare_splits(make_config(data=str(path)))).label_names == sorted(TOXIC_LABELS)
    assert splits.layout.task == "multilabel"
    assert (config := make_config(data="conference")).task == "auto"
    assert prepare_splits(config).layout.task == "multiclass" and config.task == "auto"


def test_a_later_row_with_several_classes_names_the_flag(titles, tmp_path):
    """The task is read from the first 2,000 rows; a row past them with two classes stops the run, saying how."""
    frame = pd.concat([titles] * 8, ignore_index=True)[["Title", "Conference"]]
    frame["Title"] = [f"{title}, part {i}" for i, title in enumerate(frame.Title)]
    frame.loc[2100, "Conference"] = json.dumps(["VLDB", "WWW"])
    frame.to_csv(path := tmp_path / "file.csv", index=False)
    with pytest.raises(DataError, match="row 2101.*expected exactly one class.*--task multilabel"):
        read_user_file(path, task="auto")


def test_eval_without_task_reads_the_data_as_the_checkpoint_was_trained(multiclass_checkpoint, conference_csv,
                                                                        tmp_path):
    config = make_config(data=str(conference_csv), test_data=str(conference_csv), output_dir=str(tmp_path / "e"))
    report = evaluation.run(config, multiclass_checkpoint)
    assert config.task == "auto" and report["metrics"]["examples"] == len(pd.read_csv(conference_csv))


def test_many_classes_of_few_examples_are_read_as_the_label_column(tmp_path, capsys):
    """150 intents of 3 examples each: too many names for a small vocabulary, but the one column beside the text
    repeats every value, so it is the labels."""
    frame = pd.read_csv(SHARED_DATA_DIR / "clinc150" / "train.csv").groupby("intent").head(3)
    frame.to_csv(path := tmp_path / "few.csv", index=False)
    splits = prepare_splits(make_config(data=str(path), test_split=0.0))
    assert splits.layout.task == "multiclass" and len(splits.label_names) == 150
    assert "label column 'intent'" in capsys.readouterr().out


# A document of 200,000 words (about 1.4 MB, over the megabyte the delimiter is told from), with the commas and
# semicolons that make CSV quote it.
LONG_TEXT = "A whole book, read; " + " ".join(f"word{i % 1000}" for i in range(200_000))


def labelled(splits) -> dict[str, str]:
    return {text: data.label_names[label] for data in (splits.train, splits.validation)
            for text, label in zip(data.texts, data.labels, strict=True)}


@pytest.mark.parametrize(("name", "sep"), [("long.csv", ","), ("long.csv", ";"), ("long.tsv", "\t")])
def test_a_text_of_a_megabyte_is_read_whole_in_its_row(titles, tmp_path, name, sep):
    """Long documents, read whole: the 200,000-word text stopped the read in the csv module's field limit
    (131,072 characters); now it is read as it is, with its own label, beside every other row."""
    frame = titles.copy()
    frame.loc[[0, 150], "Title"] = [LONG_TEXT, LONG_TEXT.replace("book", "second book")]  # in the sample; past it
    frame.to_csv(path := tmp_path / name, index=False, sep=sep, quoting=3 if sep == "\t" else 0)  # TSV: raw quotes
    splits = read_user_file(path)
    assert (splits.files[0]["delimiter"], splits.files[0]["header"]) == (sep, True)
    assert splits.files[0]["rows_used"] == 300 and sorted(all_texts(splits)) == sorted(frame.Title)
    labels = labelled(splits)
    assert len(labels[LONG_TEXT]) and labels[LONG_TEXT] == frame.Conference[0]
    assert labels[frame.Title[150]] == frame.Conference[150] and len(frame.Title[150]) == len(LONG_TEXT) + 7


@pytest.mark.parametrize("sep", [",", ";", "|", "\t"])
def test_the_delimiter_and_header_are_told_with_a_long_text_first(tmp_path, sep):
    """With a header, the long record after it; without one, the long record first, longer than the megabyte
    sampled: the sample is read on to the records after it, and the long one is data, not column names."""
    frame = pd.DataFrame({"text": [LONG_TEXT] + [f"a short text number {i}" for i in range(20)],
                          "label": ["ICML", "VLDB"] * 10 + ["WWW"]})
    frame.to_csv(path := tmp_path / "long.csv", index=False, sep=sep)
    sample = path.read_text()
    assert len(sample) > SAMPLE_BYTES and sniff_delimiter(sample, truncated=False) == sep
    assert has_header(sample, sep, "csv", truncated=False)
    assert (open_file(path).delimiter, open_file(path).header) == (sep, True)
    frame.to_csv(headless := tmp_path / "headless.csv", index=False, sep=sep, header=False)
    assert (open_file(headless).delimiter, open_file(headless).header) == (sep, False)
    splits = read_user_file(headless)
    assert splits.files[0]["rows_used"] == 21 and LONG_TEXT in all_texts(splits)


def test_a_text_over_the_longest_allowed_names_its_row(titles, tmp_path):
    """Ten million characters is the most one text may hold (longer is rather an unclosed quote joining rows);
    over it, the run stops on a message naming the file, the row and the column, not a traceback."""
    frame = titles.copy()
    frame.loc[4, "Title"] = "word " * (MAX_TEXT_CHARS // 5) + "more"
    frame.to_csv(path := tmp_path / "huge.csv", index=False)
    with pytest.raises(DataError, match=r"huge\.csv: row 5, column 'Title': a text of 10,000,004 characters, "
                                        r"over the 10,000,000 one text may hold"):
        read_user_file(path)
    frame.loc[4, "Title"] = "word " * (MAX_TEXT_CHARS // 5 - 1) + "words"  # exactly the most: read whole
    frame.to_csv(path, index=False)
    assert len(max(all_texts(read_user_file(path)), key=len)) == MAX_TEXT_CHARS
