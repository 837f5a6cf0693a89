"""The WSGI side of the worker (PEP 3333): the environ of a complete request, and the app's answer collected whole.

The body is a buffer of known length (never chunked), the bytes the app gives write() come before its iterable's,
and the iterable's close() is always called. What the worker answers itself carries the API's JSON error body.
"""

from __future__ import annotations

import io
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any
from urllib.parse import unquote_to_bytes, urlsplit

import h11

from serving.errors import ApiError, error_body
from serving.proxy import ProxyTrust, host_and_port

WsgiApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


@dataclass
class Answer:
    """What the app answered, as the access log and h11 need it."""

    status: int
    reason: str
    headers: list[tuple[str, str]]
    body: bytes


@dataclass
class AccessInfo:
    """The fields of gunicorn's access log taken from a response (status, headers, bytes sent) or a request."""

    status: int
    headers: list[tuple[str, str]]
    sent: int


def request_environ(request: h11.Request, body: bytes, server: Any, peer: Any, proxy: ProxyTrust) -> dict[str, Any]:
    """The environ of a complete request that came to the socket address `server` from `peer`: the body a buffer of
    known length; the client and the scheme as the peer says, or as a trusted proxy in front reports them."""
    target = request.target.decode("latin-1")
    path, query = split_target(target)
    server_name, server_port = host_and_port(server)
    environ: dict[str, Any] = {
        "REQUEST_METHOD": request.method.decode("ascii"), "SCRIPT_NAME": "", "PATH_INFO": path,
        "QUERY_STRING": query, "RAW_URI": target, "SERVER_NAME": server_name, "SERVER_PORT": server_port,
        "SERVER_PROTOCOL": f"HTTP/{request.http_version.decode('ascii')}", "CONTENT_LENGTH": str(len(body)),
        "wsgi.version": (1, 0), "wsgi.input": io.BytesIO(body), "wsgi.errors": sys.stderr,
        "wsgi.multithread": True, "wsgi.multiprocess": True, "wsgi.run_once": False,
        "wsgi.input_terminated": True, **proxy.client_and_scheme(peer, request.headers),
    }
    for name, value in request.headers:  # h11 lower-cases names
        key = name.decode("latin-1").upper().replace("-", "_")
        if key in ("CONTENT_LENGTH", "TRANSFER_ENCODING"):
            continue  # the body is complete and de-chunked: CONTENT_LENGTH above is its length
        key = key if key == "CONTENT_TYPE" else f"HTTP_{key}"
        text = value.decode("latin-1")
        environ[key] = f"{environ[key]},{text}" if key in environ else text
    return environ


def split_target(target: str) -> tuple[str, str]:
    """PATH_INFO (%-escapes undone, bytes as latin-1 str, as PEP 3333 asks) and QUERY_STRING of a request target. An
    absolute target (`GET http://host/path`, as proxies may send) gives its path; `OPTIONS *` has none."""
    path, _, query = target.partition("?")
    if not path.startswith("/"):
        path = urlsplit(path).path if "://" in path else ""
    return unquote_to_bytes(path).decode("latin-1"), query


def call_app(app: WsgiApp, environ: dict[str, Any], log: Any) -> Answer:
    """Run the WSGI app on one request and collect its whole answer; an exception in the app is logged and
    answered 500."""
    response = CollectedResponse()
    try:
        result = app(environ, response.start_response)
        try:
            for data in result:
                response.write(data)
        finally:
            close = getattr(result, "close", None)
            if close is not None:  # PEP 3333: whether or not iterating failed (it frees the app's resources)
                close()
        return response.answer()
    except Exception:
        log.exception("error in the app on %s %s", environ["REQUEST_METHOD"], environ["PATH_INFO"])
        return error_answer(ApiError(500, "internal_error", "internal server error; the server log has the details"))


class CollectedResponse:
    """One app call's answer, collected whole before a byte is sent: start_response's status and headers, then the
    body, the bytes given to write() first and the iterable's after (the order PEP 3333 sends them in)."""

    def __init__(self) -> None:
        self.status: str | None = None
        self.headers: list[tuple[str, str]] = []
        self.chunks: list[bytes] = []

    def start_response(self, status: str, headers: list[tuple[str, str]],
                       exc_info: Any = None) -> Callable[[bytes], None]:
        if exc_info is not None and self.chunks:  # PEP 3333: from the first body byte on, headers count as sent
            raise exc_info[1].with_traceback(exc_info[2])
        if exc_info is None and self.status is not None:
            raise RuntimeError("start_response called twice without exc_info")
        if not isinstance(status, str) or not all(isinstance(n, str) and isinstance(v, str) for n, v in headers):
            raise TypeError(f"the status and the headers must be str (PEP 3333): {status!r}, {headers!r}")
        self.status, self.headers = status, list(headers)
        return self.write

    def write(self, data: bytes) -> None:
        """start_response's write callable, and each item of the app's iterable."""
        if not isinstance(data, bytes):
            raise TypeError(f"the body must be bytes (PEP 3333), got {type(data).__name__}")
        if data and self.status is None:
            raise RuntimeError("body bytes before start_response")
        if data:
            self.chunks.append(data)

    def answer(self) -> Answer:
        if self.status is None:
            raise RuntimeError("the app returned without calling start_response")
        code, _, reason = self.status.partition(" ")
        return Answer(int(code), reason, self.headers, b"".join(self.chunks))


def error_answer(error: ApiError) -> Answer:
    """The API's JSON error, with the body serving/errors.py gives the app's own errors."""
    body = error_body(error.code, error.message)
    headers = [("Content-Type", "application/json"), ("Content-Length", str(len(body)))]
    if error.retry_after is not None:
        headers.append(("Retry-After", str(error.retry_after)))
    return Answer(error.status, reason_phrase(error.status), headers, body)


def reason_phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return ""
