"""Terminal rendering shared by the commands: consoles, tables, progress, errors.

Tables and results go to stdout (``out``); progress, logs and errors to stderr (``err``),
so ``--json`` output on stdout stays clean.
"""

from __future__ import annotations

import functools
import json
import sys

import typer
from rich import box
from rich.console import Console
from rich.table import Table

from digits.errors import DigitsError

err = Console(stderr=True)  # progress, logs, errors
out = Console()  # result tables (stdout); --json replaces them


def guard(fn):
    """Turn DigitsError into a clean message and exit code."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except DigitsError as e:
            err.print(f"[bold red]Error:[/] {e}", highlight=False, soft_wrap=True)
            raise typer.Exit(e.exit_code) from None
        except KeyboardInterrupt:
            err.print("[bold red]Interrupted.[/]")
            raise typer.Exit(130) from None

    return wrapper


def table(title: str, *columns: str) -> Table:
    """A compact table; a column named '>x' is right-aligned (numbers), '~x' may wrap."""
    t = Table(title=title, box=box.SIMPLE_HEAD, title_style="bold", pad_edge=False, collapse_padding=True)
    for c in columns:
        t.add_column(c.lstrip(">~"), justify="right" if c.startswith(">") else "left", no_wrap=c[0] != "~",
                     overflow="fold")
    return t


def log(message: str) -> None:
    err.print(message, markup=False, highlight=False)


def emit_json(obj) -> None:
    sys.stdout.write(json.dumps(obj, indent=2) + "\n")
    sys.stdout.flush()


def size(n: int) -> str:
    return f"{n / 2**20:.2f} MiB" if n >= 2**20 else f"{n / 2**10:.0f} KiB"


def train_progress(enabled: bool = True):
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
    )

    return Progress(TextColumn("[bold]{task.description:<7}"), TextColumn("epoch {task.fields[epoch]}"),
                    BarColumn(), MofNCompleteColumn(), TextColumn("loss {task.fields[loss]:.4f}"),
                    TextColumn("val {task.fields[val]}"), TimeRemainingColumn(), console=err,
                    transient=False, disable=not enabled)


def advance(progress, task, p) -> None:
    fields = {"epoch": f"{p.epoch}/{p.epochs}", "loss": p.loss}
    if p.val_accuracy is not None:
        fields["val"] = f"{p.val_accuracy:.2%}"
    progress.update(task, total=p.epochs * p.steps, completed=(p.epoch - 1) * p.steps + p.step, **fields)
