"""The routes: /predict, /explain, /corrections, /health, /ready, /metadata, /metrics, /openapi.json, and the page
at / with its static files (serving/static: plain HTML, CSS and JS, nothing fetched from elsewhere)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from flask import Blueprint, Response, jsonify, request, send_from_directory

from inferer import ModelInferer
from serving.context import PREDICT_BATCH_SIZE, ServingContext, log, serving
from serving.corrections import CorrectionsFull, correction_record
from serving.costs import check_explain_cost, check_predict_cost
from serving.errors import ApiError
from serving.microbatch import QueueFull
from serving.openapi import FORM_FIELD, openapi_document
from serving.scheduling import DeadlineExceeded, ExplainQueueFull
from serving.schemas import AnyRequest, ExplainRequest, PredictRequest, parse_correction, parse_request
from serving.settings import RECEIVED_AT
from utils.checkpoint.contract import backbone_name
from utils.inference.inputs import validate_texts

routes = Blueprint("classifier", __name__)
FORM_TYPES = ("application/x-www-form-urlencoded", "multipart/form-data")
EXPLAIN_RETRY_AFTER = 5  # seconds: about half of the longest explanation MAX_REQUEST_COST lets in
STATIC_DIR = Path(__file__).resolve().parent / "static"
# The page runs only its own files: no inline script or style, no other origin, never framed.
PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
                               "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


@routes.post("/predict", provide_automatic_options=False)
def predict() -> Response:
    state = serving()
    deadline = state.deadline(request.environ.get(RECEIVED_AT))
    texts, top_k = read_predict_request(state)
    try:
        if state.batcher is not None:
            predictions = state.batcher.predict(texts, top_k, deadline)
        else:
            with state.turns.as_caller(urgent=True, deadline=deadline):
                predictions = state.inferer.predict_batch(texts, batch_size=PREDICT_BATCH_SIZE, top_k=top_k)
    except QueueFull:
        raise ApiError(503, "overloaded", f"{state.settings.microbatch_queue_size} requests are already waiting "
                                          "(MICROBATCH_QUEUE_SIZE); retry shortly", retry_after=1) from None
    except DeadlineExceeded:
        raise deadline_exceeded(state) from None
    state.metrics.texts.observe(len(texts))
    state.metrics.truncated.inc(sum(p["truncated"] for p in predictions))
    return jsonify(predictions=predictions, model=model_summary(state.inferer))


@routes.post("/explain", provide_automatic_options=False)
def explain() -> Response:
    """Per text, a score per word for each asked label (default: the predicted ones). One explanation runs per
    worker, EXPLAIN_QUEUE_SIZE - 1 wait, and its forward passes let /predict's go first (serving/scheduling.py)."""
    state = serving()
    deadline = state.deadline(request.environ.get(RECEIVED_AT))
    texts, parsed = read_texts(ExplainRequest, state)
    labels = parsed.labels
    check_explain_cost(state.settings, state.inferer, texts, labels)
    try:
        with state.explain_queue.place(deadline), state.turns.as_caller(urgent=False, deadline=deadline):
            explanations = [state.inferer.explain(text, labels) for text in texts]
    except ExplainQueueFull:
        raise ApiError(503, "explain_busy", f"{state.explain_queue.size} explanations are already running or "
                                            "waiting on this worker (EXPLAIN_QUEUE_SIZE); retry after Retry-After "
                                            "seconds", retry_after=EXPLAIN_RETRY_AFTER) from None
    except DeadlineExceeded:
        raise deadline_exceeded(state) from None
    state.metrics.explain_texts.observe(len(texts))
    for explanation in explanations:
        state.metrics.explained_words.observe(len(explanation["words"]))
        for label in explanation["attributions"]:
            state.metrics.explained_labels.labels(label).inc()
    return jsonify(explanations=explanations, model=model_summary(state.inferer))


@routes.post("/corrections", provide_automatic_options=False)
def corrections() -> tuple[Response, int]:
    """A person's labels for one text (the page's labelling), appended to CORRECTIONS_FILE as one line."""
    state = serving()
    if state.corrections is None:
        raise ApiError(404, "corrections_off", "this server keeps no corrections: start it with CORRECTIONS_FILE "
                                               "set to a JSONL file")
    if not request.is_json:
        raise ApiError(415, "unsupported_media_type", 'send JSON: {"text": "...", "labels": ["..."]}')
    correction = parse_correction(parse_json(request.get_data(cache=False)), state.limits)
    if not correction.text.strip():
        raise ApiError(422, "invalid_text", "text: an empty text cannot be a training row")
    record = correction_record(correction.text, rightful_labels(state.inferer, correction.labels),
                               correction.model_labels, state.inferer.checkpoint_id)
    file = state.corrections.path
    try:
        size = state.corrections.append(record)
    except CorrectionsFull:
        raise ApiError(507, "corrections_full", f"{file.name} has reached {state.corrections.max_bytes} bytes "
                                                "(CORRECTIONS_MAX_BYTES); the correction was not saved") from None
    except OSError as error:
        log.error("cannot append a correction to %s: %s", file, error)
        raise ApiError(500, "corrections_unwritable", f"the correction was not saved: {file.name} cannot be "
                                                      f"written ({error.strerror or error})") from None
    state.metrics.corrections.inc()
    return jsonify(saved=record, file=file.name, file_bytes=size), 201


