"""Who runs on the model when: deadlines, /predict's forward passes before explanations', and the bounded queue
of explanations.

Every forward pass of a worker goes through `SharedRunner`, which takes its turn from `ModelTurns`: one pass at a
time, a waiting /predict pass before a waiting explanation's, and an explanation's passes cut into small batches,
so /predict waits at most one such batch. A blend's TF-IDF member (`SharedLexical`) scores an explanation's text
(whole, then without each word: pure Python, a fraction of the transformer's passes) after giving way to waiting
/predict passes. A caller's deadline is checked before each pass: work not done by then is abandoned there with
DeadlineExceeded.
Explanations also take a place in `ExplainQueue` (one runs, the rest wait; none past its size).
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np

EXPLAIN_BATCH_TOKENS = 128  # an explanation's batch, what a /predict pass may wait for: about 20 ms of int8
# all-MiniLM-L6-v2 on one core (1,024 tokens let /predict's p99 grow 2.5x beside explanations: docs/SERVING.md)
PREDICT_QUIET_S = 0.01  # an explanation's work starts only this long after the last /predict pass


class DeadlineExceeded(Exception):
    """The request's deadline passed before its work was done."""


class ExplainQueueFull(Exception):
    """Every place of the explanation queue is taken."""


class ModelTurns:
    """One forward pass at a time; the callers of a thread say once who they are (`as_caller`), so the passes
    deep inside `ModelInferer.explain` take the right turn. An explanation's work waits while /predict passes wait,
    and until PREDICT_QUIET_S has passed since the last one ended: a /predict stream keeps the model between its
    requests."""

    def __init__(self) -> None:
        self._free = threading.Condition()
        self._busy = False
        self._urgent_waiting = 0
        self._urgent_ended = -math.inf  # time.monotonic() when the last /predict pass ended
        self._caller = threading.local()

    @contextmanager
    def as_caller(self, urgent: bool, deadline: float | None) -> Iterator[None]:
        """The forward passes of this thread inside: urgent (/predict) or not (/explain), and until when."""
        self._caller.urgent, self._caller.deadline = urgent, deadline
        try:
            yield
        finally:
            del self._caller.urgent, self._caller.deadline

    @property
    def urgent(self) -> bool:
        return getattr(self._caller, "urgent", True)

    def share_runner(self, runner: Any) -> SharedRunner:
        """`runner` with its forward passes taking these turns (what `ModelInferer.shared` asks)."""
        return SharedRunner(runner, self)

    def share_lexical(self, lexical: Any) -> SharedLexical:
        """The TF-IDF member with its scoring giving way to /predict's passes (what `ModelInferer.shared` asks)."""
        return SharedLexical(lexical, self)

    def give_way(self) -> None:
        """Before CPU work that needs no turn of its own: wait until /predict is quiet, and raise DeadlineExceeded
        once the caller's deadline has passed."""
        with self._free:
            self._wait_until(self._until_predict_quiet)

    @contextmanager
    def turn(self) -> Iterator[None]:
        """The model for one forward pass; DeadlineExceeded when the caller's deadline passes first."""
        urgent = self.urgent
        with self._free:
            self._urgent_waiting += urgent
            try:
                self._wait_until(lambda: math.inf if self._busy else 0.0 if urgent else self._until_predict_quiet())
                self._busy = True
            finally:
                self._urgent_waiting -= urgent
        try:
            yield
        finally:
            with self._free:
                self._busy = False
                if urgent:
                    self._urgent_ended = time.monotonic()
                self._free.notify_all()

    def _until_predict_quiet(self) -> float:
        """0 when no /predict pass waits and none ended in the last PREDICT_QUIET_S; else how long to wait at most
        before asking again (inf: until a pass ends)."""
        if self._urgent_waiting:
            return math.inf
        return max(0.0, self._urgent_ended + PREDICT_QUIET_S - time.monotonic())

    def _wait_until(self, pause: Callable[[], float]) -> None:
        """With `_free` held: wait until `pause()` is 0, or raise DeadlineExceeded once the caller's deadline passes."""
        deadline = getattr(self._caller, "deadline", None)
        while True:
            remaining = math.inf if deadline is None else deadline - time.monotonic()
            if remaining <= 0:
                raise DeadlineExceeded
            wait = min(pause(), remaining)
            if wait <= 0:
                return
            self._free.wait(None if wait == math.inf else wait)


class SharedRunner:
    """A model runner whose forward passes take their turn; a non-urgent caller's in batches of about
    EXPLAIN_BATCH_TOKENS tokens. Everything else (`model`, `quantized`, ...) is the runner's own."""

    def __init__(self, runner: Any, turns: ModelTurns) -> None:
        self.runner, self.turns = runner, turns
        self.device, self.precision, self.quantized = runner.device, runner.precision, runner.quantized

    def logits(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        rows = len(input_ids) if self.turns.urgent else max(1, EXPLAIN_BATCH_TOKENS // max(1, input_ids.shape[1]))
        parts = []
        for start in range(0, len(input_ids), rows):
            with self.turns.turn():
                parts.append(self.runner.logits(input_ids[start:start + rows], attention_mask[start:start + rows]))
        return np.concatenate(parts)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.runner, name)


class SharedLexical:
    """The TF-IDF member as an explanation uses it: its scoring (the text whole, then without each word) after
    giving way to waiting /predict passes, and only before the deadline. It takes no turn: holding the model for
    pure-Python scoring made /predict wait behind it (p99 10x, docs/SERVING.md)."""

    def __init__(self, lexical: Any, turns: ModelTurns) -> None:
        self.lexical, self.turns = lexical, turns

    def scores(self, texts: list[str]) -> np.ndarray:
        if not self.turns.urgent:
            self.turns.give_way()
        return self.lexical.scores(texts)

    def occlusion_scores(self, text: str, spans: list[tuple[int, int]]) -> np.ndarray:
        self.turns.give_way()
        return self.lexical.occlusion_scores(text, spans)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.lexical, name)


class ExplainQueue:
    """At most `size` explanations per worker, one running and the others waiting their turn."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._places = threading.BoundedSemaphore(size)
        self._running = threading.Lock()

    @contextmanager
    def place(self, deadline: float) -> Iterator[None]:
        """Run inside when it is this request's turn: ExplainQueueFull at once when no place is free,
        DeadlineExceeded when the deadline passes while it waits."""
        if not self._places.acquire(blocking=False):
            raise ExplainQueueFull
        try:
            if not self._running.acquire(timeout=max(0.0, deadline - time.monotonic())):
                raise DeadlineExceeded
            try:
                yield
            finally:
                self._running.release()
        finally:
            self._places.release()
