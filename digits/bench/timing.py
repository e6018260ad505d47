"""The one timer: warm-up, first-call latency, raw samples, and the statistics derived from them.

CPU calls are timed with ``time.perf_counter``. CUDA calls that only enqueue work are
timed with CUDA events recorded around each call and read after one synchronize, so the
GPU's own time is measured without a host sync inside the loop. Calls that block until
their result is ready (onnxruntime's ``run_with_iobinding``) are timed on the host even
on CUDA. Statistics come from the raw samples in :func:`summarize`, and nowhere else.
"""

from __future__ import annotations

import contextlib
import gc
import math
import statistics
import time
from dataclasses import asdict, dataclass, field
from typing import Callable

import torch


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
    samples_ms: list[float] = field(repr=False)
    stats: Stats = None

    def __post_init__(self):
        self.stats = summarize(self.samples_ms)

    def to_dict(self) -> dict:
        return {"first_call_ms": self.first_call_ms, **asdict(self.stats)}

    def extend(self, later: Timing) -> Timing:
        """Pool the samples of a later round; the first call stays this round's."""
        return Timing(first_call_ms=self.first_call_ms, samples_ms=self.samples_ms + later.samples_ms)


def measure(fn: Callable[[], object], *, warmup: int = 10, min_iters: int = 20, min_time: float = 0.5,
            max_iters: int = 1_000_000, cuda_events: bool = False) -> Timing:
    """Time ``fn`` until both ``min_iters`` calls and ``min_time`` seconds are reached."""
    sync = torch.cuda.synchronize if cuda_events else (lambda: None)
    gc_was_enabled = gc.isenabled()
    gc.disable()  # a collection inside the loop would be timed as the model's (as timeit does)
    try:
        return _measure(fn, sync, warmup, min_iters, min_time, max_iters, cuda_events)
    finally:
        if gc_was_enabled:
            gc.enable()


def _measure(fn, sync, warmup, min_iters, min_time, max_iters, cuda_events) -> Timing:
    sync()
    t0 = time.perf_counter()
    fn()
    sync()
    first = (time.perf_counter() - t0) * 1e3
    for _ in range(warmup):
        fn()
    sync()
    if cuda_events:
        samples = _cuda_loop(fn, min_iters, min_time, max_iters)
    else:
        samples = []
        clock = time.perf_counter
        start = clock()
        while (len(samples) < min_iters or clock() - start < min_time) and len(samples) < max_iters:
            t = clock()
            fn()
            samples.append((clock() - t) * 1e3)
    return Timing(first_call_ms=first, samples_ms=samples)


def _cuda_loop(fn, min_iters: int, min_time: float, max_iters: int) -> list[float]:
    pairs = []
    start = time.perf_counter()
    while (len(pairs) < min_iters or time.perf_counter() - start < min_time) and len(pairs) < max_iters:
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        pairs.append((a, b))
        if len(pairs) % 64 == 0:
            b.synchronize()  # keep the host at most 64 calls ahead so min_time means GPU time
    torch.cuda.synchronize()
    return [a.elapsed_time(b) for a, b in pairs]


def harness_overhead_ms(cuda_events: bool = False) -> float:
    """p50 of timing an empty call: the floor under every latency this timer reports."""
    return measure(lambda: None, warmup=100, min_iters=2000, min_time=0.1, cuda_events=cuda_events).stats.p50_ms


def matmul_probe(device: str = "cpu", n: int = 2048, dtype: str = "fp32"):
    """``(call, flops, cuda_events)`` for one large ``torch.mm`` on ``device`` (fp32, bf16 or fp16).

    It runs on the current ``torch.get_num_threads()``, so set threads first; time it
    inside :func:`strict_fp32` so that CUDA's TF32 is off and the figure is true FP32.
    """
    dev = torch.device(device)
    kind = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[dtype]
    a = torch.randn(n, n, device=dev, dtype=kind)
    b = torch.randn(n, n, device=dev, dtype=kind)
    return (lambda: torch.mm(a, b)), 2 * n ** 3, dev.type == "cuda"


def gflops(flops: int, timing: Timing) -> float:
    """A probe's rate from its median call: ``peak_gflops`` is this for :func:`matmul_probe`."""
    return flops / (timing.stats.p50_ms / 1e3) / 1e9


@contextlib.contextmanager
def strict_fp32():
    """CUDA's TF32 off for matmuls and cuDNN convolutions (PyTorch turns it on for cuDNN by
    default): an fp32 cell computes in FP32, and TF32 is not passed off as FP32."""
    old = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old
