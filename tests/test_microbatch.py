"""Micro-batching (MICROBATCH=1): concurrent requests share forward passes, each gets exactly its own answers,
and a full queue answers 503 with Retry-After. Through Flask's test client around the tiny trained checkpoints."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pandas as pd
import pytest
from conftest import set_environment
from prometheus_client.parser import text_string_to_metric_families

from app import create_app
from inferer import ModelInferer
from serving.microbatch import MicroBatcher, QueueFull
from serving.settings import ServingSettings

# Texts batched with others are padded to other lengths; the scores then differ in the last float bits only.
SCORE_TOLERANCE = 1e-5


@pytest.fixture(scope="module")
def inferer(multilabel_checkpoint) -> ModelInferer:
    return ModelInferer(multilabel_checkpoint)


@pytest.fixture(scope="module")
def texts(toxic_csv) -> list[str]:
    return list(dict.fromkeys(pd.read_csv(toxic_csv).comment_text.str.slice(0, 400)))[:96]


def batched_app(inferer, **settings):
    return create_app(inferer, ServingSettings(microbatch=True, **settings))


def test_concurrent_requests_each_get_their_own_answer(inferer, texts):
    app = batched_app(inferer, microbatch_wait_ms=20, microbatch_max_size=32)

    def ask(i: int) -> tuple[int, dict]:
        body = {"texts": [texts[i], texts[-1 - i]]} if i % 3 == 0 else {"text": texts[i]}
        response = app.test_client().post("/predict", json=body)
        assert response.status_code == 200, response.get_data(as_text=True)
        return i, response.get_json()

    with ThreadPoolExecutor(max_workers=24) as pool:
        answers = list(pool.map(ask, range(len(texts) // 2)))
    for i, body in answers:
        own = [texts[i], texts[-1 - i]] if i % 3 == 0 else [texts[i]]
        assert len(body["predictions"]) == len(own)
        for text, prediction in zip(own, body["predictions"], strict=True):
            expected = inferer.predict(text)
            scores = np.array(list(expected["scores"].values()))
            np.testing.assert_allclose(list(prediction["scores"].values()), scores, atol=SCORE_TOLERANCE)
            # the same labels, but for a score within the tolerance of its threshold (the tiny model's scores
            # crowd around theirs), which the last float bits may put on either side
            decided = {name for name, score, cut in zip(inferer.label_names, scores, inferer.thresholds, strict=True)
                       if abs(score - cut) > SCORE_TOLERANCE}
            assert set(prediction["labels"]) & decided == set(expected["labels"]) & decided
    passes, texts_scored = batch_counts(app)
    assert texts_scored == sum(2 if i % 3 == 0 else 1 for i, _ in answers)
    assert passes < len(answers)  # requests really shared forward passes


def batch_counts(app) -> tuple[float, float]:
    text = app.test_client().get("/metrics").get_data(as_text=True)
    samples = {s.name: s.value for f in text_string_to_metric_families(text) for s in f.samples}
    return samples["microbatch_texts_count"], samples["microbatch_texts_sum"]


def test_top_k_and_errors_stay_per_request(inferer, texts):
    app = batched_app(inferer, max_texts=4)
    client = app.test_client()
    answer = client.post("/predict", json={"text": texts[0], "top_k": 2}).get_json()["predictions"][0]
    assert [entry["label"] for entry in answer["top_k"]] == [e["label"] for e in inferer.predict(texts[0], 2)["top_k"]]
    assert client.post("/predict", json={"texts": texts[:5]}).status_code == 413  # refused before the queue
    assert client.post("/predict", json={"text": texts[1]}).status_code == 200


def test_a_full_queue_answers_503_with_retry_after(inferer, texts):
    app = batched_app(inferer, microbatch_wait_ms=0, microbatch_max_size=1, microbatch_queue_size=1)
    state = app.extensions["classifier"]
    results: dict[str, int] = {}

    def ask(name: str) -> None:
        results[name] = app.test_client().post("/predict", json={"text": texts[0]}).status_code

    with state.batcher.lock:  # the model is busy: the batcher holds the first request, the queue the second
        first = threading.Thread(target=ask, args=("first",))
        first.start()
        wait_until(lambda: taken_and_waiting(state.batcher, taken=1, waiting=0))
        second = threading.Thread(target=ask, args=("second",))
        second.start()
        wait_until(lambda: taken_and_waiting(state.batcher, taken=1, waiting=1))
        response = app.test_client().post("/predict", json={"text": texts[1]})
        assert response.status_code == 503 and response.headers["Retry-After"] == "1"
        assert response.get_json()["error"]["code"] == "overloaded"
    first.join(30)
    second.join(30)
    assert results == {"first": 200, "second": 200}


def taken_and_waiting(batcher: MicroBatcher, taken: int, waiting: int) -> bool:
    """`taken` requests picked up by the batcher thread, `waiting` still in its queue (unfinished_tasks counts
    every put, since the batcher never calls task_done)."""
    queued = batcher.jobs.qsize()
    return queued == waiting and batcher.jobs.unfinished_tasks - queued == taken


def wait_until(condition, seconds: float = 10.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.005)


def test_batcher_raises_queue_full_and_passes_errors_back(inferer):
    batcher = MicroBatcher(inferer, wait_ms=0, max_texts=1, queue_size=1)
    with batcher.lock:
        waiting = [threading.Thread(target=batcher.predict, args=(["a"],)) for _ in range(2)]
        waiting[0].start()
        wait_until(lambda: taken_and_waiting(batcher, taken=1, waiting=0))
        waiting[1].start()
        wait_until(lambda: taken_and_waiting(batcher, taken=1, waiting=1))
        with pytest.raises(QueueFull):
            batcher.predict(["b"])
    for thread in waiting:
        thread.join(30)
    with pytest.raises(ValueError):  # an error in the shared pass reaches the request, and the batcher goes on
        batcher.predict([None])
    assert batcher.predict(["still serving"])[0]["labels"] == inferer.predict("still serving")["labels"]


def test_settings_from_the_environment(monkeypatch):
    set_environment(monkeypatch, {"MICROBATCH": "1", "MICROBATCH_WAIT_MS": "3", "MICROBATCH_MAX_SIZE": "16",
                                  "MICROBATCH_QUEUE_SIZE": "8", "BACKEND": "onnx-int8"})
    settings = ServingSettings.from_env()
    assert (settings.microbatch, settings.microbatch_wait_ms, settings.microbatch_max_size,
            settings.microbatch_queue_size, settings.backend) == (True, 3, 16, 8, "onnx-int8")
    assert settings.thread_count() == 32 and ServingSettings(microbatch=False).thread_count() == 4
    set_environment(monkeypatch, {"THREADS": "2", "MICROBATCH": "1"})
    assert ServingSettings.from_env().thread_count() == 2
    for bad, message in (({"MICROBATCH_QUEUE_SIZE": "0"}, "MICROBATCH_QUEUE_SIZE"), ({"THREADS": "0"}, "THREADS"),
                         ({"BACKEND": "tensorrt"}, "BACKEND"), ({"MICROBATCH_WAIT_MS": "-1"}, "MICROBATCH_WAIT_MS")):
        set_environment(monkeypatch, bad)
        with pytest.raises(ValueError, match=message):
            ServingSettings.from_env()


def test_metadata_shows_batching_and_the_precision_from_settings(multilabel_checkpoint):
    settings = ServingSettings(checkpoint_path=str(multilabel_checkpoint), precision="bf16", microbatch=True)
    meta = create_app(settings=settings).test_client().get("/metadata").get_json()
    assert meta["precision"] == "bf16" and meta["backend"] == "torch"
    assert meta["microbatch"] == {"wait_ms": 5, "max_size": 64, "queue_size": 128}
