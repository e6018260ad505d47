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
from digits.errors import DigitsError, UsageError
from digits.export import checked_path, get_format

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
    cuda_events = True  # False: run() blocks until done, so the host clock is exact
    default = True  # part of the default sweep

    def __init__(self):
        self.device = "cpu"
        self.artifact: Path | None = None
        self.settings: dict = {}

    # -- loading
    def load(self, model: str, device: str = "cpu", *, checkpoint: Path = Path("artifacts"),
             artifacts: Path = Path("artifacts"), threads: int | None = None) -> Backend:
        self.device = device
        if self.format is None:
            self.artifact = checkpoint_dir(checkpoint, model) / WEIGHTS
        else:
            path = checkpoint_dir(artifacts, model) / get_format(self.format).filename
            if not path.is_file():
                raise DigitsError(f"No {self.format} artifact for {model} at {path}. "
                                  f"Run `digits export {model} --format {self.format}` first.")
            self.artifact = checked_path(path)
        self._open(model, device, checkpoint=checkpoint, threads=threads)
        return self

    def _open(self, model: str, device: str, *, checkpoint: Path, threads: int | None) -> None:
        raise NotImplementedError

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
        self.module = load_checkpoint(checkpoint_dir(checkpoint, model), model)[0].to(device).eval()


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
        optimize = device == "cpu" and _has_conv(module)
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
        dynamo.recompile_limit = max(dynamo.recompile_limit, 64)
        dynamo.fail_on_recompile_limit_hit = True
        eager = load_checkpoint(checkpoint_dir(checkpoint, model), model)[0].to(device).eval()
        self.module = torch.compile(eager, dynamic=False)
        self.settings = {"torch_compile": "inductor, dynamic=False", "recompile_limit": dynamo.recompile_limit,
                         "fail_on_recompile_limit_hit": True}


@register_backend
class OnnxRuntime(Backend):
    """onnxruntime with explicit session options and IO binding."""

    name = "onnxruntime"
    format = "onnx"
    cuda_events = False  # run_with_iobinding returns once outputs are ready

    def _open(self, model, device, *, checkpoint, threads):
        from digits.export.onnx import session_options

        self.session = get_format("onnx").open(self.artifact, device, threads=threads)
        self.settings = session_options(self.session)

    @property
    def provider(self) -> str:
        return self.session.get_providers()[0]

    def prepare(self, x: torch.Tensor):
        import onnxruntime as ort

        check_input(x)
        binding = self.session.io_binding()
        arr = x.detach().cpu().contiguous().numpy()
        if self.device == "cuda":
            value = ort.OrtValue.ortvalue_from_numpy(arr, "cuda", 0)
            binding.bind_ortvalue_input("input", value)
            binding.bind_output("logits", "cuda", 0)
        else:
            value = ort.OrtValue.ortvalue_from_numpy(arr)
            binding.bind_ortvalue_input("input", value)
            binding.bind_output("logits")
        binding._keep = value  # the OrtValue must outlive the binding
        return binding

    def run(self, binding):
        self.session.run_with_iobinding(binding)
        return binding

    def logits(self, binding) -> torch.Tensor:
        return torch.from_numpy(binding.copy_outputs_to_cpu()[0])


def onnxruntime_matmul_probe(threads: int, n: int = 2048):
    """``(call, flops, False)`` for one large FP32 ``MatMul`` through onnxruntime's CPU provider.

    A second opinion on the peak, in a session built exactly as the onnxruntime backend's:
    on the reference machine (AMD Zen 5) onnxruntime's MLAS runs AVX-512 at about twice
    the rate torch.mm gets from MKL. Recorded beside ``peak_gflops``, never in its place.
    """
    import numpy as np
    from onnx import TensorProto, helper

    from digits.export.onnx import make_model, make_session

    io = [helper.make_tensor_value_info(name, TensorProto.FLOAT, [n, n]) for name in "abc"]
    graph = helper.make_graph([helper.make_node("MatMul", ["a", "b"], ["c"])], "matmul", io[:2], io[2:])
    model = make_model(graph)
    session = make_session(model.SerializeToString(), "cpu", threads=threads)
    rng = np.random.default_rng(0)
    feeds = {k: rng.standard_normal((n, n), dtype=np.float32) for k in "ab"}
    return (lambda: session.run(None, feeds)), 2 * n ** 3, False
