"""``digits bench --processes N``: the sweep repeated in N fresh worker processes, in the manner
of pyperf's worker processes.

Rounds within one process share its memory layout, thread placement, allocator state and
the runtime's own choices at load time; a before/after comparison has to beat the variance
*between* processes, which rounds never see. So each worker loads, warms up and times every
cell on its own, and a cell's ``process_p50_ms`` lists each worker's p50: the samples
``digits compare`` tests and bootstraps when both runs have them. The merged record's p50,
p90, p99, mean, std and first call are the median over the workers; throughput pools every
worker's calls over their summed wall time; ``round_p50_ms`` holds every round of every
worker. A cell that failed in any worker is failed, with that worker's reason.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

from digits.bench.compare import key
from digits.bench.records import efficiency
from digits.errors import DigitsError

MEDIAN_FIELDS = ("p50_ms", "p90_ms", "p99_ms", "mean_ms", "std_ms", "first_call_ms")


def run_processes(cfg, data_root: Path, n: int, samples: dict | None = None,
                  on_process: Callable[[int], None] = lambda i: None) -> dict:
    """The bench report of ``n`` worker processes, merged; ``samples`` (a dict) gets every call."""
    reports = []
    with tempfile.TemporaryDirectory(prefix="digits-bench-") as tmp:
        for i in range(n):
            out = Path(tmp) / f"worker{i}.json"
            job = json.dumps({"config": asdict(cfg), "data_root": str(data_root), "out": str(out),
                              "samples": samples is not None})
            done = subprocess.run([sys.executable, "-c", "from digits.bench.processes import worker; worker()"],
                                  input=job, capture_output=True, text=True)
            if done.returncode != 0:
                lines = done.stderr.strip().splitlines()
                raise DigitsError(f"bench worker {i + 1} of {n} failed: {lines[-1] if lines else done.returncode}",
                                  1 if done.returncode < 0 else done.returncode)
            got = json.loads(out.read_text())
            reports.append(got["report"])
            for k, v in (got["samples"] or {}).items():
                if samples is not None:
                    samples.setdefault(k, []).extend(v)
            on_process(i)
    return merge_processes(reports)


def worker() -> None:
    """One worker: the job on stdin, the report (and samples) to the file it names."""
    from digits._io import atomic_write
    from digits.bench.runner import BenchConfig, run_bench
    from digits.data import load_test

    job = json.loads(sys.stdin.read())
    try:
        x, y = load_test(Path(job["data_root"]))
        samples = {} if job["samples"] else None
        report = run_bench(BenchConfig(**job["config"]), x, y, samples=samples)
        atomic_write(Path(job["out"]), json.dumps({"report": report, "samples": samples}))
    except DigitsError as e:
        print(str(e), file=sys.stderr)
        sys.exit(e.exit_code)


def merge_processes(reports: list[dict]) -> dict:
    env = dict(reports[0]["environment"])
    env["processes"] = len(reports)
    spreads = [r["environment"].get("round_spread") for r in reports if r["environment"].get("round_spread") is not None]
    env["round_spread"] = statistics.median(spreads) if spreads else None
    peaks = env.get("peak_gflops_by_precision") or {}
    by_cell: dict[tuple, list[dict]] = {}
    for rep in reports:
        for rec in rep["records"]:
            by_cell.setdefault(key(rec), []).append(rec)
    records = [_merge_cell(group, peaks) for group in by_cell.values()]
    ok = [r for r in records if len(r.get("process_p50_ms") or []) > 1]
    env["process_spread"] = (statistics.median(max(r["process_p50_ms"]) / min(r["process_p50_ms"]) - 1 for r in ok)
                             if ok else None)
    return {"environment": env, "records": records}


def _merge_cell(group: list[dict], peaks: dict) -> dict:
    merged = dict(group[0])
    failed = next((r for r in group if r.get("error")), None)
    if failed is not None:
        return {**failed, "error": f"{failed['error']} (in {sum(bool(r.get('error')) for r in group)} of "
                                   f"{len(group)} worker processes)"}
    for f in MEDIAN_FIELDS:
        values = [r[f] for r in group if r.get(f) is not None]
        merged[f] = statistics.median(values) if values else None
    merged["process_p50_ms"] = [r["p50_ms"] for r in group]
    merged["round_p50_ms"] = [p for r in group for p in r.get("round_p50_ms") or []]
    merged["iterations"] = sum(r.get("iterations") or 0 for r in group)
    calls = sum(r.get("throughput_calls") or 0 for r in group)
    seconds = sum(r.get("throughput_seconds") or 0 for r in group)
    merged["throughput_calls"], merged["throughput_seconds"] = calls, seconds
    merged["throughput"] = calls * merged["batch_size"] / seconds if seconds else None
    for check in ("parity", "cell_parity"):  # the worst worker's verdict stands
        merged[check] = next((r[check] for r in group if r.get(check) and not r[check].get("passed")), merged[check])
    merged["untrusted"] = next((r["untrusted"] for r in group if r.get("untrusted")), None)
    if merged["throughput"] and peaks.get(merged["precision"]):
        merged["efficiency"] = efficiency(merged["throughput"], merged["macs_per_image"], peaks[merged["precision"]])
    return merged
