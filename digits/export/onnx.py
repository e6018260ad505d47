"""ONNX (``model.onnx``) through the dynamo exporter, run by onnxruntime.

One self-contained file (no external data), input ``input`` [N,1,28,28] float32, output
``logits`` [N,10], the batch dimension dynamic, model name, normalization and digits
version stored as metadata props, and ``onnx.checker.check_model(full_check=True)`` run
on the result.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import io
import logging
import sys
import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

import digits
from digits._io import atomic_path
from digits.cores import usable_cores
from digits.data import MEAN, STD, check_input
from digits.errors import RuntimeMissing, DigitsError, UsageError
from digits.export._registry import Runner, example_input, register_format
from digits.export.torchscript import _first_line

DEFAULT_OPSET = 20  # also the dynamo exporter's own default in torch 2.14
MIN_OPSET = 18  # the dynamo exporter (onnxscript) emits nothing older


def max_opset() -> int:
    """The newest opset both the installed onnx and the installed onnxruntime know."""
    import onnx

    return min(onnx.defs.onnx_opset_version(), onnxruntime_limits()["max_opset"])


def make_model(graph, opset: int = MIN_OPSET):
    """A hand-built graph as a model the installed onnxruntime loads.

    ``onnx.helper.make_model`` stamps the newest IR version the installed onnx knows, and
    an older onnxruntime refuses the file outright (onnx 1.23 beside onnxruntime 1.30). The
    lowest IR version that can carry ``opset`` is what any runtime supporting it accepts.
    """
    from onnx import helper

    opsets = [helper.make_opsetid("", opset)]
    return helper.make_model(graph, opset_imports=opsets, ir_version=helper.find_min_ir_version_for(opsets))


@functools.lru_cache(maxsize=None)
def onnxruntime_limits() -> dict:
    """``{"max_ir_version", "max_opset"}`` that the installed onnxruntime loads, asked of it.

    onnxruntime has no API for this, so a one-node model is loaded at each version, newest
    first (about a millisecond a try, once per process). Versions newer than the installed
    onnx knows are not tried: nothing here could produce them.
    """
    import onnx
    from onnx import TensorProto, helper

    io_ = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [1]) for n in "xy"]
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "probe", io_[:1], io_[1:])

    def loads(opset: int, ir: int) -> bool:
        model = make_model(graph, opset)
        model.ir_version = ir
        try:
            make_session(model.SerializeToString(), "cpu", threads=1)
        except DigitsError:
            return False
        return True

    base_ir = helper.find_min_ir_version_for([helper.make_opsetid("", MIN_OPSET)])
    max_ir = next((ir for ir in range(onnx.IR_VERSION, base_ir - 1, -1) if loads(MIN_OPSET, ir)), None)
    if max_ir is None:
        import onnxruntime

        raise DigitsError(f"onnxruntime {onnxruntime.__version__} refuses even an opset-{MIN_OPSET} ONNX model; "
                          f"digits needs onnxruntime that runs opset {MIN_OPSET} or newer (pip install -U onnxruntime).")
    newest = onnx.defs.onnx_opset_version()
    max_op = next(op for op in range(newest, MIN_OPSET - 1, -1)
                  if loads(op, min(max_ir, helper.find_min_ir_version_for([helper.make_opsetid("", op)]))))
    return {"max_ir_version": max_ir, "max_opset": max_op}


def check_opset(opset: int) -> None:
    if not MIN_OPSET <= opset <= max_opset():
        raise UsageError(f"--opset {opset} cannot be produced: the dynamo ONNX exporter with this "
                         f"onnx/onnxruntime supports opsets {MIN_OPSET} to {max_opset()}.")


@register_format
class Onnx:
    name = "onnx"
    filename = "model.onnx"
    legacy = False
    precisions = ("fp32", "int8")

    def export(self, model: nn.Module, path: Path, *, opset: int = DEFAULT_OPSET, model_name: str = "",
               precision: str = "fp32", train_x: torch.Tensor | None = None, int8=None,
               fp32_onnx: Path | None = None, **_) -> dict:
        if precision == "int8":  # FP32 first, then onnxruntime's static quantization of that file
            from digits.export.quantize import Int8Settings, quantize_int8

            if train_x is None:
                raise DigitsError("int8 export needs training images for calibration (train_x).")
            if fp32_onnx is not None:  # the verified FP32 export of the same checkpoint and opset
                return {"opset": opset, "input": "input", "output": "logits", "quantized_from": fp32_onnx.name,
                        **quantize_int8(fp32_onnx, path, train_x, int8 or Int8Settings())}
            with tempfile.TemporaryDirectory(prefix="digits-onnx-") as tmp:
                fields = self.export(model, Path(tmp) / self.filename, opset=opset, model_name=model_name)
                return {**fields, **quantize_int8(Path(tmp) / self.filename, path, train_x, int8 or Int8Settings())}
        import onnx

        check_opset(opset)
        batch = torch.export.Dim("batch", min=1, max=1 << 20)
        chatter = io.StringIO()
        # The exporter narrates its steps on stdout; stdout belongs to --json.
        with contextlib.redirect_stdout(chatter), warnings.catch_warnings(), _quiet_logs(), _torchlib_listed_once():
            warnings.simplefilter("ignore")
            program = torch.onnx.export(model.eval(), (example_input(),), dynamo=True, opset_version=opset,
                                        input_names=["input"], output_names=["logits"],
                                        dynamic_shapes=({0: batch},), external_data=False, verbose=False)
        produced = program.model.opset_imports.get("", None)
        if produced != opset:  # the exporter's version converter falls back silently
            raise UsageError(f"--opset {opset} cannot be produced for this model: the exporter made opset "
                             f"{produced}. Supported range here: {MIN_OPSET} to {max_opset()}.")
        program.model.metadata_props.update({
            "digits.model": model_name, "digits.version": digits.__version__,
            "digits.normalization": f"mean={MEAN},std={STD}", "digits.input": "input[N,1,28,28] float32",
        })
        with atomic_path(path) as tmp:
            program.save(str(tmp), external_data=False)
            onnx.checker.check_model(str(tmp), full_check=True)
        return {"opset": opset, "input": "input", "output": "logits"}

    def open(self, path: Path, device: str = "cpu", **session_opts):
        return make_session(path, device, **session_opts)

    def load(self, path: Path, device: str = "cpu", *, threads: int | None = None) -> Runner:
        session = self.open(path, device, threads=threads)

        def run(x: torch.Tensor) -> torch.Tensor:
            check_input(x)
            out = session.run(["logits"], {"input": np.ascontiguousarray(x.detach().cpu().numpy())})[0]
            return torch.from_numpy(out)
        return run


@contextlib.contextmanager
def _quiet_logs():
    # onnxscript logs its version-converter fallbacks as warnings; they are not actionable.
    log = logging.getLogger("onnxscript")
    old = log.level
    log.setLevel(logging.ERROR)
    try:
        yield
    finally:
        log.setLevel(old)


_TORCHLIB_OPS: list = []  # onnxscript's torchlib functions, as the exporter lists them; filled by the first export


@contextlib.contextmanager
def _torchlib_listed_once():
    """The exporter's op list, made once per process instead of once per export.

    ``torch.onnx.export`` builds its registry afresh on each call, and onnxscript parses the
    source of each of its ~500 torchlib functions to list them: 0.85-0.93 s of a 2-4 s export
    on a Zen 3 core, the same list every time (exporting every model to ONNX in one process
    paid it per model). Only our own exports use the kept list (our models' ops are plain aten ones);
    anyone else's call to the exporter lists afresh. Where torch or onnxscript name these
    things otherwise, the export runs as it comes.
    """
    try:
        from torch.onnx._internal import _lazy_import

        apis = importlib.import_module(_lazy_import.onnxscript_apis._name)
        real = apis.get_torchlib_ops
    except (ImportError, AttributeError):
        yield
        return

    def listed():
        if not _TORCHLIB_OPS:
            _TORCHLIB_OPS.extend(real())
        return list(_TORCHLIB_OPS)
    apis.get_torchlib_ops = listed
    try:
        yield
    finally:
        apis.get_torchlib_ops = real


# What to install for each GPU provider: the cell's error says it, never a CPU number instead.
_INSTALL = {
    "CUDAExecutionProvider": "Install onnxruntime-gpu in place of onnxruntime (`make setup-gpu`, extra [gpu]).",
    "TensorrtExecutionProvider": "Install onnxruntime-gpu (`make setup-gpu`) and TensorRT (pip install tensorrt-cu12), "
                                 "with TensorRT's libraries on the loader path (LD_LIBRARY_PATH).",
}


def gpu_provider(kind: str = "cuda", *, cuda_graph: bool = False, fp16: bool = False) -> tuple[str, dict]:
    """``(provider name, options)`` for onnxruntime on the GPU; every option explicit, all strings.

    ``cuda_graph``: the CUDA provider captures the session's kernels in a CUDA graph on the
    first runs of each ``gpu_graph_id`` and replays it after (inputs and outputs must stay at
    the same device addresses: IO binding to fixed OrtValues). ``fp16`` lets TensorRT build
    fp16 kernels from the fp32 model.
    """
    if kind == "cuda":
        # use_tf32=0: like the torch cells, an fp32 cell computes in FP32 (the provider's default is TF32)
        return "CUDAExecutionProvider", {"device_id": "0", "enable_cuda_graph": str(int(cuda_graph)), "use_tf32": "0",
                                         "cudnn_conv_algo_search": "EXHAUSTIVE", "do_copy_in_default_stream": "1"}
    if kind == "tensorrt":
        return "TensorrtExecutionProvider", {"device_id": "0", "trt_fp16_enable": str(int(fp16)),
                                             "trt_engine_cache_enable": "0", "trt_cuda_graph_enable": "0"}
    raise UsageError(f"Unknown onnxruntime GPU provider {kind!r}: cuda or tensorrt.")


def make_session(path: Path | bytes, device: str = "cpu", *, threads: int | None = None, spinning: bool = True,
                 provider: tuple[str, dict] | None = None):
    """An InferenceSession with every option set explicitly (see :func:`session_options`).

    ``path`` may also be a serialized model (bytes), as for the bench's MatMul probe.
    ``provider`` picks the GPU provider and its options (default: :func:`gpu_provider`).

    ORT_ENABLE_ALL turns on the NCHWc layout transform, worth ~1.4x on LeNet-5 at batch
    256 here over ORT_ENABLE_EXTENDED; spinning threads cut small-batch latency.
    """
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.log_severity_level = 3  # errors only; ORT's warnings are not the user's concern
    opts.intra_op_num_threads = threads or usable_cores()
    opts.inter_op_num_threads = 1  # the graph is a chain: no parallel branches to run
    opts.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
    if device == "cuda":
        name, options = provider or gpu_provider()
        if name not in ort.get_available_providers():
            raise RuntimeMissing(f"onnxruntime {ort.__version__} has no {name} here, so it cannot run this on the GPU. "
                              + _INSTALL.get(name, ""))
        # TensorRT hands the nodes it cannot build to CUDA, as onnxruntime intends.
        providers = [(name, options)] + ([gpu_provider()] if name != "CUDAExecutionProvider" else [])
    else:
        name, providers = "CPUExecutionProvider", ["CPUExecutionProvider"]
    chatter = io.StringIO()
    try:
        # A provider that fails to start makes onnxruntime print its fallback on stdout, which
        # belongs to --json: it goes to stderr, beside onnxruntime's own log of the cause.
        with contextlib.redirect_stdout(chatter):
            session = ort.InferenceSession(path if isinstance(path, bytes) else str(path), opts, providers=providers)
    except Exception as e:  # noqa: BLE001 - ORT raises its own exception types
        what = "The model" if isinstance(path, bytes) else str(path)
        if device == "cuda":
            raise DigitsError(f"onnxruntime could not start {name} for {what} ({_first_line(e)}). "
                              + _INSTALL.get(name, "")) from None
        raise DigitsError(f"{what} is not a loadable ONNX model ({_first_line(e)}). "
                          "Re-create it with `digits export --format onnx`.") from None
    finally:
        if chatter.getvalue():
            sys.stderr.write(chatter.getvalue())
    if session.get_providers()[0] != name:
        raise DigitsError(f"onnxruntime fell back from {name} to {session.get_providers()[0]}; refusing to "
                          f"report its numbers as {name}'s. " + _INSTALL.get(name, ""))
    session._digits_options = {  # what was used, for the record
        "graph_optimization_level": "ORT_ENABLE_ALL", "execution_mode": "ORT_SEQUENTIAL",
        "intra_op_num_threads": opts.intra_op_num_threads, "inter_op_num_threads": 1,
        "allow_spinning": spinning, "providers": session.get_providers()}
    if device == "cuda":
        reported = session.get_provider_options().get(name, {})  # read back: what the provider took
        session._digits_options["provider_options"] = {k: reported.get(k) for k in options}
    return session


def session_options(session) -> dict:
    return dict(session._digits_options)
