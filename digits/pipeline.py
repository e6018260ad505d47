"""``digits run``: the whole job, stage by stage, skipping what is already done and verified.

    data -> train (default recipes) -> export (every format and precision, parity) -> bench (CPU) -> report

The precisions are fp32 plus every reduced one this CPU runs natively (digits.precision):
bf16/fp16 exports for the torch formats, an int8 ONNX calibrated on training images.

A stage is skipped when its outputs exist and verify: MNIST against its manifest, a
checkpoint against its sha256, an export against its manifest entry (sha256, parity
passed, exported from the current checkpoint), a bench JSON newer than every export with
a record (run or failed) of every cell. ``force`` redoes everything. Completed stages stay on
disk if a later one fails, so re-running resumes where it stopped.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from digits.checkpoint import checkpoint_dir, load_checkpoint
from digits.errors import DigitsError
from digits.models import list_models

STAGES = ("data", "train", "export", "bench", "report")


@dataclass
class RunConfig:
    data_root: Path
    artifacts: Path = Path("artifacts")
    results: Path = Path("results")
    force: bool = False
    html: bool = True
    precisions: list[str] | None = None  # None: fp32 + every reduced precision this CPU runs natively
    models: list[str] | None = None  # None: every registered model
    bench_in_child: bool = True  # the bench stage in a fresh process (memory; tests of the wiring set False)
    bench: dict = field(default_factory=dict)  # BenchConfig overrides (the tests use tiny sweeps, fewer backends)

    def resolved_precisions(self) -> list[str]:
        from digits.precision import resolve_precisions

        return resolve_precisions(self.precisions, "cpu")


@dataclass
class RunResult:
    done: dict[str, str] = field(default_factory=dict)  # stage -> "ran" | "skipped" | detail
    bench: dict | None = None
    report: dict | None = None
    checkpoints: dict = field(default_factory=dict)
    exports: dict = field(default_factory=dict)


class Hooks:
    """What the CLI shows while the pipeline runs; the library itself prints nothing."""

    def stage(self, name: str, index: int, detail: str) -> None: ...

    def train_progress(self, model: str) -> Callable: return lambda p: None

    def log(self, message: str) -> None: ...


def _checkpoint_ok(folder: Path, model: str) -> dict | None:
    try:
        return load_checkpoint(folder, model)[1]
    except DigitsError:
        return None


def _export_ok(folder: Path, fmt: str, ckpt_sha: str, precision: str = "fp32") -> dict | None:
    from digits.export import artifact_name, checked_path, manifest_key, read_exports

    entry = read_exports(folder)["formats"].get(manifest_key(fmt, precision))
    if not entry or not entry.get("passed") or entry.get("checkpoint_sha256") != ckpt_sha:
        return None
    try:
        checked_path(folder / artifact_name(fmt, precision))
    except DigitsError:
        return None
    return entry


def _bench_ok(results: Path, exports_mtime: float, cells: list[tuple[str, str]], batch_sizes: list[int],
              models: list[str] | None = None) -> dict | None:
    """The newest bench JSON, if it is newer than every export and holds a record of every
    model x backend x precision x batch size asked for. A cell that failed there counts as
    done: its failure is a result (OpenVINO refusing bf16 on a CPU without it fails the same
    way every time), and requiring it to pass re-ran the whole bench on every `digits run`."""
    files = sorted(results.glob("bench-cpu-*.json"), key=lambda p: p.stat().st_mtime)
    if not files or files[-1].stat().st_mtime < exports_mtime:
        return None
    report = json.loads(files[-1].read_text())
    have = {(r["model"], r["backend"], r.get("precision", "fp32"), r["batch_size"]) for r in report["records"]}
    want = {(m, b, p, n) for m in models or list_models() for b, p in cells for n in batch_sizes}
    return report if want <= have else None


def run_all(cfg: RunConfig, hooks: Hooks | None = None) -> RunResult:
    from digits.bench.runner import BenchConfig, default_backends, pairs, run_bench
    from digits.cores import release_memory
    from digits.bench.report import write_report
    from digits.data import load_splits, load_test
    from digits.export import export_model, get_format, list_formats, manifest_key
    from digits.report import build_report
    from digits.sources import ensure_mnist
    from digits.train import resolve_config, train

    hooks = hooks or Hooks()
    res = RunResult()
    models = cfg.models or list_models()
    stage = STAGES[0]
    try:
        hooks.stage(stage, 1, "fetch or verify MNIST")
        res.done[stage] = "fetched" if ensure_mnist(cfg.data_root, log=hooks.log) else "verified"

        stage = "train"
        hooks.stage(stage, 2, "default recipes")
        splits = None
        for model in models:
            folder = checkpoint_dir(cfg.artifacts, model)
            man = None if cfg.force else _checkpoint_ok(folder, model)
            if man is None:
                splits = splits or load_splits(cfg.data_root, seed=0)
                train(resolve_config(model, "default"), splits, cfg.artifacts, on_progress=hooks.train_progress(model))
                man = load_checkpoint(folder, model)[1]
                res.done.setdefault(stage, "ran")
            res.checkpoints[model] = man
        res.done.setdefault(stage, "skipped (checkpoints verified)")

        stage = "export"
        x, y = load_test(cfg.data_root)
        precisions = cfg.resolved_precisions()
        hooks.stage(stage, 3, f"every format, {'/'.join(precisions)}, parity on the test set")
        jobs = [(f, p) for p in precisions for f in list_formats() if p in get_format(f).precisions]
        for model in models:
            for fmt, precision in jobs:
                folder = checkpoint_dir(cfg.artifacts, model)
                entry = None if cfg.force else _export_ok(folder, fmt, res.checkpoints[model]["weights_sha256"],
                                                          precision)
                if entry is None:
                    hooks.log(f"exporting {model} to {fmt} ({precision})")
                    train_x = None
                    if precision == "int8":  # calibration images: the training split, never the test set
                        splits = splits or load_splits(cfg.data_root, seed=0)
                        train_x = splits.train_x
                    rec = export_model(model, fmt, x, y, checkpoint=cfg.artifacts, out=cfg.artifacts,
                                       precision=precision, train_x=train_x)
                    if not rec["passed"]:
                        raise DigitsError(f"{model}/{fmt} {precision} failed parity (max_abs_diff "
                                          f"{rec['max_abs_diff']:.2e}, agreement {rec['argmax_agreement']:.4%}, "
                                          f"accuracy {rec['accuracy']:.2%} vs FP32 {rec['eager_accuracy']:.2%})")
                    res.done.setdefault(stage, "ran")
                    entry = rec
                res.exports[(model, manifest_key(fmt, precision))] = entry
        res.done.setdefault(stage, "skipped (exports verified)")
        splits = None  # 60,000 training images: the bench and the report do not need them
        release_memory()

        stage = "bench"
        hooks.stage(stage, 4, "CPU, every model x backend x precision x batch size")
        bcfg = BenchConfig(**{"backends": default_backends(), **cfg.bench}, precisions=precisions, models=models,
                           checkpoint=str(cfg.artifacts), artifacts=str(cfg.artifacts))
        newest = max((checkpoint_dir(cfg.artifacts, m) / "exports.json").stat().st_mtime for m in models)
        res.bench = None if cfg.force else _bench_ok(cfg.results, newest, pairs(bcfg)[0], bcfg.batch_sizes, models)
        if res.bench is None:
            if cfg.bench_in_child:
                res.bench = bench_in_child(bcfg, cfg.data_root, cfg.results)
            else:
                res.bench = run_bench(bcfg, x, y)
                write_report(res.bench, cfg.results)
            res.done[stage] = "ran"
        else:
            res.done[stage] = "skipped (bench results newer than the exports)"

        stage = "report"
        hooks.stage(stage, 5, "REPORT.md" + (" and REPORT.html" if cfg.html else ""))
        res.report = build_report(x, y, checkpoint=cfg.artifacts, artifacts=cfg.artifacts, results=cfg.results,
                                  html_too=cfg.html, models=models)
        res.done[stage] = "ran"
    except DigitsError as e:
        kept = ", ".join(s for s in STAGES if s in res.done) or "none"
        raise DigitsError(f"Stage '{stage}' failed: {e} Completed stages are kept ({kept}); fix the cause and run "
                          "`digits run` again to resume: finished, verified stages are skipped.", e.exit_code) from None
    return res


def bench_in_child(bcfg, data_root: Path, results: Path) -> dict:
    """The bench stage in a fresh Python process, as `digits bench` runs it: what training and
    export left behind (1 GB of imported exporters, 60,000 training images, allocator state
    and threads) then neither crowds nor slows it. `make run` peaked at 1.81 GB with the bench
    in this process (docs/run.md). The settings go in as JSON, the report files are written
    by the child and read back from disk; a failure comes back as its message and exit code."""
    import subprocess
    import sys
    from dataclasses import asdict

    job = json.dumps({"config": asdict(bcfg), "data_root": str(data_root), "results": str(results)})
    done = subprocess.run([sys.executable, "-c", "from digits.pipeline import _bench_child; _bench_child()"],
                          input=job, capture_output=True, text=True)
    if done.returncode != 0:
        lines = done.stderr.strip().splitlines()
        raise DigitsError(lines[-1] if lines else f"the bench process exited with {done.returncode}",
                          1 if done.returncode < 0 else done.returncode)
    return json.loads(Path(done.stdout.strip().splitlines()[-1]).read_text())


def _bench_child() -> None:
    import sys

    from digits.bench.report import write_report
    from digits.bench.runner import BenchConfig, run_bench
    from digits.data import load_test

    job = json.loads(sys.stdin.read())
    try:
        x, y = load_test(Path(job["data_root"]))
        report = run_bench(BenchConfig(**job["config"]), x, y)
        print(write_report(report, Path(job["results"]))[0])
    except DigitsError as e:
        print(str(e), file=sys.stderr)
        sys.exit(e.exit_code)


def summary_rows(res: RunResult) -> list[dict]:
    """One row per model: what the final summary table shows."""
    from digits.bench.report import best_cells, cell_label
    from digits.report import best

    verdicts = {v["model"]: v for v in best_cells(res.bench["records"])}
    rows = []
    for model, man in res.checkpoints.items():
        b1, b256 = best(res.bench["records"], model, 1), best(res.bench["records"], model, 256)
        v = verdicts.get(model, {})
        rows.append({"model": model, "params": man["params"], "macs": man["macs"],
                     "test_accuracy": man["test_accuracy"],
                     "onnx_accuracy": res.exports.get((model, "onnx"), {}).get("accuracy"),
                     "batch1_p50_us": b1 and b1["p50_ms"] * 1e3, "batch1_backend": b1 and cell_label(b1),
                     "batch256_p50_ms": b256 and b256["p50_ms"], "batch256_throughput": b256 and b256["throughput"],
                     "batch256_backend": b256 and cell_label(b256),
                     "batch256_speedup_over_fp32": v.get("speedup"),
                     "batch256_accuracy_cost_points": v.get("accuracy_cost_points")})
    return rows
