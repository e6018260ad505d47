"""``digits report`` and ``digits run``: the report, and the whole job stage by stage."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer

from digits.cli._common import (
    CheckpointDir,
    DataDir,
    JsonFlag,
    csv_list,
    data_root,
    mnist_test,
    app,
)
from digits.ui import advance, emit_json, err, guard, log, out, table, train_progress


@app.command()
@guard
def report(
    checkpoint: CheckpointDir = Path("artifacts"),
    artifacts: Annotated[Path, typer.Option("--artifacts", help="Folder `digits export --out` wrote.")] = Path("artifacts"),
    results: Annotated[Path, typer.Option("--results", help="Folder with bench output; REPORT.md goes here.")] = Path("results"),
    html_too: Annotated[bool, typer.Option("--html", help="Also write a self-contained REPORT.html.")] = False,
    data_dir: DataDir = None,
    as_json: JsonFlag = False,
):
    """Build results/REPORT.md: summary, training curves, confusion matrices, mistakes, speed."""
    from digits.report import build_report

    x, y = mnist_test(data_dir)
    with err.status("building the report"):
        paths = build_report(x, y, checkpoint=checkpoint, artifacts=artifacts, results=results, html_too=html_too)
    if as_json:
        emit_json(paths)
    else:
        out.print(f"Wrote {paths['markdown']}" + (f" and {paths['html']}" if "html" in paths else "")
                  + f" with {len(paths['figures'])} figures.", highlight=False)


@app.command()
@guard
def run(
    force: Annotated[bool, typer.Option("--force", help="Redo every stage, even those already done and verified.")] = False,
    artifacts: Annotated[Path, typer.Option("--artifacts", help="Checkpoints and exports folder.")] = Path("artifacts"),
    results: Annotated[Path, typer.Option("--results", help="Bench output and REPORT.md folder.")] = Path("results"),
    precisions: Annotated[str | None, typer.Option(show_default=False, help="Comma-separated precisions to export "
                                                   "and bench (default: fp32 + every one this CPU runs natively).")] = None,
    models_: Annotated[str | None, typer.Option("--models", show_default=False, help="Comma-separated models "
                                                "(default: all of them).")] = None,
    data_dir: DataDir = None,
    as_json: JsonFlag = False,
):
    """The whole job: data, train all, export every format and precision, CPU bench, report (what `make run` calls)."""

    from digits.errors import UsageError
    from digits.models import list_models
    from digits.pipeline import STAGES, Hooks, RunConfig, run_all, summary_rows
    from digits.precision import resolve_precisions

    t0 = time.perf_counter()

    class CliHooks(Hooks):
        def stage(self, name, index, detail):
            err.rule(f"[bold]stage {index}/{len(STAGES)}: {name}[/] ({detail})")

        def train_progress(self, model):
            progress = train_progress()
            progress.start()
            task = progress.add_task(model, total=None, epoch="-", loss=float("nan"), val="-")

            def update(p):
                advance(progress, task, p)
                if p.val_accuracy is not None and p.epoch == p.epochs:
                    progress.stop()
            return update

        def log(self, message):
            log(message)

    chosen = csv_list(precisions, "precisions") if precisions else None
    if chosen:
        resolve_precisions(chosen)  # an unknown precision is bad usage, before any stage runs
    models = csv_list(models_, "models") if models_ else None
    for m in models or []:
        if m not in list_models():  # bad usage, before any stage runs
            raise UsageError(f"Unknown model {m!r}. Choose from: {', '.join(list_models())}.")
    res = run_all(RunConfig(data_root=data_root(data_dir), artifacts=artifacts, results=results, force=force,
                            precisions=chosen, models=models), CliHooks())
    rows = summary_rows(res)
    if as_json:
        return emit_json({"stages": res.done, "models": rows, "report": res.report,
                           "seconds": round(time.perf_counter() - t0, 1)})
    t = table("digits run: summary", "model", ">params", ">MACs", ">test acc", ">ONNX acc", ">b1 p50",
               ">b256 p50", ">b256 img/s")
    for r in rows:
        t.add_row(r["model"], f"{r['params'] / 1e3:,.0f}k", f"{r['macs'] / 1e6:.2f}M", f"{r['test_accuracy']:.2%}",
                  f"{r['onnx_accuracy']:.2%}" if r["onnx_accuracy"] is not None else "-",
                  f"{r['batch1_p50_us']:,.1f} us" if r["batch1_p50_us"] else "-",
                  f"{r['batch256_p50_ms']:,.2f} ms" if r["batch256_p50_ms"] else "-",
                  f"{r['batch256_throughput']:,.0f}" if r["batch256_throughput"] else "-")
    t.caption = "latency and throughput of the fastest backend+precision; " + "; ".join(
        f"{r['model']}: {r['batch1_backend']} (b1), {r['batch256_backend']} (b256"
        + (f", {r['batch256_speedup_over_fp32']:.2f}x the best FP32 at {r['batch256_accuracy_cost_points']:+.2f} "
           "accuracy points)" if r["batch256_speedup_over_fp32"] else ")") for r in rows)
    out.print(t)
    out.print("Stages: " + ", ".join(f"{k} {v}" for k, v in res.done.items()), highlight=False)
    out.print(f"Report: {res.report['markdown']}" + (f" (and {res.report['html']})" if "html" in res.report else "")
              + f"; finished in {time.perf_counter() - t0:.0f} s", highlight=False)
