"""`python main.py --mode predict`: texts from the command line, and whole files scored chunk by chunk."""

from __future__ import annotations

import json
import re

import numpy as np
import pandas as pd
import pytest
from conftest import TOXIC_LABELS, api_client

import main
import predict
from inferer import ModelInferer
from utils.config import make_config
from utils.data.readers import DataError

SCORE_COLUMNS = [f"score_{name}" for name in TOXIC_LABELS]


@pytest.fixture(scope="module")
def inferer(multilabel_checkpoint) -> ModelInferer:
    return ModelInferer(multilabel_checkpoint)


@pytest.fixture(scope="module")
def comments(toxic_csv, tmp_path_factory):
    """50 real rows with the training layout (text in comment_text), one of them an empty text."""
    frame = pd.read_csv(toxic_csv, dtype=str, keep_default_na=False).head(50)
    frame.loc[7, "comment_text"] = ""
    path = tmp_path_factory.mktemp("predict") / "comments.csv"
    frame.to_csv(path, index=False)
    return path


def run_main(*args: str) -> int:
    return main.main(["--mode", "predict", *args])


def test_texts_from_the_command_line_print_one_json_object_each(multilabel_checkpoint, inferer, capsys):
    texts = ["You are an idiot.", "Thanks for fixing the references!", ""]
    args = [arg for text in texts for arg in ("--text", text)]
    assert run_main("--checkpoint", str(multilabel_checkpoint), *args) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 3
    for text, line in zip(texts, lines, strict=True):
        printed = json.loads(line)
        expected = inferer.predict(text)
        assert printed["text"] == text and printed["labels"] == expected["labels"]
        assert list(printed["scores"]) == TOXIC_LABELS
        np.testing.assert_allclose(list(printed["scores"].values()), list(expected["scores"].values()), atol=1e-6)


def test_a_csv_file_is_scored_into_a_csv_file(multilabel_checkpoint, inferer, comments, tmp_path, capsys):
    output = tmp_path / "out" / "scored.csv"
    # No --text-column: the checkpoint's training text column (comment_text) is used.
    assert run_main("--checkpoint", str(multilabel_checkpoint), "--input", str(comments), "--output", str(output)) == 0
    assert "scored 50 rows" in capsys.readouterr().err
    source = pd.read_csv(comments, dtype=str, keep_default_na=False)
    scored = pd.read_csv(output, dtype={"labels": str}, keep_default_na=False)
    assert list(scored.columns) == [*source.columns, *SCORE_COLUMNS, "labels", "truncated"]
    pd.testing.assert_frame_equal(scored[source.columns].astype(str), source)  # input columns kept as they were
    expected = inferer.predict_batch(source.comment_text.tolist())
    np.testing.assert_allclose(scored[SCORE_COLUMNS].to_numpy(),
                               [list(p["scores"].values()) for p in expected], atol=1e-6)
    assert scored["labels"].tolist() == ["|".join(p["labels"]) for p in expected]
    assert scored["truncated"].tolist() == [p["truncated"] for p in expected]
    assert not list(output.parent.glob(".*partial"))


def test_jsonl_in_jsonl_out_with_labels_as_lists(inferer, tmp_path):
    rows = [{"id": 1, "body": "you are awful"}, {"id": 2, "body": "nice work", "note": "x"}, {"id": 3, "body": ""}]
    source = tmp_path / "in.jsonl"
    source.write_text("".join(json.dumps(r) + "\n" for r in rows))
    output = tmp_path / "out.jsonl"
    assert predict.predict_file(inferer, source, output, "body", chunk_rows=2) == 3
    records = [json.loads(line) for line in output.read_text().splitlines()]
    assert [r["id"] for r in records] == [1, 2, 3] and [r.get("note") for r in records] == [None, "x", None]
    assert "note" not in records[0]  # keys stay those of each input row, whatever the chunks
    for row, record in zip(rows, records, strict=True):
        expected = inferer.predict(row["body"])
        assert record["labels"] == expected["labels"] and isinstance(record["labels"], list)
        assert record["score_toxic"] == pytest.approx(expected["scores"]["toxic"], abs=1e-6)


