"""Runtimes behind one small interface: ``load(model, device, ...)`` then ``__call__(batch)``.

Adding a backend is one module with a ``@register_backend`` class, imported here. For
timing, a backend splits a call into ``prepare`` (device placement, ONNX Runtime IO
binding: not timed) and ``run`` (the timed part), so host<->device copies never land in a
latency figure. The import order below is the order of ``list_backends()``.
"""

from digits.bench.backends._base import Backend, create_backend, list_backends, register_backend
from digits.bench.backends.eager import Eager
from digits.bench.backends.torchscript import TorchScript
from digits.bench.backends.pt2 import Pt2
from digits.bench.backends.compile import Compile
from digits.bench.backends.cudagraph import (CudaGraph, CudaGraphAutotune, CudaGraphChannelsLast, CudaGraphCompile,
                                             CudaGraphTuned)
from digits.bench.backends.onnxruntime import OnnxRuntime
from digits.bench.backends.ort_gpu import OnnxRuntimeCudaGraph, TensorRT
from digits.bench.backends.openvino import OpenVino

__all__ = ["Backend", "Compile", "CudaGraph", "CudaGraphAutotune", "CudaGraphChannelsLast", "CudaGraphCompile",
           "CudaGraphTuned", "Eager", "OnnxRuntime", "OnnxRuntimeCudaGraph", "OpenVino", "Pt2",
           "TensorRT", "TorchScript", "create_backend", "list_backends", "register_backend"]
