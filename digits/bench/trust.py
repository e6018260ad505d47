"""Which bench cells may be trusted: parity against eager FP32 on the bench's own device.

Two checks, both through :mod:`digits.export.parity`:

- per backend x precision, :func:`backend_parity` on the full test set (chunked, whole,
  and batches 1/7/64), which also gives the accuracy the tables show;
- per timed cell, :func:`cell_parity` on that cell's own output: the last timed call on
  its prepared batch of real test images. Runtimes that build something per shape
  (OpenVINO's static models, CUDA graphs, TensorRT engines) are checked at every shape
  that is timed, not at one.

A cell with no parity result is untrusted, and its record says why.
"""

from __future__ import annotations

from pathlib import Path

import torch

from digits.bench.backends import Backend, create_backend
from digits.bench.environment import reason
from digits.export.parity import check_parity, compare_logits, reference_logits


def reference(model: str, device: str, checkpoint: str, x: torch.Tensor, threads: int) -> tuple[torch.Tensor | None, str | None]:
    """``(eager FP32 logits for x on device, None)``, or ``(None, why not)``."""
    try:
        eager = create_backend("eager").load(model, device, checkpoint=Path(checkpoint), threads=threads)
        return reference_logits(eager, x), None
    except Exception as e:  # noqa: BLE001 - every cell of this model then says why it is untrusted
        return None, f"no parity reference: eager fp32 could not run ({reason(e)})"


def backend_parity(backend: Backend, ref: torch.Tensor, x: torch.Tensor, y: torch.Tensor, precision: str,
                   chunk: int = 1000) -> dict:
    """The full test set through ``backend`` in batches of ``chunk`` (and 1, 7, 64). The bench
    passes its largest timed batch: a runtime's arena then never grows past what timing needs."""
    p = check_parity(backend, ref, x, y, chunk=chunk, precision=precision).to_dict()
    return {**p, "reference": f"eager fp32 on {backend.device}"}


def cell_parity(backend: Backend, output, ref_batch: torch.Tensor, precision: str) -> dict:
    """The timed call's own logits against eager FP32's for the very same images."""
    return {**compare_logits(backend.logits(output), ref_batch, precision), "reference": f"eager fp32 on {backend.device}"}
