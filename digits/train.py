"""The training loop: whole-dataset tensors in memory, AdamW + OneCycle, batch-wise augmentation.

    digits train lenet5                 # default recipe, tuned for accuracy
    digits train all --recipe fast      # a few seconds per model
    digits train lenet5 --nproc 2       # data-parallel: DDP on 2 processes (digits.distributed)

Model selection uses the seeded validation hold-out; the test set is touched once, at the
end, for the reported figure. Ctrl-C or SIGTERM saves a resumable state (digits.resume);
``--resume`` continues it to the same final weights and history as an uninterrupted run
(same seed, device, threads, world size).

Under DDP every rank holds the splits, draws the same permutation and augmentation for the
global batch and takes its stride of it. Each rank's loss is its images' summed loss over
the *global* batch size, times W, so DDP's gradient average is the one-process mean, an
uneven last batch included. Rank 0 alone writes; metrics are summed over the ranks.
"""

from __future__ import annotations

import functools
import math
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from digits import augment
from digits.calibrate import calibration
from digits.checkpoint import RESUME, checkpoint_dir, load_resume, save_checkpoint, save_resume
from digits.data import Splits
from digits.distributed import Dist, StopVote, check_training, current, shard_loss, wrap
from digits.errors import DigitsError, UsageError
from digits.models import count_macs, count_params, create_model, model_info
from digits.recipes import RECIPE_NAMES, RECIPES, TrainConfig, resolve_config, resolve_device  # noqa: F401
from digits.resume import StopFlag, TrainingInterrupted, restore, snapshot
from digits.running_loss import RunningLoss  # noqa: F401  (digits.train.RunningLoss, as before)
from digits.train_step import StaticStep, batch_sizes


# --------------------------------------------------------------------------- evaluation
@torch.inference_mode()
def _sums(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch: int = 2000) -> tuple[int, float]:
    model.eval()
    correct, loss = 0, 0.0
    for i in range(0, len(x), batch):
        logits = model(x[i:i + batch])
        loss += F.cross_entropy(logits, y[i:i + batch], reduction="sum").item()
        correct += (logits.argmax(1) == y[i:i + batch]).sum().item()
    return correct, loss


SINGLE = Dist()  # one process


def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, dist: Dist = SINGLE) -> tuple[float, float]:
    """(accuracy, mean cross-entropy) over a whole split; under DDP each rank reads its stride
    and the sums are all-reduced."""
    correct, loss = dist.sum(list(_sums(model, dist.shard(x), dist.shard(y))))
    return correct / len(x), loss / len(x)


@torch.inference_mode()
def logits_of(model: nn.Module, x: torch.Tensor, batch: int = 2000) -> torch.Tensor:
    model.eval()
    return torch.cat([model(x[i:i + batch]) for i in range(0, len(x), batch)]).float().cpu()


# --------------------------------------------------------------------------- the loop
@dataclass
class TrainResult:
    model: str
    epochs: int
    seed: int
    recipe: str
    params: int
    val_accuracy: float
    test_accuracy: float
    best_epoch: int
    train_seconds: float
    checkpoint: str
    history: list[dict] = field(default_factory=list)
    cuda_graph: bool = False  # the step was a replayed CUDA graph
    setup_seconds: float = 0.0  # CUDA warm-up and capture, not in train_seconds

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class Progress:
    epoch: int
    epochs: int
    step: int
    steps: int
    loss: float
    val_accuracy: float | None = None


