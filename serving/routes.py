"""The routes: /predict, /health, /ready, /metadata, /metrics and /openapi.json."""

from __future__ import annotations

import json
from typing import Any

from flask import Blueprint, Response, jsonify, request

from inferer import validate_texts
from serving.errors import ApiError
from serving.microbatch import QueueFull
from serving.openapi import FORM_FIELD, openapi_document
from serving.schemas import parse_predict_request
from serving.state import PREDICT_BATCH_SIZE, ServingState, serving

routes = Blueprint("classifier", __name__)
FORM_TYPES = ("application/x-www-form-urlencoded", "multipart/form-data")


@routes.post("/predict", provide_automatic_options=False)
def predict() -> Response:
    state = serving()
    texts, top_k = read_predict_request(state)
    if state.batcher is not None:
        try:
            predictions = state.batcher.predict(texts, top_k)
        except QueueFull:
            raise ApiError(503, "overloaded", f"{state.settings.microbatch_queue_size} requests are already "
                                              "waiting (MICROBATCH_QUEUE_SIZE); retry shortly") from None
    else:
        with state.lock:
            predictions = state.inferer.predict_batch(texts, batch_size=PREDICT_BATCH_SIZE, top_k=top_k)
    state.metrics.texts.observe(len(texts))
    state.metrics.truncated.inc(sum(p["truncated"] for p in predictions))
    inferer = state.inferer
    model = {"task": inferer.task, "checkpoint_id": inferer.checkpoint_id, "backbone": inferer.info.backbone,
             "quantized": inferer.quantized, "precision": inferer.precision, "backend": inferer.backend}
    return jsonify(predictions=predictions, model=model)


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
              "max_chars": settings.max_chars}
    microbatch = ({"wait_ms": settings.microbatch_wait_ms, "max_size": settings.microbatch_max_size,
                   "queue_size": settings.microbatch_queue_size} if state.batcher is not None else None)
    return jsonify(state.inferer.metadata() | {"limits": limits, "microbatch": microbatch})


@routes.get("/metrics", provide_automatic_options=False)
def metrics() -> Response:
    body, content_type = serving().metrics.exposition()
    return Response(body, content_type=content_type)


@routes.get("/openapi.json", provide_automatic_options=False)
def openapi() -> Response:
    state = serving()
    inferer = state.inferer
    return jsonify(openapi_document(state.settings, state.schemas, inferer.label_names, inferer.task,
                                    inferer.checkpoint_id))


def read_predict_request(state: ServingState) -> tuple[list[str], int | None]:
    """The texts (and top_k) of a /predict request: JSON {"text"} or {"texts"}, or the form field `data`."""
    if request.is_json:
        body: Any = parse_json(request.get_data(cache=False))
    elif request.mimetype in FORM_TYPES:
        body = {"texts": request.form.getlist(FORM_FIELD)}
        if not body["texts"]:
            raise ApiError(422, "missing_text", f"the form has no `{FORM_FIELD}` field")
    else:
        raise ApiError(415, "unsupported_media_type", "send JSON (Content-Type: application/json) or a form "
                                                      f"with a `{FORM_FIELD}` field")
    texts, top_k = parse_predict_request(state.schemas.predict_request, body)
    try:
        return validate_texts(texts), top_k
    except (TypeError, ValueError) as error:
        raise ApiError(422, "invalid_text", str(error)) from None


def parse_json(data: bytes) -> Any:
    try:
        return json.loads(data)
    except (ValueError, RecursionError) as error:  # ValueError covers JSONDecodeError and bad UTF-8
        raise ApiError(400, "invalid_json", f"the body is not valid JSON: {error}") from None
