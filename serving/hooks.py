"""What runs around every request: the timer, the API key check, the rate limit and the metrics."""

from __future__ import annotations

import hmac
import time

from flask import Flask, Response, g, request

from serving.context import serving
from serving.errors import ApiError
from serving.settings import METRICS_LISTENER, ServingSettings

OPEN_PATHS = ("/health",)  # answered without the API key, for load balancers and container health checks
PAGE_PATHS = ("/", "/static/")  # the page and its files: public, the page itself asks for the key
RATE_LIMITED_PATHS = ("/predict", "/explain")  # the routes that run the model: the work RATE_LIMIT shares out


def start_timer() -> None:
    g.started = time.perf_counter()


def check_api_key() -> None:
    """With APP_APIKEY set, every route but /health and the page wants it: `Authorization: Bearer`, `X-API-Key`
    or `?key=`. The METRICS_PORT listener serves /metrics without it (the worker lets nothing but /metrics and
    /health in there)."""
    expected = serving().settings.api_key_value
    if (not expected or request.path in OPEN_PATHS or is_page_path(request.path)
            or request.environ.get(METRICS_LISTENER)):
        return
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    offered = [token.strip() if scheme.lower() == "bearer" else None, request.headers.get("X-API-Key"),
               request.args.get("key")]
    wanted = expected.encode("utf-8", "surrogatepass")
    if not any(hmac.compare_digest(o.encode("utf-8", "surrogatepass"), wanted) for o in offered if o):
        raise ApiError(401, "unauthorized", "missing or wrong API key: send `Authorization: Bearer KEY` or "
                                            "`X-API-Key: KEY`")


def check_rate_limit() -> None:
    """With RATE_LIMIT set, 429 for a POST /predict or /explain of a client that has used its allowance. After the
    key check, so that only holders of the key take a place among the buckets."""
    state = serving()
    if state.rate_limiter is None or request.method != "POST" or request.path not in RATE_LIMITED_PATHS:
        return
    client, who = rate_limit_client(state.settings)
    wait = state.rate_limiter.retry_after(client)
    if wait is not None:
        raise ApiError(429, "rate_limited", f"more than {state.settings.rate_limit} /predict and /explain requests "
                                            f"a minute from {who} (RATE_LIMIT, counted by each worker process); "
                                            f"retry after {wait} s (Retry-After)", retry_after=wait)


def rate_limit_client(settings: ServingSettings) -> tuple[str, str]:
    """The request's client for RATE_LIMIT: its name among the buckets, and how the 429 calls it."""
    if settings.rate_limit_by == "key" and settings.api_key is not None:
        return "key", "this API key"  # check_api_key let the request in, so it holds the one key
    # The client's address as the worker gives it: the connection's, or behind a proxy listed in
    # FORWARDED_ALLOW_IPS the client that proxy names (any other X-Forwarded-For is ignored).
    address = request.remote_addr or "unknown"
    return f"address {address}", f"this address ({address})"


def is_page_path(path: str) -> bool:
    return path == PAGE_PATHS[0] or path.startswith(PAGE_PATHS[1])


def record_metrics(response: Response) -> Response:
    endpoint = request.url_rule.rule if request.url_rule else "unmatched"  # never the raw path: bounded labels
    seconds = time.perf_counter() - g.get("started", time.perf_counter())
    serving().metrics.observe_request(endpoint, request.method, response.status_code, seconds)
    if response.status_code == 401:
        response.headers["WWW-Authenticate"] = 'Bearer realm="classifier"'
    return response


def register_hooks(app: Flask) -> None:
    app.before_request(start_timer)
    app.before_request(check_api_key)
    app.before_request(check_rate_limit)
    app.after_request(record_metrics)
