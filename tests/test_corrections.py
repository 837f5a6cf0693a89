"""The page's corrections (POST /corrections, CORRECTIONS_FILE): one JSON line per correction, whole and on disk
before the answer, never interleaved by concurrent workers, a line cut short by a crash removed before the next,
clear refusals, and the file read back by training's --extra-data with each text once."""

from __future__ import annotations

import json
import multiprocessing
from pathlib import Path

import numpy as np
import pytest
from conftest import CONFERENCES, TOXIC_LABELS

from app import create_app
from inferer import ModelInferer
from serving.corrections import CorrectionsFile
from serving.settings import ServingSettings
from utils.config import make_config
from utils.data.prepare import prepare_splits

KEY = "corrections-test-key"


@pytest.fixture(scope="module")
def inferer(multilabel_checkpoint) -> ModelInferer:
    return ModelInferer(multilabel_checkpoint)


def lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def client_of(inferer: ModelInferer, path: Path, **settings):
    return create_app(inferer, ServingSettings(corrections_file=str(path), **settings)).test_client()


def test_a_correction_is_one_line_that_extra_data_reads_back_once(inferer, toxic_csv, tmp_path):
    path = tmp_path / "corrections.jsonl"
    client = client_of(inferer, path, api_key=KEY)
    assert client.get("/metadata", headers={"X-API-Key": KEY}).get_json()["corrections"] is True
    assert client.post("/corrections", json={"text": "x", "labels": []}).status_code == 401  # behind the key
    splits = prepare_splits(make_config(task="multilabel", data=str(toxic_csv), test_split=0.2, val_split=0.2,
                                        text_column="comment_text", label_columns=TOXIC_LABELS))
    known, fresh = splits.train.texts[0], "you are a wonderful person, thank you ünïcode"
    for text, labels in ((fresh, ["insult", "toxic", "insult"]), (known, ["threat"]), (fresh, [])):
        answer = client.post("/corrections", json={"text": text, "labels": labels, "model_labels": ["toxic"]},
                             headers={"X-API-Key": KEY})
        assert answer.status_code == 201, answer.get_json()
        assert answer.get_json()["saved"]["labels"] == [label for label in TOXIC_LABELS if label in labels]
        assert answer.get_json()["file"] == "corrections.jsonl"
    saved = lines(path)
    assert [(row["text"], row["labels"], row["model_labels"]) for row in saved] == [
        (fresh, ["toxic", "insult"], ["toxic"]), (known, ["threat"], ["toxic"]), (fresh, [], ["toxic"])]
    assert all(row["checkpoint_id"] == inferer.checkpoint_id and row["saved_at"].endswith("Z") for row in saved)
    metrics = client.get("/metrics", headers={"X-API-Key": KEY}).get_data(as_text=True)
    assert "corrections_saved_total 3.0" in metrics

    merged = prepare_splits(make_config(task="multilabel", data=str(toxic_csv), test_split=0.2, val_split=0.2,
                                        text_column="comment_text", label_columns=TOXIC_LABELS,
                                        extra_data=[str(path)]))
    assert len(merged.train) == len(splits.train) + 1  # the fresh text once, with its last labels
    assert merged.train.texts.count(fresh) == 1
    assert not merged.train.labels[merged.train.texts.index(fresh)].any()
    threat = merged.train.labels[merged.train.texts.index(known)]
    assert threat.tolist() == [float(label == "threat") for label in TOXIC_LABELS]


def test_a_multiclass_correction_takes_exactly_one_class(multiclass_checkpoint, tmp_path):
    path = tmp_path / "fixes.jsonl"
    client = client_of(ModelInferer(multiclass_checkpoint), path)
    for labels in ([], ["VLDB", "WWW"]):
        answer = client.post("/corrections", json={"text": "a title", "labels": labels})
        assert answer.status_code == 422 and answer.get_json()["error"]["code"] == "invalid_labels"
        assert "exactly one class" in answer.get_json()["error"]["message"]
    assert client.post("/corrections", json={"text": "a title", "labels": ["VLDB"]}).status_code == 201
    assert [row["labels"] for row in lines(path)] == [["VLDB"]] and "VLDB" in CONFERENCES


