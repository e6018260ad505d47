"""The server's metrics, by prometheus_client, on a registry of the app's own (two apps in one
process, as in the tests, never share series): request count and latency by route,
batch size and runtime-call time by model, failed batches by model and cause, and each
model's queue depth, set whenever it changes.

With ``digits serve --workers N`` each worker process counts in prometheus_client's
multiprocess mode (``PROMETHEUS_MULTIPROC_DIR``, set by the parent before the workers
start): whichever worker answers a scrape reports the sum over all of them, and
``digits_worker`` has one sample per live worker (its ``pid`` label)."""

from __future__ import annotations

import os
from pathlib import Path
import prometheus_client
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest, multiprocess

prometheus_client.disable_created_metrics()  # the *_created series say nothing useful here
CONTENT_TYPE = prometheus_client.CONTENT_TYPE_LATEST
LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)  # seconds
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class Metrics:
    def __init__(self):
        self.registry = r = CollectorRegistry()
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
        self.queue = Gauge("digits_queue_depth", "Requests waiting in each model's queue.", ["model"], registry=r,
                           multiprocess_mode="livesum")
        self.worker = Gauge("digits_worker", "1 per serving process (a pid label per worker with --workers).",
                            registry=r, multiprocess_mode="liveall")
        self.worker.set(1)
        self._series: dict = {}  # labelled children, looked up once (the label sets are bounded)
        self.shared = bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))  # --workers: every process's files
        if self.shared:
            forget_dead_workers(os.environ["PROMETHEUS_MULTIPROC_DIR"])

    def request(self, route: str, status: int, seconds: float) -> None:
        if (series := self._series.get((route, status))) is None:  # labels() costs a lock and a dict walk
            series = self._series[route, status] = (self.requests.labels(route, str(status)), self.latency.labels(route))
        series[0].inc()
        series[1].observe(seconds)

    def batch_done(self, model: str, size: int, seconds: float) -> None:
        if (series := self._series.get(model)) is None:
            series = self._series[model] = (self.batch.labels(model), self.inference.labels(model))
        series[0].observe(size)
        series[1].observe(seconds)

    def error(self, model: str, cause: str) -> None:
        self.errors.labels(model, cause).inc()

    def queue_depth(self, model: str, depth: int) -> None:
        """Set when the queue changes (a request queued, a batch taken), so that with --workers
        every worker's share in the summed gauge is current, not only the one answering a scrape."""
        self.queue.labels(model).set(depth)

    def text(self) -> str:
        if not self.shared:
            return generate_latest(self.registry).decode()
        merged = CollectorRegistry()
        multiprocess.MultiProcessCollector(merged)
        return generate_latest(merged).decode()

    def close(self) -> None:
        """A worker that stops takes its live gauges out of the shared sums."""
        if self.shared:
            multiprocess.mark_process_dead(os.getpid())


def forget_dead_workers(folder: str) -> None:
    """A worker killed outright (SIGKILL, OOM) never runs ``close``; the supervisor starts a
    new one, which takes the dead one's live gauges (``digits_worker``, queue depth) out of
    the sums here. Its counters and histograms stay: those requests did happen."""
    for path in Path(folder).glob("gauge_live*_*.db"):
        pid = int(path.stem.rsplit("_", 1)[1])
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            multiprocess.mark_process_dead(pid, folder)
        except PermissionError:  # alive, another user's
            pass
