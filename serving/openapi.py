"""The OpenAPI 3.1 document: pydantic's JSON schema of the models in serving/schemas.py with this server's labels
and limits filled in, and a table of the routes with every answer each can give."""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cache
from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from serving.schemas import (
    FILL,
    CorrectionAnswer,
    CorrectionRequest,
    ErrorAnswer,
    ExplainAnswer,
    ExplainRequest,
    MetadataAnswer,
    PredictAnswer,
    PredictRequest,
    StatusAnswer,
    fill,
)
from serving.settings import ServingSettings

FORM_FIELD = "data"  # the original API's form field
REF = "#/components/schemas/{model}"
STATIC_TYPES = ("text/html", "text/css", "text/javascript", "image/svg+xml")  # what serving/static holds
TEXT = {"schema": {"type": "string"}}
HEADERS = {
    "Retry-After": {"description": "Seconds to wait before trying again.", "schema": {"type": "integer"}},
    "WWW-Authenticate": {"description": 'Bearer realm="classifier"', "schema": {"type": "string"}},
}
SECURITY_SCHEMES = {"bearer": {"type": "http", "scheme": "bearer"},
                    "header": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
                    "query": {"type": "apiKey", "in": "query", "name": "key"}}


@dataclass(frozen=True)
class Refusal:
    """An error answer: its status, when it is given (a template of the settings), the headers it carries, the
    setting without which it is never given, its code when not the name it has in ERRORS, and the setting with
    which it is never given."""

    status: int
    when: str
    headers: tuple[str, ...] = ()
    only_with: str | None = None
    code: str | None = None
    only_without: str | None = None


ERRORS = {
    "invalid_json": Refusal(400, "the body is not valid JSON"),
    "unauthorized": Refusal(401, "missing or wrong API key", ("WWW-Authenticate",), only_with="api_key_value"),
    "not_found": Refusal(404, "no such file"),
    "body_too_large": Refusal(413, "a body over {max_body_bytes} bytes (MAX_BODY_BYTES)"),
    "too_many_texts": Refusal(413, "more than {max_texts} texts (MAX_TEXTS)"),
    "too_many_explain_texts": Refusal(413, "more than {max_explain_texts} texts (MAX_EXPLAIN_TEXTS)",
                                      code="too_many_texts"),
    "text_too_long": Refusal(413, "a text over {max_chars} characters (MAX_CHARS)"),
    "too_many_tokens": Refusal(413, "more than {max_tokens} tokens in all, counted after each text is cut to the "
                                    "model's max length (MAX_TOKENS)"),
    "over_budget": Refusal(413, "more than {max_request_cost} tokens of model work (MAX_REQUEST_COST)"),
    "unsupported_media_type": Refusal(415, "neither JSON nor a form"),
    "rate_limited": Refusal(429, "more than {rate_limit} /predict and /explain requests a minute from this client "
                                 "(RATE_LIMIT, counted by each worker)", ("Retry-After",), only_with="rate_limit"),
    "invalid_request": Refusal(422, "not a JSON object, a wrong or unknown field, or a value out of range"),
    "invalid_text": Refusal(422, "a text that is not a string or not valid Unicode"),
    "empty_texts": Refusal(422, "an empty list of texts"),
    "missing_text": Refusal(422, f"a form without the `{FORM_FIELD}` field"),
    "invalid_labels": Refusal(422, "an unknown label, or an empty or too long list of labels"),
    "corrections_off": Refusal(404, "the server keeps no corrections (CORRECTIONS_FILE unset)",
                               only_without="corrections_file"),
    "corrections_full": Refusal(507, "the corrections file is at {corrections_max_bytes} bytes "
                                     "(CORRECTIONS_MAX_BYTES)", only_with="corrections_file"),
    "corrections_unwritable": Refusal(500, "the corrections file cannot be written (the correction is not saved)",
                                      only_with="corrections_file"),
    "overloaded": Refusal(503, "{microbatch_queue_size} requests already wait for a micro-batch "
                               "(MICROBATCH_QUEUE_SIZE)", ("Retry-After",), only_with="microbatch"),
    "deadline_exceeded": Refusal(503, "not done within {request_timeout:g} s (REQUEST_TIMEOUT)", ("Retry-After",)),
    "explain_busy": Refusal(503, "{explain_queue_size} explanations already running or waiting on this worker "
                                 "(EXPLAIN_QUEUE_SIZE)", ("Retry-After",)),
}
TEXT_ROUTE_ERRORS = ("invalid_json", "body_too_large", "text_too_long", "over_budget", "unsupported_media_type",
                     "invalid_request", "invalid_text", "empty_texts", "missing_text", "deadline_exceeded",
                     "rate_limited")


