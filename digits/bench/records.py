"""One bench cell's record, and the figures derived from many of them (efficiency, round spread)."""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field


@dataclass
class Record:
    model: str
    backend: str
    device: str
    batch_size: int
    precision: str
    params: int
    macs_per_image: int
    artifact_bytes: int | None = None
    first_call_ms: float | None = None
    mean_ms: float | None = None
    p50_ms: float | None = None
    p90_ms: float | None = None
    p99_ms: float | None = None
    std_ms: float | None = None
    iterations: int | None = None
    throughput: float | None = None  # images per second: throughput_calls x batch / throughput_seconds
    throughput_calls: int | None = None  # back-to-back calls of the throughput phase, all rounds ...
    throughput_seconds: float | None = None  # ... and their wall time, one device sync at the end
    accuracy: float | None = None  # full test set through this backend
    efficiency: float | None = None  # throughput x 2 x MACs / fastest GEMM of this precision (FLOP/s)
    threads: int | None = None
    provider: str | None = None
    settings: dict = field(default_factory=dict)
    round_p50_ms: list[float] = field(default_factory=list)  # p50 of each interleaved round
    parity: dict | None = None  # backend x precision on the full test set, against eager FP32 on the same device
    cell_parity: dict | None = None  # this cell's own timed output against eager FP32 on the same images
    untrusted: str | None = None  # why the cell has no parity verdict (it is then never named fastest)
    error: str | None = None
    missing: bool = False  # the error is an optional runtime that is not installed


def efficiency(throughput: float, macs_per_image: int, peak_gflops_: float) -> float:
    """Fraction of the machine's fastest GEMM (in the cell's precision) that this throughput represents."""
    return throughput * 2 * macs_per_image / (peak_gflops_ * 1e9)


UNSTABLE_SPREAD = 0.10  # above this round_spread, the CLI warns that the figures may not repeat


def round_spread(records: list[Record]) -> float | None:
    """Median over cells of (slowest round's p50 / fastest round's p50 - 1).

    Near 0 when the machine kept its speed through the sweep. A large value means it
    changed speed mid-run (a throttling laptop, a shared VM's slow spell), so another run
    is unlikely to repeat these figures. None with a single round.
    """
    spreads = [max(r.round_p50_ms) / min(r.round_p50_ms) - 1 for r in records
               if not r.error and len(r.round_p50_ms) > 1]
    return statistics.median(spreads) if spreads else None


def sample_key(rec: Record) -> str:
    return f"{rec.model}/{rec.backend}/{rec.precision}/{rec.device}/{rec.batch_size}"
