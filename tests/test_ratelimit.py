"""Per-client rate limits (serving/ratelimit.py): the token bucket on a clock of its own, then the real server
(the Dockerfile's gunicorn command, one worker so that one process counts every request) with clients on two
loopback addresses: the one over RATE_LIMIT gets 429 with Retry-After, the other is served."""

from __future__ import annotations

import http.client
import json

import pytest
from test_faults import PREDICT, running_server

from serving.ratelimit import RateLimiter

EXPLAIN = json.dumps({"text": "you complete idiot", "labels": ["insult"]}).encode()


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_bucket_lets_a_minutes_worth_through_then_one_every_60_over_the_limit_seconds():
    clock = Clock()
    limiter = RateLimiter(per_minute=6, clock=clock)  # a token every 10 s
    assert [limiter.retry_after("a") for _ in range(6)] == [None] * 6
    assert limiter.retry_after("a") == 10 and limiter.retry_after("a") == 10  # refused requests take nothing
    assert limiter.retry_after("b") is None  # another client has its own bucket
    clock.now += 7.5
    assert limiter.retry_after("a") == 3  # 2.5 s short of a token: rounded up
    clock.now += 2.5
    assert limiter.retry_after("a") is None and limiter.retry_after("a") == 10


def test_buckets_are_forgotten_once_full_again_and_never_more_than_the_cap():
    clock = Clock()
    limiter = RateLimiter(per_minute=2, max_clients=3, clock=clock)
    limiter.retry_after("a")
    clock.now += 30
    limiter.retry_after("b")
    clock.now += 30  # "a" is a minute idle: full again, the same as no bucket
    limiter.retry_after("c")
    assert len(limiter) == 2
    for name in ("d", "e", "f"):
        limiter.retry_after(name)
    assert len(limiter) == 3  # the least recently seen made room
    for _ in range(2):
        limiter.retry_after("f")
    assert limiter.retry_after("f") == 30 and len(limiter) == 3


def post(port: int, path: str, body: bytes, source: str, headers: dict[str, str] | None = None,
         ) -> tuple[int, dict, http.client.HTTPResponse]:
    """One POST from the loopback address `source` (all of 127.0.0.0/8 is this machine's)."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30, source_address=(source, 0))
    try:
        connection.request("POST", path, body, {"Content-Type": "application/json", **(headers or {})})
        response = connection.getresponse()
        return response.status, json.loads(response.read()), response
    finally:
        connection.close()


def assert_rate_limited(status: int, body: dict, response: http.client.HTTPResponse, limit: int, who: str) -> None:
    assert status == 429 and body["error"]["code"] == "rate_limited", body
    wait = int(response.getheader("Retry-After") or 0)
    assert 1 <= wait <= 60 / limit  # at most the time one token takes to come back
    message = body["error"]["message"]
    assert f"more than {limit} " in message and "RATE_LIMIT" in message and who in message
    assert f"retry after {wait} s" in message


def test_a_client_over_the_limit_gets_429_and_another_is_served(multilabel_checkpoint, tmp_path):
    with running_server(multilabel_checkpoint, tmp_path, WORKERS="1", RATE_LIMIT="3") as server:
        port = server.port
        assert [post(port, path, body, "127.0.0.1")[0] for path, body in
                (("/predict", PREDICT), ("/explain", EXPLAIN), ("/predict", PREDICT))] == [200, 200, 200]
        assert_rate_limited(*post(port, "/explain", EXPLAIN, "127.0.0.1"), 3, "this address (127.0.0.1)")
        assert_rate_limited(*post(port, "/predict", PREDICT, "127.0.0.1"), 3, "this address (127.0.0.1)")
        assert post(port, "/predict", PREDICT, "127.0.0.2")[0] == 200  # another client: its own allowance
        assert post(port, "/explain", EXPLAIN, "127.0.0.2")[0] == 200
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        for path in ("/health", "/metadata", "/ready"):  # only the model's routes count
            connection.request("GET", path)
            response = connection.getresponse()
            assert response.status == 200 and response.read()
        connection.close()


@pytest.mark.parametrize(("by", "second_client"), [("key", 429), ("address", 200)])
def test_with_the_api_key_its_holders_share_one_allowance_unless_counted_by_address(
        multilabel_checkpoint, tmp_path, by, second_client):
    key = {"X-API-Key": "the-key"}
    with running_server(multilabel_checkpoint, tmp_path, WORKERS="1", RATE_LIMIT="2", APP_APIKEY="the-key",
                        RATE_LIMIT_BY=by) as server:
        port = server.port
        assert [post(port, "/predict", PREDICT, "127.0.0.1", key)[0] for _ in range(2)] == [200, 200]
        who = "this API key" if by == "key" else "this address (127.0.0.1)"
        assert_rate_limited(*post(port, "/predict", PREDICT, "127.0.0.1", key), 2, who)
        assert post(port, "/predict", PREDICT, "127.0.0.1")[0] == 401  # no key: refused before it is counted
        status, body, response = post(port, "/predict", PREDICT, "127.0.0.2", key)
        assert status == second_client, body
        if by == "key":
            assert_rate_limited(status, body, response, 2, "this API key")
