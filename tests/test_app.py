"""The HTTP API through Flask's test client, around the tiny trained checkpoints: every route (/predict, /explain,
the page), every error path, the API key, the metrics, the OpenAPI document checked against real answers, and
fuzzed bodies."""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TOXIC_LABELS, set_environment
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families

from app import create_app
from inferer import ModelInferer
from serving import scheduling
from serving.costs import explain_cost, token_counts
from serving.scheduling import EXPLAIN_BATCH_TOKENS, DeadlineExceeded, ModelTurns
from serving.settings import RECEIVED_AT, ServingSettings
from utils.inference.explain import prepare_text
from utils.inference.precision import resolve_precision
from utils.machine import available_cores

LIMITS = {"max_texts": 3, "max_chars": 100, "max_body_bytes": 4096, "max_explain_texts": 2, "max_tokens": 1000,
          "max_request_cost": 30_000, "request_timeout": 30.0, "explain_queue_size": 2}
KEY = "test-key-0123456789"


@pytest.fixture(scope="module")
def inferer(multilabel_checkpoint) -> ModelInferer:
    return ModelInferer(multilabel_checkpoint)


@pytest.fixture(scope="module")
def multiclass_inferer(multiclass_checkpoint) -> ModelInferer:
    return ModelInferer(multiclass_checkpoint)


@pytest.fixture
def client(inferer):
    return create_app(inferer, ServingSettings(**LIMITS)).test_client()


@pytest.fixture
def keyed(inferer):
    return create_app(inferer, ServingSettings(api_key=KEY, **LIMITS)).test_client()


def error_of(response) -> str:
    assert response.mimetype == "application/json", response.data[:200]
    body = response.get_json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message"} and body["error"]["message"]
    return body["error"]["code"]


def documented_codes(client, path: str, status: int) -> set[str]:
    """The error codes the OpenAPI document lists for `path`'s answers of `status`."""
    document = client.get("/openapi.json", headers={"X-API-Key": KEY}).get_json()
    answer = next(iter(document["paths"][path].values()))["responses"][str(status)]
    return set(answer["content"]["application/json"]["examples"])


def metric_values(client, headers=None) -> dict[tuple[str, tuple], float]:
    text = client.get("/metrics", headers=headers).get_data(as_text=True)
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


# --- /predict ----------------------------------------------------------------------------------------------


def test_predict_one_text_answers_labels_scores_and_model(client, inferer):
    response = client.post("/predict", json={"text": "You are a complete idiot."})
    assert response.status_code == 200
    body = response.get_json()
    assert list(body) == ["predictions", "model"] and len(body["predictions"]) == 1
    prediction = body["predictions"][0]
    expected = inferer.predict("You are a complete idiot.")
    assert list(prediction["scores"]) == TOXIC_LABELS  # label order survives JSON (no key sorting)
    np.testing.assert_allclose(list(prediction["scores"].values()), list(expected["scores"].values()), atol=1e-6)
    assert prediction["labels"] == expected["labels"] and prediction["truncated"] is False
    assert body["model"] == {"task": "multilabel", "checkpoint_id": inferer.checkpoint_id,
                             "backbone": Path(inferer.info.backbone).name, "quantized": False,
                             "precision": inferer.precision, "backend": "torch"}


def test_predict_texts_keeps_input_order(client, inferer):
    texts = ["a much longer comment about the article and its many references", "", "short"]
    body = client.post("/predict", json={"texts": texts}).get_json()
    for text, prediction in zip(texts, body["predictions"], strict=True):
        single = inferer.predict(text)["scores"]
        np.testing.assert_allclose(list(prediction["scores"].values()), list(single.values()), atol=1e-6)


def test_predict_long_text_reports_truncation(inferer):
    client = create_app(inferer, ServingSettings(max_chars=1000)).test_client()
    texts = ["word " * 90, "word " * 5]  # 90 words are more than the checkpoint's 64 tokens
    predictions = client.post("/predict", json={"texts": texts}).get_json()["predictions"]
    assert [p["truncated"] for p in predictions] == [True, False]


def test_original_form_field_data_is_accepted(client, inferer):
    form = client.post("/predict", data={"data": "thank you for the edit"})
    multipart = client.post("/predict", data={"data": "thank you for the edit"}, content_type="multipart/form-data")
    expected = inferer.predict("thank you for the edit")["scores"]
    for response in (form, multipart):
        assert response.status_code == 200
        scores = response.get_json()["predictions"][0]["scores"]
        np.testing.assert_allclose(list(scores.values()), list(expected.values()), atol=1e-6)
    two = client.post("/predict", data="data=one&data=two", content_type="application/x-www-form-urlencoded")
    assert len(two.get_json()["predictions"]) == 2


def test_multiclass_top_k(multiclass_inferer):
    client = create_app(multiclass_inferer, ServingSettings()).test_client()
    body = client.post("/predict", json={"text": "Query optimization in databases", "top_k": 2}).get_json()
    prediction = body["predictions"][0]
    assert body["model"]["task"] == "multiclass" and len(prediction["labels"]) == 1
    assert [t["label"] for t in prediction["top_k"]][0] == prediction["labels"][0] and len(prediction["top_k"]) == 2
    assert sum(prediction["scores"].values()) == pytest.approx(1.0)


