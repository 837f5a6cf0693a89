"""The HTTP face of ModelInferer: a Flask app factory that serves one loaded checkpoint per worker process.

    CHECKPOINT_PATH=outputs/run/checkpoint gunicorn -c gunicorn.conf.py "app:create_app()"

Routes: POST /predict, GET /health, /ready, /metadata, /metrics, /openapi.json. Every error is JSON
{"error": {"code": ..., "message": ...}}. Settings come from environment variables (utils/serving_settings.py).
"""

from __future__ import annotations

import hmac
import io
import json
import logging
import os
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from flask import Flask, Response, current_app, g, jsonify, request
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge

from inferer import ModelInferer, validate_texts
from microbatch import MicroBatcher, QueueFull
from utils.serving_settings import ServingSettings

log = logging.getLogger("classifier.api")
PREDICT_BATCH_SIZE = 32
RETRY_AFTER_SECONDS = 1  # told to clients turned away by a full micro-batch queue
REQUEST_FIELDS = ("text", "texts", "top_k")
FORM_FIELD = "data"  # the original API's form field
OPEN_PATHS = ("/health",)  # answered without the API key, for load balancers and container health checks
KNOWN_METHODS = ("GET", "POST", "HEAD", "PUT", "PATCH", "DELETE", "OPTIONS")


class ApiError(Exception):
    """An error answer: HTTP status, a stable machine-readable code and a message for people."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


class ServingMetrics:
    """Prometheus metrics in a registry of their own, so that every app (and test) counts separately."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("http_requests_total", "HTTP requests by route, method and status.",
                                ["endpoint", "method", "status"], registry=self.registry)
        self.latency = Histogram("http_request_duration_seconds", "Time to answer a request.", ["endpoint"],
                                 buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
                                 registry=self.registry)
        self.texts = Histogram("predict_texts_per_request", "Texts in one /predict request.",
                               buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512), registry=self.registry)
        self.truncated = Counter("predict_truncated_texts_total", "Texts cut to the model's max length.",
                                 registry=self.registry)
        self.errors = Counter("http_errors_total", "Error answers by error code.", ["code"], registry=self.registry)
        self.batch_texts = Histogram("microbatch_texts", "Texts in one shared forward pass (MICROBATCH=1).",
                                     buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256), registry=self.registry)
        self.model = Gauge("model_info", "The served checkpoint (always 1).", ["checkpoint_id", "task", "quantized"],
                           registry=self.registry, multiprocess_mode="max")


@dataclass
class ServingState:
    """What one app serves: the inferer, its settings and metrics; the lock keeps one forward pass at a time
    per worker, so torch threads x workers stays within the cores however many requests arrive. With
    micro-batching, the batcher's one thread runs every forward pass instead."""

    inferer: ModelInferer
    settings: ServingSettings
    metrics: ServingMetrics = field(default_factory=ServingMetrics)
    lock: threading.Lock = field(default_factory=threading.Lock)
    ready: bool = True
    batcher: MicroBatcher | None = None


def load_inferer(settings: ServingSettings) -> ModelInferer:
    if not settings.checkpoint_path:
        raise ValueError("set CHECKPOINT_PATH to a checkpoint folder written by training")
    started = time.time()
    inferer = ModelInferer(settings.checkpoint_path, quantize=settings.quantize, device="cpu",
                           precision=settings.precision, num_threads=settings.torch_threads, backend=settings.backend)
    inferer.predict_batch(["warm up"])  # first forward pass allocates; do it before taking traffic
    log.info("model %s (%s) loaded in %.1f s", inferer.checkpoint_id, settings.checkpoint_path,
             time.time() - started)
    return inferer


