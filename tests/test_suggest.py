"""`python main.py --mode suggest`: the rows of a pool to label next, and labelled rows coming back with
`--extra-data`."""

from __future__ import annotations

import json
import re

import numpy as np
import pandas as pd
import pytest
from conftest import CONFERENCES, TOXIC_LABELS

import main
from utils.config import make_config
from utils.data.datasets import SHARED_DATA_DIR
from utils.data.prepare import prepare_splits
from utils.evaluation.acquisition import NEAR_DUPLICATE, disagreement, tfidf_vectors, uncertainty

HINTS = ["model_labels", "model_scores", "uncertainty", "disagreement"]


def suggest(checkpoint, pool, output, *more: str) -> int:
    return main.main(["--mode", "suggest", "--checkpoint", str(checkpoint), "--pool", str(pool), "--output",
                      str(output), *more])


def read(path) -> pd.DataFrame:
    return pd.read_csv(path, dtype=str, keep_default_na=False)


@pytest.fixture(scope="module")
def toxic_pool(toxic_csv, tmp_path_factory):
    """80 comments the tiny model never saw, 10 it was trained on, 3 repeated (one with spaces around), and a
    near-duplicate of the first comment; an id column and the text under another name than training's."""
    labelled = pd.read_csv(toxic_csv)
    frame = pd.read_csv(SHARED_DATA_DIR / "toxic" / "train.csv")
    new = frame[~frame.comment_text.isin(labelled.comment_text)].tail(80).comment_text.tolist()
    texts = new + labelled.comment_text.head(10).tolist() + new[5:7] + [f"  {new[9]} "] + [new[0] + " !"]
    path = tmp_path_factory.mktemp("pool") / "pool.csv"
    pd.DataFrame({"id": [f"p{i}" for i in range(len(texts))], "body": texts}).to_csv(path, index=False)
    return path


def test_suggestions_are_new_distinct_apart_and_deterministic(multilabel_checkpoint, toxic_csv, toxic_pool, tmp_path,
                                                              capsys):
    first, again = tmp_path / "first.csv", tmp_path / "again.csv"
    assert suggest(multilabel_checkpoint, toxic_pool, first, "--k", "200", "--text-column", "body") == 0
    assert "81 distinct texts not yet labelled" in capsys.readouterr().err
    assert suggest(multilabel_checkpoint, toxic_pool, again, "--k", "200", "--text-column", "body") == 0
    picked, pool = read(first), read(toxic_pool)
    pd.testing.assert_frame_equal(picked, read(again))  # the same seed, the same file
    # ready to label in training's layout: rank, row, text under training's name, empty 0/1 columns, hints, id
    assert list(picked.columns) == ["rank", "pool_row", "comment_text", *TOXIC_LABELS, *HINTS, "id"]
    assert set(picked[TOXIC_LABELS].to_numpy().ravel()) == {""}
    assert picked["rank"].tolist() == [str(i) for i in range(1, len(picked) + 1)]
    rows = picked.pool_row.astype(int) - 1
    assert picked.comment_text.tolist() == pool.body[rows].tolist() and picked.id.tolist() == pool.id[rows].tolist()
    # never a labelled text, never a text twice, never two near-duplicates: the k asked is more than the pool holds
    texts = [text.strip() for text in picked.comment_text]
    assert not set(texts) & set(pd.read_csv(toxic_csv).comment_text.str.strip())
    assert len(set(texts)) == len(texts) == 80  # 81 distinct new texts, one near-duplicate of another
    vectors = tfidf_vectors(texts)
    similarity = (vectors @ vectors.T).toarray() - np.eye(len(texts))
    assert similarity.max() < NEAR_DUPLICATE
    other = tmp_path / "other.csv"
    assert suggest(multilabel_checkpoint, toxic_pool, other, "--k", "5", "--text-column", "body", "--seed", "7") == 0
    assert len(read(other)) == 5 and set(read(other).comment_text) <= set(picked.comment_text)


def test_labelled_suggestions_train_through_extra_data_each_text_once(multilabel_checkpoint, toxic_csv, toxic_pool,
                                                                      tiny_bert, tiny_trainer, tmp_path):
    to_label = tmp_path / "to_label.csv"
    assert suggest(multilabel_checkpoint, toxic_pool, to_label, "--k", "12", "--text-column", "body") == 0
    labelled = read(to_label)
    labelled[TOXIC_LABELS] = "0"
    labelled.loc[::3, "toxic"] = "1"
    layout = {"text_column": "comment_text", "label_columns": TOXIC_LABELS}
    splits = prepare_splits(make_config(task="multilabel", data=str(toxic_csv), test_split=0.2, val_split=0.2,
                                        **layout))
    known = splits.train.texts[0]  # a training text relabelled: its labels replaced, not a second row
    relabelled = pd.DataFrame([{"comment_text": known, **dict.fromkeys(TOXIC_LABELS, "1")}])
    corrections = tmp_path / "corrections.csv"
    pd.concat([labelled, relabelled]).to_csv(corrections, index=False)
    run = tmp_path / "run"
    tiny_trainer(run, tiny_bert, "bert", "multilabel", toxic_csv, extra_data=[str(corrections)])
    report = json.loads((run / "data_report.json").read_text())
    assert report["extra_data"] == {"files": [str(corrections)], "rows_read": 13, "texts": 13, "added": 12,
                                    "replaced": {"train": 1, "validation": 0, "test": 0}}
    assert report["rows"] == {"train": len(splits.train) + 12, "validation": len(splits.validation),
                              "test": len(splits.test)}
    assert any("12 added to the training rows, 1 replaced" in note for note in report["notes"])
    assert report["duplicates"]["texts"] == splits_duplicates(splits)


