"""One client connection over HTTP/1.1 (h11): each request read whole within its deadlines and size bounds, then
its answer written.

The request line and headers have HEADER_TIMEOUT and MAX_HEAD_BYTES (431 beyond); the body has BODY_TIMEOUT and
MAX_BODY_BYTES whatever its framing (a chunked body is de-chunked here, cut off the moment it grows over), and the
bodies a worker holds together have MAX_BUFFERED_BYTES (503 beyond). A refusal is answered with the API's JSON error
and the connection closed.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

import h11

from serving.errors import ApiError, body_too_large
from serving.settings import ServingSettings
from serving.wsgi import Answer, error_answer

READ_SIZE = 65_536
MAX_HEAD_BYTES = 32_768  # request line and headers together; more gets 431
LINGER_SECONDS = 1.0  # after an error answer, how long the rest of a request is read and dropped


@dataclass(frozen=True)
class ReadLimits:
    """The deadlines and bounds a request is read under."""

    header_timeout: float  # from a connection's accept, or the first byte of a request, to its last header
    body_timeout: float  # from the last header to the end of the body; also how long an answer may take to send
    keepalive: float  # how long a kept-alive connection waits for the next request to start
    max_body_bytes: int

    @classmethod
    def from_settings(cls, settings: ServingSettings, keepalive: float) -> ReadLimits:
        return cls(settings.header_timeout, settings.body_timeout, keepalive, settings.max_body_bytes)


class BodyBudget:
    """The request bodies one worker holds before their answers, in bytes, at most `limit` (MAX_BUFFERED_BYTES)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.held = 0

    def reserve(self, size: int) -> None:
        if self.held + size > self.limit:
            raise ApiError(503, "overloaded", "this worker holds too many request bodies (MAX_BUFFERED_BYTES); "
                                              "retry shortly", retry_after=1)
        self.held += size

    def release(self, size: int) -> None:
        self.held -= size


