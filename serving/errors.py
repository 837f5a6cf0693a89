"""Every error answer as JSON {"error": {"code", "message"}}: the API's own, werkzeug's, unexpected ones and the
refusals the worker (serving/worker.py) makes before the app, all from `error_body`."""

from __future__ import annotations

import json
import logging

from flask import Flask, Response, current_app, request
from werkzeug.exceptions import HTTPException

log = logging.getLogger("classifier.api")


class ApiError(Exception):
    """An error answer: HTTP status, a stable machine-readable code, a message for people and, for a refusal
    that a later try may pass, the seconds to wait (Retry-After)."""

    def __init__(self, status: int, code: str, message: str, retry_after: int | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.retry_after = status, code, message, retry_after


def error_body(code: str, message: str) -> bytes:
    """The one error document, as bytes: the worker answers with it outside any Flask app, so not jsonify."""
    return json.dumps({"error": {"code": code, "message": message}}, separators=(",", ":")).encode() + b"\n"


def body_too_large(limit: int) -> ApiError:
    return ApiError(413, "body_too_large", f"the request body is over {limit} bytes (MAX_BODY_BYTES)")


def error_response(status: int, code: str, message: str) -> tuple[Response, int]:
    current_app.extensions["classifier"].metrics.errors.labels(code).inc()
    return Response(error_body(code, message), mimetype="application/json"), status


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
    if error.code == 413:  # werkzeug's, from MAX_CONTENT_LENGTH: only where no worker refused the body first
        too_large = body_too_large(current_app.extensions["classifier"].settings.max_body_bytes)
        code, message = too_large.code, too_large.message
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
