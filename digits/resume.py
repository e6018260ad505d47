"""Ctrl-C, SIGTERM and ``--resume``: a flag the loop checks between steps, and the state it saves.

Slurm and Kubernetes stop a job with SIGTERM, then SIGKILL after a grace period (sbatch's
``--signal=TERM@<seconds>``, a pod's ``terminationGracePeriodSeconds``). Both signals are
handled alike: the ranks agree to stop at the same step, rank 0 saves ``resume.pt``, and the
process exits with **130** (SIGINT) or **75** (SIGTERM: ``EX_TEMPFAIL``, "try again", which a
requeue script can tell apart from a crash or a kill with nothing saved).

A resumed run continues to the same final weights and history as an uninterrupted one
(same seed, device, threads and world size): the data order and augmentation generator,
the optimizer, the schedule, each rank's dropout stream and each rank's partial loss sum
are all saved.
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

PREEMPTED = 75  # exit code: stopped by SIGTERM with the resume state saved (sysexits' EX_TEMPFAIL)
EXIT_CODES = {signal.SIGINT: 130, signal.SIGTERM: PREEMPTED}


class TrainingInterrupted(DigitsError):
    def __init__(self, model: str, path: Path, world: int = 1, signum: int = signal.SIGINT):
        where = f"same --out, and {world} processes: --nproc {world} or the same launcher" if world > 1 else "same --out"
        what = "interrupted (Ctrl-C)" if signum == signal.SIGINT else f"stopped by {signal.Signals(signum).name}"
        super().__init__(f"Training of {model} was {what}; the state is saved in {path}. "
                         f"Continue with `digits train {model} --resume` ({where}).",
                         exit_code=EXIT_CODES.get(signum, 128 + signum))


class StopFlag:
    """Turns the first Ctrl-C or SIGTERM into a flag the loop checks between steps; under DDP
    the ranks agree on it (``digits.distributed.StopVote``), so all stop at the same step.
    ``signum`` is the signal that set it."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self):
        self.set = False
        self.signum = signal.SIGINT
        self._old: dict = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self._old = {s: signal.signal(s, self._handle) for s in self.SIGNALS}
        return self

    def _handle(self, signum, _frame):
        if not self.set:
            self.signum = signum
        self.set = True

    def __exit__(self, *exc):
        for s, old in self._old.items():
            signal.signal(s, old)


def snapshot(state: dict, cfg: TrainConfig, model, opt, sched, gen, dist: Dist) -> dict:
    """Everything a run needs to continue. A collective under DDP (every rank's dropout
    stream is gathered); rank 0 alone writes it. ``model`` is the unwrapped module."""
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []
    snap = {"config": asdict(cfg), "loop": state, "model": model.state_dict(), "opt": opt.state_dict(),
            "sched": sched.state_dict(), "gen": gen.get_state(), "world_size": dist.world,
            "torch_rng": torch.get_rng_state(), "cuda_rng": cuda}
    if dist.enabled:  # one stream per rank (its own device's on CUDA), and each rank's partial loss sum
        snap["torch_rng_by_rank"] = dist.gather(torch.get_rng_state())
        snap["loss_sum_by_rank"] = torch.cat(dist.gather(torch.tensor([state["loss_sum"]], dtype=torch.float64)))
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
        diff = ", ".join(f"{k}: saved {saved.get(k)!r} vs now {wanted.get(k)!r}"  # a setting newer than the save: None
                         for k in sorted(saved.keys() | wanted.keys()) if saved.get(k) != wanted.get(k))
        raise UsageError(f"--resume needs the same settings as the interrupted run ({diff}).")
    model.load_state_dict(snap["model"])
    opt.load_state_dict(snap["opt"])
    sched.load_state_dict(snap["sched"])
    gen.set_state(snap["gen"])
    if dist.enabled:
        torch.set_rng_state(snap["torch_rng_by_rank"][dist.rank])
        snap["loop"]["loss_sum"] = float(snap["loss_sum_by_rank"][dist.rank])  # this rank's own, not rank 0's
        if "cuda_rng_by_rank" in snap:
            torch.cuda.set_rng_state(snap["cuda_rng_by_rank"][dist.rank])
    else:
        torch.set_rng_state(snap["torch_rng"])
        if snap["cuda_rng"]:
            torch.cuda.set_rng_state_all(snap["cuda_rng"])
    return snap["loop"]