def test_files_are_read_in_chunks_never_whole(inferer, comments, tmp_path, monkeypatch):
    chunk_sizes = []
    original = predict.iter_frames

    def recording_iter_frames(path, chunksize=None, **kwargs):
        assert chunksize == 7  # never a read of the whole file
        for frame in original(path, chunksize=chunksize, **kwargs):
            chunk_sizes.append(len(frame))
            yield frame

    monkeypatch.setattr(predict, "iter_frames", recording_iter_frames)
    output = tmp_path / "chunked.csv"
    assert predict.predict_file(inferer, comments, output, "comment_text", chunk_rows=7) == 50
    assert chunk_sizes == [7] * 7 + [1]
    whole = tmp_path / "whole.csv"
    monkeypatch.setattr(predict, "iter_frames", original)
    predict.predict_file(inferer, comments, whole, "comment_text", chunk_rows=1000)
    pd.testing.assert_frame_equal(pd.read_csv(output), pd.read_csv(whole), atol=1e-6)


def test_jsonl_rows_with_different_keys_into_csv(inferer, tmp_path):
    source = tmp_path / "mixed.jsonl"
    source.write_text('{"text": "a", "id": 1}\n{"text": "b"}\n{"text": "c", "id": 3}\n{"text": "d", "new": 1}\n')
    output = tmp_path / "mixed.csv"
    with pytest.raises(DataError, match="row 4, column 'new': not in the earlier rows"):
        predict.predict_file(inferer, source, output, "text", chunk_rows=2)
    source.write_text('{"text": "a", "id": 1}\n{"text": "b"}\n{"text": "c"}\n{"text": "d", "id": 4}\n')
    predict.predict_file(inferer, source, output, "text", chunk_rows=2)
    scored = pd.read_csv(output)
    assert scored["text"].tolist() == ["a", "b", "c", "d"] and scored["id"].tolist()[::3] == [1, 4]


def test_prediction_columns_never_overwrite_input_columns(inferer, tmp_path):
    source = tmp_path / "labelled.csv"
    pd.DataFrame({"text": ["hello", "bye"], "labels": ["gold-a", "gold-b"]}).to_csv(source, index=False)
    output = tmp_path / "scored.csv"
    predict.predict_file(inferer, source, output, "text")
    scored = pd.read_csv(output, keep_default_na=False)
    assert scored["labels_input"].tolist() == ["gold-a", "gold-b"]
    assert scored["labels"].tolist() == ["|".join(inferer.predict(t)["labels"]) for t in ("hello", "bye")]


def test_the_text_column_defaults_to_the_one_training_read(multilabel_checkpoint, tmp_path):
    source, output = tmp_path / "comments.csv", tmp_path / "scored.csv"
    pd.DataFrame({"id": [1, 2], "comment_text": ["you are great", "you idiot"]}).to_csv(source, index=False)
    predict.run(make_config(mode="predict", input=str(source), output=str(output)), multilabel_checkpoint)
    assert pd.read_csv(output)["comment_text"].tolist() == ["you are great", "you idiot"]


@pytest.mark.parametrize(("lines", "column", "message"), [
    (['{"text": "fine"}', '{"text": 5}'], "text", "row 2, column 'text': expected text, got 5"),
    (['{"text": "fine"}', '{"other": "x"}'], "text", "row 2, column 'text': expected text, got nan"),
    (['{"body": "fine"}'], "text", "missing column(s) 'text'; the file has 'body'"),
    (['{"text": "fine"}', "not json"], "text", "cannot be parsed as JSONL"),
])
def test_bad_rows_are_named_by_file_row_and_column(inferer, tmp_path, lines, column, message):
    source = tmp_path / "bad.jsonl"
    source.write_text("\n".join(lines) + "\n")
    output = tmp_path / "out.csv"
    with pytest.raises(DataError, match=re.escape(message)) as caught:
        predict.predict_file(inferer, source, output, column)
    assert str(source) in str(caught.value)
    assert not output.exists() and not list(tmp_path.glob(".*partial"))  # no half-written output


