"""The torch.export (.pt2) artifact."""

from __future__ import annotations

from digits.bench.backends._base import Backend, register_backend
from digits.export import get_format


@register_backend
class Pt2(Backend):
    """The torch.export program, run through ``ExportedProgram.module()``."""

    name = "pt2"
    format = "pt2"

    def _open(self, model, device, *, checkpoint, threads):
        self.module = get_format("pt2").open(self.artifact, device)
