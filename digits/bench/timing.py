"""The one timer: first call, warm-up, then two timed phases, and the statistics derived from them.

Every backend on a device is timed the same way (the method ``docs/bench.md`` states):

- **latency**: the host clock around one call plus the device sync that makes its output
  ready (``torch.cuda.synchronize`` on CUDA, nothing on the CPU); p50/p90/p99 come from
  these samples.
- **throughput**: N back-to-back calls timed over wall time with one sync at the end, as
  MLPerf's Offline scenario counts; images per second is N x batch / that time. The
  median of the latency samples is never turned into a rate: that overstates it by the
  spread between median and mean.

The first call at a batch size is timed apart (it pays lazy set-up). Statistics come from
the raw samples in :func:`summarize`, and nowhere else.
"""

from __future__ import annotations

import gc
import math
import statistics
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

import torch

from digits.precision import allow_tf32


@dataclass
class Stats:
    mean_ms: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    std_ms: float
    iterations: int


def percentile(sorted_samples: list[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default method)."""
    if not sorted_samples:
        raise ValueError("no samples")
    pos = (len(sorted_samples) - 1) * q / 100
    lo, hi = math.floor(pos), math.ceil(pos)
    return sorted_samples[lo] + (sorted_samples[hi] - sorted_samples[lo]) * (pos - lo)


def summarize(samples_ms: list[float]) -> Stats:
    s = sorted(samples_ms)
    return Stats(mean_ms=statistics.fmean(s), p50_ms=percentile(s, 50), p90_ms=percentile(s, 90),
                 p99_ms=percentile(s, 99), std_ms=statistics.stdev(s) if len(s) > 1 else 0.0, iterations=len(s))


@dataclass
class Timing:
    first_call_ms: float  # the very first call at this batch size, before any warm-up
    samples_ms: list[float] = field(repr=False)  # latency phase: one call + sync each
    throughput_calls: int = 0  # throughput phase: back-to-back calls ...
    throughput_seconds: float = 0.0  # ... over this much wall time, one sync at the end
    output: Any = field(default=None, repr=False, compare=False)  # the last timed call's result
    stats: Stats = None

    def __post_init__(self):
        self.stats = summarize(self.samples_ms)

    def calls_per_second(self) -> float:
        return self.throughput_calls / self.throughput_seconds

    def to_dict(self) -> dict:
        return {"first_call_ms": self.first_call_ms, **asdict(self.stats),
                "throughput_calls": self.throughput_calls, "throughput_seconds": self.throughput_seconds}

    def extend(self, later: Timing) -> Timing:
        """Pool a later round: samples, calls and seconds add up; the first call stays this round's."""
        return Timing(first_call_ms=self.first_call_ms, samples_ms=self.samples_ms + later.samples_ms,
                      throughput_calls=self.throughput_calls + later.throughput_calls,
                      throughput_seconds=self.throughput_seconds + later.throughput_seconds, output=later.output)


def device_sync(device: str) -> Callable[[], None]:
    """What makes a call's output ready on ``device``: the whole GPU's queue on CUDA (every
    runtime's stream, onnxruntime's too), nothing on the CPU (calls return finished)."""
    return torch.cuda.synchronize if device == "cuda" else (lambda: None)


def measure(fn: Callable[[], object], *, device: str = "cpu", warmup: int = 10, min_iters: int = 20,
            min_time: float = 0.5, max_iters: int = 1_000_000, max_time: float = math.inf) -> Timing:
    """Time ``fn``: first call, ``warmup`` calls, then the latency phase and the throughput
    phase, each until both ``min_iters`` calls and ``min_time`` / 2 seconds are reached, or
    ``max_iters`` calls, or ``max_time`` / 2 seconds (at least one call each)."""
    sync = device_sync(device)
    gc_was_enabled = gc.isenabled()
    gc.disable()  # a collection inside the loop would be timed as the model's (as timeit does)
    try:
        return _measure(fn, sync, warmup, min_iters, min_time / 2, max_iters, max_time / 2)
    finally:
        if gc_was_enabled:
            gc.enable()


def _measure(fn, sync, warmup, min_iters, min_time, max_iters, max_time) -> Timing:
    clock = time.perf_counter
    sync()
    t0 = clock()
    fn()
    sync()
    first = (clock() - t0) * 1e3
    for _ in range(warmup):
        fn()
    sync()

    def more(n: int, start: float) -> bool:
        elapsed = clock() - start
        return n == 0 or ((n < min_iters or elapsed < min_time) and n < max_iters and elapsed < max_time)

    samples: list[float] = []
    start = clock()
    while more(len(samples), start):
        t = clock()
        fn()
        sync()
        samples.append((clock() - t) * 1e3)
    calls, start = 0, clock()
    while more(calls, start):  # the host may run ahead of the device here; the sync below waits it out
        out = fn()
        calls += 1
    sync()
    return Timing(first_call_ms=first, samples_ms=samples, throughput_calls=calls,
                  throughput_seconds=clock() - start, output=out)


def harness_overhead_ms(device: str = "cpu", min_time: float = 0.2) -> float:
    """p50 of timing an empty call (plus the device sync): the floor under every latency this timer reports."""
    return measure(lambda: None, device=device, warmup=100, min_iters=2000, min_time=min_time).stats.p50_ms


def matmul_probe(device: str = "cpu", n: int = 2048, dtype: str = "fp32"):  # sized by digits.bench.probes.sized
    """``(call, flops)`` for one large ``torch.mm`` on ``device`` (fp32, tf32, bf16 or fp16).

    It runs on the current ``torch.get_num_threads()``, so set threads first; time it
    inside :func:`strict_fp32` so that CUDA's TF32 is off and the figure is true FP32
    (the tf32 probe turns it on for its own calls, as a tf32 cell does).
    """
    dev = torch.device(device)
    kind = {"fp32": torch.float32, "tf32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[dtype]
    a = torch.randn(n, n, device=dev, dtype=kind)
    b = torch.randn(n, n, device=dev, dtype=kind)
    if dtype == "tf32":
        def call():
            with allow_tf32(True):
                return torch.mm(a, b)
        return call, 2 * n ** 3
    return (lambda: torch.mm(a, b)), 2 * n ** 3


def gflops(flops: int, timing: Timing) -> float:
    """A probe's rate from its throughput phase (work over wall time), as a cell's throughput is."""
    return flops * timing.calls_per_second() / 1e9


def strict_fp32():
    """CUDA's TF32 off for matmuls and cuDNN convolutions (PyTorch turns it on for cuDNN by
    default): an fp32 cell computes in FP32, and TF32 is not passed off as FP32 (a tf32 cell
    turns it on for its own calls: digits.precision.Tf32)."""
    return allow_tf32(False)