@pytest.mark.parametrize(("request_kwargs", "status", "code"), [
    ({"data": "hello"}, 415, "unsupported_media_type"),
    ({"data": "hello", "content_type": "text/plain"}, 415, "unsupported_media_type"),
    ({"data": "{", "content_type": "application/json"}, 400, "invalid_json"),
    ({"data": b"", "content_type": "application/json"}, 400, "invalid_json"),
    ({"data": b'{"text": "\xff"}', "content_type": "application/json"}, 400, "invalid_json"),
    ({"data": "[" * 2000, "content_type": "application/json"}, 400, "invalid_json"),
    ({"json": ["a list"]}, 422, "invalid_request"),
    ({"json": "a string"}, 422, "invalid_request"),
    ({"json": {}}, 422, "invalid_request"),
    ({"json": {"text": "a", "texts": ["b"]}}, 422, "invalid_request"),
    ({"json": {"text": "a", "lang": "en"}}, 422, "invalid_request"),
    ({"json": {"text": None}}, 422, "invalid_text"),
    ({"json": {"text": 5}}, 422, "invalid_text"),
    ({"json": {"texts": "abc"}}, 422, "invalid_request"),
    ({"json": {"texts": []}}, 422, "empty_texts"),
    ({"json": {"texts": ["a", 1]}}, 422, "invalid_text"),
    ({"json": {"texts": ["a", None]}}, 422, "invalid_text"),
    ({"data": '{"text": "lone \\ud800"}', "content_type": "application/json"}, 422, "invalid_text"),
    ({"json": {"text": "a", "top_k": 0}}, 422, "invalid_request"),
    ({"json": {"text": "a", "top_k": True}}, 422, "invalid_request"),
    ({"json": {"text": "a", "top_k": 7}}, 422, "invalid_request"),
    ({"json": {"texts": ["a"] * 4}}, 413, "too_many_texts"),
    ({"json": {"text": "a" * 101}}, 413, "text_too_long"),
    ({"json": {"texts": ["ok", "a" * 101]}}, 413, "text_too_long"),
    ({"json": {"text": "a" * 5000}}, 413, "body_too_large"),
    ({"data": {"other": "x"}}, 422, "missing_text"),
])
def test_predict_errors_are_json_with_the_right_status(client, request_kwargs, status, code):
    response = client.post("/predict", **request_kwargs)
    assert response.status_code == status
    assert error_of(response) == code
    assert code in documented_codes(client, "/predict", status)


def test_limits_at_the_edge_are_accepted(client):
    assert client.post("/predict", json={"texts": ["a" * 100] * 3}).status_code == 200


def test_tokens_over_max_tokens_are_refused_after_truncation(inferer):
    texts = ["You are a complete idiot and everyone knows it.", "Thanks for fixing the references!"]
    tokens = sum(token_counts(inferer, texts))
    at_limit = create_app(inferer, ServingSettings(max_tokens=tokens)).test_client()
    assert at_limit.post("/predict", json={"texts": texts}).status_code == 200
    refusing = create_app(inferer, ServingSettings(max_tokens=tokens - 1)).test_client()
    response = refusing.post("/predict", json={"texts": texts})
    assert response.status_code == 413 and error_of(response) == "too_many_tokens"
    assert "too_many_tokens" in documented_codes(refusing, "/predict", 413)
    assert f"make {tokens} tokens" in response.get_json()["error"]["message"] and f"is {tokens - 1}" in \
        response.get_json()["error"]["message"]
    # A text longer than the model takes counts what the model reads: max_length tokens.
    assert token_counts(inferer, ["word " * 1000, ""]) == [inferer.max_length, 2]
    capped = create_app(inferer, ServingSettings(max_tokens=2 * inferer.max_length)).test_client()
    assert capped.post("/predict", json={"texts": ["word " * 1000] * 2}).status_code == 200
    assert capped.post("/predict", data={"data": ["word " * 1000] * 3}).status_code == 413


def test_body_size_is_checked_before_parsing(client):
    response = client.post("/predict", data=b"x" * 10_000, content_type="application/json")
    assert response.status_code == 413 and "4096 bytes" in response.get_json()["error"]["message"]


@pytest.mark.parametrize(("method", "path", "status", "code"), [
    ("GET", "/predict", 405, "method_not_allowed"),
    ("PUT", "/predict", 405, "method_not_allowed"),
    ("OPTIONS", "/predict", 405, "method_not_allowed"),
    ("POST", "/health", 405, "method_not_allowed"),
    ("GET", "/nowhere", 404, "not_found"),
    ("POST", "/predict/extra", 404, "not_found"),
])
def test_routing_errors_are_json(client, method, path, status, code):
    response = client.open(path, method=method)
    assert response.status_code == status and error_of(response) == code
    if status == 405:
        assert "Allow" in response.headers


def test_unexpected_errors_are_json_500_without_details(inferer):
    app = create_app(inferer, ServingSettings())

    def broken():
        raise RuntimeError("secret internals")

    app.add_url_rule("/broken", view_func=broken)
    response = app.test_client().get("/broken")
    assert response.status_code == 500 and error_of(response) == "internal_error"
    assert "secret" not in response.get_data(as_text=True)


# --- /explain ----------------------------------------------------------------------------------------------


def test_explain_answers_what_the_inferer_explains(client, inferer):
    text = "You are a complete idiot, go away."
    response = client.post("/explain", json={"text": text, "labels": ["insult", "toxic"]})
    assert response.status_code == 200
    body = response.get_json()
    assert list(body) == ["explanations", "model"] and body["model"]["checkpoint_id"] == inferer.checkpoint_id
    (explanation,) = body["explanations"]
    expected = inferer.explain(text, labels=["insult", "toxic"])
    assert explanation["words"] == expected["words"] and list(explanation["attributions"]) == ["insult", "toxic"]
    for label, scores in expected["attributions"].items():
        np.testing.assert_allclose(explanation["attributions"][label], scores, atol=1e-5)
    for word in explanation["words"]:
        assert text[word["start"]:word["end"]] == word["word"]
    default = client.post("/explain", json={"texts": [text, ""]}).get_json()["explanations"]
    assert [list(e["attributions"]) for e in default] == [
        inferer.explain(t)["labels"] or [max(inferer.predict(t)["scores"], key=inferer.predict(t)["scores"].get)]
        for t in (text, "")]


def test_explain_takes_the_original_form_field(client):
    response = client.post("/explain", data={"data": "thank you for the edit"})
    assert response.status_code == 200 and len(response.get_json()["explanations"]) == 1