def test_row_numbers_count_across_chunks(inferer, tmp_path):
    source = tmp_path / "late.jsonl"
    source.write_text("".join('{"text": "ok"}\n' for _ in range(9)) + '{"text": null}\n')
    with pytest.raises(DataError, match="row 10, column 'text'"):
        predict.predict_file(inferer, source, tmp_path / "out.jsonl", "text", chunk_rows=4)


@pytest.mark.parametrize(("extra", "message"), [
    ([], "needs --text"),
    (["--text", "a", "--input", "x.csv"], "one of the two"),
    (["--input", "x.csv"], "--input needs --output"),
    (["--input", "x.csv", "--output", "y.xml"], "unknown output type"),
    (["--input", "missing.csv", "--output", "y.csv"], "missing.csv: no such file"),
])
def test_command_line_mistakes_exit_2_with_a_message(multilabel_checkpoint, extra, message, capsys, tmp_path,
                                                    monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert run_main("--checkpoint", str(multilabel_checkpoint), *extra) == 2
    assert message in capsys.readouterr().err


def test_output_may_not_overwrite_input(inferer, comments):
    with pytest.raises(ValueError, match="overwrite the input"):
        predict.predict_file(inferer, comments, comments, "comment_text")


def test_predict_runs_quantized(multilabel_checkpoint, inferer, capsys):
    assert run_main("--checkpoint", str(multilabel_checkpoint), "--quantize", "--text", "hello there") == 0
    printed = json.loads(capsys.readouterr().out)
    expected = inferer.predict("hello there")["scores"]
    assert printed["scores"] == pytest.approx(expected, abs=0.01)


def test_text_and_file_predictions_are_the_servers(exported_checkpoint, comments, tmp_path, monkeypatch, capsys):
    """The default --backend auto runs what BACKEND=auto serves. Texts batched alike get the very scores: a dynamic
    int8 graph quantizes each batch's activations with that batch's range, so its scores move (1e-4 on the tiny
    model) with the texts sharing the batch; hence the file is scored in the API's batches of 32."""
    client = api_client(monkeypatch, exported_checkpoint)
    served = client.get("/metadata").get_json()
    texts = ["You are an idiot.", "Thanks for fixing the references!", ""]
    assert run_main("--checkpoint", str(exported_checkpoint), *[a for t in texts for a in ("--text", t)]) == 0
    printed = capsys.readouterr()
    assert f"backend {served['backend']} (auto: {served['backend_choice']['reason']})" in printed.err
    answers = client.post("/predict", json={"texts": texts}).get_json()["predictions"]
    for line, answer in zip(printed.out.splitlines(), answers, strict=True):
        assert json.loads(line)["scores"] == pytest.approx(answer["scores"], abs=1e-6)
        assert json.loads(line)["labels"] == answer["labels"]
    output = tmp_path / "scored.csv"
    assert run_main("--checkpoint", str(exported_checkpoint), "--input", str(comments), "--output", str(output),
                    "--eval-batch-size", "32") == 0
    assert f"backend {served['backend']} (auto:" in capsys.readouterr().err
    source = pd.read_csv(comments, dtype=str, keep_default_na=False).comment_text.tolist()
    answers = client.post("/predict", json={"texts": source}).get_json()["predictions"]
    np.testing.assert_allclose(pd.read_csv(output)[SCORE_COLUMNS].to_numpy(),
                               [[a["scores"][n] for n in TOXIC_LABELS] for a in answers], rtol=0, atol=1e-6)


def test_quantize_beside_an_onnx_backend_is_refused(multilabel_checkpoint, capsys):
    assert run_main("--checkpoint", str(multilabel_checkpoint), "--quantize", "--backend", "onnx-int8",
                    "--text", "hi") == 2
    assert "--quantize runs in PyTorch only" in capsys.readouterr().err
