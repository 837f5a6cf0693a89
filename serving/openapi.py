"""The OpenAPI 3.1 document of the routes: pydantic's JSON schema of the models that validate and answer, with this
server's labels and limits filled in."""

from __future__ import annotations

from functools import cache
from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from serving.schemas import (
    FILL,
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


def answer(description: str, schema: str | dict[str, Any], media: str = "application/json") -> dict[str, Any]:
    schema = {"$ref": REF.format(model=schema)} if isinstance(schema, str) else schema
    return {"description": description, "content": {media: {"schema": schema}}}


@cache
def component_schemas() -> dict[str, Any]:
    """The models' JSON schema as pydantic writes it: the same for every app until filled."""
    models: list[type[BaseModel]] = [PredictRequest, PredictAnswer, ExplainRequest, ExplainAnswer, ErrorAnswer,
                                     StatusAnswer, MetadataAnswer]
    keyed, top = models_json_schema([(m, "validation") for m in models], ref_template=REF)
    components = dict(top.get("$defs", {}))
    for (model, _), ref in keyed.items():
        name = ref["$ref"].rsplit("/", 1)[-1] if "$ref" in ref else model.__name__
        components.setdefault(name, ref)
    return components


def openapi_document(settings: ServingSettings, labels: list[str], task: str, checkpoint_id: str) -> dict[str, Any]:
    """The whole document, with this server's labels, limits and security filled in."""
    secured = settings.api_key is not None
    unauthorized = {"401": answer("Missing or wrong API key.", "ErrorAnswer")} if secured else {}
    predict_errors = {
        "400": answer("The body is not valid JSON.", "ErrorAnswer"),
        "413": answer(f"Body over {settings.max_body_bytes} bytes, more than {settings.max_texts} texts, a text "
                      f"over {settings.max_chars} characters, or more than {settings.max_tokens} tokens in all "
                      "(counted after each text is cut to the model's max length).", "ErrorAnswer"),
        "415": answer("Neither JSON nor a form.", "ErrorAnswer"),
        "422": answer("Wrong field, type, or an empty list of texts.", "ErrorAnswer"),
    }
    if settings.microbatch:
        predict_errors["503"] = answer("Too many requests waiting for a micro-batch; retry after Retry-After "
                                       "seconds.", "ErrorAnswer")
    form = {"type": "object", "required": [FORM_FIELD],
            "properties": {FORM_FIELD: {"type": "string", **fill(maxLength="max_chars")}}}
    explain_errors = predict_errors | {
        "413": answer(f"Body over {settings.max_body_bytes} bytes, more than {settings.max_explain_texts} texts "
                      f"(MAX_EXPLAIN_TEXTS), a text over {settings.max_chars} characters, or more than "
                      f"{settings.max_tokens} tokens in all.", "ErrorAnswer"),
        "422": answer("Wrong field, type, unknown label, or an empty list of texts or labels.", "ErrorAnswer")}
    explain_errors.pop("503", None)  # explanations do not queue for a micro-batch

    def body(model: str) -> dict[str, Any]:
        return {"required": True, "content": {
            "application/json": {"schema": {"$ref": REF.format(model=model)}},
            "application/x-www-form-urlencoded": {"schema": form}, "multipart/form-data": {"schema": form}}}

    def get(summary: str, ok: dict[str, Any], open_route: bool = False) -> dict[str, Any]:
        return {"get": {"summary": summary, "responses": {"200": ok, **({} if open_route else unauthorized)}}}

    paths: dict[str, Any] = {
        "/predict": {"post": {
            "summary": "Labels and scores for one text or a list of texts, in input order.",
            "requestBody": body("PredictRequest"),
            "responses": {"200": answer("One prediction per text.", "PredictAnswer"), **predict_errors,
                          **unauthorized}}},
        "/explain": {"post": {
            "summary": "Why: per text, a score per word for each asked label (default: the predicted ones).",
            "requestBody": body("ExplainRequest"),
            "responses": {"200": answer("One explanation per text.", "ExplainAnswer"), **explain_errors,
                          **unauthorized}}},
        "/": {"get": {"summary": "A page to try the model in a browser (never needs the API key).",
                      "security": [], "responses": {"200": answer("The page.", {"type": "string"}, "text/html")}}},
        "/static/{filename}": {"get": {
            "summary": "The page's script and style sheet (never need the API key).", "security": [],
            "parameters": [{"name": "filename", "in": "path", "required": True, "schema": {"type": "string"}}],
            "responses": {"200": {"description": "The file.", "content": {
                media: {"schema": {"type": "string"}} for media in STATIC_TYPES}},
                          "404": answer("No such file.", "ErrorAnswer")}}},
        "/health": get("The process is alive (never needs the API key).", answer("Alive.", "StatusAnswer"), True),
        "/ready": get("The model is loaded and warmed up.", answer("Ready.", "StatusAnswer")),
        "/metadata": get("What is served: task, labels, thresholds, backbone, quantization, training metrics.",
                         answer("The served model.", "MetadataAnswer")),
        "/metrics": get("Prometheus metrics.", answer("Prometheus text format.", {"type": "string"}, "text/plain")),
        "/openapi.json": get("This document.", answer("OpenAPI 3.1 document.", {"type": "object"})),
    }
    for item in paths.values():  # 405 (other methods) and 500 can come from any route
        for operation in item.values():
            operation["responses"]["default"] = answer("Any other error: 405 wrong method, 500 unexpected.",
                                                       "ErrorAnswer")
    document: dict[str, Any] = {
        "openapi": "3.1.0",
        "info": {"title": "Text classifier", "version": checkpoint_id,
                 "description": f"{task} classifier over labels {', '.join(labels)}."},
        "paths": paths,
        "components": {"schemas": component_schemas()},
    }
    if secured:
        document["components"]["securitySchemes"] = {
            "bearer": {"type": "http", "scheme": "bearer"},
            "header": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
            "query": {"type": "apiKey", "in": "query", "name": "key"}}
        document["security"] = [{"bearer": []}, {"header": []}, {"query": []}]
        paths["/health"]["get"]["security"] = []
    return filled(document, document_values(settings, labels))


def document_values(settings: ServingSettings, labels: list[str]) -> dict[str, Any]:
    """What the FILL marks name: the settings, and the labels."""
    return settings.model_dump(exclude={"api_key"}) | {
        "labels": labels, "label_count": len(labels), "scores": {label: {"type": "number"} for label in labels}}


def filled(node: Any, values: dict[str, Any]) -> Any:
    """A copy of `node` with every FILL mark replaced by the app's values it names."""
    if isinstance(node, list):
        return [filled(item, values) for item in node]
    if not isinstance(node, dict):
        return node
    marks = {keyword: values[name] for keyword, name in node.get(FILL, {}).items()}
    return {key: filled(value, values) for key, value in node.items() if key != FILL} | marks
