"""Runtimes behind one small interface: ``load(model, device, ...)`` then ``__call__(batch)``.

Adding a backend is one class with ``@register_backend``. For timing, a backend splits a
call into ``prepare`` (device placement, ONNX Runtime IO binding: not timed) and ``run``
(the timed part), so host<->device copies never land in a latency figure.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import torch

from digits.checkpoint import WEIGHTS, checkpoint_dir, load_checkpoint
from digits.data import check_input
from digits.errors import DigitsError, RuntimeMissing, UsageError
from digits.export import artifact_name, checked_path, get_format
from digits.precision import at_precision, check_precision

_BACKENDS: dict[str, type[Backend]] = {}


def register_backend(cls):
    _BACKENDS[cls.name] = cls
    return cls


def list_backends() -> list[str]:
    return list(_BACKENDS)


def create_backend(name: str) -> Backend:
    if name not in _BACKENDS:
        raise UsageError(f"Unknown backend {name!r}. Choose from: {', '.join(list_backends())}.")
    return _BACKENDS[name]()


class Backend:
    name = ""
    format: str | None = None  # the export format it runs, None for the checkpoint itself
    default = True  # part of the default sweep
    devices: tuple[str, ...] = ("cpu", "cuda")
    precisions: tuple[str, ...] = ("fp32", "bf16", "fp16")  # what it can run (digits.precision)
    artifact_precisions: tuple[str, ...] | None = None  # precisions that have their own artifact file

    def __init__(self):
        self.device = "cpu"
        self.precision = "fp32"
        self.artifact: Path | None = None
        self.settings: dict = {}

    @classmethod
    def available(cls) -> str | None:
        """None if it can run here, else what to install."""
        return None

    # -- loading
    def load(self, model: str, device: str = "cpu", *, checkpoint: Path = Path("artifacts"),
             artifacts: Path = Path("artifacts"), threads: int | None = None, precision: str = "fp32") -> Backend:
        self.device, self.precision = device, check_precision(precision)
        if precision not in self.precisions:
            raise DigitsError(f"{self.name} does not run {precision} (it runs {', '.join(self.precisions)}).")
        if device not in self.devices:
            raise DigitsError(f"{self.name} runs on {', '.join(self.devices)} only: use --device {self.devices[0]}.")
        if (missing := self.available()) is not None:
            raise RuntimeMissing(missing)
        if self.format is None:
            self.artifact = checkpoint_dir(checkpoint, model) / WEIGHTS
        else:
            own = self.artifact_precisions is None or precision in self.artifact_precisions
            name = artifact_name(self.format, precision if own else "fp32")
            path = checkpoint_dir(artifacts, model) / name
            if not path.is_file():
                flag = f" --precision {precision}" if own and precision != "fp32" else ""
                raise DigitsError(f"No {name} for {model} at {path}. "
                                  f"Run `digits export {model} --format {self.format}{flag}` first.")
            self.artifact = checked_path(path)
        self._open(model, device, checkpoint=checkpoint, threads=threads)
        return self

    def _open(self, model: str, device: str, *, checkpoint: Path, threads: int | None) -> None:
        raise NotImplementedError

    def _checkpoint_module(self, checkpoint: Path, model: str):
        """The checkpoint as an eval-mode module on this device, at this precision."""
        eager = load_checkpoint(checkpoint_dir(checkpoint, model), model)[0].to(self.device).eval()
        return at_precision(eager, self.precision)  # bf16/fp16: weights cast, channels-last

    @property
    def provider(self) -> str:
        return f"torch-{self.device}"

    # -- calling
    def prepare(self, x: torch.Tensor) -> Any:
        check_input(x)
        return x.to(self.device)

    def run(self, prepared: Any) -> Any:
        with torch.inference_mode():
            return self.module(prepared)

    def logits(self, out: Any) -> torch.Tensor:
        return out.float().cpu()

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits(self.run(self.prepare(x)))


@register_backend
class Eager(Backend):
    """PyTorch eager, model in eval mode, under ``inference_mode``."""

    name = "eager"

    def _open(self, model, device, *, checkpoint, threads):
        self.module = self._checkpoint_module(checkpoint, model)


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


@register_backend
class Pt2(Backend):
    """The torch.export program, run through ``ExportedProgram.module()``."""

    name = "pt2"
    format = "pt2"

    def _open(self, model, device, *, checkpoint, threads):
        self.module = get_format("pt2").open(self.artifact, device)


@register_backend
class Compile(Backend):
    """``torch.compile`` (inductor) of the eager model. Not in the default sweep: compiling
    costs tens of seconds per model and batch size on a 2-core CPU."""

    name = "compile"
    default = False

    def _open(self, model, device, *, checkpoint, threads):
        import torch._dynamo.config as dynamo

        # Every model is an nn.Sequential, so all of them share one code object and one
        # recompile budget (8): each model, batch size and accuracy chunk takes an entry,
        # and past the budget dynamo silently runs eager, which would be reported as
        # compile. Give the sweep room, and fail the cell rather than fall back.
        # (torch < 2.7 names them cache_size_limit and fail_on_cache_limit_hit.)
        limit, fail = (("recompile_limit", "fail_on_recompile_limit_hit") if hasattr(dynamo, "recompile_limit")
                       else ("cache_size_limit", "fail_on_cache_limit_hit"))
        setattr(dynamo, limit, max(getattr(dynamo, limit), 64))
        setattr(dynamo, fail, True)
        self.module = torch.compile(self._checkpoint_module(checkpoint, model), dynamic=False)
        self.settings = {"torch_compile": "inductor, dynamic=False", "recompile_limit": getattr(dynamo, limit),
                         "fail_on_recompile_limit_hit": getattr(dynamo, fail)}


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

    def logits(self, binding) -> torch.Tensor:
        return torch.from_numpy(binding.copy_outputs_to_cpu()[0])


from digits.bench import ort_gpu as _ort_gpu  # noqa: E402,F401  (registers the onnxruntime GPU backends)
from digits.bench import openvino as _openvino  # noqa: E402,F401  (registers the openvino backend)
