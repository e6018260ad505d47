"""The benchmark sweep: models x backends x batch sizes on one device, one record per cell.

A cell that fails records its error and the sweep goes on (timm's habit). Accuracy is
measured through every backend on the full test set, every timed cell's own output is
held to eager FP32 (digits.bench.trust), and throughput is set against the machine's own
matmul peak of the cell's precision, measured in the same run and the same way.
"""

from __future__ import annotations

import os
import statistics
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import torch

from digits.bench import probes as _probes
from digits.bench import trust
from digits.bench.backends import Backend, create_backend, list_backends
from digits.bench.environment import cpu_name, environment, reason  # noqa: F401  (cpu_name: the scripts' import)
from digits.bench.timing import Timing, gflops, measure, strict_fp32
from digits.errors import DigitsError, RuntimeMissing, UsageError
from digits.models import list_models, model_info
from digits.precision import resolve_precisions

DEFAULT_BATCH_SIZES = (1, 8, 32, 128, 256)


@dataclass
class BenchConfig:
    models: list[str] = field(default_factory=list_models)
    backends: list[str] | None = None  # None: default_backends(device)
    device: str = "cpu"
    precisions: list[str] | None = None  # None: fp32 + every reduced precision the device runs natively
    batch_sizes: list[int] = field(default_factory=lambda: list(DEFAULT_BATCH_SIZES))
    threads: int | None = None  # None: all cores
    warmup: int = 10  # calls before timing, per batch size
    min_iters: int = 20
    min_time: float = 0.5  # seconds per cell, at least, summed over the rounds
    rounds: int = 5  # interleaved passes over all cells (see run_bench)
    checkpoint: str = "artifacts"
    artifacts: str = "artifacts"

    def __post_init__(self):
        if self.backends is None:
            self.backends = default_backends(self.device)

    def validate(self) -> None:
        for m in self.models:
            if m not in list_models():
                raise UsageError(f"Unknown model {m!r}. Choose from: {', '.join(list_models())}.")
        if self.device not in ("cpu", "cuda"):
            raise UsageError(f"Unknown device {self.device!r}. Choose cpu or cuda.")
        if self.device == "cuda" and not torch.cuda.is_available():
            raise DigitsError("--device cuda was asked for, but CUDA is not available on this machine "
                              f"(torch {torch.__version__} sees no GPU). Run with --device cpu.")
        for b in self.backends:
            if self.device not in (runs_on := create_backend(b).devices):
                raise UsageError(f"Backend {b} runs on {', '.join(runs_on)} only, not on {self.device}: "
                                 f"use --device {runs_on[0]}, or leave {b} out of --backends.")
        if not self.batch_sizes or any(b < 1 for b in self.batch_sizes):
            raise UsageError(f"Batch sizes must be whole numbers >= 1, got {self.batch_sizes}.")
        if self.threads is not None and self.threads < 1:
            raise UsageError(f"--threads must be at least 1, got {self.threads}.")
        if self.warmup < 0 or self.min_time < 0 or self.rounds < 1:
            raise UsageError("--warmup and --min-time must not be negative, and --rounds must be at least 1.")
        if self.precisions:
            resolve_precisions(self.precisions)  # an unknown precision is bad usage

    def resolved_precisions(self) -> list[str]:
        return resolve_precisions(self.precisions, self.device)


def default_backends(device: str = "cpu") -> list[str]:
    """The default sweep: every backend marked default that runs on ``device`` and is installed."""
    return [b for b in list_backends() if (be := create_backend(b)).default and device in be.devices
            and be.available() is None]


def pairs(cfg: BenchConfig) -> tuple[list[tuple[str, str]], list[str]]:
    """``([(backend, precision)], [why a pair was left out])`` for the sweep.

    A pair the backend has no path for (eager int8, onnxruntime bf16) is left out of a sweep
    and listed; a precision that no backend runs becomes error records, so it is never silent.
    """
    keep, left_out = [], []
    precisions = cfg.resolved_precisions()
    for p in precisions:
        runs = [b for b in cfg.backends if p in create_backend(b).precisions]
        keep += [(b, p) for b in (runs or cfg.backends)]
        left_out += [f"{b} {p}: {b} has no {p} path" for b in cfg.backends if runs and b not in runs]
    return keep, left_out


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


