"""The API behind wsgiref.validate, beside two small apps of its own, for tests/test_worker_wsgi.py to serve with the
real worker: `gunicorn -c gunicorn.conf.py --pythonpath tests "wsgi_probe:create_validated_app()"`.

The validator checks every request's environ, start_response call, body iterable (and that the worker closes it),
wsgi.input and wsgi.errors; what it finds is an AssertionError in the app (a 500, and a traceback in the log), and
its warnings are made errors too, so that nothing it flags goes unseen.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Callable, Iterable, Iterator
from typing import Any
from wsgiref.validate import WSGIWarning, validator

from app import create_app

StartResponse = Callable[..., Callable[[bytes], object]]
ENVIRON_PATH = "/_probe/environ"
WRITE_PATH = "/_probe/write"
CLOSED_LINE = "probe body closed"  # written to wsgi.errors (the server's log) when the worker closes the body


def create_validated_app() -> Callable[[dict[str, Any], StartResponse], Iterable[bytes]]:
    warnings.simplefilter("error", WSGIWarning)
    api = create_app()

    def dispatch(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        if environ["PATH_INFO"].startswith(ENVIRON_PATH):
            return show_environ(environ, start_response)
        if environ["PATH_INFO"] == WRITE_PATH:
            return write_then_iterate(environ, start_response)
        return api(environ, start_response)

    return validator(dispatch)


def show_environ(environ: dict[str, Any], start_response: StartResponse) -> list[bytes]:
    """The environ's str values (the CGI variables and wsgi.url_scheme) and the body as the app reads it."""
    shown = {key: value for key, value in environ.items() if isinstance(value, str)}
    shown["body"] = environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0)).decode("latin-1")
    body = json.dumps(shown).encode()
    start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
    return [body]


def write_then_iterate(environ: dict[str, Any], start_response: StartResponse) -> ClosingBody:
    """An app of the old style: part of the body through write(), the rest as the iterable."""
    write = start_response("200 OK", [("Content-Type", "text/plain; charset=utf-8")])
    write(b"written, ")
    return ClosingBody([b"then ", b"iterated"], environ["wsgi.errors"])


class ClosingBody:
    """A body iterable that says in the log when the server calls its close()."""

    def __init__(self, parts: list[bytes], errors: Any) -> None:
        self.parts, self.errors = parts, errors

    def __iter__(self) -> Iterator[bytes]:
        return iter(self.parts)

    def close(self) -> None:
        self.errors.write(f"{CLOSED_LINE}\n")
        self.errors.flush()
