"""``digits predict``: the digit in your own images."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from digits.cli._common import (
    CheckpointDir,
    DataDir,
    JsonFlag,
    ModelOnly,
    data_root,
    app,
)
from digits.calibrate import UNSURE_BELOW
from digits.decode import TIME_BUDGET_S
from digits.errors import DigitsError
from digits.ui import emit_json, guard, log, out, table


@app.command()
@guard
def predict(
    inputs: Annotated[list[Path], typer.Argument(help="Image files and/or directories (a directory is one batch).")],
    model: Annotated[ModelOnly, typer.Option(help="Model to use.")] = ModelOnly["lenet5"],
    backend: Annotated[str, typer.Option(help="eager, torchscript, onnxruntime, pt2 or compile.")] = "onnxruntime",
    top: Annotated[int, typer.Option("--top-k", min=1, max=10, help="How many classes to show per image.")] = 3,
    checkpoint: CheckpointDir = Path("artifacts"),
    artifacts: Annotated[Path, typer.Option("--artifacts", help="Folder `digits export --out` wrote.")] = Path("artifacts"),
    save_preprocessed: Annotated[Path | None, typer.Option(show_default=False, help="Write a mosaic per file here: the "
                                                           "image, flattened, ink mask, chosen boxes, each 28x28.")] = None,
    single: Annotated[bool, typer.Option("--single", help="Read one digit per image, not a number.")] = False,
    unsure_below: Annotated[float, typer.Option(min=0, max=1, help="Say 'unsure' (a '?' in a number) when a digit's "
                                                "calibrated top probability is under this; 0: never.")] = UNSURE_BELOW,
    time_budget: Annotated[float, typer.Option(min=0.01, help="Seconds to find the digits in one image; a "
                                               "busier image is an error for that file.")] = TIME_BUDGET_S,
    data_dir: DataDir = None,
    as_json: JsonFlag = False,
):
    """Read the digit, or the number written left to right, in your own images (photos, drawings, scans)."""
    from digits.bench.backends import create_backend
    from digits.predict import predict_files, top_k

    create_backend(backend)  # unknown backend: exit 2 with the choices
    results = predict_files(inputs, model=model.value, backend=backend, checkpoint=checkpoint, artifacts=artifacts,
                            data_root=data_root(data_dir), save_preprocessed=save_preprocessed, single=single,
                            unsure_below=unsure_below, time_budget_s=time_budget, log=log)
    if as_json:
        emit_json(results)
    else:
        t = table(f"{model.value} via {backend}", "~image", ">read", "~top-k probabilities (per digit)")
        for r in results:
            if "error" in r:
                t.add_row(r["path"], "[red]-[/]", f"[red]{r['error'].removeprefix(r['path'] + ': ')}[/]")
            else:
                read = "[yellow]unsure[/]" if r["number"] == "?" else f"[bold]{r['number']}[/]"
                t.add_row(r["path"], read, " | ".join(
                    "  ".join(f"{c}: {p:.1%}" for c, p in top_k(d["probabilities"], top)) for d in r["digits"]))
        out.print(t)
    failed = [r for r in results if "error" in r]
    if failed:
        raise DigitsError(f"{len(failed)} of {len(results)} file(s) could not be predicted: "
                          + "; ".join(r["error"] for r in failed[:5]))
