"""What one app serves: the loaded inferer, its settings, request limits, metrics, who runs on the model when, and
how often each client may ask (RATE_LIMIT), and where corrections go (CORRECTIONS_FILE)."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

from flask import current_app

from inferer import ModelInferer
from serving.corrections import CorrectionsFile
from serving.microbatch import MicroBatcher
from serving.ratelimit import RateLimiter
from serving.scheduling import ExplainQueue, ModelTurns
from serving.schemas import Limits
from serving.settings import ServingSettings
from serving.telemetry import ServingMetrics

log = logging.getLogger("classifier.api")
PREDICT_BATCH_SIZE = 32


@dataclass
class ServingContext:
    """The turns keep one forward pass at a time per worker, so torch threads x workers stays within the cores
    however many requests arrive; /predict's passes go first (serving/scheduling.py)."""

    inferer: ModelInferer
    settings: ServingSettings
    limits: Limits  # the validation context of its requests
    explain_queue: ExplainQueue
    metrics: ServingMetrics = field(default_factory=ServingMetrics)
    turns: ModelTurns = field(default_factory=ModelTurns)
    batcher: MicroBatcher | None = None
    rate_limiter: RateLimiter | None = None  # RATE_LIMIT's buckets, this worker's own
    corrections: CorrectionsFile | None = None  # CORRECTIONS_FILE, where the page's corrections go

    @classmethod
    def build(cls, inferer: ModelInferer, settings: ServingSettings) -> ServingContext:
        """The app's context around `inferer`, which it serves through the turns: every forward pass of this app
        takes its turn, and the TF-IDF member's scoring gives way to /predict's (`inferer` itself is unchanged)."""
        turns = ModelTurns()
        context = cls(inferer.shared(turns), settings, Limits.of(inferer.label_names, settings),
                    ExplainQueue(settings.explain_places()), turns=turns)
        if settings.microbatch:  # its thread starts here, in the worker process (gunicorn forks before the app)
            context.batcher = MicroBatcher(context.inferer, settings.microbatch_wait_ms, settings.microbatch_max_size,
                                         settings.microbatch_queue_size, PREDICT_BATCH_SIZE,
                                         on_batch=lambda requests, texts: context.metrics.batch_texts.observe(texts))
        if settings.rate_limit is not None:
            context.rate_limiter = RateLimiter(settings.rate_limit)
        if settings.corrections_file:
            context.corrections = CorrectionsFile(Path(settings.corrections_file), settings.corrections_max_bytes)
            context.corrections.check()
        context.metrics.model.labels(inferer.checkpoint_id, inferer.task, str(inferer.quantized).lower()).set(1)
        return context

    def deadline(self, received_at: float | None = None) -> float:
        """When a request must be done (time.monotonic): REQUEST_TIMEOUT from when the worker had all of it (the
        wait for a free thread counts), else from now."""
        return (time.monotonic() if received_at is None else received_at) + self.settings.request_timeout


def load_inferer(settings: ServingSettings) -> ModelInferer:
    """The checkpoint CHECKPOINT_PATH names, loaded and warmed up before the worker takes traffic."""
    if not settings.checkpoint_path:
        raise ValueError("set CHECKPOINT_PATH to a checkpoint folder written by training")
    started = time.time()
    inferer = ModelInferer(settings.checkpoint_path, quantize=settings.quantize, device=settings.device,
                           precision=settings.precision, num_threads=settings.torch_threads, backend=settings.backend)
    inferer.predict_batch(["warm up"])  # the first forward pass allocates; do it before taking traffic
    choice = inferer.backend_choice
    log.info("model %s (%s) loaded in %.1f s; %s", inferer.checkpoint_id, settings.checkpoint_path,
             time.time() - started, choice.line())
    return inferer


def serving() -> ServingContext:
    """The context of the app handling the current request."""
    return current_app.extensions["classifier"]
