"""Data-parallel training on torch.distributed: who this process is, and the few collectives
the training loop needs.

``digits train --nproc N`` re-launches the same command under torchrun's standalone mode
(:func:`launch`, ``torch.distributed.run``); a process that torchrun or Slurm started is
found from its environment (:func:`init_from_env`: ``RANK``/``WORLD_SIZE``, or srun's
``SLURM_PROCID``/``SLURM_STEP_NUM_TASKS``) and joins the group over ``env://``, with gloo on the
CPU and NCCL on CUDA. The loop itself (digits.train) follows pytorch/examples' DDP recipe
with the splits held in memory on every rank: the same permutation from the shared seed,
each rank taking its stride of every global batch (no DistributedSampler: its padding
repeats samples and its RNG would break ``--resume``).
"""

from __future__ import annotations

import gc
import os
import signal
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F

from digits.cores import cores_per_process  # noqa: F401  (the CLI's import)
from digits.errors import DigitsError, UsageError


@dataclass(frozen=True)
class Dist:
    """This process's place in the group; ``Dist()`` is a plain single process."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    local_world: int = 1
    nodes: int = 1
    backend: str | None = None

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def main(self) -> bool:
        return self.rank == 0

    def describe(self) -> dict:
        return {"world_size": self.world, "backend": self.backend, "nodes": self.nodes}

    def shard(self, t: torch.Tensor) -> torch.Tensor:
        """This rank's stride of a global batch (rows rank, rank + W, ...)."""
        return t[self.rank::self.world] if self.enabled else t

    def _tensor(self, values, dtype) -> torch.Tensor:
        device = f"cuda:{self.local_rank}" if self.backend == "nccl" else "cpu"
        return torch.tensor(values, dtype=dtype, device=device)

    def agree(self, flag: bool) -> bool:
        """True on every rank if it is true on any: all ranks then stop at the same step."""
        if not self.enabled:
            return flag
        t = self._tensor([int(flag)], torch.int32)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return bool(t.item())

    def sum(self, values: list[float]) -> list[float]:
        """Element-wise sums over the ranks (float64, so counts stay exact)."""
        if not self.enabled:
            return list(values)
        t = self._tensor(values, torch.float64)
        dist.all_reduce(t)
        return t.tolist()

    def gather(self, t: torch.Tensor) -> list[torch.Tensor]:
        """Every rank's ``t`` (same shape and dtype on all), on the CPU. Tensors, not pickled
        objects: nothing received from another process is ever unpickled."""
        if not self.enabled:
            return [t]
        local = t.to(self._tensor([], t.dtype).device)
        out = [torch.empty_like(local) for _ in range(self.world)]
        dist.all_gather(out, local)
        return [o.cpu() for o in out]

    def only(self, here: bool, fn, what: str):
        """``fn()`` on the ranks where ``here`` (rank 0's writes, local rank 0's download), then
        every rank learns whether it worked: the agreement is the barrier. A rank that failed
        raises its own error; the others raise :class:`RankFailed` at once, rather than wait
        at a barrier for the collective timeout (30 min) when no torchrun is there to stop them."""
        error, result = None, None
        if here:
            try:
                result = fn()
            except Exception as e:  # noqa: BLE001 - said below, on this rank, as a DigitsError
                error = e if isinstance(e, DigitsError) else DigitsError(f"Could not {what}: {e}")
        if self.agree(error is not None) and error is None:
            raise RankFailed(f"Stopped: another rank could not {what} (its message says why).")
        if error is not None:
            raise error from None
        return result


class RankFailed(DigitsError):
    """Another rank failed at a step every rank waits for; that rank says why."""


