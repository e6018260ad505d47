"""How often `digits compare` cries wolf, and how often it catches a real slowdown.

    python scripts/aa_test.py --runs 5 --processes 5 --interleave --out results

**False-positive rate (A/A).** The same bench, run ``--runs`` times on this machine, each run
``--processes`` fresh worker processes (as `digits bench --processes`), and `digits compare`
on each consecutive pair: the fraction of cells it flags as changed beyond ``--tolerance``
(what makes `digits compare` exit 1), and the fraction merely significant, with the runs'
round and process spreads beside them. Back to back (the default: run after run, as a user
makes a before and an after), or ``--interleave``d (one process of every run in turn), which
cancels drift of the machine's speed between runs and leaves the statistic's own error.

**Power.** One more run in which one backend (``--slow-backend``) is made ``--slowdown``
slower (10%: each call busy-waits for a tenth of its own duration, so the injected change
is exactly known), compared with the last A run: the fraction of that backend's cells
flagged slower beyond the tolerance, and the false positives among the other backends.

Writes results/aa-cpu-<date>-<design>.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def child() -> None:
    """One bench run in this fresh process: the job on stdin, the report to the file it names."""
    from digits._io import atomic_write
    from digits.bench.backends import create_backend
    from digits.bench.runner import BenchConfig, run_bench
    from digits.data import load_test

    job = json.loads(sys.stdin.read())
    if job["slow_backend"]:
        names = job["config"]["backends"] if job["slow_backend"] == "all" else [job["slow_backend"]]
        for name in names:
            slow_down(type(create_backend(name)), job["slowdown"])
    x, y = load_test(Path(job["data_root"]))
    report = run_bench(BenchConfig(**job["config"]), x, y)
    atomic_write(Path(job["out"]), json.dumps(report))


def slow_down(cls, factor: float) -> None:
    """``cls.run`` made ``factor`` slower: the call, then a busy-wait of ``factor`` x its own time."""
    real = cls.run

    def slowed(self, prepared):
        t0 = time.perf_counter()
        out = real(self, prepared)
        end = t0 + (time.perf_counter() - t0) * (1 + factor)
        while time.perf_counter() < end:
            pass
        return out
    cls.run = slowed


def one_process(cfg, data_root: Path, out: Path, slow_backend: str | None = None, slowdown: float = 0.0) -> dict:
    job = json.dumps({"config": asdict(cfg), "data_root": str(data_root), "out": str(out),
                      "slow_backend": slow_backend, "slowdown": slowdown})
    done = subprocess.run([sys.executable, __file__, "--child"], input=job, text=True, capture_output=True)
    if done.returncode:
        raise SystemExit(f"bench run failed: {done.stderr[-2000:]}")
    return json.loads(out.read_text())


def all_runs(cfg, data_root: Path, tmp: Path, runs: int, processes: int, interleave: bool, slow: tuple) -> list[dict]:
    """``runs`` A runs and one slowed B run, each of ``processes`` worker processes, merged as
    `digits bench --processes` merges them. Back to back (run after run), or with
    ``interleave`` one process of every run in turn, so that a drift of the machine's speed
    lands on all runs alike and what is left is the statistic's own error."""
    from digits.bench.processes import merge_processes

    plan = [(r, {}) for r in range(runs)] + [(runs, {"slow_backend": slow[0], "slowdown": slow[1]})]
    order = ([(p, r, kw) for p in range(processes) for r, kw in plan] if interleave
             else [(p, r, kw) for r, kw in plan for p in range(processes)])
    reports: dict[int, list[dict]] = {}
    for p, r, kw in order:
        reports.setdefault(r, []).append(one_process(cfg, data_root, tmp / f"r{r}p{p}.json", **kw))
    return [rs[0] if processes == 1 else merge_processes(rs) for _, rs in sorted(reports.items())]


