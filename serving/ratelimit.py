"""Per-client rate limits (RATE_LIMIT): a token bucket per client, in the memory of one worker process.

Each client has a bucket of RATE_LIMIT tokens that refills at RATE_LIMIT a minute; a /predict or /explain takes
one, and a request that finds less than one is refused (429) with the seconds until one is back. A token bucket
rather than a sliding window: one number and one time per client, whatever the limit, and a burst of a minute's
worth is let through at once, which is what "N requests a minute" reads as.

Memory stays bounded: a bucket untouched for a minute is full again, no different from having none, so it is
dropped; beyond MAX_CLIENTS buckets the least recently seen goes first (that client starts afresh, a full bucket).
Every gunicorn worker holds its own buckets: a client whose connections reach several workers gets up to
workers x RATE_LIMIT a minute.
"""

from __future__ import annotations

import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable

# A few hundred bytes a client, so a few MiB per worker. A client's first request is always let in, so the table
# holds at most the clients served in the last minute, and one worker serves far fewer requests a minute here.
MAX_CLIENTS = 10_000


class RateLimiter:
    """Token buckets of `per_minute` tokens, one per client name; safe to call from every request thread."""

    def __init__(self, per_minute: int, max_clients: int = MAX_CLIENTS,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.per_minute, self.max_clients, self.clock = per_minute, max_clients, clock
        # client -> (tokens, when counted), the least recently seen first
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()
        self._lock = threading.Lock()

    def take(self, client: str) -> float:
        """Take one of the client's tokens and answer 0, or, when it has none, take nothing and answer the
        seconds until it has one."""
        now = self.clock()
        with self._lock:
            self._forget_full(now)
            tokens, counted = self._buckets.pop(client, (float(self.per_minute), now))
            # times the limit, then over 60: whole seconds and limits give whole waits (1 / (2 / 60) is not 30)
            tokens = min(float(self.per_minute), tokens + (now - counted) * self.per_minute / 60)
            allowed = tokens >= 1
            self._buckets[client] = (tokens - 1 if allowed else tokens, now)  # now the most recently seen
            if len(self._buckets) > self.max_clients:
                self._buckets.popitem(last=False)
        return 0.0 if allowed else (1 - tokens) * 60 / self.per_minute

    def retry_after(self, client: str) -> int | None:
        """None when the client may go on (its token taken), else the whole seconds to wait (Retry-After)."""
        wait = self.take(client)
        return max(1, math.ceil(wait)) if wait > 0 else None

    def __len__(self) -> int:
        return len(self._buckets)

    def _forget_full(self, now: float) -> None:
        """Drop the buckets untouched for a minute: refilled by now, they would answer as a new client's."""
        while self._buckets:
            client, (_, counted) = next(iter(self._buckets.items()))
            if now - counted < 60.0:
                return
            del self._buckets[client]
