"""Prometheus metrics of one app, in a registry of its own, and their exposition summed over gunicorn workers."""

from __future__ import annotations

import os

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)

KNOWN_METHODS = ("GET", "POST", "HEAD", "PUT", "PATCH", "DELETE", "OPTIONS")


class ServingMetrics:
    """Request counts, latency, texts per request, truncations, explanations, corrections, error codes and the
    model."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("http_requests_total", "HTTP requests by route, method and status.",
                                ["endpoint", "method", "status"], registry=self.registry)
        self.latency = Histogram("http_request_duration_seconds", "Time to answer a request.", ["endpoint"],
                                 buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
                                 registry=self.registry)
        self.texts = Histogram("predict_texts_per_request", "Texts in one /predict request.",
                               buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512), registry=self.registry)
        self.truncated = Counter("predict_truncated_texts_total", "Texts cut to the model's max length.",
                                 registry=self.registry)
        self.explain_texts = Histogram("explain_texts_per_request", "Texts in one /explain request.",
                                       buckets=(1, 2, 4, 8, 16, 32, 64), registry=self.registry)
        self.explained_labels = Counter("explained_labels_total", "Labels explained, by label.", ["label"],
                                        registry=self.registry)
        self.explained_words = Histogram("explain_words_per_text", "Words scored in one explained text.",
                                         buckets=(4, 16, 64, 256, 1024, 4096), registry=self.registry)
        self.errors = Counter("http_errors_total", "Error answers by error code.", ["code"], registry=self.registry)
        self.batch_texts = Histogram("microbatch_texts", "Texts in one shared forward pass (MICROBATCH=1).",
                                     buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256), registry=self.registry)
        self.corrections = Counter("corrections_saved_total", "Corrections appended to CORRECTIONS_FILE.",
                                   registry=self.registry)
        self.model = Gauge("model_info", "The served checkpoint (always 1).", ["checkpoint_id", "task", "quantized"],
                           registry=self.registry, multiprocess_mode="max")

    def observe_request(self, endpoint: str, method: str, status: int, seconds: float) -> None:
        method = method if method in KNOWN_METHODS else "other"
        self.requests.labels(endpoint, method, str(status)).inc()
        self.latency.labels(endpoint).observe(seconds)

    def exposition(self) -> tuple[bytes, str]:
        """The text format and its content type; under gunicorn, every worker's values added up."""
        registry = self.registry
        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)
        return generate_latest(registry), CONTENT_TYPE_LATEST