def create_app(inferer: ModelInferer | None = None, settings: ServingSettings | None = None) -> Flask:
    """The API around `inferer`, or around the checkpoint the settings (default: environment) name."""
    settings = settings or ServingSettings.from_env()
    if inferer is None:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        inferer = load_inferer(settings)
    app = Flask(__name__, static_folder=None)
    app.config["MAX_CONTENT_LENGTH"] = settings.max_body_bytes
    app.json.sort_keys = False  # scores keep the checkpoint's label order
    state = ServingState(inferer, settings)
    if settings.microbatch:  # its thread starts here, in the worker process (gunicorn forks before create_app)
        state.batcher = MicroBatcher(inferer, settings.microbatch_wait_ms, settings.microbatch_max_size,
                                     settings.microbatch_queue_size, PREDICT_BATCH_SIZE,
                                     on_batch=lambda requests, texts: state.metrics.batch_texts.observe(texts),
                                     lock=state.lock)
    state.metrics.model.labels(inferer.checkpoint_id, inferer.task, str(inferer.quantized).lower()).set(1)
    app.extensions["classifier"] = state
    app.before_request(start_timer)
    app.before_request(check_api_key)
    app.before_request(buffer_chunked_body)
    app.after_request(record_metrics)
    app.register_error_handler(ApiError, api_error)
    app.register_error_handler(HTTPException, http_error)
    app.register_error_handler(Exception, unexpected_error)
    for rule, view, methods in ROUTES:
        app.add_url_rule(rule, view_func=view, methods=methods, provide_automatic_options=False)
    return app


def serving() -> ServingState:
    return current_app.extensions["classifier"]


# --- request hooks -----------------------------------------------------------------------------------------


def start_timer() -> None:
    g.started = time.perf_counter()


def check_api_key() -> None:
    """With APP_APIKEY set, every route but /health wants it: `Authorization: Bearer`, `X-API-Key` or `?key=`."""
    expected = serving().settings.api_key
    if not expected or request.path in OPEN_PATHS:
        return
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    offered = [token.strip() if scheme.lower() == "bearer" else None, request.headers.get("X-API-Key"),
               request.args.get("key")]
    wanted = expected.encode("utf-8", "surrogatepass")
    if not any(hmac.compare_digest(o.encode("utf-8", "surrogatepass"), wanted) for o in offered if o):
        raise ApiError(401, "unauthorized", "missing or wrong API key: send `Authorization: Bearer KEY` or "
                                            "`X-API-Key: KEY`")


def buffer_chunked_body() -> None:
    """Read a chunked body here, refusing one byte over MAX_BODY_BYTES: it has no Content-Length to check, and
    werkzeug would cut it at the limit without an error (a truncated text would then be scored)."""
    if request.headers.get("Transfer-Encoding", "").lower() != "chunked" or request.content_length is not None:
        return
    limit = serving().settings.max_body_bytes
    data = request.environ["wsgi.input"].read(limit + 1)
    if len(data) > limit:
        raise RequestEntityTooLarge()
    request.environ["wsgi.input"] = io.BytesIO(data)
    request.environ["CONTENT_LENGTH"] = str(len(data))


def record_metrics(response: Response) -> Response:
    metrics = serving().metrics
    endpoint = request.url_rule.rule if request.url_rule else "unmatched"  # never the raw path: bounded labels
    method = request.method if request.method in KNOWN_METHODS else "other"
    metrics.requests.labels(endpoint, method, str(response.status_code)).inc()
    metrics.latency.labels(endpoint).observe(time.perf_counter() - g.get("started", time.perf_counter()))
    if response.status_code == 401:
        response.headers["WWW-Authenticate"] = 'Bearer realm="classifier"'
    if response.status_code == 503 and request.url_rule is not None and request.url_rule.rule == "/predict":
        response.headers["Retry-After"] = str(RETRY_AFTER_SECONDS)
    return response


# --- errors ------------------------------------------------------------------------------------------------


def error_response(status: int, code: str, message: str) -> tuple[Response, int]:
    serving().metrics.errors.labels(code).inc()
    return jsonify(error={"code": code, "message": message}), status


def api_error(error: ApiError) -> tuple[Response, int]:
    return error_response(error.status, error.code, error.message)


def http_error(error: HTTPException) -> Response | tuple[Response, int]:
    """Werkzeug's own errors (404, 405, 413, ...) as JSON instead of its HTML pages."""
    if error.code is None or error.code < 400:
        return error
    code, message = (error.name or "error").lower().replace(" ", "_"), error.description or error.name
    if error.code == 413:
        code = "body_too_large"
        message = f"the request body is over {serving().settings.max_body_bytes} bytes (MAX_BODY_BYTES)"
    response, status = error_response(error.code, code, message)
    if "Allow" in error.get_response().headers:
        response.headers["Allow"] = error.get_response().headers["Allow"]
    return response, status


