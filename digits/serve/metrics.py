"""Request counts, latency and batch-size histograms, in the Prometheus text format (no dependency)."""

from __future__ import annotations

import threading
from collections import defaultdict

LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)  # seconds
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class Histogram:
    def __init__(self, buckets):
        self.buckets, self.counts, self.sum, self.count = buckets, [0] * len(buckets), 0.0, 0

    def observe(self, v: float) -> None:
        for i, b in enumerate(self.buckets):
            if v <= b:
                self.counts[i] += 1
        self.sum += v
        self.count += 1

    def lines(self, name: str, labels: str) -> list[str]:
        sep = "," if labels else ""
        out = [f'{name}_bucket{{{labels}{sep}le="{b}"}} {c}' for b, c in zip(self.buckets, self.counts, strict=True)]
        out += [f'{name}_bucket{{{labels}{sep}le="+Inf"}} {self.count}', f"{name}_sum{{{labels}}} {self.sum}",
                f"{name}_count{{{labels}}} {self.count}"]
        return out


class Metrics:
    def __init__(self):
        self.lock = threading.Lock()
        self.requests: dict[tuple[str, int], int] = defaultdict(int)
        self.latency: dict[str, Histogram] = {}
        self.batch: dict[str, Histogram] = {}
        self.inference: dict[str, Histogram] = {}
        self.errors: dict[tuple[str, str], int] = defaultdict(int)  # (model, cause) -> failed batches

    def request(self, route: str, status: int, seconds: float) -> None:
        with self.lock:
            self.requests[route, status] += 1
            self.latency.setdefault(route, Histogram(LATENCY_BUCKETS)).observe(seconds)

    def batch_done(self, model: str, size: int, seconds: float) -> None:
        with self.lock:
            self.batch.setdefault(model, Histogram(BATCH_BUCKETS)).observe(size)
            self.inference.setdefault(model, Histogram(LATENCY_BUCKETS)).observe(seconds)

    def error(self, model: str, cause: str) -> None:
        with self.lock:
            self.errors[model, cause] += 1

    def text(self) -> str:
        with self.lock:
            lines = ["# HELP digits_requests_total HTTP requests by route and status code.",
                     "# TYPE digits_requests_total counter"]
            lines += [f'digits_requests_total{{route="{r}",status="{s}"}} {n}' for (r, s), n in sorted(self.requests.items())]
            lines += ["# HELP digits_batch_errors_total Failed batches by model and the step that failed.",
                      "# TYPE digits_batch_errors_total counter"]
            lines += [f'digits_batch_errors_total{{model="{m}",cause="{c}"}} {n}' for (m, c), n in sorted(self.errors.items())]
            for name, help_, table, key in (
                    ("digits_request_seconds", "Request latency, whole request.", self.latency, "route"),
                    ("digits_batch_size", "Images per runtime call (dynamic batching).", self.batch, "model"),
                    ("digits_inference_seconds", "Runtime call duration per batch.", self.inference, "model")):
                lines += [f"# HELP {name} {help_}", f"# TYPE {name} histogram"]
                for label, h in sorted(table.items()):
                    lines += h.lines(name, f'{key}="{label}"')
        return "\n".join(lines) + "\n"