@pytest.mark.parametrize(("request_kwargs", "status", "code"), [
    ({"data": "hello"}, 415, "unsupported_media_type"),
    ({"data": "hello", "content_type": "text/plain"}, 415, "unsupported_media_type"),
    ({"data": "{", "content_type": "application/json"}, 400, "invalid_json"),
    ({"data": b'{"text": "\xff"}', "content_type": "application/json"}, 400, "invalid_json"),
    ({"json": ["a list"]}, 422, "invalid_request"),
    ({"json": {}}, 422, "invalid_request"),
    ({"json": {"text": "a", "texts": ["b"]}}, 422, "invalid_request"),
    ({"json": {"text": "a", "top_k": 2}}, 422, "invalid_request"),
    ({"json": {"text": None}}, 422, "invalid_text"),
    ({"json": {"texts": ["a", 1]}}, 422, "invalid_text"),
    ({"data": '{"text": "lone \\ud800"}', "content_type": "application/json"}, 422, "invalid_text"),
    ({"json": {"texts": []}}, 422, "empty_texts"),
    ({"json": {"text": "a", "labels": ["rude"]}}, 422, "invalid_labels"),
    ({"json": {"text": "a", "labels": []}}, 422, "invalid_labels"),
    ({"json": {"text": "a", "labels": "toxic"}}, 422, "invalid_labels"),
    ({"json": {"text": "a", "labels": ["toxic", 3]}}, 422, "invalid_labels"),
    ({"json": {"text": "a", "labels": TOXIC_LABELS * 2}}, 422, "invalid_labels"),
    ({"json": {"texts": ["a"] * 3}}, 413, "too_many_texts"),
    ({"json": {"text": "a" * 101}}, 413, "text_too_long"),
    ({"json": {"text": "a" * 5000}}, 413, "body_too_large"),
    ({"data": {"other": "x"}}, 422, "missing_text"),
])
def test_explain_errors_are_json_with_the_right_status(client, request_kwargs, status, code):
    response = client.post("/explain", **request_kwargs)
    assert response.status_code == status
    assert error_of(response) == code
    assert code in documented_codes(client, "/explain", status)


def test_explain_error_messages_name_the_limit_and_the_labels(client):
    too_many = client.post("/explain", json={"texts": ["a", "b", "c"]}).get_json()["error"]["message"]
    assert "limit is 2 (MAX_EXPLAIN_TEXTS)" in too_many
    unknown = client.post("/explain", json={"text": "a", "labels": ["rude"]}).get_json()["error"]["message"]
    assert "'rude'" in unknown and "toxic" in unknown
    extra = client.post("/explain", json={"text": "a", "top_k": 1}).get_json()["error"]["message"]
    assert "expected text, texts, labels" in extra


def test_explain_within_predict_limits_is_accepted_and_larger_bodies_are_not(client):
    """Chunked bodies never reach the app: the worker de-chunks them under the same limit (tests/test_worker.py)."""
    assert client.post("/explain", json={"texts": ["a" * 100] * 2}).status_code == 200
    body = json.dumps({"text": "padding"}).encode().ljust(4097)
    response = client.post("/explain", data=body, content_type="application/json")
    assert response.status_code == 413 and error_of(response) == "body_too_large"


def test_explain_over_the_cost_budget_is_refused_with_its_cost(inferer):
    """A long text costs a forward pass per word the model sees: refused before running, saying by how much."""
    text = " ".join(["you complete idiot"] * 100)
    cost = explain_cost(inferer, text, label_count=1)
    assert cost > 40 * inferer.max_length  # about one pass of max_length tokens per word seen
    app = create_app(inferer, ServingSettings(max_chars=5000, max_request_cost=cost - 1)).test_client()
    response = app.post("/explain", json={"text": text, "labels": ["toxic"]})
    assert response.status_code == 413 and error_of(response) == "over_budget"
    assert "over_budget" in documented_codes(app, "/explain", 413) & documented_codes(app, "/predict", 413)
    message = response.get_json()["error"]["message"]
    assert f"costs {cost} tokens" in message and f"limit is {cost - 1}" in message and "MAX_REQUEST_COST" in message
    assert "fewer texts or shorter ones" in message
    at_limit = create_app(inferer, ServingSettings(max_chars=5000, max_request_cost=cost)).test_client()
    assert at_limit.post("/explain", json={"text": text, "labels": ["toxic"]}).status_code == 200
    tokens = sum(token_counts(inferer, [text] * 3))  # /predict: the tokens of its texts after truncation
    small = create_app(inferer, ServingSettings(max_chars=5000, max_request_cost=tokens - 1)).test_client()
    response = small.post("/predict", json={"texts": [text] * 3})
    assert response.status_code == 413 and f"costs {tokens} tokens" in response.get_json()["error"]["message"]


class SlowRunner:
    """The real runner, made slow on purpose: every batch of more than one text (an explanation's) sleeps."""

    def __init__(self, runner, seconds: float) -> None:
        self.runner, self.seconds, self.batches = runner, seconds, 0

    def logits(self, input_ids, attention_mask):
        if len(input_ids) > 1:
            self.batches += 1
            time.sleep(self.seconds)
        return self.runner.logits(input_ids, attention_mask)

    def __getattr__(self, name: str):  # device, precision, ...: the runner's own
        return getattr(self.runner, name)


class Slowly:
    """A Sharing (utils/inference/runners.py) that slows the runner's batches of several texts down."""

    def __init__(self, seconds: float) -> None:
        self.seconds, self.runner = seconds, None

    def share_runner(self, runner) -> SlowRunner:
        self.runner = SlowRunner(runner, self.seconds)
        return self.runner

    def share_lexical(self, lexical):
        return lexical


def slow_app(checkpoint, seconds: float, **settings):
    """An app on its own inferer whose explanation batches take `seconds` each, and that runner."""
    slowly = Slowly(seconds)
    app = create_app(ModelInferer(checkpoint).shared(slowly), ServingSettings(max_chars=20_000, **settings))
    assert slowly.runner is not None
    return app, slowly.runner


LONG_TEXT = " ".join(["you complete idiot, nobody reads this"] * 60)  # far more words than the 64 tokens hold


