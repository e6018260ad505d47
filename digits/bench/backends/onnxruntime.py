"""onnxruntime with explicit session options and IO binding (CPU, or its CUDA provider)."""

from __future__ import annotations

import torch

from digits.bench.backends._base import Backend, register_backend
from digits.data import check_input
from digits.export import get_format


@register_backend
class OnnxRuntime(Backend):
    """onnxruntime with explicit session options and IO binding."""

    name = "onnxruntime"
    format = "onnx"
    precisions = ("fp32", "int8")  # its CPU provider has no bf16 convolutions; int8 is model.int8.onnx
    # Spinning threads cut small-batch latency in a benchmark; a server sharing the cores
    # with its event loop turns it off (digits serve sets spinning = False).
    spinning = True
    # On --device cuda: which provider (digits.export.onnx.gpu_provider) and its CUDA-graph option.
    gpu_kind, cuda_graph = "cuda", False

    def _open(self, model, device, *, checkpoint, threads):
        from digits.export.onnx import gpu_provider, session_options

        provider = gpu_provider(self.gpu_kind, cuda_graph=self.cuda_graph, fp16=self.precision == "fp16")
        self.session = get_format("onnx").open(self.artifact, device, threads=threads, spinning=self.spinning,
                                               provider=provider)  # ignored on the CPU
        self.settings = session_options(self.session) | ({"cuda_graph": True} if self.cuda_graph else {})

    @property
    def provider(self) -> str:
        return self.session.get_providers()[0]

    @staticmethod
    def _host(x: torch.Tensor):
        check_input(x)
        return x.detach().cpu().contiguous().numpy()

    def prepare(self, x: torch.Tensor):
        import onnxruntime as ort

        arr = self._host(x)
        binding = self.session.io_binding()
        if self.device == "cuda":
            value = ort.OrtValue.ortvalue_from_numpy(arr, "cuda", 0)
            binding.bind_ortvalue_input("input", value)
            binding.bind_output("logits", "cuda", 0)
        else:
            value = ort.OrtValue.ortvalue_from_numpy(arr)
            binding.bind_ortvalue_input("input", value)
            binding.bind_output("logits")
        binding._keep, binding._run_options = value, None  # the OrtValue must outlive the binding
        return binding

    def run(self, binding):
        self.session.run_with_iobinding(binding, binding._run_options)
        if self.device == "cuda":
            binding.synchronize_outputs()  # the host clock stops when the logits are there
        return binding

    def numpy_call(self, x):
        """The plain session call on the CPU (no IO binding, no torch round trip): for one
        served image this cost 25 us less than the timed path, which binds for the bench's
        repeated calls on one prepared batch."""
        if self.device != "cpu":
            return super().numpy_call(x)
        return self.session.run(("logits",), {"input": x})[0]

    def logits(self, binding) -> torch.Tensor:
        return torch.from_numpy(binding.copy_outputs_to_cpu()[0])
