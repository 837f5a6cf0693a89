"""The gunicorn worker class: an event loop that reads each request in full before a thread runs the app on it.

    worker_class = "serving.worker.BufferingWorker"        # gunicorn.conf.py

gunicorn's gthread worker gives a connection to a request thread as soon as its first bytes arrive, and the thread
then blocks reading the rest: a few clients that send slowly hold every thread, and /health stops answering
(issue 15). Here an asyncio loop owns the sockets and parses HTTP/1.1 with h11. A connection costs a coroutine
and its buffer until its request is complete, under deadlines (HEADER_TIMEOUT for the request line and headers,
BODY_TIMEOUT for the body; 408 after) and bounds (MAX_BODY_BYTES per request, MAX_BUFFERED_BYTES per worker,
503 beyond; MAX_CONNECTIONS per worker, beyond which new connections wait in the listen queue). Complete requests
go to the WSGI app in one of two thread pools: POST /predict and /explain to the `threads` model threads (the app
still runs one forward pass at a time), everything else to a small pool of its own, so /health, /ready and /metrics
answer while the model is busy. On SIGTERM the worker stops accepting, serves the requests it has, answers a request
that arrives on a kept-alive connection within SHUTDOWN_LINGER with `Connection: close`, and exits.

To the app this is a plain WSGI server (PEP 3333; tests/test_worker_wsgi.py runs the API under wsgiref.validate):
the body is a buffer of known length (a chunked one is de-chunked here, under the same MAX_BODY_BYTES, so the app
never sees one), the bytes it gives write() come before its iterable's, and the iterable's close() is always called.
Behind a proxy that gunicorn's forwarded_allow_ips lists, X-Forwarded-For gives REMOTE_ADDR and gunicorn's
secure_scheme_headers give wsgi.url_scheme (ProxyTrust); from any other peer those headers change nothing. What the
worker refuses itself carries the API's JSON error body (serving/errors.py).

No torch here: gunicorn imports the worker class in the master process, before any fork.
"""

from __future__ import annotations

import asyncio
import io
import ipaddress
import os
import signal
import socket
import sys
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any
from urllib.parse import unquote_to_bytes, urlsplit

import h11
from gunicorn.workers.base import Worker

from serving.errors import ApiError, body_too_large, error_body
from serving.settings import METRICS_LISTENER, RECEIVED_AT, ServingSettings

MODEL_ROUTES = {("POST", "/predict"), ("POST", "/explain")}  # those that wait for the model: model pool
METRICS_LISTENER_ROUTES = {"/metrics", "/health"}  # all that METRICS_PORT serves
LIGHT_THREADS = 2  # threads for every other route
READ_SIZE = 65_536
MAX_HEAD_BYTES = 32_768  # request line and headers together; more gets 431
SHUTDOWN_LINGER = 1.0  # seconds an idle kept-alive connection may still bring one request after SIGTERM
LINGER_SECONDS = 1.0  # after an error answer, how long the rest of a request is read and dropped
HEARTBEAT_SECONDS = 1.0


@dataclass(eq=False)  # kept in a set: hashed by identity
class Connection:
    """One client connection: its socket streams, its h11 state and the deadline it is waiting under."""

    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    metrics_only: bool
    http: h11.Connection = field(default_factory=lambda: h11.Connection(h11.SERVER, MAX_HEAD_BYTES))
    deadline: asyncio.Timeout | None = None
    idle: bool = True  # between requests: no byte of the next one received yet
    served: int = 0


@dataclass
class Answer:
    """What the app answered, as the access log and h11 need it."""

    status: int
    reason: str
    headers: list[tuple[str, str]]
    body: bytes