def test_a_request_past_its_deadline_is_abandoned_with_503_and_the_worker_stays_healthy(multilabel_checkpoint):
    app, slow = slow_app(multilabel_checkpoint, 0.2, request_timeout=0.3)
    client = app.test_client()
    started = time.perf_counter()
    response = client.post("/explain", json={"text": LONG_TEXT})
    elapsed = time.perf_counter() - started
    assert response.status_code == 503 and error_of(response) == "deadline_exceeded"
    assert response.headers["Retry-After"] == "1" and "REQUEST_TIMEOUT" in response.get_json()["error"]["message"]
    assert "deadline_exceeded" in documented_codes(client, "/explain", 503) & documented_codes(client, "/predict", 503)
    inferer = app.extensions["classifier"].inferer
    words_seen = len(prepare_text(inferer.tokenizer, LONG_TEXT, inferer.reading).seen)
    per_batch = EXPLAIN_BATCH_TOKENS // 64  # variants of the 64-token text in one batch
    assert slow.batches < -(-(1 + words_seen) // per_batch)  # fewer than the whole text needs
    assert 0.3 < elapsed < 0.3 + 1.0, elapsed  # stopped at the first batch boundary past the deadline
    state = app.extensions["classifier"]
    with state.turns.turn():  # the model busy: a /predict waits for it until its deadline, no longer
        started = time.perf_counter()
        response = client.post("/predict", json={"text": "hello"})
        assert response.status_code == 503 and error_of(response) == "deadline_exceeded"
        assert 0.3 < time.perf_counter() - started < 1.5
    assert client.post("/predict", json={"text": "hello"}).status_code == 200
    # the deadline counts from when the worker had the whole request: a request that waited for a thread past it
    # is not started at all
    waited = client.post("/predict", json={"text": "hello"}, environ_base={RECEIVED_AT: time.monotonic() - 0.5})
    assert waited.status_code == 503 and error_of(waited) == "deadline_exceeded"
    assert client.post("/explain", json={"text": "you idiot"}).status_code == 200


def test_an_explanation_in_flight_does_not_hold_up_predict(multilabel_checkpoint):
    app, slow = slow_app(multilabel_checkpoint, 0.3, request_timeout=60)
    explained_at: list[float] = []

    def explain() -> None:
        assert app.test_client().post("/explain", json={"text": LONG_TEXT}).status_code == 200
        explained_at.append(time.perf_counter())

    explaining = threading.Thread(target=explain)
    explaining.start()
    while slow.batches < 2:  # well into the explanation: its batches are taking turns
        time.sleep(0.01)
    latencies, answered_at = [], []
    for _ in range(2):
        started = time.perf_counter()
        assert app.test_client().post("/predict", json={"text": "hello"}).status_code == 200
        answered_at.append(time.perf_counter())
        latencies.append(answered_at[-1] - started)
    explaining.join(30)
    assert explained_at and answered_at[0] < explained_at[0]  # the predictions went between its batches
    # One explanation batch (0.3 s) at most, then its own pass: not the rest of the explanation (0.6 s or more).
    assert max(latencies) < 0.3 + 0.25, latencies


def test_an_explanation_goes_only_once_predict_has_been_quiet(monkeypatch):
    """Strict priority: an explanation's pass (or other work) starts PREDICT_QUIET_S after the last /predict pass,
    so a stream of /predict passes keeps the model between its requests; the explanation waits to its deadline.
    The quiet period is raised to 0.2 s here so that a busy test machine's scheduling cannot open a gap in the
    stream (10 ms, the default, is measured in docs/SERVING.md)."""
    quiet = 0.2
    monkeypatch.setattr(scheduling, "PREDICT_QUIET_S", quiet)
    turns = ModelTurns()
    with turns.as_caller(urgent=True, deadline=None), turns.turn():
        pass
    ended = time.monotonic()
    with turns.as_caller(urgent=False, deadline=ended + 5), turns.turn():
        assert quiet - 0.002 <= time.monotonic() - ended < quiet + 0.1
    streaming = threading.Event()

    def predict_stream() -> None:
        with turns.as_caller(urgent=True, deadline=None):
            while not streaming.is_set():
                with turns.turn():
                    time.sleep(0.002)
                time.sleep(0.005)  # the next request comes far sooner than the quiet period

    stream = threading.Thread(target=predict_stream)
    stream.start()
    try:
        for work in (turns.turn, contextlib.nullcontext):  # a forward pass, or work that only gives way
            started = time.monotonic()
            with turns.as_caller(urgent=False, deadline=started + 0.5), pytest.raises(DeadlineExceeded):
                turns.give_way()
                with work():
                    pass
            assert 0.5 <= time.monotonic() - started < 0.5 + 0.2
    finally:
        streaming.set()
        stream.join()
    with turns.as_caller(urgent=False, deadline=time.monotonic() + 2), turns.turn():  # quiet again: it goes
        pass


def test_a_full_explain_queue_answers_503_with_retry_after(inferer):
    client = create_app(inferer, ServingSettings(explain_queue_size=1)).test_client()
    with client.application.extensions["classifier"].explain_queue.place(time.monotonic() + 10):
        response = client.post("/explain", json={"text": "you idiot"})
        assert response.status_code == 503 and error_of(response) == "explain_busy"
        assert response.headers["Retry-After"] == "5"
        assert "EXPLAIN_QUEUE_SIZE" in response.get_json()["error"]["message"]
        assert "explain_busy" in documented_codes(client, "/explain", 503)
        assert client.post("/predict", json={"text": "hello"}).status_code == 200  # /predict has its own way
    assert client.post("/explain", json={"text": "you idiot"}).status_code == 200


@pytest.mark.parametrize(("method", "path", "status"), [("GET", "/explain", 405), ("PUT", "/explain", 405),
                                                        ("POST", "/explain/more", 404)])
def test_explain_routing_errors_are_json(client, method, path, status):
    response = client.open(path, method=method)
    assert response.status_code == status and error_of(response) in ("method_not_allowed", "not_found")


def test_explain_needs_the_key_like_predict(keyed):
    assert keyed.post("/explain", json={"text": "hi"}).status_code == 401
    assert keyed.post("/explain", json={"text": "hi"}, headers={"X-API-Key": KEY}).status_code == 200
    assert keyed.post("/explain", json={"text": "hi"}, headers={"Authorization": f"Bearer {KEY}"}).status_code == 200


def test_explain_metrics(client):
    client.post("/explain", json={"texts": ["you idiot", "fine words here"], "labels": ["toxic", "insult"]})
    client.post("/explain", json={"text": "x", "labels": ["toxic"]})
    client.post("/explain", json={"text": "x", "labels": ["nope"]})
    values = metric_values(client)
    assert values[("http_requests_total", (("endpoint", "/explain"), ("method", "POST"), ("status", "200")))] == 2
    assert values[("http_requests_total", (("endpoint", "/explain"), ("method", "POST"), ("status", "422")))] == 1
    assert values[("explain_texts_per_request_count", ())] == 2 and values[("explain_texts_per_request_sum", ())] == 3
    assert values[("explained_labels_total", (("label", "toxic"),))] == 3
    assert values[("explained_labels_total", (("label", "insult"),))] == 2
    assert values[("explain_words_per_text_sum", ())] == 2 + 3 + 1
    assert values[("http_errors_total", (("code", "invalid_labels"),))] == 1


# --- the page ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("app_client", ["client", "keyed"])
def test_page_and_its_files_are_served_without_the_key(request, app_client):
    client = request.getfixturevalue(app_client)
    page = client.get("/")
    assert page.status_code == 200 and page.mimetype == "text/html"
    html = page.get_data(as_text=True)
    assert 'src="static/app.js"' in html and 'href="static/app.css"' in html
    assert "http://" not in html and "https://" not in html  # nothing from elsewhere: works offline
    csp = page.headers["Content-Security-Policy"]
    assert "script-src 'self'" in csp and "default-src 'none'" in csp and "unsafe-inline" not in csp
    for name, mimetype in (("app.js", "text/javascript"), ("app.css", "text/css"), ("favicon.svg", "image/svg+xml")):
        response = client.get(f"/static/{name}")
        assert response.status_code == 200 and response.mimetype == mimetype
        assert response.headers["X-Content-Type-Options"] == "nosniff"
    script = client.get("/static/app.js").get_data(as_text=True)
    assert "innerHTML" not in script and "insertAdjacentHTML" not in script and "eval(" not in script


@pytest.mark.parametrize("path", ["/static/missing.js", "/static/../app.py", "/static/%2e%2e/app.py",
                                  "/static/..%2fapp.py", "/static//etc/passwd"])
def test_nothing_outside_the_static_folder_is_served(client, path):
    response = client.get(path, follow_redirects=True)  # werkzeug merges "//" by a redirect
    assert response.status_code == 404 and error_of(response) == "not_found"


# --- the other routes --------------------------------------------------------------------------------------


def test_health_and_ready(client, inferer):
    assert client.get("/health").get_json() == {"status": "ok"}
    assert client.get("/ready").get_json() == {"status": "ready", "checkpoint_id": inferer.checkpoint_id}


def test_metadata_tells_what_is_served(client, multilabel_checkpoint):
    meta = client.get("/metadata").get_json()
    info = json.loads((multilabel_checkpoint / "classifier.json").read_text())
    assert meta["task"] == "multilabel" and meta["labels"] == TOXIC_LABELS
    assert meta["thresholds"] == info["thresholds"] and meta["backbone"] == Path(info["backbone"]).name
    assert meta["quantized"] is False and meta["precision"] == resolve_precision("auto", on_gpu=False)
    assert meta["training_metrics"] == json.loads((multilabel_checkpoint / "metrics.json").read_text())
    digest = hashlib.sha256((multilabel_checkpoint / "model.safetensors").read_bytes()).hexdigest()
    assert meta["checkpoint_id"] == digest[:16]
    assert meta["limits"] == LIMITS


def test_metadata_and_answers_hold_no_path_of_any_machine(client, multilabel_checkpoint):
    """The backbone was recorded as an absolute path of the training machine: it is shown by its name only."""
    info = json.loads((multilabel_checkpoint / "classifier.json").read_text())
    assert Path(info["backbone"]).is_absolute()
    answers = [client.get("/metadata").get_data(as_text=True),
               client.post("/predict", json={"text": "hi"}).get_data(as_text=True),
               client.post("/explain", json={"text": "hi"}).get_data(as_text=True)]
    for answer in answers:
        assert not re.search(r'"(/|[A-Za-z]:\\\\)', answer), answer  # no string starts like an absolute path
        assert info["backbone"] not in answer and str(multilabel_checkpoint.parent) not in answer
    assert client.get("/metadata").get_json()["checkpoint"] == multilabel_checkpoint.name


def test_metrics_count_requests_latency_texts_and_errors(client):
    client.post("/predict", json={"texts": ["one", "two"]})
    client.post("/predict", json={"text": "three"})
    client.post("/predict", json={"texts": []})
    client.get("/nowhere/1")
    client.get("/nowhere/2")
    values = metric_values(client)
    requests = "http_requests_total"
    assert values[(requests, (("endpoint", "/predict"), ("method", "POST"), ("status", "200")))] == 2
    assert values[(requests, (("endpoint", "/predict"), ("method", "POST"), ("status", "422")))] == 1
    assert values[(requests, (("endpoint", "unmatched"), ("method", "GET"), ("status", "404")))] == 2
    assert values[("predict_texts_per_request_count", ())] == 2
    assert values[("predict_texts_per_request_sum", ())] == 3
    assert values[("http_errors_total", (("code", "empty_texts"),))] == 1
    assert values[("http_errors_total", (("code", "not_found"),))] == 2
    assert values[("http_request_duration_seconds_count", (("endpoint", "/predict"),))] == 3
    assert values[("model_info", (("checkpoint_id", client.application.extensions["classifier"].inferer.checkpoint_id),
                                  ("quantized", "false"), ("task", "multilabel")))] == 1


def test_each_app_counts_in_its_own_registry(inferer):
    first = create_app(inferer, ServingSettings()).test_client()
    second = create_app(inferer, ServingSettings()).test_client()
    first.post("/predict", json={"text": "x"})
    key = ("http_requests_total", (("endpoint", "/predict"), ("method", "POST"), ("status", "200")))
    assert metric_values(first)[key] == 1 and key not in metric_values(second)


def test_create_app_loads_the_checkpoint_the_settings_name(multilabel_checkpoint, inferer):
    settings = ServingSettings(checkpoint_path=str(multilabel_checkpoint), torch_threads=torch.get_num_threads())
    client = create_app(settings=settings).test_client()
    assert client.get("/metadata").get_json()["checkpoint_id"] == inferer.checkpoint_id
    quantized = create_app(settings=ServingSettings(checkpoint_path=str(multilabel_checkpoint), quantize=True,
                                                    torch_threads=torch.get_num_threads())).test_client()
    assert quantized.get("/metadata").get_json()["quantized"] is True
    assert quantized.post("/predict", json={"text": "x"}).get_json()["model"]["quantized"] is True
    with pytest.raises(ValueError, match="CHECKPOINT_PATH"):
        create_app(settings=ServingSettings())


# --- the API key -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("credentials", [
    {"headers": {"Authorization": f"Bearer {KEY}"}},
    {"headers": {"Authorization": f"bearer {KEY}"}},
    {"headers": {"X-API-Key": KEY}},
    {"query_string": {"key": KEY}},
])
def test_api_key_accepted_in_every_documented_place(keyed, credentials):
    assert keyed.post("/predict", json={"text": "hi"}, **credentials).status_code == 200
    for path in ("/ready", "/metadata", "/metrics", "/openapi.json"):
        assert keyed.get(path, **credentials).status_code == 200


