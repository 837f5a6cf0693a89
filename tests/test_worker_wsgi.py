"""serving/worker.py as a WSGI server (PEP 3333), over real sockets to a real gunicorn: the API and the small apps
of tests/wsgi_probe.py run under wsgiref.validate, which fails a request (500, and an AssertionError in the log) on
any environ key or type, wsgi.input / wsgi.errors, status, header or body iterable out of the spec; bytes given to
write() come before the iterable's; the worker's own refusals carry the app's error body; X-Forwarded-For and the
scheme headers count from a peer in gunicorn's forwarded_allow_ips (FORWARDED_ALLOW_IPS) only."""

from __future__ import annotations

import http.client
import json
from collections.abc import Iterable
from email.message import Message

import pytest
from test_faults import Server, running_server
from test_server import server_command
from wsgi_probe import CLOSED_LINE, ENVIRON_PATH, WRITE_PATH

from serving.errors import error_body

PROBE_COMMAND = [*server_command()[:-1], "--pythonpath", "tests", "wsgi_probe:create_validated_app()"]
JSON = {"Content-Type": "application/json"}
PREDICT = json.dumps({"text": "Thanks for fixing the references!"}).encode()
PROXY, NOT_A_PROXY = "127.0.0.1", "127.0.0.2"  # FORWARDED_ALLOW_IPS lists the first; loopback has both
# 127.0.0.1 forwards for a proxy that saw 203.0.113.9; 198.51.100.7 is only what that client wrote
FORWARDED = {"X-Forwarded-For": "198.51.100.7, 203.0.113.9, 127.0.0.1", "X-Forwarded-Proto": "https"}


@pytest.fixture(scope="module")
def server(multilabel_checkpoint, tmp_path_factory):
    with running_server(multilabel_checkpoint, tmp_path_factory.mktemp("wsgi"), command=PROBE_COMMAND, WORKERS="1",
                        MAX_BODY_BYTES="65536", FORWARDED_ALLOW_IPS=PROXY) as running:
        yield running


def send(server: Server, method: str, target: str, body: bytes | Iterable[bytes] | None = None,
         headers: dict[str, str] | None = None, source: str = "127.0.0.1") -> tuple[int, Message, bytes]:
    """(status, headers, body) of one request from the address `source`; an iterable body goes chunked."""
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30, source_address=(source, 0))
    try:
        connection.request(method, target, body=body, headers=headers or {})
        response = connection.getresponse()
        return response.status, response.headers, response.read()
    finally:
        connection.close()


def environ_of(server: Server, target: str = ENVIRON_PATH, body: Iterable[bytes] | None = None,
               headers: dict[str, str] | None = None, source: str = "127.0.0.1") -> dict[str, str]:
    """The environ the probe app got (its str values, and the body it read)."""
    status, _, answer = send(server, "GET" if body is None else "POST", target, body, headers, source)
    assert status == 200, answer
    return json.loads(answer)


API_REQUESTS = [  # every route and kind of answer of the API, each checked by the validator on its way
    ("GET", "/health", None, {}, 200), ("HEAD", "/health", None, {}, 200), ("GET", "/ready", None, {}, 200),
    ("GET", "/metadata", None, {}, 200), ("GET", "/metrics", None, {}, 200), ("GET", "/openapi.json", None, {}, 200),
    ("GET", "/", None, {}, 200), ("GET", "/static/app.js", None, {}, 200),
    ("POST", "/predict", PREDICT, JSON, 200), ("POST", "/predict", iter([PREDICT[:10], PREDICT[10:]]), JSON, 200),
    ("POST", "/predict?from=form", b"data=you+are+wonderful",
     {"Content-Type": "application/x-www-form-urlencoded"}, 200),
    ("POST", "/explain", json.dumps({"text": "you idiot", "labels": ["insult"]}).encode(), JSON, 200),
    ("POST", "/predict", b"not json", JSON, 400), ("GET", "/nowhere", None, {}, 404),
    ("PUT", "/predict", None, {}, 405),
    ("GET", "http://test/health", None, {}, 200),  # an absolute target, as proxies may send it
]