def rightful_labels(inferer: ModelInferer, labels: list[str]) -> list[str]:
    """The labels of a correction once, in the checkpoint's order: any number of a multi-label model's, and
    exactly one class of a multi-class model's (422 otherwise)."""
    chosen = [label for label in inferer.label_names if label in labels]
    if inferer.task == "multiclass" and len(chosen) != 1:
        raise ApiError(422, "invalid_labels", f"labels: a multi-class model takes exactly one class per text, got "
                                              f"{len(chosen)}")
    return chosen


def deadline_exceeded(state: ServingContext) -> ApiError:
    return ApiError(503, "deadline_exceeded", f"not done within {state.settings.request_timeout:g} s "
                                              "(REQUEST_TIMEOUT): the server is busy and the work was abandoned; "
                                              "retry after Retry-After seconds", retry_after=1)


@routes.get("/", provide_automatic_options=False)
def page() -> Response:
    """The page to try the model in a browser (never needs the API key; the page asks for it)."""
    return static_file("index.html")


@routes.get("/static/<path:filename>", provide_automatic_options=False)
def static_file(filename: str) -> Response:
    response = send_from_directory(STATIC_DIR, filename)  # a path outside the folder is a 404
    response.headers.update(PAGE_HEADERS)
    return response


@routes.get("/health", provide_automatic_options=False)
def health() -> Response:
    return jsonify(status="ok")


@routes.get("/ready", provide_automatic_options=False)
def ready() -> Response:
    """The app exists only once its model is loaded and warmed up, so answering is being ready."""
    return jsonify(status="ready", checkpoint_id=serving().inferer.checkpoint_id)


@routes.get("/metadata", provide_automatic_options=False)
def metadata() -> Response:
    state = serving()
    settings = state.settings
    limits = {"max_body_bytes": settings.max_body_bytes, "max_texts": settings.max_texts,
              "max_chars": settings.max_chars, "max_explain_texts": settings.max_explain_texts,
              "max_tokens": settings.max_tokens, "max_request_cost": settings.max_request_cost,
              "request_timeout": settings.request_timeout, "explain_queue_size": settings.explain_places()}
    microbatch = ({"wait_ms": settings.microbatch_wait_ms, "max_size": settings.microbatch_max_size,
                   "queue_size": settings.microbatch_queue_size} if state.batcher is not None else None)
    return jsonify(public_metadata(state.inferer) | {"limits": limits, "microbatch": microbatch,
                                                    "corrections": state.corrections is not None})


@routes.get("/metrics", provide_automatic_options=False)
def metrics() -> Response:
    body, content_type = serving().metrics.exposition()
    return Response(body, content_type=content_type)


@routes.get("/openapi.json", provide_automatic_options=False)
def openapi() -> Response:
    state = serving()
    inferer = state.inferer
    return jsonify(openapi_document(state.settings, inferer.label_names, inferer.task, inferer.checkpoint_id))


def public_metadata(inferer: ModelInferer) -> dict[str, Any]:
    """The inferer's metadata without a path of this machine or of the one that trained the model: the
    checkpoint and the backbone by their names."""
    return inferer.metadata() | {"backbone": backbone_name(inferer.info.backbone),
                                 "checkpoint": inferer.checkpoint_path.resolve().name}


def model_summary(inferer: ModelInferer) -> dict[str, Any]:
    """Which model answered, in every /predict and /explain answer."""
    return {"task": inferer.task, "checkpoint_id": inferer.checkpoint_id,
            "backbone": backbone_name(inferer.info.backbone),
            "quantized": inferer.quantized, "precision": inferer.precision, "backend": inferer.backend}


def read_predict_request(state: ServingContext) -> tuple[list[str], int | None]:
    """The texts (and top_k) of a /predict request: JSON {"text"} or {"texts"}, or the form field `data`."""
    texts, parsed = read_texts(PredictRequest, state)
    check_predict_cost(state.settings, state.inferer, texts)
    return texts, parsed.top_k


def read_texts(model: type[AnyRequest], state: ServingContext) -> tuple[list[str], AnyRequest]:
    """The valid texts of a request and its validated body, by the rules every text route shares."""
    texts, parsed = parse_request(model, read_body(), state.limits)
    try:
        texts = validate_texts(texts)
    except (TypeError, ValueError) as error:
        raise ApiError(422, "invalid_text", str(error)) from None
    return texts, parsed


def read_body() -> Any:
    """The body of a text route: JSON {"text"} or {"texts"} and their options, or the form field `data`."""
    if request.is_json:
        body: Any = parse_json(request.get_data(cache=False))
    elif request.mimetype in FORM_TYPES:
        body = {"texts": request.form.getlist(FORM_FIELD)}
        if not body["texts"]:
            raise ApiError(422, "missing_text", f"the form has no `{FORM_FIELD}` field")
    else:
        raise ApiError(415, "unsupported_media_type", "send JSON (Content-Type: application/json) or a form "
                                                      f"with a `{FORM_FIELD}` field")
    return body


def parse_json(data: bytes) -> Any:
    try:
        return json.loads(data)
    except (ValueError, RecursionError) as error:  # ValueError covers JSONDecodeError and bad UTF-8
        raise ApiError(400, "invalid_json", f"the body is not valid JSON: {error}") from None