@pytest.mark.parametrize("credentials", [
    {},
    {"headers": {"Authorization": "Bearer wrong"}},
    {"headers": {"Authorization": KEY}},
    {"headers": {"Authorization": f"Basic {KEY}"}},
    {"headers": {"X-API-Key": KEY[:-1]}},
    {"headers": {"X-API-Key": KEY + "x"}},
    {"query_string": {"key": "é"}},
])
def test_requests_without_the_key_get_401(keyed, credentials):
    for method, path in (("POST", "/predict"), ("GET", "/metadata"), ("GET", "/metrics"), ("GET", "/ready"),
                         ("GET", "/openapi.json"), ("GET", "/nowhere")):
        response = keyed.open(path, method=method, json={"text": "hi"}, **credentials)
        assert response.status_code == 401 and error_of(response) == "unauthorized"
        assert response.headers["WWW-Authenticate"].startswith("Bearer")


def test_health_stays_open_with_a_key(keyed):
    assert keyed.get("/health").get_json() == {"status": "ok"}


def test_no_key_configured_means_open(client):
    assert client.post("/predict", json={"text": "hi"}, headers={"Authorization": "Bearer anything"}).status_code == 200


# --- OpenAPI: the document against the server's real answers ----------------------------------------------


def check_schema(value, schema: dict, document: dict, where: str = "$") -> None:
    """The subset of OpenAPI 3.1 schema rules the document uses; fails naming where the value disagrees."""
    if "$ref" in schema:
        return check_schema(value, document["components"]["schemas"][schema["$ref"].split("/")[-1]], document, where)
    if "anyOf" in schema:
        failures = []
        for option in schema["anyOf"]:
            try:
                return check_schema(value, option, document, where)
            except AssertionError as failure:
                failures.append(str(failure))
        raise AssertionError(f"{where}: matches none of anyOf: {failures}")
    if value is None:
        assert schema.get("type") == "null", f"{where}: null is not allowed"
        return
    kinds = {"object": dict, "array": list, "string": str, "boolean": bool, "number": (int, float), "integer": int,
             "null": type(None)}
    kind = schema.get("type")
    if kind:
        assert isinstance(value, kinds[kind]), f"{where}: {value!r} is not {kind}"
        assert not (kind in ("number", "integer") and isinstance(value, bool)), f"{where}: boolean is not {kind}"
    if "enum" in schema:
        assert value in schema["enum"], f"{where}: {value!r} not in {schema['enum']}"
    if kind == "object":
        missing = set(schema.get("required", [])) - set(value)
        assert not missing, f"{where}: missing {missing}"
        properties = schema.get("properties", {})
        if schema.get("additionalProperties") is False:
            assert set(value) <= set(properties), f"{where}: undocumented {set(value) - set(properties)}"
        if isinstance(schema.get("additionalProperties"), dict):
            for name in set(value) - set(properties):
                check_schema(value[name], schema["additionalProperties"], document, f"{where}.{name}")
        for name, sub in properties.items():
            if name in value:
                check_schema(value[name], sub, document, f"{where}.{name}")
    if kind == "array":
        assert schema.get("minItems", 0) <= len(value) <= schema.get("maxItems", len(value)), f"{where}: length"
        for i, item in enumerate(value):
            check_schema(item, schema.get("items", {}), document, f"{where}[{i}]")
    if kind == "string" and "maxLength" in schema:
        assert len(value) <= schema["maxLength"], f"{where}: longer than {schema['maxLength']}"
    if kind in ("integer", "number"):
        assert schema.get("minimum", value) <= value <= schema.get("maximum", value), f"{where}: out of range"


