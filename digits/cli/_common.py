"""What every ``digits`` command shares: the Typer app, choices, common options and helpers.

No torch logic lives here. Tables and progress go to stderr through rich; ``--json``
puts clean JSON on stdout. A :class:`DigitsError` becomes a one-paragraph message and
its exit code (2 bad usage, 1 run-time failure), never a traceback.
"""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from digits.errors import DigitsError
from digits.models import NAMES
from digits.ui import emit_json, log, out, size, table

app = typer.Typer(add_completion=False, no_args_is_help=True, rich_markup_mode="rich",
                  help="Train, export and benchmark the classic MNIST models: mlp, cnn, lenet5.")

# From the registry's names, not the registry: --help and bad usage never wait for torch
ModelChoice = Enum("ModelChoice", {n: n for n in [*NAMES, "all"]}, type=str)
ModelOnly = Enum("ModelOnly", {n: n for n in NAMES}, type=str)


class Source(str, Enum):
    auto = "auto"
    torchvision = "torchvision"
    pypi = "pypi"


class Recipe(str, Enum):
    default = "default"
    fast = "fast"


class Precision(str, Enum):
    fp32 = "fp32"
    bf16 = "bf16"
    fp16 = "fp16"
    int8 = "int8"


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


def data_root(data_dir: Path | None) -> Path:
    from digits.data import default_root

    return data_dir or default_root()


def mnist_test(data_dir: Path | None):
    """MNIST's test set (fetched first if missing), for parity, bench and the report."""
    from digits.data import load_test
    from digits.sources import ensure_mnist

    root = data_root(data_dir)
    ensure_mnist(root, log=log)
    return load_test(root)


def train_images(data_dir: Path | None):
    """The training split (validation hold-out removed): int8 calibrates on it, never on test images."""
    from digits.data import load_splits

    return load_splits(data_root(data_dir), seed=0).train_x


def model_names(choice: Enum) -> list[str]:
    return list(NAMES) if choice.value == "all" else [choice.value]


FormatChoice = Enum("FormatChoice", {n: n for n in ["torchscript", "onnx", "pt2", "all"]}, type=str)
CheckpointDir = Annotated[Path, typer.Option("--checkpoint", help="Folder `digits train --out` wrote (<dir>/<model>/).")]


def csv_list(value: str, what: str, convert=str) -> list:
    items = [v.strip() for v in value.split(",") if v.strip()]
    try:
        parsed = [convert(v) for v in items]
    except ValueError:
        raise DigitsError(f"--{what} takes a comma-separated list, e.g. 1,8,32; got {value!r}.", exit_code=2) from None
    if not parsed:
        raise DigitsError(f"--{what} is empty.", exit_code=2)
    return parsed


def finish_parity(records: list[dict], as_json: bool, title: str) -> None:
    if as_json:
        emit_json(records)
    else:
        t = table(f"{title}: parity with eager PyTorch on {records[0]['images']:,} test images",
                   "model", "format", "precision", ">size", ">max|diff|", ">agree", ">accuracy", "result")
        for r in records:  # the sha256 is in --json and exports.json; the table keeps to 80 columns
            t.add_row(r["model"], r["format"] + ("*" if r.get("legacy") else ""), r.get("precision", "fp32"),
                      size(r["bytes"]),
                      f"{r['max_abs_diff']:.1e}", f"{r['argmax_agreement']:.2%}", f"{r['accuracy']:.2%}",
                      "[green]pass[/]" if r["passed"] else "[bold red]FAIL[/]")
        if any(r.get("legacy") for r in records):
            t.caption = "* legacy format (TorchScript is deprecated; torch.export/.pt2 is its successor)"
        out.print(t)
    failed = [f"{r['model']}/{r['format']} {r.get('precision', 'fp32')}" for r in records if not r["passed"]]
    if failed:
        raise DigitsError(f"Parity failed for {', '.join(failed)}: an FP32 artifact must have max_abs_diff <= 1e-4 "
                          "and agree with eager on every prediction; a bf16/fp16/int8 one must keep test accuracy "
                          "within 0.2 points of FP32 and agree on >= 99.5% of predictions (figures above).")
