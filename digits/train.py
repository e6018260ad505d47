"""The training loop: whole-dataset tensors in memory, AdamW + OneCycle, batch-wise augmentation.

    digits train lenet5                 # default recipe, tuned for accuracy
    digits train all --recipe fast      # a few seconds per model

Model selection uses the seeded validation hold-out; the test set is touched once, at the
end, for the reported figure. Ctrl-C saves a resumable state; ``--resume`` continues it
to the same final weights as an uninterrupted run (same seed, device and threads).
"""

from __future__ import annotations

import math
import os
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from digits.augment import augment_batch, random_theta
from digits.calibrate import calibration
from digits.checkpoint import RESUME, checkpoint_dir, load_resume, save_checkpoint, save_resume
from digits.data import Splits
from digits.errors import DigitsError, UsageError
from digits.models import count_macs, count_params, create_model, list_models, model_info
from digits.train_step import StaticStep, batch_sizes


@dataclass
class TrainConfig:
    model: str
    recipe: str = "default"
    epochs: int = 10
    batch_size: int = 256
    lr: float = 3e-3  # OneCycle peak learning rate
    weight_decay: float = 1e-4
    label_smoothing: float = 0.0
    augment: bool = True  # random affine: rotation, shift, scale, applied per batch
    seed: int = 0
    device: str = "cpu"
    threads: int | None = None  # None: all cores
    cuda_graph: bool = True  # on CUDA, the step is a replayed CUDA graph (digits.train_step)


RECIPES: dict[str, dict[str, dict]] = {
    "mlp": {
        "default": dict(epochs=15, batch_size=256, lr=2e-3, augment=True, label_smoothing=0.1),
        "fast": dict(epochs=2, batch_size=256, lr=2e-3, augment=False),
    },
    "cnn": {
        "default": dict(epochs=10, batch_size=256, lr=3e-3, augment=True, label_smoothing=0.1),
        "fast": dict(epochs=2, batch_size=256, lr=3e-3, augment=False),
    },
    "lenet5": {
        "default": dict(epochs=10, batch_size=256, lr=4e-3, augment=True, label_smoothing=0.1),
        "fast": dict(epochs=2, batch_size=256, lr=2e-2, augment=False, label_smoothing=0.1),
    },
}
RECIPE_NAMES = ("default", "fast")


def resolve_config(model: str, recipe: str = "default", **overrides) -> TrainConfig:
    """Recipe values, then any explicit override that is not None."""
    if model not in RECIPES:
        raise UsageError(f"Unknown model {model!r}. Choose one of: {', '.join(list_models())}.")
    if recipe not in RECIPE_NAMES:
        raise UsageError(f"Unknown recipe {recipe!r}. Choose one of: {', '.join(RECIPE_NAMES)}.")
    cfg = replace(TrainConfig(model=model, recipe=recipe), **RECIPES[model][recipe])
    known = {f.name for f in fields(TrainConfig)}
    cfg = replace(cfg, **{k: v for k, v in overrides.items() if v is not None and k in known})
    for name in ("epochs", "batch_size"):
        if getattr(cfg, name) < 1:
            raise UsageError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(cfg, name)}.")
    if not cfg.lr > 0:
        raise UsageError(f"--lr must be positive, got {cfg.lr}.")
    return cfg


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise DigitsError("--device cuda was asked for, but CUDA is not available here "
                          f"(torch {torch.__version__}, no usable GPU). Use --device cpu.")
    if device not in ("cpu", "cuda"):
        raise UsageError(f"Unknown device {device!r}. Choose auto, cpu or cuda.")
    return torch.device(device)


class RunningLoss:
    """The sum of step losses. On CUDA (``lazy``) it stays on the device and is read back
    every ``every`` steps, so a training step never waits for the GPU to report its loss
    (``loss.item()`` per step is a host sync); on the CPU reading it costs nothing."""

    def __init__(self, start: float = 0.0, steps: int = 0, lazy: bool = False, every: int = 50):
        self.total, self.counted, self.steps = start, steps, steps  # counted: steps included in total
        self.lazy, self.every, self.pending = lazy, every, None

    def add(self, loss: torch.Tensor) -> None:
        self.steps += 1
        if not self.lazy:
            self.total += loss.item()
            self.counted = self.steps
            return
        # clone: a CUDA graph's loss is a static buffer that the next replay overwrites
        self.pending = loss.detach().clone() if self.pending is None else self.pending + loss.detach()
        if self.steps % self.every == 0:
            self.flush()

    def flush(self) -> float:
        if self.pending is not None:
            self.total += self.pending.item()
            self.pending = None
        self.counted = self.steps
        return self.total

    def mean(self) -> float:
        """Mean loss over the steps read back so far (all of them on the CPU)."""
        return self.total / self.counted if self.counted else float("nan")