@torch.inference_mode()
def accuracy(backend: Backend, x: torch.Tensor, y: torch.Tensor, chunk: int = 1000) -> float:
    correct = sum((backend(x[i:i + chunk]).argmax(1) == y[i:i + chunk]).sum().item() for i in range(0, len(x), chunk))
    return correct / len(x)


def run_bench(cfg: BenchConfig, x: torch.Tensor, y: torch.Tensor,
              on_record: Callable[[Record], None] = lambda r: None, samples: dict | None = None) -> dict:
    """Sweep every cell; returns ``{"environment": {...}, "records": [...]}``.

    Cells are timed in ``cfg.rounds`` interleaved passes (cell 1..N, then again), and each
    cell's samples are pooled. On a shared or throttling machine a slow spell then spreads
    over all cells instead of landing on whichever cell ran during it; two runs agree far
    better than with one block per cell. Each round warms the cell up again. Pass a dict
    as ``samples`` to receive every cell's raw latencies, keyed "model/backend/device/batch".
    The whole sweep runs with CUDA's TF32 off (:func:`strict_fp32`).
    """
    with strict_fp32():
        return _sweep(cfg, x, y, on_record, samples)


def _sweep(cfg: BenchConfig, x: torch.Tensor, y: torch.Tensor, on_record, samples) -> dict:
    cfg.validate()
    threads = cfg.threads or os.cpu_count() or 1
    torch.set_num_threads(threads)
    env = environment(cfg)
    swept, env["left_out"] = pairs(cfg)
    records: list[Record] = []
    cells = []  # (record, backend, prepared input, eager FP32 logits for that input)
    for model in cfg.models:
        info = model_info(model)
        ref, no_ref = trust.reference(model, cfg.device, cfg.checkpoint, x, threads)
        for name, precision in swept:
            base = dict(model=model, backend=name, device=cfg.device, precision=precision, params=info.params,
                        macs_per_image=info.macs, threads=threads, untrusted=no_ref)
            try:
                backend = create_backend(name).load(model, cfg.device, checkpoint=Path(cfg.checkpoint),
                                                    artifacts=Path(cfg.artifacts), threads=threads,
                                                    precision=precision)
                parity = None if ref is None else trust.backend_parity(backend, ref, x, y, precision)
                acc = parity["accuracy"] if parity else accuracy(backend, x, y)
            except Exception as e:  # noqa: BLE001 - a failing cell is data, the sweep goes on
                records += [Record(**base, batch_size=b, error=reason(e),
                                   missing=isinstance(e, RuntimeMissing)) for b in cfg.batch_sizes]
                continue
            for b in cfg.batch_sizes:
                rec = Record(**base, batch_size=b, artifact_bytes=backend.artifact.stat().st_size,
                             accuracy=acc, provider=backend.provider, settings=backend.settings, parity=parity)
                records.append(rec)
                try:
                    cells.append((rec, backend, backend.prepare(_batch(x, b)), None if ref is None else _batch(ref, b)))
                except Exception as e:  # noqa: BLE001
                    rec.error = reason(e)
    timings: dict[int, Timing] = {}
    # Probe only the precisions of cells that loaded: a probe no efficiency divides by is waste.
    probes, probe_errors = _gemm_probes(cfg, threads, sorted({rec.precision for rec, *_ in cells}))
    gemm: dict[str, Timing] = {}
    for round_ in range(cfg.rounds):
        # The matmul peak is probed in every round too, so a machine that speeds up or slows
        # down during the sweep moves numerator and denominator of `efficiency` together.
        for name, (call, _, _precision) in list(probes.items()):
            try:
                t = measure(call, device=cfg.device, warmup=2 if round_ == 0 else 1, min_iters=-(-8 // cfg.rounds),
                            min_time=0.0, max_time=_probes.PROBE_BUDGET_S / cfg.rounds)
            except Exception as e:  # noqa: BLE001 - a probe is a second opinion, never the main job
                probe_errors[name] = reason(e)
                del probes[name]
                gemm.pop(name, None)
                continue
            gemm[name] = gemm[name].extend(t) if name in gemm else t
        for rec, backend, prepared, _ in cells:
            if rec.error:
                continue
            try:
                t = measure(lambda run=backend.run, p=prepared: run(p), device=cfg.device, warmup=cfg.warmup,
                            min_iters=-(-cfg.min_iters // cfg.rounds), min_time=cfg.min_time / cfg.rounds)
            except Exception as e:  # noqa: BLE001
                rec.error = reason(e)
                continue
            timings[id(rec)] = timings[id(rec)].extend(t) if round_ else t
            rec.round_p50_ms.append(t.stats.p50_ms)
    for rec, backend, _, ref_batch in cells:
        if (t := timings.get(id(rec))) and not rec.error and ref_batch is not None:
            try:  # the last timed call's own output, against eager FP32 on the same images
                rec.cell_parity = trust.cell_parity(backend, t.output, ref_batch, rec.precision)
            except Exception as e:  # noqa: BLE001
                rec.untrusted = f"cell parity could not be checked ({reason(e)})"
    _peaks(env, probes, gemm, probe_errors)
    env["round_spread"] = round_spread(records)
    peaks = env["peak_gflops_by_precision"]
    for rec in records:
        if (t := timings.get(id(rec))) and not rec.error:
            for k, v in t.to_dict().items():
                setattr(rec, k, v)
            rec.throughput = rec.batch_size * t.calls_per_second()
            if peaks.get(rec.precision):  # no probe of this precision: no efficiency, never a made-up one
                rec.efficiency = efficiency(rec.throughput, rec.macs_per_image, peaks[rec.precision])
            if samples is not None:
                samples[sample_key(rec)] = t.samples_ms
        on_record(rec)
    return {"environment": env, "records": [asdict(r) for r in records]}


def _peaks(env: dict, probes: dict, gemm: dict[str, Timing], probe_errors: dict) -> None:
    env["gemm_gflops"] = {name: gflops(probes[name][1], t) for name, t in gemm.items()}
    env["gemm_precision"] = {name: probes[name][2] for name in gemm}
    env["probe_errors"].update(probe_errors)
    peaks: dict[str, float] = {}
    for name, rate in env["gemm_gflops"].items():
        p = env["gemm_precision"][name]
        peaks[p] = max(peaks.get(p, 0.0), rate)
    env["peak_gflops_by_precision"] = peaks
    env["peak_gflops"] = peaks.get("fp32")  # None if every FP32 probe failed: no FP32 efficiency


def sample_key(rec: Record) -> str:
    return f"{rec.model}/{rec.backend}/{rec.precision}/{rec.device}/{rec.batch_size}"


def _gemm_probes(cfg: BenchConfig, threads: int, precisions: list[str]) -> tuple[dict, dict]:
    """``({name: (call, flops, precision)}, {name: why it could not be built})``.

    Every precision in ``precisions`` gets its probes (see :mod:`digits.bench.probes`); a
    probe that cannot be built is recorded, and the sweep goes on.
    """
    probes, errors = {}, {}
    for name, (precision, make) in _probes.gemm_probes(cfg.device, threads, precisions, cfg.backends).items():
        try:
            probes[name] = (*make(), precision)
        except Exception as e:  # noqa: BLE001
            errors[name] = reason(e)
    return probes, errors


def _batch(x: torch.Tensor, b: int) -> torch.Tensor:
    # Batches larger than the test set repeat it, so any batch size can be timed.
    return x[:b].contiguous() if b <= len(x) else x.repeat((b + len(x) - 1) // len(x), 1, 1, 1)[:b].contiguous()


