"""The frozen TorchScript artifact."""

from __future__ import annotations

import warnings

import torch

from digits.bench.backends._base import Backend, register_backend
from digits.export import get_format


@register_backend
class TorchScript(Backend):
    """The frozen TorchScript artifact; on CPU with convolutions, ``optimize_for_inference``.

    optimize_for_inference moves convolutions to oneDNN's blocked layout: 3.6x the
    batch-256 throughput of the plain frozen module for LeNet-5 on this CPU. A graph
    without convolutions only gets its linears converted, which made the MLP 1.1-1.5x
    slower at batches 8-256 and bimodal from run to run, so it is left plain.
    """

    name = "torchscript"
    format = "torchscript"

    def _open(self, model, device, *, checkpoint, threads):
        module = get_format("torchscript").open(self.artifact, device)
        # oneDNN's blocked layout is FP32-only: a bf16 graph stays as exported (channels-last).
        optimize = device == "cpu" and self.precision == "fp32" and _has_conv(module)
        if optimize:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                module = torch.jit.optimize_for_inference(module)
        self.settings = {"optimize_for_inference": optimize}
        self.module = module


def _has_conv(module) -> bool:
    # The artifact is frozen, so its graph is inlined: every op is a node here.
    return any(n.kind() in ("aten::conv2d", "aten::_convolution") for n in module.graph.nodes())
