"""The training loss as it runs, without a host sync per step on CUDA."""

from __future__ import annotations

import torch


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
