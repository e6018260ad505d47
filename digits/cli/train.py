"""``digits train``: one model or all, with live progress."""

from __future__ import annotations

import functools
import sys
from dataclasses import replace
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
                                                 help="Augment each batch: warp, elastic, stroke width, blur "
                                                 "(default: recipe).")] = None,
    continental: Annotated[bool | None, typer.Option("--continental/--no-continental", show_default=False,
                                                     help="With --augment, 1s gain a flag and a base serif "
                                                     "(default: on in every default recipe).")] = None,
    recipe: Annotated[Recipe, typer.Option(help="default: tuned for accuracy; fast: a few seconds.")] = Recipe.default,
    device: Annotated[Device, typer.Option(help="auto picks cuda when available.")] = Device.auto,
    threads: Annotated[int | None, typer.Option(help="torch CPU threads (default: all cores; under DDP, the "
                                                "machine's cores // its processes).", show_default=False)] = None,
    cuda_graph: Annotated[bool, typer.Option("--cuda-graph/--no-cuda-graph",
                                             help="On CUDA, replay the step as a CUDA graph.")] = True,
    out_dir: OutDir = Path("artifacts"),
    resume: Annotated[bool, typer.Option("--resume", help="Continue an interrupted run (Ctrl-C or SIGTERM saves "
                                         "one).")] = False,
    nproc: Annotated[int, typer.Option(min=1, help="Data-parallel processes on this machine (DDP under torchrun; "
                                       "--batch-size stays the global batch).")] = 1,
    data_dir: DataDir = None,
    as_json: JsonFlag = False,
):
    """Train one model or all of them; writes <out>/<model>/model.safetensors + manifest.json."""
    from digits import distributed
    from digits.cores import cores_per_process
    from digits.data import load_splits
    from digits.errors import DigitsError
    from digits.sources import ensure_mnist
    from digits.train import resolve_config, resolve_device
    from digits.train import train as train_one

    names = model_names(model)
    cfgs = [resolve_config(n, recipe.value, epochs=epochs, batch_size=batch_size, lr=lr, seed=seed,
                           augment=augment, continental=continental, device=device.value, threads=threads,
                           cuda_graph=cuda_graph) for n in names]
    if nproc > 1:
        return _launch(nproc, cfgs, out_dir)
    dist = distributed.Dist()
    if distributed.launched():  # a worker that torchrun or Slurm started
        dist = distributed.init_from_env(resolve_device(device.value))
        if threads is None:  # the machine's cores, shared by the ranks on it
            cfgs = [replace(c, threads=cores_per_process(dist.local_world)) for c in cfgs]
    try:
        root = data_root(data_dir)
        # one download or check per machine; the others wait for it, and learn if it failed
        dist.only(dist.local_rank == 0, lambda: ensure_mnist(root, log=log), f"fetch or verify MNIST in {root}")
        splits = load_splits(root, seed=seed)
        results = []
        with train_progress(enabled=dist.main) as progress:
            for cfg in cfgs:
                task = progress.add_task(cfg.model, total=None, epoch="-", loss=float("nan"), val="-")
                results.append(train_one(cfg, splits, out_dir, resume=resume,
                                         on_progress=functools.partial(advance, progress, task)))
    except DigitsError as e:  # an agreed stop (Ctrl-C, SIGTERM), a refusal or a failure every rank knows of
        distributed.finish()
        if not dist.main:
            raise typer.Exit(e.exit_code) from None  # said once, by rank 0
        raise
    distributed.finish()  # any other failure: the process ends and torchrun stops the others
    if not dist.main:
        return None  # rank 0 reports
    dicts = [{k: v for k, v in r.to_dict().items() if k != "history"} for r in results]
    if as_json:
        return emit_json(dicts if model.value == "all" else dicts[0])
    t = table("Training summary", "model", ">epochs", ">params", ">val acc", ">test acc", ">best epoch", ">train s")
    for r in results:
        t.add_row(r.model, str(r.epochs), f"{r.params:,}", f"{r.val_accuracy:.2%}", f"{r.test_accuracy:.2%}",
                  str(r.best_epoch), f"{r.train_seconds:.1f}")
    out.print(t)
    out.print(f"Checkpoints: {out_dir}/<model>/model.safetensors + manifest.json", highlight=False)


def _launch(nproc: int, cfgs, out_dir: Path) -> None:
    """``--nproc N``: the same command, without --nproc, as N torchrun workers."""
    import torch

    from digits import distributed
    from digits.errors import UsageError
    from digits.train import resolve_device

    if distributed.launched():
        raise UsageError("--nproc starts its own processes; this one was already started by torchrun or Slurm "
                         "(RANK is set). Drop --nproc, or run digits train without a launcher.")
    for cfg in cfgs:  # refused here, before any process starts, as each worker would refuse it
        distributed.check_training(cfg, resolve_device(cfg.device), distributed.Dist(world=nproc))
    argv = sys.argv[1:]
    if "train" not in argv:
        raise UsageError("--nproc re-runs the command line it was given; call it as `digits train ... --nproc N`.")
    keep, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a == "--nproc":
            skip = True
        elif not a.startswith("--nproc="):
            keep.append(a)
    kind = resolve_device(cfgs[0].device).type
    if kind == "cuda" and nproc > torch.cuda.device_count():
        raise UsageError(f"--nproc {nproc} on CUDA needs a GPU per process; this machine has "
                         f"{torch.cuda.device_count()}.")
    log(f"digits train: {nproc} processes under torchrun (DDP, {'NCCL' if kind == 'cuda' else 'gloo'} "
        f"on {kind}); global batch {cfgs[0].batch_size}, {cfgs[0].batch_size // nproc} per process.")
    import time

    from digits.checkpoint import RESUME, checkpoint_dir

    start = time.time()
    states = [checkpoint_dir(out_dir, c.model) / RESUME for c in cfgs]
    distributed.launch(nproc, keep, lambda: [p for p in states if p.is_file() and p.stat().st_mtime >= start])
