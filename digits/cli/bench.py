"""``digits bench``: models x backends x precisions x batch sizes."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from digits.cli._common import (
    CheckpointDir,
    DataDir,
    Device,
    JsonFlag,
    csv_list,
    data_root,
    mnist_test,
    app,
)
from digits.errors import DigitsError
from digits.models import NAMES
from digits.ui import emit_json, err, guard, log, out


@app.command(help=('Measure accuracy, latency and throughput for models x backends x batch sizes.\n\n'
              'Exit 0 when every cell that ran passed parity against eager FP32 on the device; exit 1 when any '
              'cell missed parity (the results, table and reasons are still written), or, with --strict, when '
              'any cell failed. A cell whose optional runtime is not installed (OpenVINO, onnxruntime-gpu) is '
              'listed as missing and changes the exit code only with --strict.'))
@guard
def bench(
    models_: Annotated[str, typer.Option("--models", help="Comma-separated models.")] = ",".join(NAMES),
    backends: Annotated[str | None, typer.Option(show_default=False, help="Comma-separated backends "
                                                 "(default: every installed one for the device: eager, torchscript, "
                                                 "onnxruntime, pt2, openvino on CPU; on CUDA no openvino, plus cudagraph, "
                                                 "onnxruntime-cudagraph and tensorrt; also: compile, and the CUDA graph "
                                                 "levers cudagraph-autotune, cudagraph-cl, cudagraph-tuned, "
                                                 "cudagraph-compile).")] = None,
    device: Annotated[Device, typer.Option(help="cpu or cuda (auto picks cuda when available).")] = Device.cpu,
    batch_sizes: Annotated[str, typer.Option(help="Comma-separated batch sizes.")] = "1,8,32,128,256",
    precisions: Annotated[str | None, typer.Option(show_default=False, help="Comma-separated precisions: fp32, bf16, "
                                                   "fp16, int8, tf32 (CUDA) (default: fp32 + every one this device runs "
                                                   "natively).")] = None,
    threads: Annotated[int | None, typer.Option(show_default=False,
                                                help="Threads for torch and onnxruntime (default: all cores).")] = None,
    warmup: Annotated[int, typer.Option(help="Warm-up calls per cell, after the first call.")] = 10,
    min_time: Annotated[float, typer.Option(help="Minimum seconds of timed calls per cell (all rounds; half "
                                            "latency, half throughput).")] = 0.5,
    rounds: Annotated[int, typer.Option(help="Interleaved passes over all cells; samples are pooled.")] = 5,
    processes: Annotated[int, typer.Option(min=1, help="Repeat the sweep in N fresh worker processes (as pyperf "
                                           "does); each process's p50 becomes a sample for `digits compare`. "
                                           "Costs N sweeps.")] = 1,
    checkpoint: CheckpointDir = Path("artifacts"),
    artifacts: Annotated[Path, typer.Option("--artifacts", help="Folder `digits export --out` wrote.")] = Path("artifacts"),
    out_dir: Annotated[Path, typer.Option("--out", help="Folder for bench-<device>-<date>.{json,csv,md,png}.")] = Path("results"),
    save_samples: Annotated[bool, typer.Option("--samples", help="Also write every timed call's latency to "
                                               "bench-<device>-<date>-samples.json.gz.")] = False,
    strict: Annotated[bool, typer.Option("--strict", help="Exit 1 on any failed cell, a missing optional "
                                         "runtime included.")] = False,
    data_dir: DataDir = None,
    as_json: JsonFlag = False,
):
    """Measure accuracy, latency and throughput for models x backends x batch sizes.
    """
    from digits.bench.report import cell_label, missed_parity, summary_lines, write_report, write_samples
    from digits.bench.report import table as bench_table
    from digits.bench.records import UNSTABLE_SPREAD
    from digits.bench.runner import BenchConfig, default_backends, pairs, run_bench
    from digits.train import resolve_device

    dev = resolve_device(device.value).type
    cfg = BenchConfig(models=csv_list(models_, "models"), batch_sizes=csv_list(batch_sizes, "batch-sizes", int),
                      backends=csv_list(backends, "backends") if backends else default_backends(dev),
                      precisions=csv_list(precisions, "precisions") if precisions else None,
                      device=dev, threads=threads, warmup=warmup, min_time=min_time, rounds=rounds,
                      checkpoint=str(checkpoint), artifacts=str(artifacts))
    cfg.validate()
    x, y = mnist_test(data_dir)
    total = len(cfg.models) * len(pairs(cfg)[0]) * len(cfg.batch_sizes)
    samples: dict | None = {} if save_samples else None
    if processes > 1:
        from digits.bench.processes import run_processes

        with err.status(f"benchmarking {total} cells in {processes} worker processes, one after another") as status:
            report = run_processes(cfg, data_root(data_dir), processes, samples,
                                   lambda i: status.update(f"worker {i + 1} of {processes} done"))
    else:
        with err.status(f"benchmarking {total} cells") as status:
            done = []

            def progress(r):
                done.append(r)
                status.update(f"[{len(done)}/{total}] {r.model} {r.backend} {r.precision} batch {r.batch_size}")
            report = run_bench(cfg, x, y, on_record=progress, samples=samples)
    paths = write_report(report, out_dir)
    if samples:
        paths.append(write_samples(report, samples, out_dir))
    errors = [r for r in report["records"] if r["error"]]
    failed_all = bool(errors) and len(errors) == len(report["records"])
    if as_json:
        emit_json(report)
    elif not failed_all:  # a table of nothing but failures says less than the one error below
        out.print(bench_table(report))
        for line in summary_lines(report["records"]):
            out.print(line, highlight=False)
        out.print("Wrote " + ", ".join(str(p) for p in paths), highlight=False)
    if failed_all:
        raise DigitsError(f"Every cell failed (the records are in {paths[0]}); the first error: {errors[0]['error']}")
    if (spread := report["environment"]["round_spread"]) is not None and spread > UNSTABLE_SPREAD:
        log(f"Warning: this machine changed speed during the run (a cell's rounds differed by a median "
            f"{spread:.0%}). Each p50 pools every round, but another run may not repeat these figures.")
    by_reason: dict[tuple, list[int]] = {}  # one line per model/backend/reason, not per batch size
    for e in errors:
        by_reason.setdefault((e["model"], f"{e['backend']} {e['precision']}", e["error"]), []).append(e["batch_size"])
    for (model, backend, reason), batches in by_reason.items():
        log(f"{model}/{backend} failed at batch {','.join(map(str, batches))}: {reason}")
    missed: dict[tuple, dict] = {}
    for r in report["records"]:
        if missed_parity(r):  # measured, kept in the files, but never named fastest
            p = r["parity"] if r.get("parity") and not r["parity"]["passed"] else r["cell_parity"]
            missed.setdefault((r["model"], cell_label(r), "all" if p is r["parity"] else r["batch_size"]), p)
    for (model, label, where), p in missed.items():
        on = "on the full test set" if where == "all" else f"at batch {where}"
        log(f"Warning: {model}/{label} misses parity {on} against {p['reference']} (max_abs_diff "
            f"{p['max_abs_diff']:.1e}, agreement {p['argmax_agreement']:.2%}).")
    untrusted = {(r["model"], cell_label(r)): r["untrusted"] for r in report["records"] if r.get("untrusted")}
    for (model, label), why in untrusted.items():
        log(f"Warning: {model}/{label} is untrusted: {why}")
    failed = [e for e in errors if strict or not e.get("missing")]
    if missed or (strict and failed):
        what = [f"{len(missed)} backend/batch check(s) missed parity"] if missed else []
        what += [f"{len(failed)} cell(s) failed"] if strict and failed else []
        raise DigitsError(f"{' and '.join(what)} (see above); the results are in {paths[0]}.")
