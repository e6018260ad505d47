"""The facts a bench run records about its machine: CPU, GPU, runtimes, precisions, timer floor.

Every committed result names the machine that made it (the CPU under this project changes
between sessions), so these go into each report's ``environment``.
"""

from __future__ import annotations

import os
import platform
import shlex
import sys
from dataclasses import asdict
from pathlib import Path

import torch

from digits.bench.timing import harness_overhead_ms
from digits.checkpoint import now_iso
from digits.cores import usable_cores
from digits.export import runtime_versions
from digits.precision import cpu_features, cpu_kind, int8_path, native_precisions

METHOD = {  # what the timed figures mean (docs/bench.md), written into every report
    "latency": "host clock around one call plus the device sync that makes its output ready; p50/p90/p99 of those",
    "throughput": "images over wall time of N back-to-back calls with one device sync at the end",
    "efficiency": "throughput x 2 x MACs per image / the fastest GEMM probe of the cell's precision (probes timed the same way)",
    "parity": "every timed cell's own output (its last timed call, on real test images) against eager FP32 on the same images",
}


def command_line() -> str:
    """How this script was run, every option as typed: what a result file says made it."""
    return shlex.join(["python", f"scripts/{Path(sys.argv[0]).name}", *sys.argv[1:]])


def cpu_name() -> str:
    """The CPU's model name and its kind (:func:`digits.precision.cpu_kind`), e.g. "AMD EPYC
    (AVX-512, AVX512-BF16)": the name alone may fit two kinds that differ twofold in speed."""
    name = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    kind = cpu_kind()
    return f"{name} ({kind})" if kind else name


def environment(cfg) -> dict:
    cuda = cfg.device == "cuda"
    errors: dict[str, str] = {}
    try:  # a runtime's version query is a second opinion too: never the reason a sweep dies
        versions = runtime_versions()
    except Exception as e:  # noqa: BLE001
        versions, errors["runtime_versions"] = {}, reason(e)
    return {
        "date": now_iso(),
        "cpu": cpu_name(), "cores": os.cpu_count(), "usable_cores": usable_cores(), "threads": torch.get_num_threads(),
        "device": cfg.device, "device_name": torch.cuda.get_device_name() if cuda else cpu_name(),
        **versions, **_openvino_version(), **gpu_facts(cuda),
        "cpu_features": cpu_features(),  # the flags that decide which precisions are native ...
        "cpu_flags_from": os.environ.get("DIGITS_CPUINFO") or "/proc/cpuinfo",  # ... and where they were read
        "native_precisions": native_precisions(cfg.device),
        "int8_path": int8_path() if cfg.device == "cpu" else None,  # which int8 instructions the CPU kernels use
        "precisions": cfg.resolved_precisions(),
        "left_out": [],  # backend/precision pairs with no path, not swept
        "peak_gflops": None,  # fastest FP32 GEMM probe; filled by run_bench from probes interleaved with the cells
        "peak_gflops_by_precision": None,  # precision -> fastest probe of that precision: what efficiency divides by
        "gemm_gflops": None,  # every GEMM probe's rate (int8: GOP/s)
        "gemm_precision": None,  # probe name -> its precision
        "probe_errors": errors,  # probe (or version query) -> why it failed (the sweep goes on without it)
        "round_spread": None,  # how much the machine's speed moved between rounds
        # the timer's floor, measured within the time a cell gets (a quick sweep's --min-time 0: 2,000 calls)
        "harness_overhead_ms": harness_overhead_ms(cfg.device, min_time=min(0.2, cfg.min_time)),
        "method": METHOD,
        "tf32": False,  # the sweep runs inside strict_fp32(): fp32 cells are FP32 on CUDA too (only a
        # tf32 cell turns TF32 on, for its own calls: digits.precision.Tf32)
        "config": asdict(cfg),
    }


def gpu_facts(cuda: bool) -> dict:
    """onnxruntime's providers (which wheel is installed), and on CUDA the GPU's particulars."""
    import onnxruntime as ort

    facts = {"onnxruntime_providers": ort.get_available_providers()}
    if cuda:
        props = torch.cuda.get_device_properties(0)
        facts.update(cuda_version=torch.version.cuda, cudnn_version=torch.backends.cudnn.version(),
                     gpu_capability=f"{props.major}.{props.minor}", gpu_memory_gib=round(props.total_memory / 2**30, 1),
                     gpu_driver=_driver_version())
    return facts


def _driver_version() -> str | None:
    """The NVIDIA driver, from nvidia-smi (torch reports only the CUDA runtime it was built with)."""
    import subprocess

    try:
        done = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                              capture_output=True, text=True, timeout=10, check=True)
        return done.stdout.strip().splitlines()[0]
    except (OSError, subprocess.SubprocessError, IndexError):
        return None


def _openvino_version() -> dict:
    try:
        import openvino
    except Exception:  # noqa: BLE001 - absent or broken: the backend's cells say which
        return {"openvino": None}
    return {"openvino": openvino.__version__.split("-")[0]}


def reason(e: Exception) -> str:
    # Some runtimes (OpenVINO) put only "Exception from <file>:" on the first line; keep
    # the lines that say what went wrong, up to 300 characters.
    lines = [ln.strip() for ln in str(e).strip().splitlines() if ln.strip()]
    if not lines:
        return type(e).__name__
    text = lines[0]
    for ln in lines[1:]:
        if not text.endswith(":") and "Summary" not in text:
            break
        text += " " + ln
    return f"{type(e).__name__}: {text[:300]}"
