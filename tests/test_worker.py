"""serving/worker.py speaking HTTP/1.1 on raw sockets to a real server: the answers it gives before the app
(413 from Content-Length alone, 400, 431), and what clients do that the app never sees (pipelining,
Expect: 100-continue, chunked bodies, HEAD, keep-alive)."""

from __future__ import annotations

import json
import re
import socket

import pytest
from test_faults import running_server

BODY = json.dumps({"text": "Thanks for fixing the references!"}).encode()
HEAD = b"POST /predict HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"


def exchange(port: int, data: bytes, timeout: float = 10) -> bytes:
    """Everything the server sends back on one connection until it closes it."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as connection:
        connection.sendall(data)
        received = b""
        while chunk := connection.recv(65536):
            received += chunk
    return received


def statuses(answer: bytes) -> list[int]:
    """The status of every answer in `answer` (JSON bodies end in a newline, the next answer follows at once)."""
    return [int(status) for status in re.findall(rb"HTTP/1\.1 (\d{3}) ", answer)]


@pytest.fixture(scope="module")
def server(multilabel_checkpoint, tmp_path_factory):
    with running_server(multilabel_checkpoint, tmp_path_factory.mktemp("worker"), WORKERS="1",
                        MAX_BODY_BYTES="65536") as running:
        yield running


def test_a_body_declared_too_large_is_refused_before_it_is_sent(server):
    answer = exchange(server.port, HEAD + b"Content-Length: 65537\r\n\r\n")  # not one byte of the body
    assert statuses(answer) == [413] and b"Connection: close" in answer
    assert json.loads(answer.split(b"\r\n\r\n", 1)[1])["error"]["code"] == "body_too_large"


def test_a_chunked_body_is_counted_as_it_arrives(server):
    chunks = b"".join(b"%x\r\n%s\r\n" % (8192, b"a" * 8192) for _ in range(9)) + b"0\r\n\r\n"
    answer = exchange(server.port, HEAD + b"Transfer-Encoding: chunked\r\n\r\n" + chunks)
    assert statuses(answer) == [413] and b'"body_too_large"' in answer
    small = b"%x\r\n%s\r\n0\r\n\r\n" % (len(BODY), BODY)
    answer = exchange(server.port, HEAD + b"Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n" + small)
    assert statuses(answer) == [200] and b'"predictions"' in answer


@pytest.mark.parametrize("path", [b"/predict", b"/explain"])
@pytest.mark.parametrize(("size", "status"), [(65536, 200), (65537, 413)])
def test_a_chunked_body_is_held_to_max_body_bytes_to_the_byte(server, path, size, status):
    """The worker de-chunks every body under MAX_BODY_BYTES, the one place that limit is applied to one: the app
    gets a body of known length, never a chunked one to cut at the limit without a word."""
    body = json.dumps({"text": "padding"}).encode().ljust(size)
    chunks = b"".join(b"%x\r\n%s\r\n" % (len(part), part) for part in (body[:40_000], body[40_000:]))
    head = b"POST %s HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n" % path
    answer = exchange(server.port, head + b"Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n" + chunks
                      + b"0\r\n\r\n")
    assert statuses(answer) == [status]
    if status == 413:
        assert json.loads(answer.split(b"\r\n\r\n", 1)[1])["error"]["code"] == "body_too_large"


def test_malformed_requests_and_oversized_heads_are_refused(server):
    answer = exchange(server.port, b"NOT HTTP AT ALL\r\n\r\n")
    assert statuses(answer) == [400] and b'"bad_request"' in answer
    answer = exchange(server.port, b"GET /health HTTP/1.1\r\nHost: test\r\nX-Big: " + b"a" * 40_000 + b"\r\n\r\n")
    assert statuses(answer) == [431] and b'"headers_too_large"' in answer


def test_pipelined_requests_are_answered_in_order_on_one_connection(server):
    one = HEAD + b"Content-Length: %d\r\n\r\n%s" % (len(BODY), BODY)
    answer = exchange(server.port, one + b"GET /nowhere HTTP/1.1\r\nHost: test\r\n\r\n" + one
                      + b"GET /health HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n")
    assert statuses(answer) == [200, 404, 200, 200]


def test_expect_100_continue_and_head(server):
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as connection:
        connection.sendall(HEAD + b"Expect: 100-continue\r\nContent-Length: %d\r\n\r\n" % len(BODY))
        assert connection.recv(1024).startswith(b"HTTP/1.1 100 Continue\r\n")
        connection.sendall(BODY)
        assert connection.recv(65536).startswith(b"HTTP/1.1 200 ")
    answer = exchange(server.port, b"HEAD /health HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n")
    assert statuses(answer) == [200] and answer.endswith(b"\r\n\r\n")  # headers, no body
