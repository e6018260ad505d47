"""The CUDA training step as a replayed CUDA graph: gather, augment, forward, loss, backward.

An eager step on a GPU launches ~60 small kernels for LeNet-5, each costing more host time
than the GPU spends on it, so training is launch-bound. Captured once per batch size on
static buffers (the batch's indices and augmentation parameters), a step is a copy into those
buffers plus one ``replay()``.

The optimizer step and the schedule stay outside the graph, on purpose: fused AdamW is a launch
or two, and a captured optimizer would bake OneCycle's per-step beta1 into the graph (fused
AdamW reads betas as host scalars), changing the recipe. Outside, the numbers are the eager
loop's: the graph zeroes the static gradients and accumulates into them, ``0 + g == g``.

``capture=False`` runs the same body through the same buffers without a graph, which is how
the CPU test suite checks it against the eager loop bit for bit.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from digits.augment import apply, identity

WARMUP_STEPS = 3  # PyTorch's recipe: a few eager iterations on a side stream before capture


@dataclass
class _Slot:
    idx: torch.Tensor  # static: the batch's row indices into the training set
    aug: torch.Tensor | None  # static: per-image augmentation parameters (digits.augment), None without
    loss: torch.Tensor | None = None  # static output of the captured graph
    graph: torch.cuda.CUDAGraph | None = None


class StaticStep:
    """``step(idx, aug) -> loss``: forward and backward of one batch, gradients left in ``.grad``."""

    def __init__(self, model: nn.Module, train_x: torch.Tensor, train_y: torch.Tensor, *, sizes: list[int],
                 label_smoothing: float, augment: bool, capture: bool, continental: bool = False):
        self.model, self.x, self.y, self.continental = model, train_x, train_y, continental
        self.label_smoothing, self.capture = label_smoothing, capture
        device = train_x.device
        self.slots = {n: _Slot(torch.zeros(n, dtype=torch.long, device=device),  # parameters overwritten each step
                               identity(n, device) if augment else None) for n in sizes}
        self.setup_seconds = 0.0

    def _body(self, slot: _Slot) -> torch.Tensor:
        if self.capture:  # in place: the graph keeps writing into these very tensors
            for p in self.model.parameters():
                if p.grad is not None:
                    p.grad.zero_()
        else:  # the eager loop's own habit, so --no-cuda-graph is the best eager step
            self.model.zero_grad(set_to_none=True)
        x, y = self.x[slot.idx], self.y[slot.idx]
        if slot.aug is not None:
            x = apply(x, slot.aug, y if self.continental else None)
        loss = F.cross_entropy(self.model(x), y, label_smoothing=self.label_smoothing)
        loss.backward()
        return loss

    def warm_up(self) -> None:
        """A few eager passes per batch size on a side stream (cuDNN/cuBLAS set-up, autotuning),
        then, with ``capture``, one graph per batch size. CUDA only; the weights are untouched
        and dropout's random stream is restored, so a run still reproduces."""
        t0 = time.perf_counter()
        rng = torch.cuda.get_rng_state()
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for slot in self.slots.values():
                for _ in range(WARMUP_STEPS):
                    self._body(slot)
        torch.cuda.current_stream().wait_stream(side)
        for slot in self.slots.values() if self.capture else ():
            slot.graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(slot.graph):
                slot.loss = self._body(slot)
        torch.cuda.synchronize()
        torch.cuda.set_rng_state(rng)
        self.setup_seconds = time.perf_counter() - t0

    def __call__(self, idx: torch.Tensor, aug: torch.Tensor | None) -> torch.Tensor:
        slot = self.slots[len(idx)]
        slot.idx.copy_(idx)  # device to device: idx is a slice of the epoch's permutation
        if slot.aug is not None:
            # pinned + non_blocking: a pageable copy would wait for the GPU every step
            src = aug.pin_memory() if slot.aug.is_cuda else aug
            slot.aug.copy_(src, non_blocking=slot.aug.is_cuda)
        if not self.capture:
            return self._body(slot)
        slot.graph.replay()
        return slot.loss


def batch_sizes(n: int, batch_size: int) -> list[int]:
    """The distinct batch sizes of an epoch: the full batch, and the remainder if any."""
    sizes = [min(n, batch_size)]
    if n > batch_size and n % batch_size:
        sizes.append(n % batch_size)
    return sizes
