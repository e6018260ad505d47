"""Compare bench runs with statistics, and merge runs from several machines into one report.

Cells are matched on (model, backend, precision, device, batch size). For each pair the
change is the ratio of medians (after p50 / before p50), with a 95% bootstrap confidence
interval, and a two-sided Mann-Whitney U test says whether the two distributions differ,
as Google Benchmark's ``compare.py`` and pyperf's ``compare_to`` do. The figures compared
are every timed call's latency when both runs wrote ``--samples`` files beside their JSON,
else each run's per-round p50s (``round_p50_ms``). A difference is *significant* when
p < ``alpha`` and the interval excludes 1; it *matters* when it is also larger than
``tolerance``. A run compared with itself shows no significant difference.
"""

from __future__ import annotations

import gzip
import json
import math
from itertools import combinations
from pathlib import Path

import numpy as np

from digits.errors import UsageError

ENV_KEYS = ("cpu", "cores", "threads", "device_name", "gpu_driver", "cuda_version", "cudnn_version", "torch",
            "onnxruntime", "onnx", "openvino", "numpy", "python", "digits")
MAX_SAMPLES = 1000  # per side, for the bootstrap: a random subset of a long per-call record


def load_run(path: Path) -> tuple[dict, dict | None]:
    """``(report, {cell key: per-call samples} or None)``; bad input is a clear DigitsError."""
    try:
        report = json.loads(Path(path).read_text())
        report["environment"], report["records"]  # noqa: B018 - both must be there
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise UsageError(f"Cannot read {path} as a `digits bench` report ({type(e).__name__}: {e}). "
                          "Pass the .json files `digits bench` wrote.") from None
    samples_path = Path(path).with_name(Path(path).stem + "-samples.json.gz")
    samples = None
    if samples_path.is_file():
        with gzip.open(samples_path, "rt", encoding="utf-8") as f:
            samples = json.load(f)["samples_ms"]
    return report, samples


def key(r: dict) -> tuple:
    return r["model"], r["backend"], r.get("precision", "fp32"), r["device"], r["batch_size"]


def sample_key(r: dict) -> str:
    return f"{r['model']}/{r['backend']}/{r.get('precision', 'fp32')}/{r['device']}/{r['batch_size']}"


def env_differences(a: dict, b: dict) -> list[tuple[str, object, object]]:
    return [(k, a.get(k), b.get(k)) for k in ENV_KEYS if a.get(k) != b.get(k)]


def machine(env: dict) -> str:
    """What identifies the machine a run was made on: cells of different machines never mix."""
    dev = env.get("device_name") if env.get("device") == "cuda" else None
    return f"{env.get('cpu', '?')}, {env.get('cores', '?')} cores" + (f", {dev}" if dev else "")


def mann_whitney_p(x: np.ndarray, y: np.ndarray) -> float:
    """Two-sided p of the Mann-Whitney U test: exact for small samples without ties, else the
    normal approximation with tie correction (scipy's defaults, without scipy)."""
    n1, n2 = len(x), len(y)
    if n1 == 0 or n2 == 0:
        return float("nan")
    both = np.concatenate([x, y])
    ranks = _ranks(both)
    u1 = ranks[:n1].sum() - n1 * (n1 + 1) / 2
    u = min(u1, n1 * n2 - u1)
    ties = len(np.unique(both)) < len(both)
    if n1 <= 8 and n2 <= 8 and not ties:
        counts = _u_counts(n1, n2)  # how many orderings give each U
        return min(1.0, 2 * counts[: int(math.floor(u)) + 1].sum() / counts.sum())
    _, t = np.unique(both, return_counts=True)
    n = n1 + n2
    sigma = math.sqrt(n1 * n2 / 12 * ((n + 1) - (t ** 3 - t).sum() / (n * (n - 1))))
    if sigma == 0:
        return 1.0
    z = (abs(u1 - n1 * n2 / 2) - 0.5) / sigma  # continuity correction
    return min(1.0, math.erfc(max(z, 0.0) / math.sqrt(2)))


def _ranks(v: np.ndarray) -> np.ndarray:
    """1-based ranks, ties given their average rank."""
    _, inverse, counts = np.unique(v, return_inverse=True, return_counts=True)
    ends = np.cumsum(counts)
    return ((ends - counts + 1 + ends) / 2)[inverse]


def _u_counts(n1: int, n2: int) -> np.ndarray:
    """Number of arrangements of n1 x's and n2 y's for each value of U (x before y pairs)."""
    counts = np.zeros(n1 * n2 + 1)
    for xs in combinations(range(n1 + n2), n1):
        counts[sum(1 for i, p in enumerate(xs) for _ in range(p - i))] += 1  # y's before each x
    return counts


