"""``digits train``: one model or all, with live progress."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Annotated

import typer

from digits.cli._common import (
    DataDir,
    Device,
    JsonFlag,
    ModelChoice,
    OutDir,
    Recipe,
    model_names,
    data_root,
    app,
)
from digits.ui import advance, emit_json, guard, log, out, table, train_progress


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
    cuda_graph: Annotated[bool, typer.Option("--cuda-graph/--no-cuda-graph",
                                             help="On CUDA, replay the step as a CUDA graph.")] = True,
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

    names = model_names(model)
    cfgs = [resolve_config(n, recipe.value, epochs=epochs, batch_size=batch_size, lr=lr, seed=seed,
                           augment=augment, device=device.value, threads=threads,
                           cuda_graph=cuda_graph) for n in names]
    root = data_root(data_dir)
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