class StopVote:
    """Which signal (Ctrl-C, SIGTERM), if any, a rank was asked to stop by, agreed so that all
    ranks stop at the same step and say the same thing, without a blocking collective per
    step: each step's vote (the signal's number, 0 for none; the highest wins) is an async
    all-reduce on a CPU (gloo) group of its own, read at the next step. So NCCL runs never
    sync host and device for it, and a signal is answered one step later (milliseconds)."""

    def __init__(self, d: Dist):
        self.d, self.pending = d, None
        self.group = dist.new_group(backend="gloo") if d.enabled else None

    def __call__(self, signum: int) -> int:
        if not self.d.enabled:
            return signum
        if agreed := self.settle():
            return agreed  # every rank read the same vote at this same step: no new one is started
        t = torch.tensor([signum], dtype=torch.int32)
        self.pending = (dist.all_reduce(t, op=dist.ReduceOp.MAX, group=self.group, async_op=True), t)
        return 0

    def settle(self) -> int:
        """The vote in flight, waited for (0 when none is)."""
        if self.pending is None:
            return 0
        work, t = self.pending
        work.wait()
        self.pending = None
        return int(t.item())

    def close(self) -> None:
        """The vote in flight settled. The group itself stays until the process group is
        destroyed: tearing a gloo group down while the other rank may still be finishing its
        side of the last vote aborted a process once ("terminate called without an active
        exception")."""
        self.settle()


def shard_loss(logits: torch.Tensor, y: torch.Tensor, label_smoothing: float, batch: int, dist: Dist) -> torch.Tensor:
    """This rank's loss for a global batch of ``batch`` images. One process: the batch mean.
    Under DDP: the sum over this rank's images / batch x W, so that DDP's average of the
    ranks' gradients is the gradient of the global batch mean, whatever the split."""
    if not dist.enabled:
        return F.cross_entropy(logits, y, label_smoothing=label_smoothing)
    return F.cross_entropy(logits, y, label_smoothing=label_smoothing, reduction="sum") * (dist.world / batch)


def check_training(cfg, device: torch.device, dist: Dist) -> None:
    """What a DDP run refuses: a global batch that does not split evenly, CUDA graphs."""
    if not dist.enabled:
        return
    if cfg.batch_size % dist.world:
        raise UsageError(f"--batch-size is the global batch: {cfg.batch_size} does not split evenly over "
                         f"{dist.world} processes. Use a multiple of {dist.world}.")
    if device.type == "cuda" and cfg.cuda_graph:
        raise UsageError("CUDA graphs with DDP have not been tested on several GPUs yet: add --no-cuda-graph.")