def ratio_ci(before: np.ndarray, after: np.ndarray, seed: int = 0, n_boot: int = 1000) -> tuple[float, float]:
    """95% percentile-bootstrap interval of median(after) / median(before)."""
    rng = np.random.default_rng(seed)
    b = rng.choice(before, (n_boot, len(before)))
    a = rng.choice(after, (n_boot, len(after)))
    ratios = np.median(a, axis=1) / np.median(b, axis=1)
    return float(np.percentile(ratios, 2.5)), float(np.percentile(ratios, 97.5))


def compare_runs(before: tuple[dict, dict | None], after: tuple[dict, dict | None], *, alpha: float = 0.05,
                 tolerance: float = 0.05) -> dict:
    """``{"environment": [(key, before, after)], "basis": ..., "rows": [...]}`` for every matched cell."""
    (rep_a, samp_a), (rep_b, samp_b) = before, after
    per_call = samp_a is not None and samp_b is not None
    old = {key(r): r for r in rep_a["records"] if r.get("error") is None and r.get("p50_ms")}
    rng = np.random.default_rng(0)
    rows = []
    for r in rep_b["records"]:
        o = old.get(key(r))
        if o is None or r.get("error") is not None or not r.get("p50_ms"):
            continue
        if per_call and sample_key(o) in samp_a and sample_key(r) in samp_b:
            xa, xb = np.asarray(samp_a[sample_key(o)]), np.asarray(samp_b[sample_key(r)])
        else:
            xa, xb = np.asarray(o.get("round_p50_ms") or [o["p50_ms"]]), np.asarray(r.get("round_p50_ms") or [r["p50_ms"]])
        xa = rng.choice(xa, MAX_SAMPLES, replace=False) if len(xa) > MAX_SAMPLES else xa
        xb = rng.choice(xb, MAX_SAMPLES, replace=False) if len(xb) > MAX_SAMPLES else xb
        ratio = r["p50_ms"] / o["p50_ms"]
        lo, hi = ratio_ci(xa, xb)
        p = mann_whitney_p(xa, xb)
        significant = bool(p < alpha and not lo <= 1.0 <= hi)
        rows.append({"model": r["model"], "backend": r["backend"], "precision": r.get("precision", "fp32"),
                     "device": r["device"], "batch_size": r["batch_size"], "before_p50_ms": o["p50_ms"],
                     "after_p50_ms": r["p50_ms"], "ratio": ratio, "ci_low": lo, "ci_high": hi, "p_value": p,
                     "n_before": len(xa), "n_after": len(xb), "significant": significant,
                     "matters": significant and abs(ratio - 1) > tolerance})
    return {"environment": env_differences(rep_a["environment"], rep_b["environment"]),
            "same_machine": machine(rep_a["environment"]) == machine(rep_b["environment"]),
            "basis": "per-call latencies (--samples files)" if per_call else "per-round p50s (round_p50_ms)",
            "alpha": alpha, "tolerance": tolerance, "rows": rows}


def merge(reports: list[tuple[str, dict]]) -> list[tuple]:
    """Several runs as report blocks (digits.report renders them to Markdown and HTML): one
    section per machine, one table per run, so cells of different machines never mix."""
    from digits.bench.report import fastest, gemm_summary, parity_mark

    by_machine: dict[str, list[tuple[str, dict]]] = {}
    for name, rep in reports:
        by_machine.setdefault(machine(rep["environment"]), []).append((name, rep))
    blocks: list[tuple] = [("h1", "digits bench: runs from several machines"),
                           ("p", "One section per machine; cells of different machines are never put in one table. "
                                 "p50: one call + device sync; img/s: back-to-back calls over wall time.")]
    head = ["model", "backend", "precision", "batch", "p50 us", "p99 us", "img/s", "accuracy", "parity", "error"]
    for m, runs in by_machine.items():
        blocks.append(("h2", m))
        for name, rep in runs:
            env, best = rep["environment"], fastest(rep["records"])
            blocks += [("h3", f"{name} ({env.get('date', '?')[:10]})"),
                       ("p", f"{env.get('device_name', '?')}; torch {env.get('torch', '?')}, onnxruntime "
                             f"{env.get('onnxruntime', '?')}; GEMM probes: {gemm_summary(env)}. "
                             f"Fastest trusted cell per model and batch size marked *.")]
            rows = [[r["model"], r["backend"] + (" *" if (r["model"], r["batch_size"], r["backend"],
                                                           r.get("precision", "fp32")) in best else ""),
                     r.get("precision", "fp32"), str(r["batch_size"]),
                     "" if r.get("p50_ms") is None else f"{r['p50_ms'] * 1e3:,.1f}",
                     "" if r.get("p99_ms") is None else f"{r['p99_ms'] * 1e3:,.1f}",
                     "" if r.get("throughput") is None else f"{r['throughput']:,.0f}",
                     "" if r.get("accuracy") is None else f"{r['accuracy']:.2%}", parity_mark(r),
                     (r.get("error") or "")[:80]] for r in rep["records"]]
            blocks.append(("table", head, rows))
    return blocks