@dataclass(eq=False)  # kept in a set: hashed by identity
class Connection:
    """One client connection: its socket streams, its h11 state and the deadline it is waiting under."""

    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    metrics_only: bool  # it came in on the METRICS_PORT listener
    limits: ReadLimits
    budget: BodyBudget
    http: h11.Connection = field(default_factory=lambda: h11.Connection(h11.SERVER, MAX_HEAD_BYTES))
    deadline: asyncio.Timeout | None = None
    idle: bool = True  # between requests: no byte of the next one received yet
    served: int = 0

    async def read_request(self) -> tuple[h11.Request | None, bytes]:
        """The next request and its whole body (its bytes reserved in the budget until the caller releases them);
        (None, b"") when the client closes or stays idle too long."""
        request = await self.read_head()
        if request is None:
            return None, b""
        # h11 bounds a head still arriving; one that arrived whole in a single read is measured here
        if len(request.target) + sum(len(name) + len(value) + 4 for name, value in request.headers) > MAX_HEAD_BYTES:
            raise ApiError(431, "headers_too_large", f"the request line and headers are over {MAX_HEAD_BYTES} bytes")
        return request, await self.read_body(request)

    async def read_head(self) -> h11.Request | None:
        """The request line and headers; None when the client closes or sends nothing in time."""
        http, limits = self.http, self.limits
        pending = bool(http.trailing_data[0])  # a pipelined request may already be here
        # A new connection has HEADER_TIMEOUT from its accept to its first request's last header; a kept-alive
        # one waits `keepalive` seconds for the next request to start, which then has HEADER_TIMEOUT.
        kept_alive = self.served > 0 and not pending
        received = pending
        try:
            async with asyncio.timeout(limits.keepalive if kept_alive else limits.header_timeout) as deadline:
                self.deadline, self.idle = deadline, not pending
                event = next_event(http)
                while event is h11.NEED_DATA:
                    data = await self.reader.read(READ_SIZE)
                    if data and not received:
                        received, self.idle = True, False
                        if kept_alive:
                            deadline.reschedule(asyncio.get_running_loop().time() + limits.header_timeout)
                    http.receive_data(data)
                    event = next_event(http)
        except TimeoutError:
            if not received:  # a silent connection is closed without a word
                return None
            raise ApiError(408, "header_timeout", f"the request line and headers took over "
                                                  f"{limits.header_timeout:g} s (HEADER_TIMEOUT)") from None
        finally:
            self.idle = False
        if isinstance(event, h11.ConnectionClosed):
            return None
        assert isinstance(event, h11.Request)  # noqa: S101 (h11's order of events)
        return event

    async def read_body(self, request: h11.Request) -> bytes:
        """The whole body, de-chunked. The one place a body is held to MAX_BODY_BYTES whatever its framing: refused
        at once when its Content-Length is over, cut off the moment a chunked one grows over; the app then always
        gets a body of known length, so it has no chunked bodies to bound."""
        http, limits = self.http, self.limits
        self.check_body_size(int(dict(request.headers).get(b"content-length", b"0") or 0))
        if http.they_are_waiting_for_100_continue:
            self.writer.write(http.send(h11.InformationalResponse(status_code=100, headers=[], reason=b"Continue")))
        chunks: list[bytes] = []
        held = 0
        try:
            async with asyncio.timeout(limits.body_timeout):
                while True:
                    event = next_event(http)
                    if event is h11.NEED_DATA:
                        http.receive_data(await self.reader.read(READ_SIZE))
                    elif isinstance(event, h11.Data):
                        self.check_body_size(held + len(event.data))
                        self.budget.reserve(len(event.data))
                        held += len(event.data)
                        chunks.append(bytes(event.data))
                    elif isinstance(event, h11.EndOfMessage):
                        return b"".join(chunks)
        except TimeoutError:
            raise ApiError(408, "body_timeout", f"the request body took over {limits.body_timeout:g} s "
                                                "(BODY_TIMEOUT)") from None
        except BaseException:
            self.budget.release(held)
            raise

    def check_body_size(self, size: int) -> None:
        if size > self.limits.max_body_bytes:
            raise body_too_large(self.limits.max_body_bytes)

    async def send(self, request: h11.Request, answer: Answer, close: bool) -> bool:
        """Send the answer (with `Connection: close` when `close`); whether the connection may carry another
        request."""
        http = self.http
        headers = list(answer.headers) + ([("Connection", "close")] if close else [])
        data = http.send(h11.Response(status_code=answer.status, reason=answer.reason.encode("latin-1"),
                                      headers=headers))
        if request.method != b"HEAD" and answer.body:
            data += http.send(h11.Data(data=answer.body))
        data += http.send(h11.EndOfMessage())
        self.writer.write(data)
        async with asyncio.timeout(self.limits.body_timeout):  # a client that never reads is let go
            await self.writer.drain()
        return http.our_state is h11.DONE and http.their_state is h11.DONE

    async def refuse(self, refusal: ApiError) -> None:
        """Answer with the API's JSON error and close; the rest of the request is read and dropped for a moment,
        so that closing does not reset the connection before the client reads the answer. Written by hand, not
        through h11: a malformed or cut-off request leaves h11 in a state that sends nothing more."""
        answer = error_answer(refusal)
        head = [f"HTTP/1.1 {answer.status} {answer.reason}", *(f"{name}: {value}" for name, value in answer.headers),
                "Connection: close"]
        self.writer.write(("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + answer.body)
        try:
            async with asyncio.timeout(LINGER_SECONDS):
                await self.writer.drain()
                self.writer.write_eof()
                while await self.reader.read(READ_SIZE):
                    pass
        except (TimeoutError, ConnectionError, OSError):
            pass


def next_event(http: h11.Connection) -> Any:
    """h11's next event; a malformed request is an ApiError to answer, unless the client left mid-request."""
    try:
        return http.next_event()
    except h11.RemoteProtocolError as error:
        if http.their_state is h11.SEND_BODY or http.trailing_data[1]:
            raise  # the client left mid-request: nobody to answer
        status = error.error_status_hint
        code = "headers_too_large" if status == 431 else "bad_request"
        raise ApiError(status, code, f"malformed HTTP request: {error}") from None