@dataclass(frozen=True)
class Route:
    """One operation: what it does, its answer (a model, or the content by media type), the request it takes, the
    errors it can give beyond 401, and whether it is public (never needs the API key)."""

    summary: str
    ok: str
    answer: type[BaseModel] | dict[str, Any]
    request: type[BaseModel] | None = None
    errors: tuple[str, ...] = ()
    public: bool = False
    status: int = 200  # of the answer that is not an error
    form: bool = True  # the request may also come as a form (the field `data`)


ROUTES = {
    ("/predict", "post"): Route(
        "Labels and scores for one text or a list of texts, in input order.", "One prediction per text.",
        PredictAnswer, PredictRequest, TEXT_ROUTE_ERRORS + ("too_many_texts", "too_many_tokens", "overloaded")),
    ("/explain", "post"): Route(
        "Why: per text, a score per word for each asked label (default: the predicted ones).",
        "One explanation per text.", ExplainAnswer, ExplainRequest,
        TEXT_ROUTE_ERRORS + ("too_many_explain_texts", "invalid_labels", "explain_busy")),
    ("/corrections", "post"): Route(
        "A person's labels for one text, appended to CORRECTIONS_FILE as one JSON line that --extra-data reads.",
        "Saved: the line appended.", CorrectionAnswer, CorrectionRequest,
        ("corrections_off", "invalid_json", "body_too_large", "text_too_long", "unsupported_media_type",
         "invalid_request", "invalid_text", "invalid_labels", "corrections_full", "corrections_unwritable"),
        status=201, form=False),
    ("/", "get"): Route("A page to try the model in a browser (never needs the API key).", "The page.",
                        {"text/html": TEXT}, public=True),
    ("/static/{filename}", "get"): Route("The page's script and style sheet (never need the API key).", "The file.",
                                         dict.fromkeys(STATIC_TYPES, TEXT), errors=("not_found",), public=True),
    ("/health", "get"): Route("The process is alive (never needs the API key).", "Alive.", StatusAnswer, public=True),
    ("/ready", "get"): Route("The model is loaded and warmed up.", "Ready.", StatusAnswer),
    ("/metadata", "get"): Route("What is served: task, labels, thresholds, backbone, quantization, training metrics.",
                                "The served model.", MetadataAnswer),
    ("/metrics", "get"): Route("Prometheus metrics.", "Prometheus text format.", {"text/plain": TEXT}),
    ("/openapi.json", "get"): Route("This document.", "OpenAPI 3.1 document.",
                                    {"application/json": {"schema": {"type": "object"}}}),
}
ANY_OTHER = "Any other error: 405 wrong method, 500 unexpected."


def openapi_document(settings: ServingSettings, labels: list[str], task: str, checkpoint_id: str) -> dict[str, Any]:
    """The whole document, with this server's labels, limits and security filled in."""
    values = document_values(settings, labels)
    paths: dict[str, Any] = {}
    for (path, method), route in ROUTES.items():
        paths.setdefault(path, {})[method] = operation(path, route, settings, values)
    document: dict[str, Any] = {
        "openapi": "3.1.0",
        "info": {"title": "Text classifier", "version": checkpoint_id,
                 "description": f"{task} classifier over labels {', '.join(labels)}."},
        "paths": paths,
        "components": {"schemas": component_schemas()},
    }
    if settings.api_key_value:  # as serving/hooks.py asks for it
        document["components"]["securitySchemes"] = SECURITY_SCHEMES
        document["security"] = [{name: []} for name in SECURITY_SCHEMES]
    return filled(document, values)