def splits_duplicates(splits) -> int:
    """Texts repeated in the data before the extra rows (toxic's own, which the extra rows must not add to)."""
    texts = [t.strip() for part in (splits.train, splits.validation, splits.test) for t in part.texts]
    return len([t for t in set(texts) if texts.count(t) > 1])


def test_a_multiclass_pool_in_jsonl_and_the_pages_corrections(multiclass_checkpoint, conference_csv, tmp_path):
    """The pool's texts under `text` (training's were `Title`); the file comes back in training's layout, and the
    page's corrections in the plain form ({"text": ..., "labels": [...]}) replace a class."""
    titles = pd.read_csv(SHARED_DATA_DIR / "conference" / "title_conference.csv")
    fresh = titles[~titles.Title.isin(pd.read_csv(conference_csv).Title)].head(30).Title.tolist()
    pool = tmp_path / "pool.jsonl"
    pool.write_text("".join(json.dumps({"text": title}) + "\n" for title in fresh))
    to_label = tmp_path / "to_label.csv"
    assert suggest(multiclass_checkpoint, pool, to_label, "--k", "6") == 0
    picked = read(to_label)
    assert list(picked.columns) == ["rank", "pool_row", "Title", "Conference", *HINTS]
    assert all(label in CONFERENCES for cell in picked.model_labels for label in cell.split("|") if label)
    picked["Conference"] = "WWW"
    picked.to_csv(to_label, index=False)
    splits = prepare_splits(make_config(task="multiclass", data=str(conference_csv), test_split=0.2, val_split=0.2,
                                        text_column="Title", label_column="Conference"))
    assert splits.test is not None
    page = tmp_path / "corrections.jsonl"
    page.write_text(json.dumps({"text": picked.Title[0], "labels": ["VLDB"]}) + "\n"
                    + json.dumps({"text": splits.test.texts[0], "labels": "ISCAS"}) + "\n")
    merged = prepare_splits(make_config(task="multiclass", data=str(conference_csv), test_split=0.2, val_split=0.2,
                                        text_column="Title", label_column="Conference",
                                        extra_data=[str(to_label), str(page)]))
    assert merged.test is not None and len(merged.train) == len(splits.train) + 6
    assert len(merged.test) == len(splits.test)
    assert merged.extra is not None and merged.extra.replaced == {"train": 0, "validation": 0, "test": 1}
    names = merged.label_names
    assert names[merged.train.labels[merged.train.texts.index(picked.Title[0])]] == "VLDB"  # the later file wins
    assert names[merged.test.labels[0]] == "ISCAS"


@pytest.mark.parametrize(("suffix", "content", "row", "column"), [
    (".csv", "id,comment_text\n1,fine words here\n2,\n3,more words\n", 2, "comment_text"),
    (".jsonl", '{"comment_text": "fine words"}\n{"comment_text": "more"}\n{"comment_text": 17}\n', 3, "comment_text"),
])
def test_a_pool_with_bad_rows_is_refused_naming_file_row_and_column(multilabel_checkpoint, tmp_path, capsys, suffix,
                                                                     content, row, column):
    pool = tmp_path / f"pool{suffix}"
    pool.write_text(content)
    assert suggest(multilabel_checkpoint, pool, tmp_path / "out.csv") == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.startswith("error: ") and str(pool) in error and re.search(rf"\brow {row}\b", error)
    assert f"'{column}'" in error and not (tmp_path / "out.csv").exists()


def test_suggest_needs_a_pool_and_a_csv_output(multilabel_checkpoint, toxic_pool, tmp_path, capsys):
    assert main.main(["--mode", "suggest", "--checkpoint", str(multilabel_checkpoint)]) == 2
    assert "--pool" in capsys.readouterr().err
    assert suggest(multilabel_checkpoint, toxic_pool, tmp_path / "out.xlsx") == 2
    assert ".csv" in capsys.readouterr().err


def test_uncertainty_peaks_at_the_threshold_and_disagreement_between_members():
    served = np.array([[0.2, 0.01], [0.9, 0.01], [0.02, 0.01]])
    np.testing.assert_allclose(uncertainty("multilabel", served, np.array([0.2, 0.5])), [1.0, 0.0278, 0.0817],
                               atol=1e-3)
    np.testing.assert_allclose(uncertainty("multiclass", np.array([[0.5, 0.5, 0.0], [0.9, 0.1, 0.0]]), None),
                               [1.0, 0.2])
    members = {"transformer": np.array([[0.9, 0.1], [0.5, 0.5]]), "tfidf": np.array([[0.1, 0.9], [0.5, 0.5]])}
    np.testing.assert_allclose(disagreement("multiclass", members), [0.8, 0.0])
    np.testing.assert_allclose(disagreement("multilabel", members), [0.8, 0.0])
    assert disagreement("multilabel", {"transformer": members["tfidf"]}).tolist() == [0.0, 0.0]