@pytest.mark.parametrize(("body", "status", "code"), [
    ({"text": "  ", "labels": []}, 422, "invalid_text"),
    ({"text": 5, "labels": []}, 422, "invalid_text"),
    ({"text": "ok", "labels": ["rude"]}, 422, "invalid_labels"),
    ({"text": "ok", "labels": "toxic"}, 422, "invalid_labels"),
    ({"text": "ok"}, 422, "invalid_labels"),
    ({"text": "ok", "labels": [], "extra": 1}, 422, "invalid_request"),
    (["ok"], 422, "invalid_request"),
    ({"text": "x" * 21, "labels": []}, 413, "text_too_long"),
])
def test_bad_corrections_are_refused_and_nothing_is_written(inferer, tmp_path, body, status, code):
    path = tmp_path / "corrections.jsonl"
    answer = client_of(inferer, path, max_chars=20).post("/corrections", json=body)
    assert (answer.status_code, answer.get_json()["error"]["code"]) == (status, code)
    assert not path.exists()


def test_without_a_corrections_file_the_route_says_how_to_have_one(inferer):
    client = create_app(inferer, ServingSettings()).test_client()
    assert client.get("/metadata").get_json()["corrections"] is False
    answer = client.post("/corrections", json={"text": "x", "labels": []})
    assert answer.status_code == 404 and "CORRECTIONS_FILE" in answer.get_json()["error"]["message"]


def test_an_unwritable_or_full_file_is_a_clear_error_and_the_file_is_unchanged(inferer, tmp_path):
    with pytest.raises(ValueError, match=r"CORRECTIONS_FILE .*missing/c.jsonl.*does not exist"):
        create_app(inferer, ServingSettings(corrections_file=str(tmp_path / "missing" / "c.jsonl")))
    with pytest.raises(ValueError, match="it is a folder"):
        create_app(inferer, ServingSettings(corrections_file=str(tmp_path)))
    path = tmp_path / "c.jsonl"
    client = client_of(inferer, path, corrections_max_bytes=300)
    assert client.post("/corrections", json={"text": "first", "labels": ["toxic"]}).status_code == 201
    before = path.read_bytes()
    full = client.post("/corrections", json={"text": "y" * 250, "labels": []})
    assert full.status_code == 507 and "CORRECTIONS_MAX_BYTES" in full.get_json()["error"]["message"]
    assert path.read_bytes() == before
    path.rename(tmp_path / "kept.jsonl")
    path.mkdir()  # the file turned into a folder while serving: open fails
    broken = client.post("/corrections", json={"text": "second", "labels": []})
    error = broken.get_json()["error"]
    assert broken.status_code == 500 and error["code"] == "corrections_unwritable"
    assert "c.jsonl cannot be written" in error["message"] and "not saved" in error["message"]


def test_a_line_a_crash_cut_short_is_removed_before_the_next(tmp_path):
    path = tmp_path / "c.jsonl"
    whole = json.dumps({"text": "kept", "labels": []}) + "\n"
    path.write_text(whole + '{"text": "cut sho')  # the crash: a write never answered as saved
    corrections = CorrectionsFile(path, 1 << 20)
    size = corrections.append({"text": "next", "labels": ["toxic"]})
    assert [row["text"] for row in lines(path)] == ["kept", "next"] and size == path.stat().st_size
    path.write_text('{"text": "only a cut line')
    corrections.append({"text": "alone", "labels": []})
    assert [row["text"] for row in lines(path)] == ["alone"]


def append_many(path: str, worker: int, count: int) -> None:
    corrections = CorrectionsFile(Path(path), 1 << 30)
    for n in range(count):  # long lines, so that interleaved writes would show
        corrections.append({"text": f"worker {worker} line {n} " + "w" * 5000, "labels": []})


def test_concurrent_workers_append_whole_lines_each_once(tmp_path):
    path = tmp_path / "c.jsonl"
    context = multiprocessing.get_context("fork")  # the workers only write files
    workers = [context.Process(target=append_many, args=(str(path), worker, 40)) for worker in range(4)]
    for process in workers:
        process.start()
    for process in workers:
        process.join(timeout=120)
        assert process.exitcode == 0
    texts = [row["text"].split(" w")[0] for row in lines(path)]
    assert sorted(texts) == sorted(f"worker {w} line {n}" for w in range(4) for n in range(40))
    for worker in range(4):  # each worker's lines in its own order
        own = [int(t.rsplit(" ", 1)[1]) for t in texts if t.startswith(f"worker {worker} ")]
        assert own == list(np.arange(40))
