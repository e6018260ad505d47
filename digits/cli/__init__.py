"""The ``digits`` command line: parse options, call the library, render the result.

One module per command group (``data``, ``train``, ``export``, ``bench``, ``compare``,
``predict``, ``run``); each registers its commands on the one Typer ``app`` from ``_common``. No torch
logic lives here. Tables go to stdout, progress and errors to stderr through rich;
``--json`` puts clean JSON on stdout. A :class:`DigitsError` becomes a one-paragraph
message and its exit code (2 bad usage, 1 run-time failure), never a traceback.
"""

from digits.cli._common import app
from digits.cli import data, train, export, bench, compare, predict, run, serve  # noqa: F401,E402  (registers, in --help order)

__all__ = ["app", "main"]


def main() -> None:  # pragma: no cover
    app()