def unexpected_error(error: Exception) -> tuple[Response, int]:
    log.exception("unhandled error on %s %s", request.method, request.path)
    return error_response(500, "internal_error", "internal server error; the server log has the details")


# --- routes ------------------------------------------------------------------------------------------------


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
    model = {"task": inferer.task, "checkpoint_id": inferer.checkpoint_id, "backbone": inferer.info.get("backbone"),
             "quantized": inferer.quantized, "precision": inferer.precision, "backend": inferer.backend}
    return jsonify(predictions=predictions, model=model)


def health() -> Response:
    return jsonify(status="ok")


def ready() -> Response | tuple[Response, int]:
    state = serving()
    if not state.ready:
        raise ApiError(503, "not_ready", "the model is not loaded yet")
    return jsonify(status="ready", checkpoint_id=state.inferer.checkpoint_id)


def metadata() -> Response:
    state = serving()
    limits = {"max_body_bytes": state.settings.max_body_bytes, "max_texts": state.settings.max_texts,
              "max_chars": state.settings.max_chars}
    microbatch = ({"wait_ms": state.settings.microbatch_wait_ms, "max_size": state.settings.microbatch_max_size,
                   "queue_size": state.settings.microbatch_queue_size} if state.batcher is not None else None)
    return jsonify(state.inferer.metadata() | {"limits": limits, "microbatch": microbatch})


def metrics() -> Response:
    registry = serving().metrics.registry
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):  # under gunicorn: the values of all its workers, added up
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
    return Response(generate_latest(registry), content_type=CONTENT_TYPE_LATEST)


def openapi() -> Response:
    state = serving()
    return jsonify(openapi_document(state.settings, state.inferer))


ROUTES = [("/predict", predict, ["POST"]), ("/health", health, ["GET"]), ("/ready", ready, ["GET"]),
          ("/metadata", metadata, ["GET"]), ("/metrics", metrics, ["GET"]), ("/openapi.json", openapi, ["GET"])]


# --- reading /predict --------------------------------------------------------------------------------------


def read_predict_request(state: ServingState) -> tuple[list[str], int | None]:
    """The texts (and top_k) of a /predict request: JSON {"text"} or {"texts"}, or the form field `data`."""
    if request.is_json:
        body = parse_json(request.get_data(cache=False))
        texts, top_k = texts_from_json(body, len(state.inferer.label_names))
    elif request.mimetype in ("application/x-www-form-urlencoded", "multipart/form-data"):
        texts, top_k = request.form.getlist(FORM_FIELD), None
        if not texts:
            raise ApiError(422, "missing_text", f"the form has no `{FORM_FIELD}` field")
    else:
        raise ApiError(415, "unsupported_media_type", "send JSON (Content-Type: application/json) or a form "
                                                      f"with a `{FORM_FIELD}` field")
    check_limits(texts, state.settings)
    try:
        return validate_texts(texts), top_k
    except (TypeError, ValueError) as error:
        raise ApiError(422, "invalid_text", str(error)) from None


def parse_json(data: bytes) -> Any:
    try:
        return json.loads(data)
    except (ValueError, RecursionError) as error:  # ValueError covers JSONDecodeError and bad UTF-8
        raise ApiError(400, "invalid_json", f"the body is not valid JSON: {error}") from None