def document_values(settings: ServingSettings, labels: list[str]) -> dict[str, Any]:
    """What the FILL marks and the error templates name: the settings, and the labels."""
    return settings.model_dump(exclude={"api_key"}) | {
        "explain_queue_size": settings.explain_places(), "labels": labels, "label_count": len(labels),
        "scores": {label: {"type": "number"} for label in labels}}


def operation(path: str, route: Route, settings: ServingSettings, values: dict[str, Any]) -> dict[str, Any]:
    """One route's operation: its answers grouped by status, each error code an example of its status."""
    by_status: dict[int, dict[str, Refusal]] = {}
    for name in route.errors + (() if route.public else ("unauthorized",)):
        refusal = ERRORS[name]
        if ((not refusal.only_with or getattr(settings, refusal.only_with))
                and not (refusal.only_without and getattr(settings, refusal.only_without))):
            by_status.setdefault(refusal.status, {})[refusal.code or name] = refusal
    responses = {str(route.status): {"description": route.ok, "content": content(route.answer)}}
    for status, refusals in sorted(by_status.items()):
        responses[str(status)] = error_answer(refusals, values)
    responses["default"] = {"description": ANY_OTHER, "content": content(ErrorAnswer)}
    found: dict[str, Any] = {"summary": route.summary, "responses": responses}
    if route.request is not None:
        form = {"schema": {"type": "object", "required": [FORM_FIELD],
                           "properties": {FORM_FIELD: {"type": "string", **fill(maxLength="max_chars")}}}}
        forms = {"application/x-www-form-urlencoded": form, "multipart/form-data": form} if route.form else {}
        found["requestBody"] = {"required": True, "content": content(route.request) | forms}
    if parameters := re.findall(r"{(\w+)}", path):
        found["parameters"] = [{"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
                               for name in parameters]
    if route.public:
        found["security"] = []
    return found


def error_answer(refusals: dict[str, Refusal], values: dict[str, Any]) -> dict[str, Any]:
    """The answer of one error status: when each of its codes is given, each code an example, and its headers."""
    whens = {code: refusal.when.format(**values) for code, refusal in refusals.items()}
    description = "; ".join(whens.values())
    examples = {code: {"summary": when, "value": {"error": {"code": code, "message": when}}}
                for code, when in whens.items()}
    headers = {name: HEADERS[name] for refusal in refusals.values() for name in refusal.headers}
    return {"description": description[:1].upper() + description[1:] + ".",
            "content": {"application/json": content(ErrorAnswer)["application/json"] | {"examples": examples}},
            **({"headers": headers} if headers else {})}


def content(answer: type[BaseModel] | dict[str, Any]) -> dict[str, Any]:
    """The content of a body: a model's as JSON, or the given content by media type."""
    if isinstance(answer, dict):
        return answer
    return {"application/json": {"schema": {"$ref": REF.format(model=answer.__name__)}}}


@cache
def component_schemas() -> dict[str, Any]:
    """Every model of the routes, as pydantic writes its JSON schema: the same for every app until filled."""
    models = {ErrorAnswer} | {m for route in ROUTES.values() for m in (route.answer, route.request)
                              if isinstance(m, type)}
    keyed, top = models_json_schema([(m, "validation") for m in sorted(models, key=lambda m: m.__name__)],
                                    ref_template=REF)
    components = dict(top.get("$defs", {}))
    for (model, _), ref in keyed.items():
        components.setdefault(ref["$ref"].rsplit("/", 1)[-1] if "$ref" in ref else model.__name__, ref)
    return components


def filled(node: Any, values: dict[str, Any]) -> Any:
    """A copy of `node` with every FILL mark replaced by the app's values it names."""
    if isinstance(node, list):
        return [filled(item, values) for item in node]
    if not isinstance(node, dict):
        return node
    marks = {keyword: values[name] for keyword, name in node.get(FILL, {}).items()}
    return {key: filled(value, values) for key, value in node.items() if key != FILL} | marks
