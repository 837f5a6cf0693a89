"""Every error answer as JSON {"error": {"code", "message"}}: the API's own, werkzeug's and unexpected ones."""

from __future__ import annotations

import logging

from flask import Flask, Response, current_app, jsonify, request
from werkzeug.exceptions import HTTPException

log = logging.getLogger("classifier.api")


class ApiError(Exception):
    """An error answer: HTTP status, a stable machine-readable code, a message for people and, for a refusal
    that a later try may pass, the seconds to wait (Retry-After)."""

    def __init__(self, status: int, code: str, message: str, retry_after: int | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.retry_after = status, code, message, retry_after


def error_response(status: int, code: str, message: str) -> tuple[Response, int]:
    current_app.extensions["classifier"].metrics.errors.labels(code).inc()
    return jsonify(error={"code": code, "message": message}), status


def api_error(error: ApiError) -> tuple[Response, int]:
    response, status = error_response(error.status, error.code, error.message)
    if error.retry_after is not None:
        response.headers["Retry-After"] = str(error.retry_after)
    return response, status


def http_error(error: HTTPException) -> Response | HTTPException | tuple[Response, int]:
    """Werkzeug's own errors (404, 405, 413, ...) as JSON instead of its HTML pages."""
    if error.code is None or error.code < 400:
        return error
    code, message = (error.name or "error").lower().replace(" ", "_"), error.description or error.name
    if error.code == 413:
        limit = current_app.extensions["classifier"].settings.max_body_bytes
        code, message = "body_too_large", f"the request body is over {limit} bytes (MAX_BODY_BYTES)"
    response, status = error_response(error.code, code, message)
    allowed = error.get_response().headers.get("Allow")
    if allowed:
        response.headers["Allow"] = allowed
    return response, status


def unexpected_error(error: Exception) -> tuple[Response, int]:
    log.exception("unhandled error on %s %s", request.method, request.path)
    return error_response(500, "internal_error", "internal server error; the server log has the details")


def register_error_handlers(app: Flask) -> None:
    app.register_error_handler(ApiError, api_error)
    app.register_error_handler(HTTPException, http_error)
    app.register_error_handler(Exception, unexpected_error)
