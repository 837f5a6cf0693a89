"""The gunicorn worker class: an event loop that reads each request in full before a thread runs the app on it.

    worker_class = BufferingWorker.routed(RequestRouting(...))        # gunicorn.conf.py

An asyncio loop owns the sockets; each connection is a coroutine and its buffer (serving/connection.py) until its
request is complete, under deadlines and size bounds, and at most MAX_CONNECTIONS (gunicorn's worker_connections)
are open per worker, the rest waiting in the listen queue. A complete request goes to the WSGI app (serving/wsgi.py)
in one of two thread pools, as the RequestRouting it is given says: the routes that wait for the model to the
`threads` model threads, every other one to a small pool of its own, so that those answer while the model is busy.
A connection to the METRICS_PORT listener gets the paths the routing names for it, and 404 for any other. On
SIGTERM the worker stops accepting, serves the requests it has, answers a request that arrives on a kept-alive
connection within SHUTDOWN_LINGER with `Connection: close`, and exits.

No torch here: gunicorn imports the worker class in the master process, before any fork.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import h11
from gunicorn.workers.base import Worker

from serving.connection import READ_SIZE, BodyBudget, Connection, ReadLimits
from serving.errors import ApiError
from serving.proxy import ProxyTrust
from serving.settings import METRICS_LISTENER, RECEIVED_AT, ServingSettings
from serving.wsgi import AccessInfo, Answer, call_app, error_answer, request_environ

LIGHT_THREADS = 2  # threads for the routes that do not wait for the model
SHUTDOWN_LINGER = 1.0  # seconds an idle kept-alive connection may still bring one request after SIGTERM
HEARTBEAT_SECONDS = 1.0


@dataclass(frozen=True)
class RequestRouting:
    """What the worker is told of the app's routes: the (method, path) pairs that wait for the model (they run in
    the `threads` pool, every other request in a pool of LIGHT_THREADS; none named: every request in the `threads`
    pool), and the paths the METRICS_PORT listener serves."""

    model_routes: frozenset[tuple[str, str]] = frozenset()
    metrics_listener_paths: tuple[str, ...] = ()


class BufferingWorker(Worker):
    """A gunicorn worker: asyncio + h11 in front, the WSGI app in threads behind."""

    routing = RequestRouting()

    @classmethod
    def routed(cls, routing: RequestRouting) -> type[BufferingWorker]:
        """This worker class told the app's routes (gunicorn takes a class as its worker_class)."""
        return type(cls.__name__, (cls,), {"routing": routing, "__module__": cls.__module__})

    @classmethod
    def check_config(cls, cfg: Any, log: Any) -> None:
        """Refuse, in the master, what this worker does not do rather than ignore it."""
        if cfg.is_ssl:
            raise RuntimeError("serving.worker serves plain HTTP/1.1: terminate TLS in front of it (an ingress or "
                               "a load balancer), or drop certfile/keyfile")

    def init_process(self) -> None:
        self.settings = ServingSettings.from_env()
        self.proxy = ProxyTrust.from_config(self.cfg)
        self.limits = ReadLimits.from_settings(self.settings, self.cfg.keepalive)
        self.budget = BodyBudget(self.settings.max_buffered_bytes)
        self.loop = asyncio.new_event_loop()
        asyncio.set_event_loop(self.loop)
        self.connections: set[Connection] = set()
        self.tasks: set[asyncio.Task] = set()
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
        """Accept and serve until told to stop; then serve what has arrived, for at most the graceful timeout."""
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
        connection = Connection(reader, writer, metrics_only, self.limits, self.budget)
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
                    request, body = await connection.read_request()
                except ApiError as refusal:
                    self.metrics.refused.labels(refusal.code).inc()
                    await connection.refuse(refusal)
                    return
                if request is None:
                    return
                try:
                    answer = await self.answer(connection, request, body)
                finally:
                    self.budget.release(len(body))
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

    async def answer(self, connection: Connection, request: h11.Request, body: bytes) -> Answer:
        """The app's answer, computed in a thread of the pool the route belongs to."""
        writer = connection.writer
        try:
            environ = request_environ(request, body, writer.get_extra_info("sockname"),
                                      writer.get_extra_info("peername"), self.proxy)
        except ApiError as refusal:  # the request was read whole: answered, and the connection may go on
            self.metrics.refused.labels(refusal.code).inc()
            return error_answer(refusal)
        environ[METRICS_LISTENER] = connection.metrics_only
        method, path = environ["REQUEST_METHOD"], environ["PATH_INFO"]
        if connection.metrics_only and path not in self.routing.metrics_listener_paths:
            paths = self.routing.metrics_listener_paths
            served = f"serves GET {' and '.join(paths)} only" if paths else "serves no route"
            return error_answer(ApiError(404, "not_found", f"this port (METRICS_PORT) {served}"))
        environ[RECEIVED_AT] = time.monotonic()  # a request's deadline counts its wait for a thread of the pool
        started = self.loop.time()
        answer = await self.loop.run_in_executor(self.pool(connection, method, path), call_app, self.wsgi, environ,
                                                 self.log)
        self.nr += 1
        self.log.access(AccessInfo(answer.status, answer.headers, len(answer.body)),
                        AccessInfo(0, [(k.decode("latin-1"), v.decode("latin-1")) for k, v in request.headers], 0),
                        environ, timedelta(seconds=self.loop.time() - started))
        return answer

    def pool(self, connection: Connection, method: str, path: str) -> ThreadPoolExecutor:
        """The model threads for the routes that wait for the model (all, when the routing names none)."""
        model_routes = self.routing.model_routes
        if connection.metrics_only or (model_routes and (method, path) not in model_routes):
            return self.light_pool
        return self.model_pool

    async def respond(self, connection: Connection, request: h11.Request, answer: Answer) -> bool:
        """Send the answer; whether the connection may carry another request."""
        reusable = await connection.send(request, answer, close=not self.alive or self.nr >= self.max_requests)
        if self.nr >= self.max_requests and self.alive:
            self.log.info("Autorestarting worker after current request.")
            self.stop()
        return reusable and self.alive


class FrontMetrics:
    """Open connections and requests refused before the app, added to /metrics (prometheus multiprocess mode)."""

    def __init__(self) -> None:
        from prometheus_client import Counter, Gauge

        self.open_connections = Gauge("http_open_connections", "Client connections open, all workers.",
                                      registry=None, multiprocess_mode="livesum")
        self.refused = Counter("http_refused_total", "Requests answered before reaching the app (408 slow, 413 "
                                                     "too large, 431/400 malformed, 503 buffers full), by code.",
                               ["code"], registry=None)