def train(cfg: TrainConfig, data: Splits, out: str | os.PathLike, *, resume: bool = False,
          on_progress: Callable[[Progress], None] = lambda p: None) -> TrainResult:
    """Train one model on in-memory splits and write its checkpoint to ``<out>/<model>/``.
    In an initialized process group (digits.distributed) this is one rank of a DDP run."""
    device = resolve_device(cfg.device)
    dist = current()
    check_training(cfg, device, dist)
    if cfg.threads is not None:
        if cfg.threads < 1:
            raise UsageError(f"--threads must be at least 1, got {cfg.threads}.")
        torch.set_num_threads(cfg.threads)
    folder = checkpoint_dir(out, cfg.model)
    torch.manual_seed(cfg.seed)  # weight init: the same on every rank
    # channels_last lets oneDNN pick its fast conv kernels (~25% faster training here);
    # it is a no-op for the MLP, whose parameters are all 2-D.
    net = create_model(cfg.model).to(device, memory_format=torch.channels_last)
    if dist.enabled:
        torch.manual_seed(cfg.seed + 1_000_003 * (dist.rank + 1))  # a dropout stream of its own per rank
    model = wrap(net, device) if dist.enabled else net  # ``net``: the bare module, saved without "module."
    gen = torch.Generator().manual_seed(cfg.seed)  # data order and augmentation: shared by every rank
    data = data.to(device)
    n = len(data.train_x)
    steps = math.ceil(n / cfg.batch_size)
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay,
                            fused=True)  # one kernel per step instead of one per tensor
    sched = _schedule(opt, cfg.lr, cfg.epochs * steps)
    static = None if dist.enabled else _static_step(net, data, cfg, device)  # None: the eager step below
    setup_seconds = _warm_up(static, device)
    state = {"epoch": 0, "step": 0, "perm": None, "history": [], "best": None, "best_val": -1.0,
             "best_epoch": 0, "loss_sum": 0.0, "seconds": 0.0}
    if resume:
        state = restore(load_resume(folder), cfg, net, opt, sched, gen, dist)
    report = on_progress if dist.main else (lambda p: None)

    vote = StopVote(dist)
    with StopFlag() as stop:
        while state["epoch"] < cfg.epochs:
            model.train()
            if state["perm"] is None:
                state["perm"], state["step"], state["loss_sum"] = torch.randperm(n, generator=gen), 0, 0.0
            perm = state["perm"].to(device)
            running = RunningLoss(state["loss_sum"], state["step"], lazy=device.type == "cuda")
            t0 = time.perf_counter()
            while state["step"] < steps:
                if signum := vote(stop.signum if stop.set else 0):  # every rank stops at this same step
                    state["loss_sum"] = running.flush()
                    state["seconds"] += time.perf_counter() - t0
                    snap = snapshot(state, cfg, net, opt, sched, gen, dist)
                    vote.close()
                    dist.only(dist.main, functools.partial(save_resume, folder, snap), "save the resume state")
                    raise TrainingInterrupted(cfg.model, folder / RESUME, dist.world, signum)
                idx = perm[state["step"] * cfg.batch_size:(state["step"] + 1) * cfg.batch_size]
                aug = augment.draw(len(idx), gen, cfg.continental) if cfg.augment else None  # drawn for the global batch
                if static is not None:
                    loss = static(idx, aug)
                else:
                    mine = dist.shard(idx)
                    x, y = data.train_x[mine], data.train_y[mine]
                    if aug is not None:
                        x = augment.apply(x, dist.shard(aug).to(device), y if cfg.continental else None)
                    loss = shard_loss(model(x), y, cfg.label_smoothing, len(idx), dist)
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                opt.step()
                sched.step()
                state["step"] += 1
                running.add(loss)
                report(Progress(state["epoch"] + 1, cfg.epochs, state["step"], steps,
                                running.mean()))  # on CUDA: as of the last read-back; under DDP: rank 0's share x W
            # under DDP each rank's loss is W x its share of the batch mean: the mean over ranks is the batch mean
            state["loss_sum"] = dist.sum([running.flush()])[0] / dist.world
            if device.type == "cuda":
                torch.cuda.synchronize()
            state["seconds"] += time.perf_counter() - t0
            val_acc, val_loss = evaluate(net, data.val_x, data.val_y, dist)
            state["epoch"] += 1
            state["history"].append({"epoch": state["epoch"], "train_loss": state["loss_sum"] / steps,
                                     "val_loss": val_loss, "val_accuracy": val_acc})
            if val_acc > state["best_val"]:  # ties keep the earlier epoch
                state["best_val"], state["best_epoch"] = val_acc, state["epoch"]
                state["best"] = {k: v.detach().clone() for k, v in net.state_dict().items()}
            state["perm"] = None
            report(Progress(state["epoch"], cfg.epochs, steps, steps, state["loss_sum"] / steps, val_acc))

    vote.close()
    net.load_state_dict(state["best"])
    test_acc, _ = evaluate(net, data.test_x, data.test_y, dist)
    info = model_info(cfg.model)
    summary = {"params": count_params(net), "train_seconds": round(state["seconds"], 3),
               # warm-up and capture, before the clock starts (as speed-runs count compile time apart)
               "cuda_graph": static is not None and static.capture, "setup_seconds": round(setup_seconds, 3)}

    def write() -> None:  # rank 0 alone; every rank then learns whether it worked (no barrier to hang on)
        calib = calibration(logits_of(net, data.val_x), data.val_y, logits_of(net, data.test_x), data.test_y)
        save_checkpoint(folder, net.state_dict(), {
            "model": cfg.model, "model_kwargs": {}, "params": summary["params"], "macs": count_macs(net.cpu()),
            "input_shape": list(info.input_shape), "normalization": {"mean": info.mean, "std": info.std},
            "recipe": cfg.recipe, "seed": cfg.seed, "config": asdict(cfg),
            "threads": torch.get_num_threads(), "device": str(device),
            "distributed": dist.describe(),  # world size, backend, nodes
            "history": state["history"], "best_epoch": state["best_epoch"],
            "val_accuracy": state["best_val"], "test_accuracy": test_acc,
            "train_seconds": summary["train_seconds"], "cuda_graph": summary["cuda_graph"],
            "setup_seconds": summary["setup_seconds"],
            "calibration": calib,  # temperature scaling fitted on the validation split (digits.calibrate)
        })
        (folder / RESUME).unlink(missing_ok=True)
    dist.only(dist.main, write, f"write the checkpoint in {folder}")  # no rank returns before it is on disk
    return TrainResult(model=cfg.model, epochs=cfg.epochs, seed=cfg.seed, recipe=cfg.recipe,
                       val_accuracy=state["best_val"], test_accuracy=test_acc, best_epoch=state["best_epoch"],
                       checkpoint=str(folder / "model.safetensors"), history=state["history"], **summary)