def wrap(net: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    from torch.nn.parallel import DistributedDataParallel

    # the weights are already equal on every rank (same seed); DDP checks and broadcasts them anyway
    return DistributedDataParallel(net, device_ids=[torch.cuda.current_device()] if device.type == "cuda" else None)


def current() -> Dist:
    """The initialized process group as a :class:`Dist`, or a single process."""
    if not (dist.is_available() and dist.is_initialized()):
        return Dist()
    world = dist.get_world_size()
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", world))
    # torchrun's GROUP_WORLD_SIZE counts its agents, one per node
    nodes = int(os.environ.get("GROUP_WORLD_SIZE") or max(1, world // max(1, local_world)))
    return Dist(rank=dist.get_rank(), world=world, local_rank=int(os.environ.get("LOCAL_RANK", 0)),
                local_world=local_world, nodes=nodes, backend=dist.get_backend())


def launched() -> bool:
    """Started by torchrun (or any launcher that sets RANK/WORLD_SIZE), or by srun as one of
    several tasks of a job step. The step's variables, not the job's: a batch script itself
    runs with SLURM_NTASKS > 1 too, and must not wait there for ranks that never come."""
    return "RANK" in os.environ or int(os.environ.get("SLURM_STEP_NUM_TASKS", "1")) > 1


def _from_slurm() -> None:
    """Slurm's task variables as torch.distributed's; MASTER_ADDR must name the first node."""
    env = os.environ
    if "MASTER_ADDR" not in env:
        raise UsageError("Under Slurm, set MASTER_ADDR to the first node's address, e.g. "
                         "export MASTER_ADDR=$(scontrol show hostnames $SLURM_JOB_NODELIST | head -n1).")
    env.setdefault("RANK", env["SLURM_PROCID"])
    env.setdefault("WORLD_SIZE", env["SLURM_STEP_NUM_TASKS"])
    env.setdefault("LOCAL_RANK", env.get("SLURM_LOCALID", "0"))
    env.setdefault("LOCAL_WORLD_SIZE", env.get("SLURM_STEP_TASKS_PER_NODE", "1").split("(")[0])  # "4(x2)"
    env.setdefault("GROUP_WORLD_SIZE", env.get("SLURM_STEP_NUM_NODES", "1"))
    env.setdefault("MASTER_PORT", "29500")


def init_from_env(device: torch.device) -> Dist:
    """Join the group this process was launched into: gloo on the CPU, NCCL on CUDA."""
    if "RANK" not in os.environ:
        _from_slurm()
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    try:
        dist.init_process_group(backend=backend, init_method="env://")
    except (RuntimeError, ValueError, KeyError) as e:
        raise DigitsError(f"Could not join the distributed group ({backend}, rank {os.environ.get('RANK')} of "
                          f"{os.environ.get('WORLD_SIZE')}): {str(e).splitlines()[0]}") from None
    return current()


def finish() -> None:
    """Leave the group. The barrier first: a rank tearing gloo down while another still talks
    to it aborted the process ("terminate called without an active exception"). Only for
    ends every rank reaches alike; a rank that failed alone just exits, and torchrun stops
    the others. The collection first: a DDP wrapper left in a reference cycle keeps the group
    alive past ``destroy_process_group``, to be torn down while the interpreter shuts down,
    where gloo's threads abort the process (a suspect in one such abort)."""
    if dist.is_available() and dist.is_initialized():
        gc.collect()
        dist.barrier()
        dist.destroy_process_group()


def launch(nproc: int, argv: list[str], saved_states=lambda: []) -> None:
    """Run ``digits <argv>`` as ``nproc`` processes under torchrun's standalone mode (one
    machine, a local rendezvous on a free port); torchrun watches them and stops the others
    when one fails. A failing worker's own message is on stderr; its exit code is re-raised.
    ``saved_states()``: the resume states written since the launch (what a signal saved)."""
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import get_args_parser, run

    # torchrun would set it to 1 with a warning; this is the same split, said once
    os.environ.setdefault("OMP_NUM_THREADS", str(cores_per_process(nproc)))
    args = get_args_parser().parse_args(["--standalone", f"--nproc-per-node={nproc}", "-m", "digits", *argv])
    try:
        run(args)
    except SignalException as e:  # Ctrl-C or SIGTERM: torchrun passed it on and waited for the workers
        code = 130 if e.sigval == signal.SIGINT else 128 + int(e.sigval)
        saved = [str(p) for p in saved_states()]
        if saved:  # the workers agreed, rank 0 saved, and each said so above
            from digits.resume import EXIT_CODES
            raise DigitsError(f"Stopped by {signal.Signals(e.sigval).name}; the resume state is in "
                              f"{', '.join(saved)}: continue with the same command and --resume.",
                              exit_code=EXIT_CODES.get(e.sigval, code)) from None
        raise DigitsError(f"Stopped by {signal.Signals(e.sigval).name} before any resume state was saved "
                          "(training had not started, or the workers did not stop in time): nothing to resume.",
                          exit_code=code) from None
    except ChildFailedError as e:
        rank, first = e.get_first_failure()  # the others were stopped because of it
        if first.exitcode < 0:  # killed by a signal (the OOM killer, kill -9): no message of its own
            raise DigitsError(f"Training under torchrun failed: rank {rank} was killed by "
                              f"{signal.Signals(-first.exitcode).name}, and torchrun stopped the others. No resume state was "
                              "written (only Ctrl-C or SIGTERM writes one).", exit_code=1) from None
        raise DigitsError(f"Training under torchrun failed: rank {rank} exited with {first.exitcode}; its message "
                          "is above.", exit_code=first.exitcode) from None