EXCHANGES = [  # (method, path, request kwargs): together they produce every documented answer
    ("POST", "/explain", {"json": {"text": "hello there", "labels": ["toxic"]}}),
    ("POST", "/explain", {"data": {"data": "hello"}}),
    ("POST", "/explain", {"data": "{", "content_type": "application/json"}),
    ("POST", "/explain", {"json": {"texts": ["a"] * 3}}),
    ("POST", "/explain", {"data": "x", "content_type": "text/plain"}),
    ("POST", "/explain", {"json": {"text": "a", "labels": ["rude"]}}),
    ("GET", "/", {}),
    ("GET", "/static/app.js", {}),
    ("GET", "/static/app.css", {}),
    ("GET", "/static/missing.js", {}),
    ("POST", "/predict", {"json": {"text": "hello"}}),
    ("POST", "/predict", {"json": {"texts": ["a", "b"], "top_k": 2}}),
    ("POST", "/predict", {"data": {"data": "hello"}}),
    ("POST", "/predict", {"data": "{", "content_type": "application/json"}),
    ("POST", "/predict", {"json": {"texts": ["a"] * 4}}),
    ("POST", "/predict", {"data": "x", "content_type": "text/plain"}),
    ("POST", "/predict", {"json": {"texts": []}}),
    ("GET", "/health", {}),
    ("GET", "/ready", {}),
    ("GET", "/metadata", {}),
    ("GET", "/metrics", {}),
    ("GET", "/openapi.json", {}),
    ("POST", "/corrections", {"json": {"text": "hello", "labels": ["toxic"], "model_labels": []}}),
    ("POST", "/corrections", {"data": "{", "content_type": "application/json"}),
    ("POST", "/corrections", {"json": {"text": "a" * 101, "labels": []}}),
    ("POST", "/corrections", {"data": "x", "content_type": "text/plain"}),
    ("POST", "/corrections", {"json": {"text": "a", "labels": ["rude"]}}),
]


