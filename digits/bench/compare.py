"""Compare bench runs with statistics, and merge runs from several machines into one report.

Cells are matched on (model, backend, precision, device, batch size). **The unit is a
repetition, never a call**: calls within one process are autocorrelated and miss the
run-to-run variance a before/after comparison has to beat, so the samples are each run's
per-process p50s (``process_p50_ms``, from ``digits bench --processes N``, as pyperf
compares values from separate worker processes) when both runs have at least two, else its
per-round p50s (``round_p50_ms``, as Google Benchmark's U-test compares repetitions).
Per-call latencies still make each run's own percentiles; they never enter a test here.

For each pair: **ratio** = median(after's repetitions) / median(before's repetitions), and
its 95% percentile-bootstrap interval resamples exactly that statistic, so the ratio always
lies inside its own interval; a two-sided Mann-Whitney U test on the same repetitions, with
scipy's default method choice (exact when either sample has at most 8 values and there are
no ties, else the normal approximation with tie and continuity corrections). A difference
is *significant* when p < ``alpha`` and the interval excludes 1; it *matters* when it is
also larger than ``tolerance``. A run compared with itself shows no significant difference.
``scripts/aa_test.py`` measures how often two runs of the same code are flagged (the false-
positive rate) and how often an injected 10% slowdown is (the power): docs/bench.md.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from digits.errors import UsageError

ENV_KEYS = ("cpu", "cores", "threads", "device_name", "gpu_driver", "cuda_version", "cudnn_version", "torch",
            "onnxruntime", "onnx", "openvino", "numpy", "python", "digits")


def load_run(path: Path) -> dict:
    """A `digits bench` report; bad input is a clear DigitsError."""
    try:
        report = json.loads(Path(path).read_text())
        report["environment"], report["records"]  # noqa: B018 - both must be there
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise UsageError(f"Cannot read {path} as a `digits bench` report ({type(e).__name__}: {e}). "
                          "Pass the .json files `digits bench` wrote.") from None
    return report


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


def mann_whitney_p(x: np.ndarray, y: np.ndarray, method: str = "auto") -> float:
    """Two-sided p of the Mann-Whitney U test, as ``scipy.stats.mannwhitneyu`` computes it:
    ``auto`` is exact when either sample has at most 8 values and there are no ties, else
    the normal approximation with tie correction and a continuity correction of 1/2."""
    n1, n2 = len(x), len(y)
    if n1 == 0 or n2 == 0:
        return float("nan")
    both = np.concatenate([x, y])
    u1 = _ranks(both)[:n1].sum() - n1 * (n1 + 1) / 2
    ties = len(np.unique(both)) < len(both)
    if method == "exact" or (method == "auto" and min(n1, n2) <= 8 and not ties):
        counts = _u_counts(n1, n2)  # how many orderings give each U
        u = min(u1, n1 * n2 - u1)
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
    """Orderings of n1 x's and n2 y's for each value of U: the coefficients of the Gaussian
    binomial [n1 + n2 choose n1](q) = prod_i (1 - q^(n2 + i)) / (1 - q^i), built one factor at
    a time (O(n1 n1 n2), so 8 against 1,000 values is instant; floats, as only ratios count)."""
    m, n = min(n1, n2), max(n1, n2)
    c = np.zeros(m * n + 1)
    c[0] = 1.0
    for i in range(1, m + 1):
        c[n + i:] -= c[: len(c) - n - i].copy()  # times (1 - q^(n+i))
        for k in range(i, len(c)):  # divided by (1 - q^i): a running sum with stride i
            c[k] += c[k - i]
    return c


def ratio_ci(before: np.ndarray, after: np.ndarray, seed: int = 0, n_boot: int = 2000) -> tuple[float, float]:
    """95% percentile-bootstrap interval of median(after) / median(before): the statistic
    :func:`compare_runs` reports as the ratio, resampled over the same repetitions."""
    rng = np.random.default_rng(seed)
    b = rng.choice(before, (n_boot, len(before)))
    a = rng.choice(after, (n_boot, len(after)))
    ratios = np.median(a, axis=1) / np.median(b, axis=1)
    return float(np.percentile(ratios, 2.5)), float(np.percentile(ratios, 97.5))


def repetitions(r: dict, other: dict) -> tuple[np.ndarray, str]:
    """A cell's samples: per-process p50s when both sides have two or more, else per-round p50s."""
    if len(r.get("process_p50_ms") or []) > 1 and len(other.get("process_p50_ms") or []) > 1:
        return np.asarray(r["process_p50_ms"]), "processes"
    return np.asarray(r.get("round_p50_ms") or [r["p50_ms"]]), "rounds"


def compare_runs(before: dict, after: dict, *, alpha: float = 0.05, tolerance: float = 0.05) -> dict:
    """``{"environment": [(key, before, after)], "basis": ..., "rows": [...]}`` for every matched cell."""
    old = {key(r): r for r in before["records"] if r.get("error") is None and r.get("p50_ms")}
    rows, bases = [], set()
    for r in after["records"]:
        o = old.get(key(r))
        if o is None or r.get("error") is not None or not r.get("p50_ms"):
            continue
        (xa, basis), (xb, _) = repetitions(o, r), repetitions(r, o)
        bases.add(basis)
        ma, mb = float(np.median(xa)), float(np.median(xb))
        ratio = mb / ma
        lo, hi = ratio_ci(xa, xb)
        p = mann_whitney_p(xa, xb)
        significant = bool(p < alpha and not lo <= 1.0 <= hi)
        rows.append({"model": r["model"], "backend": r["backend"], "precision": r.get("precision", "fp32"),
                     "device": r["device"], "batch_size": r["batch_size"], "before_p50_ms": ma,
                     "after_p50_ms": mb, "ratio": ratio, "ci_low": lo, "ci_high": hi, "p_value": p,
                     "n_before": len(xa), "n_after": len(xb), "basis": basis, "significant": significant,
                     "matters": significant and abs(ratio - 1) > tolerance})
    names = {"processes": "per-process p50s (--processes)", "rounds": "per-round p50s (round_p50_ms)"}
    return {"environment": env_differences(before["environment"], after["environment"]),
            "same_machine": machine(before["environment"]) == machine(after["environment"]),
            "basis": " and ".join(names[b] for b in sorted(bases)) or names["rounds"],
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