def cells(rows: list[dict]) -> list[str]:
    return [f"{r['model']}/{r['backend']}/b{r['batch_size']}: {r['ratio']:.3f} ({r['ci_low']:.3f}-{r['ci_high']:.3f})"
            for r in rows]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--runs", type=int, default=5, help="A runs of the same code (consecutive pairs compared)")
    ap.add_argument("--models", default="mlp,cnn,lenet5")
    ap.add_argument("--backends", default="eager,torchscript,onnxruntime,pt2")
    ap.add_argument("--batch-sizes", default="1,32,256")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--min-time", type=float, default=0.5)
    ap.add_argument("--threads", type=int, default=None, help="threads per process (default: every usable core)")
    ap.add_argument("--processes", type=int, default=1, help="worker processes per run (digits bench --processes)")
    ap.add_argument("--interleave", action="store_true", help="one process of every run in turn (drift cancels)")
    ap.add_argument("--tolerance", type=float, default=0.05)
    ap.add_argument("--slow-backend", default="onnxruntime", help="the backend made slower, or 'all'")
    ap.add_argument("--slowdown", type=float, default=0.10)
    ap.add_argument("--data-dir", type=Path, default=None)
    ap.add_argument("--artifacts", type=Path, default=ROOT / "artifacts")
    ap.add_argument("--out", type=Path, default=ROOT / "results")
    args = ap.parse_args()
    if args.child:
        return child()

    import tempfile

    from digits._io import atomic_write_result
    from digits.bench.compare import compare_runs
    from digits.bench.environment import cpu_name
    from digits.bench.runner import BenchConfig
    from digits.checkpoint import missing_checkpoint, now_iso
    from digits.data import default_root
    from digits.models import list_models

    models = args.models.split(",")
    if unknown := sorted(set(models) - set(list_models())):
        ap.error(f"--models: no model {', '.join(unknown)}; choose from {','.join(list_models())}")
    if why := missing_checkpoint(args.artifacts, models):  # before minutes of benching
        ap.error(f"--artifacts {args.artifacts}: {why}")

    cfg = BenchConfig(models=models, backends=args.backends.split(","),
                      batch_sizes=[int(b) for b in args.batch_sizes.split(",")], precisions=["fp32"],
                      rounds=args.rounds, min_time=args.min_time, threads=args.threads, checkpoint=str(args.artifacts),
                      artifacts=str(args.artifacts))
    root = args.data_dir or default_root()
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory() as tmp:
        *runs, slowed = all_runs(cfg, root, Path(tmp), args.runs, args.processes, args.interleave,
                                 (args.slow_backend, args.slowdown))
    pairs = [compare_runs(a, b, tolerance=args.tolerance) for a, b in zip(runs, runs[1:], strict=False)]
    rows = [r for p in pairs for r in p["rows"]]
    if not rows:
        sys.exit("aa_test.py: no cell was measured in two runs to compare (each run's errors are above); nothing to report")
    power = compare_runs(runs[-1], slowed, tolerance=args.tolerance)["rows"]
    target = [r for r in power if args.slow_backend in ("all", r["backend"])]
    others = [r for r in power if r not in target]
    result = {
        "environment": {"date": now_iso(), "cpu": cpu_name(), "command": "python scripts/aa_test.py " + " ".join(sys.argv[1:]),
                        "config": {k: v for k, v in asdict(cfg).items() if k not in ("checkpoint", "artifacts")},
                        "seconds": round(time.monotonic() - t0, 1)},
        "tolerance": args.tolerance, "basis": pairs[0]["basis"], "interleaved": args.interleave,
        "processes": args.processes,
        "round_spreads": [r["environment"]["round_spread"] for r in runs],
        "aa_comparisons": len(rows), "aa_flagged": sum(r["matters"] for r in rows),
        "aa_significant": sum(r["significant"] for r in rows),
        "false_positive_rate": sum(r["matters"] for r in rows) / len(rows),
        "aa_ratios": sorted(round(r["ratio"], 4) for r in rows), "aa_flagged_cells": cells([r for r in rows if r["matters"]]),
        "process_spreads": [r["environment"].get("process_spread") for r in runs],
        "slowdown": args.slowdown, "slow_backend": args.slow_backend, "power_cells": len(target),
        "power_detected": sum(r["matters"] and r["ratio"] > 1 for r in target),
        "power": sum(r["matters"] and r["ratio"] > 1 for r in target) / len(target) if target else None,
        "power_ratios": [round(r["ratio"], 4) for r in target], "power_cells_detail": cells(target),
        "power_false_positives": sum(r["matters"] for r in others), "power_other_cells": len(others)}
    env = result["environment"]
    spreads = ", ".join(f"{s:.1%}" for s in result["round_spreads"] if s is not None)
    if any(result["process_spreads"]):
        spreads += "; process spreads: " + ", ".join(f"{s:.1%}" for s in result["process_spreads"] if s is not None)
    md = (f"# digits compare: false-positive rate and power, {env['cpu']}, {env['date']}\n\n`{env['command']}`\n\n"
          f"{args.runs} runs of the same bench ({len(cfg.models)} models x {len(cfg.backends)} backends x "
          f"{len(cfg.batch_sizes)} batch sizes, FP32, {cfg.rounds} rounds, --min-time {cfg.min_time}, "
          f"{cfg.threads or 'all usable'} thread(s)), each in "
          f"{args.processes} fresh process(es), "
          + ("one process of every run in turn (interleaved)" if args.interleave else "run after run (back to back)")
          + f"; samples: {result['basis']}.\n\n"
          f"- **False positives (A/A):** {result['aa_flagged']} of {result['aa_comparisons']} cell comparisons "
          f"flagged beyond the {args.tolerance:.0%} tolerance = **{result['false_positive_rate']:.1%}** "
          f"({result['aa_significant']} significant at any size). Round spreads of the runs: {spreads}. A/A ratios "
          f"ranged {min(result['aa_ratios']):.3f}-{max(result['aa_ratios']):.3f}.\n"
          f"- **Power:** {'every backend' if args.slow_backend == 'all' else args.slow_backend} made "
          f"{args.slowdown:.0%} slower (a busy-wait of {args.slowdown:.0%} of "
          f"each call): {result['power_detected']} of {result['power_cells']} cells flagged slower = "
          f"**{result['power']:.0%}** (ratios {', '.join(f'{r:.3f}' for r in result['power_ratios'])}); "
          f"{result['power_false_positives']} of {result['power_other_cells']} other cells flagged in the same pair.\n\n"
          "Cells flagged in the A/A pairs (ratio, 95% CI):\n\n" + "".join(f"- {c}\n" for c in result["aa_flagged_cells"])
          + "\n"
          f"Took {env['seconds']} s.\n")
    design = f"{'interleaved' if args.interleave else 'back-to-back'}-p{args.processes}" + (
        f"-t{args.threads}" if args.threads else "")
    stem = args.out / f"aa-cpu-{env['date'][:10]}-{design}"
    print(atomic_write_result(stem, result, md)[1].read_text())


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    main()