@pytest.mark.parametrize("api_key", [None, KEY])
def test_openapi_document_matches_what_the_server_does(inferer, api_key, monkeypatch, tmp_path):
    corrections = tmp_path / "corrections.jsonl"
    app = create_app(inferer, ServingSettings(api_key=api_key, corrections_file=str(corrections),
                                              corrections_max_bytes=1000, **LIMITS))
    client = app.test_client()
    auth = {"X-API-Key": KEY}
    document = client.get("/openapi.json", headers=auth).get_json()
    assert document["openapi"].startswith("3.")
    routes = {(re.sub(r"<(?:\w+:)?(\w+)>", r"{\1}", rule.rule), method.lower()) for rule in app.url_map.iter_rules()
              for method in (rule.methods or set()) - {"HEAD", "OPTIONS"}}
    assert routes == {(path, method) for path, item in document["paths"].items() for method in item}
    seen = set()

    def exchange(method: str, path: str, kwargs: dict, headers: dict | None = None) -> None:
        """One request; its answer as documented: status, media type, body, error code and headers."""
        response = client.open(path, method=method, headers=auth if headers is None else headers, **kwargs)
        route = "/static/{filename}" if path.startswith("/static/") else path
        documented = document["paths"][route][method.lower()]["responses"]
        status = str(response.status_code)
        assert status in documented, f"{method} {path} answered {status}, undocumented"
        assert response.mimetype in documented[status]["content"]
        media = response.mimetype
        if media == "application/json":
            check_schema(response.get_json(), documented[status]["content"][media]["schema"], document,
                         f"{method} {path} {status}")
        if response.status_code >= 400:
            assert error_of(response) in documented[status]["content"][media]["examples"], f"{method} {path}"
        for header in ("Retry-After", "WWW-Authenticate"):
            assert (header in response.headers) == (header in documented[status].get("headers", {})), header
        if "json" in kwargs and status in ("200", "201"):
            request_schema = {"/explain": "ExplainRequest", "/corrections": "CorrectionRequest"}.get(path,
                                                                                                    "PredictRequest")
            check_schema(kwargs["json"], {"$ref": f"#/components/schemas/{request_schema}"}, document)
        seen.add((route, method.lower(), status))

    for method, path, kwargs in EXCHANGES:
        exchange(method, path, kwargs)
    monkeypatch.setattr(app.extensions["classifier"], "deadline", lambda received_at=None: 0.0)  # all too late
    for path in ("/predict", "/explain"):
        exchange("POST", path, {"json": {"text": "hello"}})
    corrections.write_text(json.dumps({"text": "x" * 900, "labels": []}) + "\n")
    exchange("POST", "/corrections", {"json": {"text": "hello", "labels": []}})  # full: 507
    corrections.unlink()
    corrections.mkdir()
    exchange("POST", "/corrections", {"json": {"text": "hello", "labels": []}})  # unwritable: 500
    if api_key:
        for path, item in document["paths"].items():
            exchange(next(iter(item)).upper(), path.replace("{filename}", "app.js"), {}, headers={})
    documented_answers = {(path, method, status) for path, item in document["paths"].items()
                          for method, operation in item.items() for status in operation["responses"]
                          if status != "default"}
    for path, item in document["paths"].items():  # any other method: 405, as the catch-all answer says
        other = ({"get", "post"} - set(item)).pop()
        response = client.open(path.replace("{filename}", "app.js"), method=other.upper(), headers=auth)
        assert response.status_code == 405
        check_schema(response.get_json(), item[next(iter(item))]["responses"]["default"]["content"]
                     ["application/json"]["schema"], document)
    assert documented_answers == seen
    texts = document["components"]["schemas"]["PredictRequest"]["properties"]["texts"]["anyOf"][0]
    assert (texts["maxItems"], texts["items"]["maxLength"]) == (LIMITS["max_texts"], LIMITS["max_chars"])
    texts = document["components"]["schemas"]["ExplainRequest"]["properties"]["texts"]["anyOf"][0]
    assert (texts["maxItems"], texts["items"]["maxLength"]) == (LIMITS["max_explain_texts"], LIMITS["max_chars"])
    labels = document["components"]["schemas"]["ExplainRequest"]["properties"]["labels"]["anyOf"][0]
    assert (labels["items"]["enum"], labels["maxItems"]) == (TOXIC_LABELS, len(TOXIC_LABELS))


def test_openapi_lists_every_error_code_of_each_status(inferer):
    """The refusals added after the first document are in it: the cost budget, deadlines, the explanation queue,
    the micro-batch queue (only with MICROBATCH), the API key (only with one set) and the rate limit (only with
    RATE_LIMIT)."""
    client = create_app(inferer, ServingSettings(**LIMITS)).test_client()
    assert documented_codes(client, "/predict", 413) == {"body_too_large", "too_many_texts", "text_too_long",
                                                         "too_many_tokens", "over_budget"}
    assert documented_codes(client, "/explain", 413) == {"body_too_large", "too_many_texts", "text_too_long",
                                                         "over_budget"}
    assert documented_codes(client, "/predict", 503) == {"deadline_exceeded"}
    assert documented_codes(client, "/explain", 503) == {"deadline_exceeded", "explain_busy"}
    assert documented_codes(client, "/explain", 422) == {"invalid_request", "invalid_text", "empty_texts",
                                                         "missing_text", "invalid_labels"}
    document = client.get("/openapi.json").get_json()
    assert "Retry-After" in document["paths"]["/explain"]["post"]["responses"]["503"]["headers"]
    assert not any("401" in operation["responses"] for item in document["paths"].values()
                   for operation in item.values())
    assert not any("429" in operation["responses"] for item in document["paths"].values()
                   for operation in item.values())
    batching = create_app(inferer, ServingSettings(microbatch=True, api_key=KEY, rate_limit=60, **LIMITS)
                          ).test_client()
    assert documented_codes(batching, "/predict", 503) == {"deadline_exceeded", "overloaded"}
    assert documented_codes(batching, "/metadata", 401) == {"unauthorized"}
    assert documented_codes(batching, "/explain", 429) == {"rate_limited"}  # only with RATE_LIMIT
    responses = batching.get("/openapi.json", headers={"X-API-Key": KEY}).get_json()["paths"]
    assert "Retry-After" in responses["/predict"]["post"]["responses"]["429"]["headers"]


