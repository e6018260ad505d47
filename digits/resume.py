"""Ctrl-C and ``--resume``: a flag the loop checks between steps, and the state it saves.

A resumed run continues to the same final weights as an uninterrupted one (same seed,
device, threads and world size): the data order and augmentation generator, the
optimizer, the schedule and each rank's dropout stream are all saved.
"""

from __future__ import annotations

import signal
import threading
from dataclasses import asdict
from pathlib import Path

import torch

from digits.distributed import Dist
from digits.errors import DigitsError, UsageError
from digits.recipes import TrainConfig


class TrainingInterrupted(DigitsError):
    def __init__(self, model: str, path: Path, world: int = 1):
        where = f"same --out, and {world} processes: --nproc {world} or the same launcher" if world > 1 else "same --out"
        super().__init__(f"Training of {model} was interrupted; the state is saved in {path}. "
                         f"Continue with `digits train {model} --resume` ({where}).", exit_code=130)


class SigintFlag:
    """Turns the first Ctrl-C into a flag the loop checks between steps; under DDP the ranks
    agree on it (``Dist.agree``) before each step, so all stop at the same one."""

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


def snapshot(state: dict, cfg: TrainConfig, model, opt, sched, gen, dist: Dist) -> dict:
    """Everything a run needs to continue. A collective under DDP (every rank's dropout
    stream is gathered); rank 0 alone writes it. ``model`` is the unwrapped module."""
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []
    snap = {"config": asdict(cfg), "loop": state, "model": model.state_dict(), "opt": opt.state_dict(),
            "sched": sched.state_dict(), "gen": gen.get_state(), "world_size": dist.world,
            "torch_rng": torch.get_rng_state(), "cuda_rng": cuda}
    if dist.enabled:  # one stream per rank (its own device's on CUDA)
        snap["torch_rng_by_rank"] = dist.gather(torch.get_rng_state())
        if torch.cuda.is_available():
            snap["cuda_rng_by_rank"] = dist.gather(torch.cuda.get_rng_state())
    return snap


def restore(snap: dict, cfg: TrainConfig, model, opt, sched, gen, dist: Dist) -> dict:
    free = ("device", "threads", "cuda_graph")  # how it runs, not what it computes
    saved_world = snap.get("world_size", 1)
    if saved_world != dist.world:  # each rank's stride and dropout stream depend on it
        raise UsageError(f"--resume needs the world size of the interrupted run: it ran on {saved_world} "
                         f"process(es), this run has {dist.world}.")
    saved = {k: v for k, v in snap["config"].items() if k not in free}
    wanted = {k: v for k, v in asdict(cfg).items() if k not in free}
    if saved != wanted:
        diff = ", ".join(f"{k}: saved {saved[k]!r} vs now {wanted[k]!r}" for k in saved if saved[k] != wanted.get(k))
        raise UsageError(f"--resume needs the same settings as the interrupted run ({diff}).")
    model.load_state_dict(snap["model"])
    opt.load_state_dict(snap["opt"])
    sched.load_state_dict(snap["sched"])
    gen.set_state(snap["gen"])
    if dist.enabled:
        torch.set_rng_state(snap["torch_rng_by_rank"][dist.rank])
        if "cuda_rng_by_rank" in snap:
            torch.cuda.set_rng_state(snap["cuda_rng_by_rank"][dist.rank])
    else:
        torch.set_rng_state(snap["torch_rng"])
        if snap["cuda_rng"]:
            torch.cuda.set_rng_state_all(snap["cuda_rng"])
    return snap["loop"]