# --------------------------------------------------------------------------- evaluation
@torch.inference_mode()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch: int = 2000) -> tuple[float, float]:
    """(accuracy, mean cross-entropy) over a whole split."""
    model.eval()
    correct, loss = 0, 0.0
    for i in range(0, len(x), batch):
        logits = model(x[i:i + batch])
        loss += F.cross_entropy(logits, y[i:i + batch], reduction="sum").item()
        correct += (logits.argmax(1) == y[i:i + batch]).sum().item()
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


class TrainingInterrupted(DigitsError):
    def __init__(self, model: str, path: Path):
        super().__init__(f"Training of {model} was interrupted; the state is saved in {path}. "
                         f"Continue with `digits train {model} --resume` (same --out).", exit_code=130)


@dataclass
class Progress:
    epoch: int
    epochs: int
    step: int
    steps: int
    loss: float
    val_accuracy: float | None = None


class _SigintFlag:
    """Turns the first Ctrl-C into a flag the loop checks between steps."""

    def __init__(self):
        self.set = False
        self._old = None

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self._old = signal.signal(signal.SIGINT, self._handle)
        return self

    def _handle(self, *_):
        self.set = True

    def __exit__(self, *exc):
        if self._old is not None:
            signal.signal(signal.SIGINT, self._old)


def train(cfg: TrainConfig, data: Splits, out: str | os.PathLike, *, resume: bool = False,
          on_progress: Callable[[Progress], None] = lambda p: None) -> TrainResult:
    """Train one model on in-memory splits and write its checkpoint to ``<out>/<model>/``."""
    device = resolve_device(cfg.device)
    if cfg.threads is not None:
        if cfg.threads < 1:
            raise UsageError(f"--threads must be at least 1, got {cfg.threads}.")
        torch.set_num_threads(cfg.threads)
    folder = checkpoint_dir(out, cfg.model)
    torch.manual_seed(cfg.seed)  # weight init and dropout
    # channels_last lets oneDNN pick its fast conv kernels (~25% faster training here);
    # it is a no-op for the MLP, whose parameters are all 2-D.
    model = create_model(cfg.model).to(device, memory_format=torch.channels_last)
    gen = torch.Generator().manual_seed(cfg.seed)  # data order and augmentation
    data = data.to(device)
    n = len(data.train_x)
    steps = math.ceil(n / cfg.batch_size)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay,
                            fused=True)  # one kernel per step instead of one per tensor
    sched = _schedule(opt, cfg.lr, cfg.epochs * steps)
    static = _static_step(model, data, cfg, device)  # None: the eager step below
    setup_seconds = _warm_up(static, device)
    state = {"epoch": 0, "step": 0, "perm": None, "history": [], "best": None, "best_val": -1.0,
             "best_epoch": 0, "loss_sum": 0.0, "seconds": 0.0}
    if resume:
        state = _restore(load_resume(folder), cfg, model, opt, sched, gen)

    with _SigintFlag() as sigint:
        while state["epoch"] < cfg.epochs:
            model.train()
            if state["perm"] is None:
                state["perm"], state["step"], state["loss_sum"] = torch.randperm(n, generator=gen), 0, 0.0
            perm = state["perm"].to(device)
            running = RunningLoss(state["loss_sum"], state["step"], lazy=device.type == "cuda")
            t0 = time.perf_counter()
            while state["step"] < steps:
                if sigint.set:
                    state["loss_sum"] = running.flush()
                    state["seconds"] += time.perf_counter() - t0
                    path = save_resume(folder, _snapshot(state, cfg, model, opt, sched, gen))
                    raise TrainingInterrupted(cfg.model, path)
                idx = perm[state["step"] * cfg.batch_size:(state["step"] + 1) * cfg.batch_size]
                if static is not None:
                    loss = static(idx, random_theta(len(idx), gen) if cfg.augment else None)
                else:
                    x, y = data.train_x[idx], data.train_y[idx]
                    if cfg.augment:
                        x = augment_batch(x, gen)
                    loss = F.cross_entropy(model(x), y, label_smoothing=cfg.label_smoothing)
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                opt.step()
                sched.step()
                state["step"] += 1
                running.add(loss)
                on_progress(Progress(state["epoch"] + 1, cfg.epochs, state["step"], steps,
                                     running.mean()))  # on CUDA: as of the last read-back
            state["loss_sum"] = running.flush()
            if device.type == "cuda":
                torch.cuda.synchronize()
            state["seconds"] += time.perf_counter() - t0
            val_acc, val_loss = evaluate(model, data.val_x, data.val_y)
            state["epoch"] += 1
            state["history"].append({"epoch": state["epoch"], "train_loss": state["loss_sum"] / steps,
                                     "val_loss": val_loss, "val_accuracy": val_acc})
            if val_acc > state["best_val"]:  # ties keep the earlier epoch
                state["best_val"], state["best_epoch"] = val_acc, state["epoch"]
                state["best"] = {k: v.detach().clone() for k, v in model.state_dict().items()}
            state["perm"] = None
            on_progress(Progress(state["epoch"], cfg.epochs, steps, steps, state["loss_sum"] / steps, val_acc))

    model.load_state_dict(state["best"])
    test_acc, _ = evaluate(model, data.test_x, data.test_y)
    calib = calibration(logits_of(model, data.val_x), data.val_y, logits_of(model, data.test_x), data.test_y)
    info = model_info(cfg.model)
    manifest = save_checkpoint(folder, model.state_dict(), {
        "model": cfg.model, "model_kwargs": {}, "params": count_params(model), "macs": count_macs(model.cpu()),
        "input_shape": list(info.input_shape), "normalization": {"mean": info.mean, "std": info.std},
        "recipe": cfg.recipe, "seed": cfg.seed, "config": asdict(cfg),
        "threads": torch.get_num_threads(), "device": str(device),
        "history": state["history"], "best_epoch": state["best_epoch"],
        "val_accuracy": state["best_val"], "test_accuracy": test_acc,
        "train_seconds": round(state["seconds"], 3),
        # warm-up and capture, before the clock starts (as speed-runs count compile time apart)
        "cuda_graph": static is not None and static.capture,
        "setup_seconds": round(setup_seconds, 3),
        "calibration": calib,  # temperature scaling fitted on the validation split (digits.calibrate)
    })
    (folder / RESUME).unlink(missing_ok=True)
    return TrainResult(model=cfg.model, epochs=cfg.epochs, seed=cfg.seed, recipe=cfg.recipe,
                       params=manifest["params"], val_accuracy=state["best_val"], test_accuracy=test_acc,
                       best_epoch=state["best_epoch"], train_seconds=manifest["train_seconds"],
                       checkpoint=str(folder / "model.safetensors"), history=state["history"],
                       cuda_graph=manifest["cuda_graph"], setup_seconds=manifest["setup_seconds"])


