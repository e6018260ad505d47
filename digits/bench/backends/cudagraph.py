"""The checkpoint's forward captured per batch size in a CUDA graph and replayed."""

from __future__ import annotations

import torch

from digits.bench.backends._base import Backend, register_backend
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

    def _open(self, model, device, *, checkpoint, threads):
        self.module = self._checkpoint_module(checkpoint, model)
        self.graphs: dict[int, tuple] = {}
        self.settings = {"cuda_graph": True, "warmup_iters": 3}

    def _graph(self, batch: int) -> tuple:
        if batch not in self.graphs:
            static_in = torch.zeros(batch, 1, 28, 28, device=self.device)
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
