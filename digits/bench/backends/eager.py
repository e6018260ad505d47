"""The checkpoint itself in PyTorch eager, in eval mode."""

from __future__ import annotations

from digits.bench.backends._base import CHECKPOINT_PRECISIONS, Backend, register_backend


@register_backend
class Eager(Backend):
    """PyTorch eager, model in eval mode, under ``inference_mode``."""

    name = "eager"
    precisions = CHECKPOINT_PRECISIONS

    def _open(self, model, device, *, checkpoint, threads):
        self.module = self._checkpoint_module(checkpoint, model)
