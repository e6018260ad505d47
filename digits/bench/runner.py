"""The benchmark sweep: models x backends x batch sizes on one device, one record per cell.

A cell that fails records its error and the sweep goes on (timm's habit). Accuracy is
measured through every backend on the full test set, every timed cell's own output is
held to eager FP32 (digits.bench.trust), and throughput is set against the machine's own
matmul peak of the cell's precision, measured in the same run and the same way.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import torch

from digits.bench import probes as _probes
from digits.bench import trust
from digits.bench.backends import Backend, create_backend, list_backends
from digits.bench.environment import cpu_name, environment, reason  # noqa: F401  (cpu_name: the scripts' import)
from digits.bench.records import Record, efficiency, round_spread, sample_key
from digits.bench.timing import Timing, measure, strict_fp32
from digits.cores import release_memory, usable_cores
from digits.errors import DigitsError, RuntimeMissing, UsageError
from digits.models import list_models, model_info
from digits.precision import check_tf32_device, resolve_precisions

DEFAULT_BATCH_SIZES = (1, 8, 32, 128, 256)


@dataclass
class BenchConfig:
    models: list[str] = field(default_factory=list_models)
    backends: list[str] | None = None  # None: default_backends(device)
    device: str = "cpu"
    precisions: list[str] | None = None  # None: fp32 + every reduced precision the device runs natively
    batch_sizes: list[int] = field(default_factory=lambda: list(DEFAULT_BATCH_SIZES))
    threads: int | None = None  # None: every core this process may use (affinity, cgroup quota)
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
            if "tf32" in self.precisions:
                check_tf32_device(self.device)

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


@torch.inference_mode()
def accuracy(backend: Backend, x: torch.Tensor, y: torch.Tensor, chunk: int = 1000) -> float:
    correct = sum((backend(x[i:i + chunk]).argmax(1) == y[i:i + chunk]).sum().item() for i in range(0, len(x), chunk))
    return correct / len(x)


def run_bench(cfg: BenchConfig, x: torch.Tensor, y: torch.Tensor,
              on_record: Callable[[Record], None] = lambda r: None, samples: dict | None = None) -> dict:
    """Sweep every cell; returns ``{"environment": {...}, "records": [...]}``.

    Models are benchmarked one after another. A model's cells are timed in ``cfg.rounds``
    interleaved passes (cell 1..N, then again) and each cell's samples pooled: a slow spell
    of a shared or throttling machine then spreads over all of them instead of landing on
    whichever cell ran during it. Each round warms the cell up again. Only one model's
    runtimes are loaded at a time, and they are freed before the GEMM probes (timed after
    each model, :class:`~digits.bench.probes.GemmProbes`) and the next model load their own,
    which keeps the peak memory of a default sweep to one model's (docs/bench.md). Pass a dict as
    ``samples`` to receive every cell's raw latencies, keyed by :func:`sample_key`. The
    whole sweep runs with CUDA's TF32 off (:func:`strict_fp32`).
    """
    with strict_fp32():
        return _sweep(cfg, x, y, on_record, samples)


def _sweep(cfg: BenchConfig, x: torch.Tensor, y: torch.Tensor, on_record, samples) -> dict:
    cfg.validate()
    threads = cfg.threads or usable_cores()
    torch.set_num_threads(threads)
    env = environment(cfg)
    swept, env["left_out"] = pairs(cfg)
    records: list[Record] = []
    timings: dict[int, Timing] = {}
    probes = _probes.GemmProbes(cfg.device, threads, cfg.backends)
    slots = cfg.rounds * len(cfg.models)  # a probe's time is spread over every model's rounds
    # A probe may spend what a cell may (--min-time), up to PROBE_BUDGET_S: a quick sweep
    # (--min-time 0) is not made slow by its second opinion.
    budget = min(_probes.PROBE_BUDGET_S, 2 * cfg.min_time)
    for model in cfg.models:
        cells, model_records = _load_cells(cfg, model, swept, x, y, threads)
        records += model_records
        _time_rounds(cfg, cells, timings)
        for rec, backend, _, ref_batch in cells:
            if (t := timings.get(id(rec))) and not rec.error and ref_batch is not None:
                try:  # the last timed call's own output, against eager FP32 on the same images
                    rec.cell_parity = trust.cell_parity(backend, t.output, ref_batch, rec.precision)
                except Exception as e:  # noqa: BLE001
                    rec.untrusted = f"cell parity could not be checked ({reason(e)})"
            if t:
                t.output = None  # it holds the runtime (a binding, an infer request) alive
        precisions = sorted({rec.precision for rec, *_ in cells})  # a probe no efficiency divides by is waste
        del cells
        release_memory()  # this model's runtimes are gone before the probes, and the next model, load their own
        probes.run(precisions, cfg.rounds, min_iters=-(-8 // slots), max_time=budget / slots)
        for rec in model_records:
            _finish(rec, timings.get(id(rec)), samples)
            on_record(rec)
    probes.record(env)
    env["round_spread"] = round_spread(records)
    peaks = env["peak_gflops_by_precision"]
    for rec in records:  # no probe of this precision: no efficiency, never a made-up one
        if rec.throughput and peaks.get(rec.precision):
            rec.efficiency = efficiency(rec.throughput, rec.macs_per_image, peaks[rec.precision])
    return {"environment": env, "records": [asdict(r) for r in records]}


def _load_cells(cfg: BenchConfig, model: str, swept: list[tuple[str, str]], x, y, threads: int):
    """``(cells, records)`` for one model: every backend x precision loaded, its parity on the
    full test set checked, and its batches prepared. A cell is ``(record, backend, prepared
    input, eager FP32 logits for that input)``; a backend that fails is error records."""
    info = model_info(model)
    ref, no_ref = trust.reference(model, cfg.device, cfg.checkpoint, x, threads)
    chunk = max(256, *cfg.batch_sizes)  # parity's batch: no larger than timing needs (memory), yet not slow
    records, cells = [], []
    for name, precision in swept:
        base = dict(model=model, backend=name, device=cfg.device, precision=precision, params=info.params,
                    macs_per_image=info.macs, threads=threads, untrusted=no_ref)
        try:
            backend = create_backend(name).load(model, cfg.device, checkpoint=Path(cfg.checkpoint),
                                                artifacts=Path(cfg.artifacts), threads=threads, precision=precision)
            parity = None if ref is None else trust.backend_parity(backend, ref, x, y, precision, chunk)
            acc = parity["accuracy"] if parity else accuracy(backend, x, y)
            backend.keep_shapes(cfg.batch_sizes)  # what the parity runs built for other shapes is freed
        except Exception as e:  # noqa: BLE001 - a failing cell is data, the sweep goes on
            records += [Record(**base, batch_size=b, error=reason(e), missing=isinstance(e, RuntimeMissing))
                        for b in cfg.batch_sizes]
            continue
        for b in cfg.batch_sizes:
            rec = Record(**base, batch_size=b, artifact_bytes=backend.artifact.stat().st_size,
                         accuracy=acc, provider=backend.provider, settings=backend.settings, parity=parity)
            records.append(rec)
            try:
                cells.append((rec, backend, backend.prepare(_batch(x, b)), None if ref is None else _batch(ref, b)))
            except Exception as e:  # noqa: BLE001
                rec.error = reason(e)
    return cells, records


def _time_rounds(cfg: BenchConfig, cells: list, timings: dict[int, Timing]) -> None:
    """``cfg.rounds`` interleaved passes over one model's cells; each cell's rounds are pooled."""
    for round_ in range(cfg.rounds):
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


def _finish(rec: Record, t: Timing | None, samples: dict | None) -> None:
    """Copy a cell's pooled timing into its record (efficiency comes once every probe has run)."""
    if t is None or rec.error:
        return
    for k, v in t.to_dict().items():
        setattr(rec, k, v)
    rec.throughput = rec.batch_size * t.calls_per_second()
    if samples is not None:
        samples[sample_key(rec)] = t.samples_ms


def _batch(x: torch.Tensor, b: int) -> torch.Tensor:
    # Batches larger than the test set repeat it, so any batch size can be timed.
    return x[:b].contiguous() if b <= len(x) else x.repeat((b + len(x) - 1) // len(x), 1, 1, 1)[:b].contiguous()


