"""The OpenVINO backend (optional: ``pip install 'digits[openvino]'``), CPU only.

It runs ``model.onnx`` at an inference-precision hint (f32, bf16, f16) and
``model.int8.onnx`` (its QDQ pairs become int8 kernels). OpenVINO's own default on a CPU
with AMX is bf16, so FP32 is asked for explicitly, and the precision OpenVINO actually
chose is read back: a hint it ignores is an error, never an FP32 run labelled bf16.

Each batch size gets its own static-shape compiled model and one infer request, reused
for every call, whose input tensor shares the prepared array's memory: ``run`` is a bare
``request.infer()``, the fastest synchronous call path OpenVINO offers from Python.

Serving (``compile_buckets``) compiles power-of-two batch sizes up front and pads each
batch up to its bucket: a compile takes tens of milliseconds and would block every model
on the inference thread, so none may happen on a request's path.
"""

from __future__ import annotations

import functools

import numpy as np
import torch

from digits.bench.backends._base import Backend, register_backend
from digits.cores import usable_cores
from digits.data import check_input
from digits.errors import DigitsError

HINTS = {"fp32": "f32", "bf16": "bf16", "fp16": "f16", "int8": "f32"}  # int8 lives in the file; the rest is FP32


@functools.lru_cache(maxsize=1)
def core():
    """The one ``ov.Core`` of the process, as OpenVINO recommends. It is never destroyed:
    releasing a Core (and with it the CPU plugin) while compiled models it made were being
    freed left this process crashing on its next signal (a Ctrl-C, seen here)."""
    import openvino as ov

    return ov.Core()


def compile_config(precision: str, threads: int | None) -> dict:
    return {"INFERENCE_PRECISION_HINT": HINTS[precision], "PERFORMANCE_HINT": "LATENCY",
            "INFERENCE_NUM_THREADS": int(threads or usable_cores())}


COMPUTE = ("Convolution", "FullyConnected", "MatMul")  # the layers where the arithmetic is
RUNTIME_TYPES = {"fp32": ("f32",), "bf16": ("bf16",), "fp16": ("f16",), "int8": ("u8", "i8")}


def runtime_precisions(compiled) -> dict[str, int]:
    """``{runtime precision: count}`` over the compute layers OpenVINO actually built."""
    counts: dict[str, int] = {}
    for op in compiled.get_runtime_model().get_ordered_ops():
        info = op.get_rt_info()
        if info["layerType"].astype(str) in COMPUTE:
            kind = info["runtimePrecision"].astype(str)
            counts[kind] = counts.get(kind, 0) + 1
    return counts


def check_runtime_precision(compiled, precision: str, what: str) -> dict[str, int]:
    """Refuse a compiled model none of whose compute layers runs in ``precision``."""
    counts = runtime_precisions(compiled)
    if not any(counts.get(t) for t in RUNTIME_TYPES[precision]):
        raise DigitsError(f"OpenVINO built {what} with no {precision} compute layer ({counts or 'none'}); "
                          f"refusing to label it {precision}.")
    return counts


@register_backend
class OpenVino(Backend):
    name = "openvino"
    format = "onnx"
    precisions = ("fp32", "bf16", "fp16", "int8")
    devices = ("cpu",)
    artifact_precisions = ("fp32", "int8")  # bf16/fp16 are a hint on the FP32 file

    @classmethod
    def available(cls) -> str | None:
        try:
            import openvino  # noqa: F401
        except ImportError:
            return "OpenVINO is not installed here: pip install 'digits[openvino]' (or pip install openvino)."
        return None

    def _open(self, model, device, *, checkpoint, threads):
        import openvino as ov

        self.core = core()
        self.model = self.core.read_model(str(self.artifact))
        self.config = compile_config(self.precision, threads)
        self.compiled: dict[int, object] = {}
        self.buckets: list[int] = []  # serving: the only batch sizes compiled, fixed at start-up
        probe = self._compiled(1)
        chosen = probe.get_property("INFERENCE_PRECISION_HINT").get_type_name()
        if chosen != HINTS[self.precision]:
            raise DigitsError(f"OpenVINO chose {chosen}, not {HINTS[self.precision]}, on this CPU: it has no native "
                              f"{self.precision}. Refusing to report that run as {self.precision}.")
        layers = check_runtime_precision(probe, self.precision, f"{model} at {self.precision}")
        self.settings = {"openvino": ov.__version__, "inference_precision": chosen, "compute_layers": layers,
                         "performance_hint": "LATENCY", "threads": self.config["INFERENCE_NUM_THREADS"],
                         "static_shape_per_batch": True}

    def compile_buckets(self, largest: int) -> list[int]:
        """Compile batch sizes 1, 2, 4, ... up to ``largest`` now; from then on a batch is padded up
        to the smallest bucket that holds it, and asking for another size is an error."""
        sizes = sorted({min(2**k, largest) for k in range(largest.bit_length() + 1)})
        for size in sizes:
            self._compiled(size)
        self.buckets = sizes
        self.settings["batch_buckets"] = sizes
        return sizes

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if not self.buckets:
            return super().__call__(x)
        n = len(x)
        size = next((b for b in self.buckets if b >= n), None)
        if size is None:
            raise DigitsError(f"A batch of {n} is larger than the largest compiled bucket ({self.buckets[-1]}).")
        padded = x if size == n else torch.cat([x, x.new_zeros((size - n, *x.shape[1:]))])
        return super().__call__(padded)[:n]

    def keep_shapes(self, batch_sizes) -> None:
        for size in set(self.compiled) - set(batch_sizes) - set(self.buckets):
            del self.compiled[size]

    def _compiled(self, batch: int):
        if batch not in self.compiled:
            if self.buckets:  # a programming error, not bad input: serving pads to its buckets
                raise RuntimeError(f"batch size {batch} is not a compiled bucket {self.buckets}")
            m = self.model.clone()
            m.reshape([batch, 1, 28, 28])
            self.compiled[batch] = self.core.compile_model(m, "CPU", self.config)
        return self.compiled[batch]

    @property
    def provider(self) -> str:
        return "openvino-CPU"

    def prepare(self, x: torch.Tensor):
        import openvino as ov

        check_input(x)
        arr = np.ascontiguousarray(x.detach().cpu().numpy())
        request = self._compiled(len(arr)).create_infer_request()
        request.set_input_tensor(ov.Tensor(arr, shared_memory=True))
        request._digits_keep = arr  # the shared buffer must outlive the request
        return request

    def run(self, request):
        request.infer()
        return request

    def logits(self, request) -> torch.Tensor:
        return torch.from_numpy(np.array(request.get_output_tensor(0).data, dtype=np.float32, copy=True))
