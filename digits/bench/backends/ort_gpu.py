"""onnxruntime on the GPU beyond its plain CUDA provider: with CUDA graphs, and through TensorRT.

Both need ``onnxruntime-gpu`` (``make setup-gpu``); TensorRT also needs its own libraries.
Where a provider is missing, ``load`` raises what to install and the bench records that as
the cell's error: never a number from a provider other than the one named.
"""

from __future__ import annotations

import torch

from digits.bench.backends._base import register_backend
from digits.bench.backends.onnxruntime import OnnxRuntime


@register_backend
class OnnxRuntimeCudaGraph(OnnxRuntime):
    """The CUDA provider with ``enable_cuda_graph``: one captured graph per batch size.

    onnxruntime replays a captured graph only when the inputs and outputs sit at the same
    device addresses as at capture, so each batch size gets fixed device buffers bound once
    and its own ``gpu_graph_id`` (ids from 1: 0 is onnxruntime's own). ``prepare`` copies the
    batch into that size's input buffer (not timed); ``run`` is the replay.
    """

    name = "onnxruntime-cudagraph"
    devices = ("cuda",)
    precisions = ("fp32",)
    cuda_graph = True

    def _open(self, model, device, *, checkpoint, threads):
        super()._open(model, device, checkpoint=checkpoint, threads=threads)
        self.bindings: dict[int, object] = {}  # batch size -> its IO binding, bound once

    def prepare(self, x: torch.Tensor):
        arr = self._host(x)
        if len(x) not in self.bindings:
            import numpy as np
            import onnxruntime as ort

            value = ort.OrtValue.ortvalue_from_shape_and_type(list(arr.shape), np.float32, "cuda", 0)
            out = ort.OrtValue.ortvalue_from_shape_and_type([len(x), 10], np.float32, "cuda", 0)
            binding = self.session.io_binding()
            binding.bind_ortvalue_input("input", value)
            binding.bind_ortvalue_output("logits", out)
            binding._keep, binding._run_options = (value, out), ort.RunOptions()
            binding._run_options.add_run_config_entry("gpu_graph_id", str(len(self.bindings) + 1))
            self.bindings[len(x)] = binding
        binding = self.bindings[len(x)]
        binding._keep[0].update_inplace(arr)  # same address, new contents
        return binding


@register_backend
class TensorRT(OnnxRuntime):
    """``model.onnx`` through onnxruntime's TensorRT provider (CUDA takes any node it cannot).

    fp16 is TensorRT's ``trt_fp16_enable`` on the fp32 model: TensorRT may then pick fp16
    kernels layer by layer, and the cell's accuracy and parity say what that cost. Engines
    are built per input shape on first use (the cell's ``first_call_ms``), not cached to disk.
    """

    name = "tensorrt"
    devices = ("cuda",)
    precisions = ("fp32", "fp16")
    artifact_precisions = ("fp32",)  # fp16 is a build flag on model.onnx, not a file of its own
    gpu_kind = "tensorrt"