@dataclass(frozen=True)
class ProxyTrust:
    """gunicorn's forwarded_allow_ips and secure_scheme_headers, applied as gunicorn's own workers apply them: a peer
    on the list (a proxy in front) may say who the client is (X-Forwarded-For) and that it came over TLS (the scheme
    headers); from any other peer they are only what the client claims: passed on as headers, changing nothing.
    gunicorn itself takes REMOTE_ADDR from the PROXY protocol only; X-Forwarded-For is what ingresses send."""

    any_peer: bool  # "*": every peer is a proxy (gunicorn's "disable checking")
    networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]
    scheme_headers: dict[bytes, bytes]  # h11's lower-case header name -> the exact value that means https

    @classmethod
    def from_config(cls, cfg: Any) -> ProxyTrust:
        allowed = list(cfg.forwarded_allow_ips)
        return cls("*" in allowed, tuple(ipaddress.ip_network(entry) for entry in allowed if entry != "*"),
                   {name.lower().encode("latin-1"): value.encode("latin-1")
                    for name, value in cfg.secure_scheme_headers.items()})

    def client_and_scheme(self, peer: Any, headers: list[tuple[bytes, bytes]]) -> dict[str, str]:
        """REMOTE_ADDR, REMOTE_PORT and wsgi.url_scheme of a request from `peer` (a UNIX socket's peer is trusted, as
        gunicorn trusts it: only the host can connect there)."""
        address, port = host_and_port(peer)
        variables = {"REMOTE_ADDR": address, "REMOTE_PORT": port, "wsgi.url_scheme": "http"}
        if not (self.any_peer or not isinstance(peer, tuple) or self.listed(address)):
            return variables
        variables["wsgi.url_scheme"] = self.scheme(headers)
        client = self.forwarded_client(headers)
        if client is not None:
            variables["REMOTE_ADDR"] = client
            del variables["REMOTE_PORT"]  # the proxy's: the client's port is not forwarded
        return variables

    def listed(self, address: str) -> bool:
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        return any(ip in network for network in self.networks)

    def scheme(self, headers: list[tuple[bytes, bytes]]) -> str:
        """https when the proxy's scheme header says so; headers that disagree are refused, as gunicorn does."""
        says_tls = {value == self.scheme_headers[name] for name, value in headers if name in self.scheme_headers}
        if len(says_tls) > 1:
            raise ApiError(400, "bad_request", "the proxy's scheme headers disagree on whether the request came over "
                                               "TLS (gunicorn's secure_scheme_headers)")
        return "https" if says_tls == {True} else "http"

    def forwarded_client(self, headers: list[tuple[bytes, bytes]]) -> str | None:
        """The client's address in X-Forwarded-For: the rightmost hop that is not one of our proxies, since each proxy
        appends the address it got the request from and the hops left of our first proxy's are whatever the client
        wrote. None when the header is absent or that hop is not an IP address (the peer's address stands)."""
        hops = [hop.strip() for name, value in headers if name == b"x-forwarded-for"
                for hop in value.decode("latin-1").split(",")]
        if not hops:
            return None
        hop = next((hop for hop in reversed(hops) if not self.listed(hop)), hops[0])
        try:
            return str(ipaddress.ip_address(hop))
        except ValueError:
            return None


