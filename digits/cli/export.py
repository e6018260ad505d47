"""``digits export`` and ``digits verify``: artifacts and their parity with PyTorch."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from digits.cli._common import (
    CheckpointDir,
    DataDir,
    FormatChoice,
    JsonFlag,
    ModelChoice,
    Precision,
    finish_parity,
    model_names,
    mnist_test,
    train_images,
    app,
)
from digits.ui import err, guard


@app.command()
@guard
def export(
    model: Annotated[ModelChoice, typer.Argument(help="Model to export, or all.")] = ModelChoice["all"],
    fmt: Annotated[FormatChoice, typer.Option("--format", help="Artifact format, or all.")] = FormatChoice["onnx"],
    opset: Annotated[int, typer.Option(help="ONNX opset to produce.")] = 20,
    precision: Annotated[Precision, typer.Option(help="fp32, or a reduced precision: bf16/fp16 (torchscript, pt2), "
                                                 "int8 (onnx, calibrated on training images).")] = Precision.fp32,
    checkpoint: CheckpointDir = Path("artifacts"),
    out_dir: Annotated[Path, typer.Option("--out", help="Where artifacts go (<out>/<model>/model.*).")] = Path("artifacts"),
    data_dir: DataDir = None,
    as_json: JsonFlag = False,
):
    """Export checkpoints and prove each artifact equals PyTorch on the full test set."""
    from digits.export import artifact_name, export_model, get_format, list_formats

    prec = precision.value
    if fmt.value == "all":  # every format that can carry this precision
        formats = [f for f in list_formats() if prec in get_format(f).precisions]
    else:
        formats = [fmt.value]
        artifact_name(fmt.value, prec)  # a format that cannot carry it is bad usage, before any work
    x, y = mnist_test(data_dir)
    train_x = train_images(data_dir) if prec == "int8" else None
    records = []
    with err.status("exporting") as status:
        for name in model_names(model):
            for f in formats:
                status.update(f"exporting {name} to {f} ({prec}) and checking parity on {len(x):,} test images")
                records.append(export_model(name, f, x, y, checkpoint=checkpoint, out=out_dir, opset=opset,
                                            precision=prec, train_x=train_x))
    finish_parity(records, as_json, "Exports")


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

    x, y = mnist_test(data_dir)
    finish_parity(verify_path(target, x, y, checkpoint=checkpoint), as_json, "Verification")
