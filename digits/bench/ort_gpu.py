"""onnxruntime on the GPU beyond its plain CUDA provider: with CUDA graphs, and through TensorRT.

Both need ``onnxruntime-gpu`` (``make setup-gpu``); TensorRT also needs its own libraries.
Where a provider is missing, ``load`` raises what to install and the bench records that as
the cell's error: never a number from a provider other than the one named.
"""

from __future__ import annotations

import torch

from digits.bench.backends import OnnxRuntime, register_backend
from digits.data import check_input


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

    def _provider(self):
        from digits.export.onnx import gpu_provider

        return gpu_provider("cuda", cuda_graph=True)

    def _open(self, model, device, *, checkpoint, threads):
        super()._open(model, device, checkpoint=checkpoint, threads=threads)
        self.slots: dict[int, tuple] = {}
        self.settings["cuda_graph"] = True

    def _slot(self, batch: int) -> tuple:
        if batch not in self.slots:
            import numpy as np
            import onnxruntime as ort

            x = ort.OrtValue.ortvalue_from_shape_and_type([batch, 1, 28, 28], np.float32, "cuda", 0)
            y = ort.OrtValue.ortvalue_from_shape_and_type([batch, 10], np.float32, "cuda", 0)
            binding = self.session.io_binding()
            binding.bind_ortvalue_input("input", x)
            binding.bind_ortvalue_output("logits", y)
            options = ort.RunOptions()
            options.add_run_config_entry("gpu_graph_id", str(len(self.slots) + 1))
            self.slots[batch] = (binding, options, x, y)
        return self.slots[batch]

    def prepare(self, x: torch.Tensor):
        check_input(x)
        slot = self._slot(len(x))
        slot[2].update_inplace(x.detach().cpu().contiguous().numpy())  # same address, new contents
        return slot

    def run(self, slot):
        binding, options = slot[0], slot[1]
        self.session.run_with_iobinding(binding, options)
        binding.synchronize_outputs()  # the host clock stops when the logits are there
        return slot

    def logits(self, slot) -> torch.Tensor:
        return torch.from_numpy(slot[3].numpy())  # a copy: the next replay overwrites the buffer


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

    def _provider(self):
        from digits.export.onnx import gpu_provider

        return gpu_provider("tensorrt", fp16=self.precision == "fp16")