class BufferingWorker(Worker):
    """A gunicorn worker: asyncio + h11 in front, the WSGI app in threads behind."""

    @classmethod
    def check_config(cls, cfg: Any, log: Any) -> None:
        """Refuse, in the master, what this worker does not do rather than ignore it."""
        if cfg.is_ssl:
            raise RuntimeError("serving.worker serves plain HTTP/1.1: terminate TLS in front of it (an ingress or "
                               "a load balancer), or drop certfile/keyfile")

    def init_process(self) -> None:
        self.settings = ServingSettings.from_env()
        self.proxy = ProxyTrust.from_config(self.cfg)
        self.loop = asyncio.new_event_loop()
        asyncio.set_event_loop(self.loop)
        self.connections: set[Connection] = set()
        self.tasks: set[asyncio.Task] = set()
        self.buffered = 0  # body bytes held for requests not answered yet
        self.slot_free = asyncio.Event()
        self.stopping = asyncio.Event()
        super().init_process()  # loads the app (the model), then calls run()

    def init_signals(self) -> None:
        for number in self.SIGNALS:
            signal.signal(number, signal.SIG_DFL)
        self.loop.add_signal_handler(signal.SIGTERM, self.stop)
        self.loop.add_signal_handler(signal.SIGQUIT, self.quit)
        self.loop.add_signal_handler(signal.SIGINT, self.quit)
        self.loop.add_signal_handler(signal.SIGUSR1, self.log.reopen_files)
        self.loop.add_signal_handler(signal.SIGWINCH, lambda: None)
        signal.signal(signal.SIGABRT, self.handle_abort)

    def stop(self) -> None:
        """SIGTERM: finish what has arrived, take nothing new."""
        self.alive = False
        self.stopping.set()

    def quit(self) -> None:
        """SIGQUIT / SIGINT: leave now."""
        self.cfg.worker_int(self)
        sys.exit(0)

    def run(self) -> None:
        self.model_pool = ThreadPoolExecutor(self.cfg.threads, thread_name_prefix="model")
        self.light_pool = ThreadPoolExecutor(LIGHT_THREADS, thread_name_prefix="light")
        self.metrics = FrontMetrics()
        try:
            self.loop.run_until_complete(self.serve())
        finally:
            self.model_pool.shutdown(wait=False, cancel_futures=True)
            self.light_pool.shutdown(wait=False, cancel_futures=True)

    async def serve(self) -> None:
        accepting = [asyncio.create_task(self.accept(listener)) for listener in self.sockets]
        beat = asyncio.create_task(self.heartbeat())
        for task in accepting:  # a failure to accept must not leave a worker that answers nothing
            task.add_done_callback(self.stop_on_failure)
        await self.stopping.wait()
        for task in accepting:
            task.cancel()
        await asyncio.gather(*accepting, return_exceptions=True)
        await self.drain_listen_queue()
        for connection in self.connections:  # idle kept-alive connections get one last, short chance
            if connection.idle and connection.deadline is not None:
                connection.deadline.reschedule(min(connection.deadline.when() or float("inf"),
                                                   self.loop.time() + SHUTDOWN_LINGER))
        try:
            async with asyncio.timeout(self.cfg.graceful_timeout):
                while self.connections:
                    await asyncio.sleep(0.05)
        except TimeoutError:
            self.log.warning("%d connections still open after the graceful timeout", len(self.connections))
        for task in [beat, *self.tasks]:
            task.cancel()
        await asyncio.gather(beat, *self.tasks, return_exceptions=True)

    def stop_on_failure(self, task: asyncio.Task) -> None:
        if not task.cancelled() and task.exception() is not None:
            self.log.error("accepting connections failed: %r", task.exception())
            self.stop()

    async def heartbeat(self) -> None:
        """Tell the master this worker is alive; stop when the master is gone."""
        while True:
            self.notify()
            if self.ppid != os.getppid():
                self.log.info("Parent changed, shutting down: %s", self)
                self.stop()
            await asyncio.sleep(HEARTBEAT_SECONDS)

    async def accept(self, listener: Any) -> None:
        """Accept connections while this worker holds fewer than MAX_CONNECTIONS (gunicorn's worker_connections);
        beyond, leave them in the listen queue, where another worker or a freed slot takes them."""
        raw, metrics_only = self.listening_socket(listener)
        while True:
            while len(self.connections) >= self.cfg.worker_connections:
                self.slot_free.clear()
                await self.slot_free.wait()
            client, _ = await self.loop.sock_accept(raw)
            await self.take(client, metrics_only)

    async def drain_listen_queue(self) -> None:
        """On shutdown, take the connections already waiting in the listen queue before closing the listeners:
        they are served (with `Connection: close`) instead of reset. New ones are then refused by the kernel."""
        for listener in self.sockets:
            raw, metrics_only = self.listening_socket(listener)
            while True:
                try:
                    client, _ = raw.accept()
                except OSError:  # BlockingIOError: the queue is empty
                    break
                await self.take(client, metrics_only)
            listener.close()

    def listening_socket(self, listener: Any) -> tuple[socket.socket, bool]:
        """The socket under gunicorn's wrapper, non-blocking, and whether it is the METRICS_PORT one."""
        raw = getattr(listener, "sock", listener)
        raw.setblocking(False)
        address = raw.getsockname()
        return raw, isinstance(address, tuple) and address[1] == self.settings.metrics_port

    async def take(self, client: socket.socket, metrics_only: bool) -> None:
        reader, writer = await asyncio.open_connection(sock=client, limit=READ_SIZE)
        connection = Connection(reader, writer, metrics_only)
        self.connections.add(connection)
        self.metrics.open_connections.inc()
        task = asyncio.create_task(self.serve_connection(connection))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def serve_connection(self, connection: Connection) -> None:
        """Requests one after the other on one connection, until it closes, fails or times out."""
        try:
            while True:
                try:
                    request, body = await self.read_request(connection)
                except ApiError as refusal:
                    self.metrics.refused.labels(refusal.code).inc()
                    await self.refuse(connection, refusal)
                    return
                if request is None:
                    return
                try:
                    answer = await self.answer(connection, request, body)
                finally:
                    self.release(len(body))
                if not await self.respond(connection, request, answer):
                    return
                connection.http.start_next_cycle()
                connection.served += 1
        except (ConnectionError, h11.RemoteProtocolError, TimeoutError, asyncio.CancelledError):
            pass  # the client left, or stopped reading our answer
        except Exception:
            self.log.exception("error serving a connection")
        finally:
            connection.writer.close()
            self.connections.discard(connection)
            self.metrics.open_connections.dec()
            self.slot_free.set()

    async def read_request(self, connection: Connection) -> tuple[h11.Request | None, bytes]:
        """The next request and its whole body; (None, b"") when the client closes or stays idle too long."""
        http, loop = connection.http, self.loop
        pending = bool(http.trailing_data[0])  # a pipelined request may already be here
        # A new connection has HEADER_TIMEOUT from its accept to its first request's last header; a kept-alive
        # one waits `keepalive` seconds for the next request to start, which then has HEADER_TIMEOUT.
        kept_alive = connection.served > 0 and not pending
        received = pending
        try:
            async with asyncio.timeout(self.cfg.keepalive if kept_alive else self.settings.header_timeout) as deadline:
                connection.deadline, connection.idle = deadline, not pending
                event = self.next_event(http)
                while event is h11.NEED_DATA:
                    data = await connection.reader.read(READ_SIZE)
                    if data and not received:
                        received, connection.idle = True, False
                        if kept_alive:
                            deadline.reschedule(loop.time() + self.settings.header_timeout)
                    http.receive_data(data)
                    event = self.next_event(http)
        except TimeoutError:
            if not received:  # a silent connection is closed without a word
                return None, b""
            raise ApiError(408, "header_timeout", f"the request line and headers took over "
                                                  f"{self.settings.header_timeout:g} s (HEADER_TIMEOUT)") from None
        finally:
            connection.idle = False
        if isinstance(event, h11.ConnectionClosed):
            return None, b""
        assert isinstance(event, h11.Request)  # noqa: S101 (h11's order of events)
        # h11 bounds a head still arriving; one that arrived whole in a single read is measured here
        if len(event.target) + sum(len(name) + len(value) + 4 for name, value in event.headers) > MAX_HEAD_BYTES:
            raise ApiError(431, "headers_too_large", f"the request line and headers are over {MAX_HEAD_BYTES} bytes")
        return event, await self.read_body(connection, event)

    def next_event(self, http: h11.Connection) -> Any:
        try:
            return http.next_event()
        except h11.RemoteProtocolError as error:
            if http.their_state is h11.SEND_BODY or http.trailing_data[1]:
                raise  # the client left mid-request: nobody to answer
            status = error.error_status_hint
            code = "headers_too_large" if status == 431 else "bad_request"
            raise ApiError(status, code, f"malformed HTTP request: {error}") from None

    async def read_body(self, connection: Connection, request: h11.Request) -> bytes:
        """The whole body, de-chunked. The one place a body is held to MAX_BODY_BYTES whatever its framing: refused
        at once when its Content-Length is over, cut off the moment a chunked one grows over; the app then always
        gets a body of known length, so it has no chunked bodies to bound."""
        http = connection.http
        self.check_body_size(int(dict(request.headers).get(b"content-length", b"0") or 0))
        if http.they_are_waiting_for_100_continue:
            go_on = h11.InformationalResponse(status_code=100, headers=[], reason=b"Continue")
            connection.writer.write(http.send(go_on))
        chunks: list[bytes] = []
        held = 0
        try:
            async with asyncio.timeout(self.settings.body_timeout):
                while True:
                    event = self.next_event(http)
                    if event is h11.NEED_DATA:
                        http.receive_data(await connection.reader.read(READ_SIZE))
                    elif isinstance(event, h11.Data):
                        self.check_body_size(held + len(event.data))
                        self.reserve(len(event.data))
                        held += len(event.data)
                        chunks.append(bytes(event.data))
                    elif isinstance(event, h11.EndOfMessage):
                        return b"".join(chunks)
        except TimeoutError:
            raise ApiError(408, "body_timeout", f"the request body took over {self.settings.body_timeout:g} s "
                                                "(BODY_TIMEOUT)") from None
        except BaseException:
            self.release(held)
            raise

    def check_body_size(self, size: int) -> None:
        if size > self.settings.max_body_bytes:
            raise body_too_large(self.settings.max_body_bytes)

    def reserve(self, size: int) -> None:
        if self.buffered + size > self.settings.max_buffered_bytes:
            raise ApiError(503, "overloaded", "this worker holds too many request bodies (MAX_BUFFERED_BYTES); "
                                              "retry shortly", retry_after=1)
        self.buffered += size

    def release(self, size: int) -> None:
        self.buffered -= size

    async def answer(self, connection: Connection, request: h11.Request, body: bytes) -> Answer:
        """The app's answer, computed in a thread of the pool the route belongs to."""
        try:
            environ = self.environ(connection, request, body)
        except ApiError as refusal:  # the request was read whole: answered, and the connection may go on
            self.metrics.refused.labels(refusal.code).inc()
            return error_answer(refusal)
        method, path = environ["REQUEST_METHOD"], environ["PATH_INFO"]
        if connection.metrics_only and path not in METRICS_LISTENER_ROUTES:
            return error_answer(ApiError(404, "not_found", "this port (METRICS_PORT) serves GET /metrics and /health "
                                                           "only"))
        pool = self.light_pool if connection.metrics_only or (method, path) not in MODEL_ROUTES else self.model_pool
        environ[RECEIVED_AT] = time.monotonic()  # a request's deadline counts its wait for a thread of the pool
        started = self.loop.time()
        answer = await self.loop.run_in_executor(pool, self.call_app, environ)
        self.nr += 1
        self.log.access(AccessInfo(answer.status, answer.headers, len(answer.body)),
                        AccessInfo(0, [(k.decode("latin-1"), v.decode("latin-1")) for k, v in request.headers], 0),
                        environ, timedelta(seconds=self.loop.time() - started))
        return answer

    def call_app(self, environ: dict[str, Any]) -> Answer:
        """Run the WSGI app on one request (in a pool thread) and collect its whole answer."""
        response = CollectedResponse()
        try:
            result: Iterable[bytes] = self.wsgi(environ, response.start_response)
            try:
                for data in result:
                    response.write(data)
            finally:
                close = getattr(result, "close", None)
                if close is not None:  # PEP 3333: whether or not iterating failed (it frees the app's resources)
                    close()
            return response.answer()
        except Exception:
            self.log.exception("error in the app on %s %s", environ["REQUEST_METHOD"], environ["PATH_INFO"])
            return error_answer(ApiError(500, "internal_error", "internal server error; the server log has the "
                                                                "details"))

    def environ(self, connection: Connection, request: h11.Request, body: bytes) -> dict[str, Any]:
        """The WSGI environ (PEP 3333) of a complete request: the body a buffer of known length; the client and the
        scheme as the peer says, or as a trusted proxy in front reports them (ProxyTrust)."""
        target = request.target.decode("latin-1")
        path, query = split_target(target)
        server_name, server_port = host_and_port(connection.writer.get_extra_info("sockname"))
        environ: dict[str, Any] = {
            "REQUEST_METHOD": request.method.decode("ascii"), "SCRIPT_NAME": "", "PATH_INFO": path,
            "QUERY_STRING": query, "RAW_URI": target, "SERVER_NAME": server_name, "SERVER_PORT": server_port,
            "SERVER_PROTOCOL": f"HTTP/{request.http_version.decode('ascii')}", "CONTENT_LENGTH": str(len(body)),
            "wsgi.version": (1, 0), "wsgi.input": io.BytesIO(body), "wsgi.errors": sys.stderr,
            "wsgi.multithread": True, "wsgi.multiprocess": True, "wsgi.run_once": False,
            "wsgi.input_terminated": True, METRICS_LISTENER: connection.metrics_only,
            **self.proxy.client_and_scheme(connection.writer.get_extra_info("peername"), request.headers),
        }
        for name, value in request.headers:  # h11 lower-cases names
            key = name.decode("latin-1").upper().replace("-", "_")
            if key in ("CONTENT_LENGTH", "TRANSFER_ENCODING"):
                continue  # the body is complete and de-chunked: CONTENT_LENGTH above is its length
            key = key if key == "CONTENT_TYPE" else f"HTTP_{key}"
            text = value.decode("latin-1")
            environ[key] = f"{environ[key]},{text}" if key in environ else text
        return environ

    async def respond(self, connection: Connection, request: h11.Request, answer: Answer) -> bool:
        """Send the answer; whether the connection may carry another request."""
        http = connection.http
        headers = [(name, value) for name, value in answer.headers]
        if not self.alive or self.nr >= self.max_requests:
            headers.append(("Connection", "close"))
        data = http.send(h11.Response(status_code=answer.status, reason=answer.reason.encode("latin-1"),
                                      headers=headers))
        if request.method != b"HEAD" and answer.body:
            data += http.send(h11.Data(data=answer.body))
        data += http.send(h11.EndOfMessage())
        connection.writer.write(data)
        async with asyncio.timeout(self.settings.body_timeout):  # a client that never reads is let go
            await connection.writer.drain()
        if self.nr >= self.max_requests and self.alive:
            self.log.info("Autorestarting worker after current request.")
            self.stop()
        return http.our_state is h11.DONE and http.their_state is h11.DONE and self.alive

    async def refuse(self, connection: Connection, refusal: ApiError) -> None:
        """Answer with the API's JSON error and close; the rest of the request is read and dropped for a moment,
        so that closing does not reset the connection before the client reads the answer. Written by hand, not
        through h11: a malformed or cut-off request leaves h11 in a state that sends nothing more."""
        answer = error_answer(refusal)
        head = [f"HTTP/1.1 {answer.status} {answer.reason}", *(f"{name}: {value}" for name, value in answer.headers),
                "Connection: close"]
        writer = connection.writer
        writer.write(("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + answer.body)
        try:
            async with asyncio.timeout(LINGER_SECONDS):
                await writer.drain()
                writer.write_eof()
                while await connection.reader.read(READ_SIZE):
                    pass
        except (TimeoutError, ConnectionError, OSError):
            pass


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


@dataclass
class AccessInfo:
    """The fields of gunicorn's access log taken from a response (status, headers, bytes sent) or a request."""

    status: int
    headers: list[tuple[str, str]]
    sent: int


class FrontMetrics:
    """Open connections and requests refused before the app, added to /metrics (prometheus multiprocess mode)."""

    def __init__(self) -> None:
        from prometheus_client import Counter, Gauge

        self.open_connections = Gauge("http_open_connections", "Client connections open, all workers.",
                                      registry=None, multiprocess_mode="livesum")
        self.refused = Counter("http_refused_total", "Requests answered before reaching the app (408 slow, 413 "
                                                     "too large, 431/400 malformed, 503 buffers full), by code.",
                               ["code"], registry=None)


def error_answer(error: ApiError) -> Answer:
    """The API's JSON error, with the body serving/errors.py gives the app's own errors."""
    body = error_body(error.code, error.message)
    headers = [("Content-Type", "application/json"), ("Content-Length", str(len(body)))]
    if error.retry_after is not None:
        headers.append(("Retry-After", str(error.retry_after)))
    return Answer(error.status, h11_reason(error.status), headers, body)


def split_target(target: str) -> tuple[str, str]:
    """PATH_INFO (%-escapes undone, bytes as latin-1 str, as PEP 3333 asks) and QUERY_STRING of a request target. An
    absolute target (`GET http://host/path`, as proxies may send) gives its path; `OPTIONS *` has none."""
    path, _, query = target.partition("?")
    if not path.startswith("/"):
        path = urlsplit(path).path if "://" in path else ""
    return unquote_to_bytes(path).decode("latin-1"), query


def host_and_port(address: Any) -> tuple[str, str]:
    """A socket address as the environ's strings: (host, port) of an IP one, (path, "") of a UNIX socket's."""
    if isinstance(address, tuple):
        return str(address[0]), str(address[1])
    return str(address or ""), ""


def h11_reason(status: int) -> str:
    from http import HTTPStatus

    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return ""
