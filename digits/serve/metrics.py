"""The server's metrics, by prometheus_client, on a registry of the app's own (two apps in one
process, as in the tests, never share series): request count and latency by route,
batch size and runtime-call time by model, failed batches by model and cause, and each
model's queue depth, read at scrape time."""

from __future__ import annotations

from typing import Callable

import prometheus_client
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

prometheus_client.disable_created_metrics()  # the *_created series say nothing useful here
CONTENT_TYPE = prometheus_client.CONTENT_TYPE_LATEST
LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)  # seconds
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class Metrics:
    def __init__(self, queue_depth: Callable[[], dict[str, int]] = dict):
        self.registry = r = CollectorRegistry()
        self.queue_depth = queue_depth
        self.requests = Counter("digits_requests", "HTTP requests by route and status code.", ["route", "status"],
                                registry=r)
        self.latency = Histogram("digits_request_seconds", "Request latency, whole request.", ["route"],
                                 buckets=LATENCY_BUCKETS, registry=r)
        self.batch = Histogram("digits_batch_size", "Images per runtime call (dynamic batching).", ["model"],
                               buckets=BATCH_BUCKETS, registry=r)
        self.inference = Histogram("digits_inference_seconds", "Runtime call duration per batch.", ["model"],
                                   buckets=LATENCY_BUCKETS, registry=r)
        self.errors = Counter("digits_batch_errors", "Failed batches by model and the step that failed.",
                              ["model", "cause"], registry=r)
        self.queue = Gauge("digits_queue_depth", "Requests waiting in each model's queue.", ["model"], registry=r)

    def request(self, route: str, status: int, seconds: float) -> None:
        self.requests.labels(route, str(status)).inc()
        self.latency.labels(route).observe(seconds)

    def batch_done(self, model: str, size: int, seconds: float) -> None:
        self.batch.labels(model).observe(size)
        self.inference.labels(model).observe(seconds)

    def error(self, model: str, cause: str) -> None:
        self.errors.labels(model, cause).inc()

    def text(self) -> str:
        for model, depth in self.queue_depth().items():
            self.queue.labels(model).set(depth)
        return generate_latest(self.registry).decode()