def texts_from_json(body: Any, label_count: int) -> tuple[list[Any], int | None]:
    if not isinstance(body, dict):
        raise ApiError(422, "invalid_request", 'the body must be a JSON object: {"text": "..."} or '
                                               '{"texts": ["...", ...]}')
    unknown = sorted(set(body) - set(REQUEST_FIELDS))
    if unknown:
        raise ApiError(422, "invalid_request", f"unknown field(s) {', '.join(map(repr, unknown))}; "
                                               f"expected {', '.join(REQUEST_FIELDS)}")
    if ("text" in body) == ("texts" in body):
        raise ApiError(422, "invalid_request", 'give exactly one of "text" (a string) or "texts" (a list)')
    if "text" in body:
        if not isinstance(body["text"], str):
            raise ApiError(422, "invalid_text", f'"text" must be a string, got {json_type(body["text"])}')
        texts = [body["text"]]
    else:
        texts = body["texts"]
        if not isinstance(texts, list):
            raise ApiError(422, "invalid_request", f'"texts" must be a list of strings, got {json_type(texts)}')
        if not texts:
            raise ApiError(422, "empty_texts", '"texts" is empty; send at least one text')
        for i, text in enumerate(texts):
            if not isinstance(text, str):
                raise ApiError(422, "invalid_text", f'"texts"[{i}] must be a string, got {json_type(text)}')
    top_k = body.get("top_k")
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int)
                              or not 1 <= top_k <= label_count):
        raise ApiError(422, "invalid_request", f'"top_k" must be an integer from 1 to {label_count}')
    return texts, top_k


def check_limits(texts: list[Any], settings: ServingSettings) -> None:
    if len(texts) > settings.max_texts:
        raise ApiError(413, "too_many_texts", f"{len(texts)} texts in one request; the limit is "
                                              f"{settings.max_texts} (MAX_TEXTS)")
    for i, text in enumerate(texts):
        if isinstance(text, str) and len(text) > settings.max_chars:
            raise ApiError(413, "text_too_long", f"text {i} has {len(text)} characters; the limit is "
                                                 f"{settings.max_chars} (MAX_CHARS)")


def json_type(value: Any) -> str:
    names = {type(None): "null", bool: "boolean", int: "number", float: "number", str: "string", list: "array",
             dict: "object"}
    return names.get(type(value), type(value).__name__)


# --- the OpenAPI document ----------------------------------------------------------------------------------