def _static_step(model: nn.Module, data: Splits, cfg: TrainConfig, device: torch.device) -> StaticStep | None:
    """On CUDA, the step on static buffers (captured unless ``cfg.cuda_graph`` is off); None on the CPU."""
    if device.type != "cuda":
        return None
    return StaticStep(model, data.train_x, data.train_y, sizes=batch_sizes(len(data.train_x), cfg.batch_size),
                      label_smoothing=cfg.label_smoothing, augment=cfg.augment, capture=cfg.cuda_graph,
                      continental=cfg.continental)


def _warm_up(static: StaticStep | None, device: torch.device) -> float:
    """Seconds of CUDA warm-up (and capture), spent before the training clock starts.

    Library set-up and cuDNN autotuning would otherwise land in the first step; speed-runs
    count them apart the same way. With ``--no-cuda-graph`` the eager step is warmed up too,
    so the two report comparable ``train_seconds``.
    """
    if static is None or device.type != "cuda":
        return 0.0
    try:
        static.warm_up()
    except RuntimeError as e:  # name the way out instead of a traceback; never a silent fallback
        what = "capturing the training step in a CUDA graph" if static.capture else "the CUDA warm-up"
        raise DigitsError(f"Training failed in {what} ({str(e).splitlines()[0]}). "
                          + ("Train with --no-cuda-graph to run the eager step." if static.capture else "")) from None
    return static.setup_seconds


def _schedule(opt, lr: float, total: int):
    if total < 3:  # OneCycle needs a warm-up and a decay step; a 1-2 step run keeps lr flat
        return torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0)
    # 25% warm-up; tiny runs (the tests, --dry-run-like settings) still get one warm-up step.
    return torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=total, pct_start=max(0.25, 2 / total))
