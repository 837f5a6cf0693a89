"""Server-side micro-batching: requests that arrive within a few milliseconds of each other share one forward pass.

    batcher = MicroBatcher(inferer, wait_ms=5, max_texts=64, queue_size=128)
    batcher.predict(["a text"], top_k=None)   # from any request thread; blocks until its own answers are ready

One background thread per worker process takes the first waiting request, gathers whatever else arrives within
`wait_ms` (up to `max_texts` texts), scores them all in one `score_batch` call and hands each request back its
own rows. The queue of waiting requests is bounded: when it is full, `predict` raises QueueFull at once, so
the server can answer 503 instead of piling up work it cannot finish. A request whose deadline has passed when
its batch is gathered is dropped from it with DeadlineExceeded.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from inferer import ModelInferer
from serving.scheduling import DeadlineExceeded

log = logging.getLogger("classifier.microbatch")


class QueueFull(Exception):
    """More requests are waiting than the queue holds."""


@dataclass
class Job:
    """One request's texts, and the slot its answers (or its error) come back in."""

    texts: list[str]
    top_k: int | None
    deadline: float | None = None  # time.monotonic() by which it must be answered
    done: threading.Event = field(default_factory=threading.Event)
    answers: list[dict[str, Any]] | None = None
    error: BaseException | None = None


class MicroBatcher:
    def __init__(self, inferer: ModelInferer, wait_ms: float = 5.0, max_texts: int = 64, queue_size: int = 128,
                 batch_size: int = 32, on_batch: Callable[[int, int], None] | None = None,
                 lock: threading.Lock | None = None) -> None:
        self.inferer = inferer
        self.wait = wait_ms / 1000.0
        self.max_texts = max_texts
        self.batch_size = batch_size
        self.on_batch = on_batch  # called with (requests, texts) after every forward pass, e.g. for metrics
        self.lock = lock or threading.Lock()  # held during each forward pass: shared with other users of the model
        self.jobs: queue.Queue[Job] = queue.Queue(maxsize=queue_size)
        self.thread = threading.Thread(target=self._serve, name="microbatcher", daemon=True)
        self.thread.start()

    def predict(self, texts: list[str], top_k: int | None = None, deadline: float | None = None
                ) -> list[dict[str, Any]]:
        """The answers for `texts`, in order, computed in a forward pass shared with concurrent requests;
        DeadlineExceeded when `deadline` (time.monotonic) passes before its batch starts."""
        job = Job(list(texts), top_k, deadline)
        try:
            self.jobs.put_nowait(job)
        except queue.Full:
            raise QueueFull(f"{self.jobs.maxsize} requests are already waiting") from None
        job.done.wait()
        if job.error is not None:
            raise job.error
        assert job.answers is not None  # set with done unless error is
        return job.answers

    def _serve(self) -> None:
        while True:
            jobs = self._drop_expired(self._gather(self.jobs.get()))
            if not jobs:
                continue
            try:
                self._answer(jobs)
            except BaseException as error:  # every waiting request must wake up, with the error if need be
                log.exception("micro-batch of %d requests failed", len(jobs))
                for job in jobs:
                    job.error = error
            finally:
                for job in jobs:
                    job.done.set()

    def _gather(self, first: Job) -> list[Job]:
        """`first` and the requests arriving within the wait window, up to max_texts texts."""
        jobs, count = [first], len(first.texts)
        deadline = time.monotonic() + self.wait
        while count < self.max_texts:
            remaining = deadline - time.monotonic()
            try:
                job = self.jobs.get(timeout=remaining) if remaining > 0 else self.jobs.get_nowait()
            except queue.Empty:
                break
            jobs.append(job)
            count += len(job.texts)
        return jobs

    @staticmethod
    def _drop_expired(jobs: list[Job]) -> list[Job]:
        """The jobs still within their deadline; the others are answered DeadlineExceeded."""
        now, kept = time.monotonic(), []
        for job in jobs:
            if job.deadline is not None and job.deadline <= now:
                job.error = DeadlineExceeded()
                job.done.set()
            else:
                kept.append(job)
        return kept

    def _answer(self, jobs: list[Job]) -> None:
        texts = [text for job in jobs for text in job.texts]
        with self.lock:
            scored = self.inferer.score_texts(texts, batch_size=self.batch_size)
        start = 0
        for job in jobs:
            rows = range(start, start + len(job.texts))
            job.answers = [self.inferer.rules.answer(scored.served[i], scored.truncated[i], job.top_k,
                                                     scored.evidence[i]) for i in rows]
            start += len(job.texts)
        if self.on_batch:
            self.on_batch(len(jobs), len(texts))