def openapi_document(settings: ServingSettings, inferer: ModelInferer) -> dict[str, Any]:
    """OpenAPI 3.0 description of these routes, with this server's labels and limits filled in."""
    labels = inferer.label_names
    text = {"type": "string", "maxLength": settings.max_chars}
    scores = {"type": "object", "description": "Every label's score, in the checkpoint's label order.",
              "properties": {name: {"type": "number"} for name in labels}, "required": labels,
              "additionalProperties": False}
    prediction = {"type": "object", "required": ["labels", "scores", "truncated"], "additionalProperties": False,
                  "properties": {
                      "labels": {"type": "array", "items": {"type": "string", "enum": labels}},
                      "scores": scores,
                      "truncated": {"type": "boolean", "description": "The text was cut to the model's length."},
                      "top_k": {"type": "array", "items": {
                          "type": "object", "required": ["label", "score"], "additionalProperties": False,
                          "properties": {"label": {"type": "string", "enum": labels}, "score": {"type": "number"}}}}}}
    schemas = {
        "PredictRequest": {
            "type": "object", "additionalProperties": False,
            "description": 'Exactly one of "text" and "texts".',
            "properties": {"text": text, "texts": {"type": "array", "items": text, "minItems": 1,
                                                   "maxItems": settings.max_texts},
                           "top_k": {"type": "integer", "minimum": 1, "maximum": len(labels)}}},
        "PredictForm": {"type": "object", "required": [FORM_FIELD],
                        "properties": {FORM_FIELD: text}},
        "Prediction": prediction,
        "PredictResponse": {
            "type": "object", "required": ["predictions", "model"], "additionalProperties": False,
            "properties": {"predictions": {"type": "array", "items": {"$ref": "#/components/schemas/Prediction"}},
                           "model": {"type": "object", "required": ["task", "checkpoint_id", "quantized"],
                                     "properties": {"task": {"type": "string"}, "checkpoint_id": {"type": "string"},
                                                    "backbone": {"type": "string", "nullable": True},
                                                    "quantized": {"type": "boolean"},
                                                    "precision": {"type": "string"},
                                                    "backend": {"type": "string"}}}}},
        "Error": {"type": "object", "required": ["error"], "additionalProperties": False,
                  "properties": {"error": {"type": "object", "required": ["code", "message"],
                                           "properties": {"code": {"type": "string"},
                                                          "message": {"type": "string"}}}}},
        "Status": {"type": "object", "required": ["status"], "properties": {"status": {"type": "string"}}},
        "Metadata": {"type": "object", "required": ["task", "labels", "quantized", "checkpoint_id", "limits"],
                     "properties": {"task": {"type": "string", "enum": ["multilabel", "multiclass"]},
                                    "labels": {"type": "array", "items": {"type": "string"}},
                                    "thresholds": {"type": "array", "items": {"type": "number"},
                                                   "nullable": True},
                                    "quantized": {"type": "boolean"}, "precision": {"type": "string"},
                                    "backend": {"type": "string", "enum": ["torch", "onnx", "onnx-int8"]},
                                    "microbatch": {"type": "object", "nullable": True},
                                    "checkpoint_id": {"type": "string"},
                                    "training_metrics": {"type": "object"}, "limits": {"type": "object"}}},
    }

    def answer(description: str, schema: str | dict, media: str = "application/json") -> dict:
        schema = {"$ref": f"#/components/schemas/{schema}"} if isinstance(schema, str) else schema
        return {"description": description, "content": {media: {"schema": schema}}}

    errors = {"401": answer("Missing or wrong API key.", "Error")} if settings.api_key else {}
    predict_errors = {
        "400": answer("The body is not valid JSON.", "Error"),
        "413": answer(f"Body over {settings.max_body_bytes} bytes, more than {settings.max_texts} texts, or a "
                      f"text over {settings.max_chars} characters.", "Error"),
        "415": answer("Neither JSON nor a form.", "Error"),
        "422": answer("Wrong field, type, or an empty list of texts.", "Error"),
    }
    if settings.microbatch:
        predict_errors["503"] = answer("Too many requests waiting for a micro-batch; retry after Retry-After "
                                       "seconds.", "Error")

    def get(summary: str, ok: dict, secured: bool = True) -> dict:
        return {"get": {"summary": summary, "responses": {"200": ok, **(errors if secured else {})}}}

    document = {
        "openapi": "3.0.3",
        "info": {"title": "Text classifier", "version": inferer.checkpoint_id,
                 "description": f"{inferer.task} classifier over labels {', '.join(labels)}."},
        "paths": {
            "/predict": {"post": {
                "summary": "Labels and scores for one text or a list of texts, in input order.",
                "requestBody": {"required": True, "content": {
                    "application/json": {"schema": {"$ref": "#/components/schemas/PredictRequest"}},
                    "application/x-www-form-urlencoded": {"schema": {"$ref": "#/components/schemas/PredictForm"}},
                    "multipart/form-data": {"schema": {"$ref": "#/components/schemas/PredictForm"}}}},
                "responses": {"200": answer("One prediction per text.", "PredictResponse"),
                              **predict_errors, **errors}}},
            "/health": get("The process is alive (never needs the API key).", answer("Alive.", "Status"), False),
            "/ready": {"get": {"summary": "The model is loaded and warmed up.",
                               "responses": {"200": answer("Ready.", "Status"),
                                             "503": answer("Not ready yet.", "Error"), **errors}}},
            "/metadata": get("What is served: task, labels, thresholds, backbone, quantization, training metrics.",
                             answer("The served model.", "Metadata")),
            "/metrics": get("Prometheus metrics.", answer("Prometheus text format.", {"type": "string"}, "text/plain")),
            "/openapi.json": get("This document.", answer("OpenAPI 3 document.", {"type": "object"})),
        },
        "components": {"schemas": schemas},
    }
    for item in document["paths"].values():  # 405 (other methods) and 500 can come from any route
        for operation in item.values():
            operation["responses"]["default"] = answer("Any other error: 405 wrong method, 500 unexpected.", "Error")
    if settings.api_key:
        document["components"]["securitySchemes"] = {
            "bearer": {"type": "http", "scheme": "bearer"},
            "header": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
            "query": {"type": "apiKey", "in": "query", "name": "key"}}
        document["security"] = [{"bearer": []}, {"header": []}, {"query": []}]
        document["paths"]["/health"]["get"]["security"] = []
    return document
