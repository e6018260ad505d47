"""The benchmark sweep: models x backends x batch sizes on one device, one record per cell.

A cell that fails records its error and the sweep goes on (timm's habit). Accuracy is
measured through every backend on the full test set, and throughput is set against the
machine's own FP32 matmul peak, measured in the same run.
"""

from __future__ import annotations

import os
import platform
import statistics
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import torch

from digits.bench.backends import Backend, create_backend, list_backends, onnxruntime_matmul_probe
from digits.bench.timing import Timing, fp32_matmul, gflops, harness_overhead_ms, matmul_probe, measure
from digits.checkpoint import now_iso
from digits.export import runtime_versions
from digits.errors import DigitsError, UsageError
from digits.models import list_models, model_info

DEFAULT_BATCH_SIZES = (1, 8, 32, 128, 256)


@dataclass
class BenchConfig:
    models: list[str] = field(default_factory=list_models)
    backends: list[str] = field(default_factory=lambda: [b for b in list_backends() if create_backend(b).default])
    device: str = "cpu"
    batch_sizes: list[int] = field(default_factory=lambda: list(DEFAULT_BATCH_SIZES))
    threads: int | None = None  # None: all cores
    warmup: int = 10  # calls before timing, per batch size
    min_iters: int = 20
    min_time: float = 0.5  # seconds per cell, at least, summed over the rounds
    rounds: int = 5  # interleaved passes over all cells (see run_bench)
    checkpoint: str = "artifacts"
    artifacts: str = "artifacts"

    def validate(self) -> None:
        for m in self.models:
            if m not in list_models():
                raise UsageError(f"Unknown model {m!r}. Choose from: {', '.join(list_models())}.")
        for b in self.backends:
            create_backend(b)
        if not self.batch_sizes or any(b < 1 for b in self.batch_sizes):
            raise UsageError(f"Batch sizes must be whole numbers >= 1, got {self.batch_sizes}.")
        if self.device not in ("cpu", "cuda"):
            raise UsageError(f"Unknown device {self.device!r}. Choose cpu or cuda.")
        if self.device == "cuda" and not torch.cuda.is_available():
            raise DigitsError("--device cuda was asked for, but CUDA is not available on this machine "
                              f"(torch {torch.__version__} sees no GPU). Run with --device cpu.")
        if self.threads is not None and self.threads < 1:
            raise UsageError(f"--threads must be at least 1, got {self.threads}.")
        if self.warmup < 0 or self.min_time < 0 or self.rounds < 1:
            raise UsageError("--warmup and --min-time must not be negative, and --rounds must be at least 1.")


@dataclass
class Record:
    model: str
    backend: str
    device: str
    batch_size: int
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
    throughput: float | None = None  # images per second, from p50
    accuracy: float | None = None  # full test set through this backend
    efficiency: float | None = None  # throughput x 2 x MACs / peak FLOP/s
    threads: int | None = None
    provider: str | None = None
    settings: dict = field(default_factory=dict)
    round_p50_ms: list[float] = field(default_factory=list)  # p50 of each interleaved round
    error: str | None = None