# --- fuzzing /predict --------------------------------------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=30),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=8), inner, max_size=5),
    max_leaves=20)
top_k = {"top_k": json_values | st.integers(-2, 8)}
request_like = (  # well-formed requests (some over the limits), then anything shaped like one
    st.fixed_dictionaries({"text": st.text(max_size=120)}, optional=top_k)
    | st.fixed_dictionaries({"texts": st.lists(st.text(max_size=60), max_size=4)}, optional=top_k)
    | st.fixed_dictionaries({}, optional={"text": json_values, "texts": st.lists(json_values) | json_values, **top_k}))
content_types = st.sampled_from([None, "application/json", "application/json; charset=utf-8", "text/plain",
                                 "application/x-www-form-urlencoded", "multipart/form-data",
                                 "multipart/form-data; boundary=xyz", "application/vnd.api+json", "*/*", "", "json"])


@st.composite
def bodies(draw) -> tuple[bytes, str | None]:
    """A body and a content type: mostly the type that fits the body, sometimes any of them."""
    kind = draw(st.sampled_from(["json", "request", "request", "bytes", "form"]))
    if kind == "json":
        body = json.dumps(draw(json_values)).encode()
    elif kind == "request":
        body = json.dumps(draw(request_like), ensure_ascii=draw(st.booleans())).encode("utf-8", "surrogatepass")
    elif kind == "form":
        body = ("data=" + draw(st.text(max_size=60))).encode("utf-8", "surrogatepass")
    else:
        body = draw(st.binary(max_size=300))
    fitting = "application/x-www-form-urlencoded" if kind == "form" else "application/json"
    return body, draw(st.just(fitting) | content_types)


@pytest.fixture(scope="module")
def fuzz_client(inferer):
    return create_app(inferer, ServingSettings(**LIMITS)).test_client()


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(bodies())
def test_fuzzed_predict_bodies_never_give_500_and_always_json(fuzz_client, body_and_type):
    body, content_type = body_and_type
    headers = {"Content-Type": content_type} if content_type is not None else {}
    response = fuzz_client.post("/predict", data=body, headers=headers)
    assert response.status_code in (200, 400, 413, 415, 422), response.data[:300]
    assert response.mimetype == "application/json"
    payload = response.get_json()
    if response.status_code == 200:
        assert payload["predictions"] and all(set(p["scores"]) == set(TOXIC_LABELS) for p in payload["predictions"])
    else:
        error_of(response)


# --- settings from the environment -------------------------------------------------------------------------


def test_settings_come_from_environment_variables(monkeypatch):
    set_environment(monkeypatch, {
        "CHECKPOINT_PATH": "/model", "QUANTIZE": "true", "MAX_BODY_BYTES": "2048", "MAX_TEXTS": "8",
        "MAX_CHARS": "500", "TORCH_THREADS": "2", "PORT": "9000", "PRECISION": "bf16", "APP_APIKEY": KEY,
        "UNRELATED": "x"})
    settings = ServingSettings.from_env()
    assert settings == ServingSettings(checkpoint_path="/model", quantize=True, max_body_bytes=2048, max_texts=8,
                                       max_chars=500, torch_threads=2, port=9000, precision="bf16", api_key=KEY)
    assert settings.api_key_value == KEY
    assert KEY not in settings.describe() and KEY not in repr(settings)
    assert re.search(r"QUANTIZE +True", settings.describe())
    set_environment(monkeypatch, {})
    assert ServingSettings.from_env() == ServingSettings()
    set_environment(monkeypatch, {"QUANTIZE": "0", "PORT": ""})
    assert ServingSettings.from_env() == ServingSettings()


@pytest.mark.parametrize(("environ", "message"), [
    ({"PORT": "http"}, "PORT: .*valid integer, .*got 'http'"),
    ({"MAX_TEXTS": "0"}, "MAX_TEXTS: .*greater than 0"),
    ({"QUANTIZE": "maybe"}, "QUANTIZE: .*valid boolean"),
    ({"PRECISION": "int4"}, "PRECISION: .*'auto', 'fp32', 'bf16' or 'fp16'"),
    ({"BACKEND": "tensorrt"}, "BACKEND: .*'auto', 'torch', 'onnx', .* or 'onnx-fused-int8-static'"),
    ({"APP_APIKEY": "clé"}, "APP_APIKEY: .*printable ASCII"),
])
def test_bad_settings_are_refused_naming_the_variable(monkeypatch, environ, message):
    set_environment(monkeypatch, environ)
    with pytest.raises(ValueError, match=message) as refused:
        ServingSettings.from_env()
    assert "clé" not in str(refused.value)  # a rejected key is not echoed into logs


def test_workers_times_threads_fit_the_cores(tmp_path):
    assert ServingSettings(torch_threads=1).worker_count(cores=8) == 8
    assert ServingSettings(torch_threads=3).worker_count(cores=8) == 2
    assert ServingSettings(torch_threads=16).worker_count(cores=8) == 1
    assert ServingSettings(workers=3).worker_count(cores=8) == 3
    quota = tmp_path / "cpu.max"
    quota.write_text("150000 100000\n")  # a container limited to 1.5 CPUs
    assert available_cores(quota) == 1
    quota.write_text("max 100000\n")
    assert available_cores(quota) >= 1
