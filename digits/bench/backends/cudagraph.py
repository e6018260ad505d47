"""The checkpoint's forward captured per batch size in a CUDA graph and replayed, and the
variants that change which kernels get captured (the levers of docs/bench.md's GPU section)."""

from __future__ import annotations

import contextlib

import torch

from digits.bench.backends._base import CHECKPOINT_PRECISIONS, Backend, register_backend
from digits.bench.backends.compile import compiled
from digits.data import check_input


@register_backend
class CudaGraph(Backend):
    """The eager forward captured once per batch size in a CUDA graph; a call is one replay.

    A separate backend rather than a bench option, so that its cells sit beside eager's in
    every table and the gain is read off directly. Capture follows PyTorch's recipe: warm-up
    on a side stream, then ``torch.cuda.graph`` on a static input buffer. ``prepare`` copies
    the batch into that buffer (not timed); ``run`` is ``graph.replay()``, timed the same
    way as every cell (digits.bench.timing).
    """

    name = "cudagraph"
    devices = ("cuda",)
    precisions = CHECKPOINT_PRECISIONS
    autotune = False  # cuDNN times its convolution algorithms during warm-up (cudnn.benchmark)
    channels_last = False  # NHWC activations and weights in FP32 too (bf16/fp16 are always)
    compile_mode: str | None = None  # torch.compile's mode, the compiled kernels captured

    def _open(self, model, device, *, checkpoint, threads):
        self.module = self._checkpoint_module(checkpoint, model)
        self.settings = {"cuda_graph": True, "warmup_iters": 3, "cudnn_benchmark": self.autotune,
                         "channels_last": self.channels_last}
        if self.channels_last:
            self.module = self.module.to(memory_format=torch.channels_last)
        if self.compile_mode:
            self.module, more = compiled(self.module, self.compile_mode)
            self.settings.update(more)
        self.graphs: dict[int, tuple] = {}

    def _graph(self, batch: int) -> tuple:
        if batch not in self.graphs:
            static_in = torch.zeros(batch, 1, 28, 28, device=self.device)
            if self.channels_last:
                static_in = static_in.contiguous(memory_format=torch.channels_last)
            with self._autotuning():
                side = torch.cuda.Stream()
                side.wait_stream(torch.cuda.current_stream())
                with torch.cuda.stream(side):
                    for _ in range(self.settings["warmup_iters"]):  # lazy init and autotuning off the graph
                        self.module(static_in)
                torch.cuda.current_stream().wait_stream(side)
                graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(graph):
                    static_out = self.module(static_in)
            self.graphs[batch] = (graph, static_in, static_out)
        return self.graphs[batch]

    @contextlib.contextmanager
    def _autotuning(self):
        # Process-wide, so on for this capture only; the algorithms it picked stay in the graph.
        old = torch.backends.cudnn.benchmark
        torch.backends.cudnn.benchmark = self.autotune or old
        try:
            yield
        finally:
            torch.backends.cudnn.benchmark = old

    def keep_shapes(self, batch_sizes) -> None:
        for size in set(self.graphs) - set(batch_sizes):
            del self.graphs[size]

    @torch.inference_mode()
    def prepare(self, x: torch.Tensor):
        # Always under inference_mode: a graph first built inside it (the parity check runs
        # there) owns inference tensors, which may only be written inside it.
        check_input(x)
        graph, static_in, static_out = self._graph(len(x))
        static_in.copy_(x.to(self.device))
        return graph, static_out

    def run(self, prepared):
        graph, static_out = prepared
        graph.replay()
        return static_out

    def logits(self, out) -> torch.Tensor:
        return out.float().cpu()  # a copy: the static output is overwritten by the next replay


# The levers for the GPU's batch-256 target, each a backend of its own so that one sweep
# measures them side by side (none is in the default sweep: `--backends` names them).
@register_backend
class CudaGraphAutotune(CudaGraph):
    """cudagraph with cuDNN's autotuner on before capture (``cudnn.benchmark``)."""
    name, default, autotune = "cudagraph-autotune", False, True


@register_backend
class CudaGraphChannelsLast(CudaGraph):
    """cudagraph with the model and input channels-last (NHWC) in every precision."""
    name, default, channels_last = "cudagraph-cl", False, True


@register_backend
class CudaGraphTuned(CudaGraph):
    """cudagraph with both: channels-last, and cuDNN's autotuner before capture."""
    name, default, autotune, channels_last = "cudagraph-tuned", False, True, True


@register_backend
class CudaGraphCompile(CudaGraph):
    """torch.compile with ``max-autotune`` (Triton GEMM/conv templates, conv+bias+ReLU fused),
    its kernels captured in our graph (inductor's own graphs off: one graph, one replay)."""
    name, default, compile_mode = "cudagraph-compile", False, "max-autotune-no-cudagraphs"