@pytest.mark.parametrize(("method", "target", "body", "headers", "status"), API_REQUESTS)
def test_the_api_passes_the_wsgi_validator(server, method, target, body, headers, status):
    answer = send(server, method, target, body, headers)
    assert answer[0] == status, answer
    for flagged in ("AssertionError", "WSGIWarning", "without being closed", "Traceback"):
        assert flagged not in server.output()


def test_the_environ_holds_the_request_as_pep_3333_says(server):
    environ = environ_of(server, f"{ENVIRON_PATH}/caf%C3%A9?a=1&b=%20", headers={"X-Custom": "yes"})
    assert environ["PATH_INFO"] == f"{ENVIRON_PATH}/caf\u00c3\u00a9"  # %-escapes undone, bytes as latin-1
    assert environ["QUERY_STRING"] == "a=1&b=%20" and environ["SCRIPT_NAME"] == ""
    assert environ["SERVER_PROTOCOL"] == "HTTP/1.1" and environ["SERVER_NAME"] == "127.0.0.1"
    assert environ["SERVER_PORT"] == str(server.port) and environ["HTTP_X_CUSTOM"] == "yes"
    assert environ["REMOTE_ADDR"] == "127.0.0.1" and environ["wsgi.url_scheme"] == "http"
    chunked = environ_of(server, body=iter([b"first ", b"second"]), headers={"Content-Type": "text/plain"})
    assert chunked["body"] == "first second" and chunked["CONTENT_LENGTH"] == "12"  # de-chunked, length known
    assert chunked["CONTENT_TYPE"] == "text/plain"
    assert not {"HTTP_TRANSFER_ENCODING", "HTTP_CONTENT_LENGTH", "HTTP_CONTENT_TYPE"} & set(chunked)


def test_bytes_given_to_write_come_before_the_iterables_and_the_body_is_closed(server):
    status, _, body = send(server, "GET", WRITE_PATH)
    assert (status, body) == (200, b"written, then iterated")
    assert CLOSED_LINE in server.output()


def test_the_workers_refusals_carry_the_apis_error_body(server):
    status, headers, body = send(server, "POST", "/predict", b"x" * 65537, JSON)  # the worker's 413, before the app
    assert (status, headers["Content-Type"]) == (413, "application/json")
    assert body == error_body(**json.loads(body)["error"])
    status, headers, body = send(server, "GET", "/nowhere")  # the app's 404, the same shape byte for byte
    assert (status, headers["Content-Type"]) == (404, "application/json")
    assert body == error_body(**json.loads(body)["error"])


def test_a_proxy_in_forwarded_allow_ips_gives_the_client_and_the_scheme(server):
    environ = environ_of(server, headers=FORWARDED, source=PROXY)
    assert (environ["REMOTE_ADDR"], environ["wsgi.url_scheme"]) == ("203.0.113.9", "https")
    assert "REMOTE_PORT" not in environ  # the proxy's port would not be the client's
    assert f'203.0.113.9 "GET {ENVIRON_PATH} HTTP/1.1" 200' in server.output()  # the access log names the client


def test_forwarding_headers_from_a_peer_not_in_forwarded_allow_ips_change_nothing(server):
    environ = environ_of(server, headers=FORWARDED, source=NOT_A_PROXY)
    assert (environ["REMOTE_ADDR"], environ["wsgi.url_scheme"]) == (NOT_A_PROXY, "http")
    assert environ["HTTP_X_FORWARDED_FOR"] == FORWARDED["X-Forwarded-For"]  # passed on as a header, nothing more


def test_scheme_headers_that_disagree_are_refused_from_a_proxy_only(server):
    """As gunicorn's own workers: a proxy whose secure_scheme_headers say both https and http sent a bad request."""
    disagreeing = {"X-Forwarded-Proto": "https", "X-Forwarded-Ssl": "off"}
    status, _, body = send(server, "GET", ENVIRON_PATH, headers=disagreeing, source=PROXY)
    assert status == 400 and body == error_body("bad_request", json.loads(body)["error"]["message"])
    assert environ_of(server, headers=disagreeing, source=NOT_A_PROXY)["wsgi.url_scheme"] == "http"