def _static_step(model: nn.Module, data: Splits, cfg: TrainConfig, device: torch.device) -> StaticStep | None:
    """On CUDA, the step on static buffers (captured unless ``cfg.cuda_graph`` is off); None on the CPU."""
    if device.type != "cuda":
        return None
    return StaticStep(model, data.train_x, data.train_y, sizes=batch_sizes(len(data.train_x), cfg.batch_size),
                      label_smoothing=cfg.label_smoothing, augment=cfg.augment, capture=cfg.cuda_graph)


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


def _snapshot(state: dict, cfg: TrainConfig, model, opt, sched, gen) -> dict:
    return {"config": asdict(cfg), "loop": state, "model": model.state_dict(), "opt": opt.state_dict(),
            "sched": sched.state_dict(), "gen": gen.get_state(), "torch_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}


def _restore(snap: dict, cfg: TrainConfig, model, opt, sched, gen) -> dict:
    free = ("device", "threads", "cuda_graph")  # how it runs, not what it computes
    saved = {k: v for k, v in snap["config"].items() if k not in free}
    wanted = {k: v for k, v in asdict(cfg).items() if k not in free}
    if saved != wanted:
        diff = ", ".join(f"{k}: saved {saved[k]!r} vs now {wanted[k]!r}" for k in saved if saved[k] != wanted.get(k))
        raise UsageError(f"--resume needs the same settings as the interrupted run ({diff}).")
    model.load_state_dict(snap["model"])
    opt.load_state_dict(snap["opt"])
    sched.load_state_dict(snap["sched"])
    gen.set_state(snap["gen"])
    torch.set_rng_state(snap["torch_rng"])
    if snap["cuda_rng"]:
        torch.cuda.set_rng_state_all(snap["cuda_rng"])
    return snap["loop"]