def efficiency(throughput: float, macs_per_image: int, peak_gflops_: float) -> float:
    """Fraction of the machine's FP32 matmul peak that this throughput represents."""
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


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment(cfg: BenchConfig) -> dict:
    cuda = cfg.device == "cuda"
    return {
        "date": now_iso(),
        "cpu": cpu_name(), "cores": os.cpu_count(), "threads": torch.get_num_threads(),
        "device": cfg.device, "device_name": torch.cuda.get_device_name() if cuda else cpu_name(),
        **runtime_versions(),
        "peak_gflops": None,  # filled by run_bench from probes interleaved with the cells
        "gemm_gflops": None,  # every GEMM probe's rate, torch.mm (= peak_gflops) first
        "probe_errors": {},  # probe name -> why it failed (the sweep goes on without it)
        "round_spread": None,  # how much the machine's speed moved between rounds
        "harness_overhead_ms": harness_overhead_ms(cuda_events=cuda),
        "config": asdict(cfg),
    }


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
    """
    cfg.validate()
    threads = cfg.threads or os.cpu_count() or 1
    torch.set_num_threads(threads)
    env = environment(cfg)
    records: list[Record] = []
    cells = []  # (record, backend, prepared input)
    for model in cfg.models:
        info = model_info(model)
        for name in cfg.backends:
            base = dict(model=model, backend=name, device=cfg.device, params=info.params,
                        macs_per_image=info.macs, threads=threads)
            try:
                backend = create_backend(name).load(model, cfg.device, checkpoint=Path(cfg.checkpoint),
                                                    artifacts=Path(cfg.artifacts), threads=threads)
                acc = accuracy(backend, x, y)
            except Exception as e:  # noqa: BLE001 - a failing cell is data, the sweep goes on
                records += [Record(**base, batch_size=b, error=_reason(e)) for b in cfg.batch_sizes]
                continue
            for b in cfg.batch_sizes:
                rec = Record(**base, batch_size=b, artifact_bytes=backend.artifact.stat().st_size,
                             accuracy=acc, provider=backend.provider, settings=backend.settings)
                records.append(rec)
                try:
                    cells.append((rec, backend, backend.prepare(_batch(x, b))))
                except Exception as e:  # noqa: BLE001
                    rec.error = _reason(e)
    timings: dict[int, Timing] = {}
    probes, probe_errors = _gemm_probes(cfg.device, threads)
    gemm: dict[str, Timing] = {}
    for round_ in range(cfg.rounds):
        # The matmul peak is probed in every round too, so a machine that speeds up or slows
        # down during the sweep moves numerator and denominator of `efficiency` together.
        for name, (call, _, cuda) in list(probes.items()):
            try:
                with fp32_matmul():
                    t = measure(call, warmup=2 if round_ == 0 else 1, min_iters=-(-15 // cfg.rounds),
                                min_time=0.0, cuda_events=cuda)
            except Exception as e:  # noqa: BLE001 - a probe is a second opinion, never the main job
                probe_errors[name] = _reason(e)
                del probes[name]
                gemm.pop(name, None)
                continue
            gemm[name] = gemm[name].extend(t) if name in gemm else t
        for rec, backend, prepared in cells:
            if rec.error:
                continue
            try:
                t = measure(lambda run=backend.run, p=prepared: run(p), warmup=cfg.warmup,
                            min_iters=-(-cfg.min_iters // cfg.rounds), min_time=cfg.min_time / cfg.rounds,
                            cuda_events=cfg.device == "cuda" and backend.cuda_events)
            except Exception as e:  # noqa: BLE001
                rec.error = _reason(e)
                continue
            timings[id(rec)] = timings[id(rec)].extend(t) if round_ else t
            rec.round_p50_ms.append(t.stats.p50_ms)
    env["gemm_gflops"] = {name: gflops(probes[name][1], t) for name, t in gemm.items()}
    env["probe_errors"] = probe_errors
    env["round_spread"] = round_spread(records)
    env["peak_gflops"] = env["gemm_gflops"].get("torch.mm")  # None if that probe failed: no efficiency
    for rec in records:
        if (t := timings.get(id(rec))) and not rec.error:
            for k, v in t.to_dict().items():
                setattr(rec, k, v)
            rec.throughput = rec.batch_size / (rec.p50_ms / 1e3)
            if env["peak_gflops"]:
                rec.efficiency = efficiency(rec.throughput, rec.macs_per_image, env["peak_gflops"])
            if samples is not None:
                samples[f"{rec.model}/{rec.backend}/{rec.device}/{rec.batch_size}"] = t.samples_ms
        on_record(rec)
    return {"environment": env, "records": [asdict(r) for r in records]}


def _gemm_probes(device: str, threads: int) -> tuple[dict, dict]:
    """``({name: (call, flops, cuda_events)}, {name: why it could not be built})``.

    torch.mm is the peak that `efficiency` divides by; onnxruntime's MatMul is a second
    opinion on the CPU. A probe that cannot be built is recorded, and the sweep goes on.
    """
    makers = {"torch.mm": lambda: matmul_probe(device)}
    if device == "cpu":
        makers["onnxruntime MatMul"] = lambda: onnxruntime_matmul_probe(threads)
    probes, errors = {}, {}
    for name, make in makers.items():
        try:
            probes[name] = make()
        except Exception as e:  # noqa: BLE001
            errors[name] = _reason(e)
    return probes, errors


def _batch(x: torch.Tensor, b: int) -> torch.Tensor:
    # Batches larger than the test set repeat it, so any batch size can be timed.
    return x[:b].contiguous() if b <= len(x) else x.repeat((b + len(x) - 1) // len(x), 1, 1, 1)[:b].contiguous()


def _reason(e: Exception) -> str:
    text = str(e).strip()
    return f"{type(e).__name__}: {text.splitlines()[0][:300]}" if text else type(e).__name__
