"""GEMM probes: the fastest matrix multiply each runtime shows, per precision, in the same run.

``efficiency`` divides a cell's arithmetic rate by the fastest probe *of its precision*,
so a bf16 or int8 cell is set against what bf16 or int8 hardware did here, never against
the slower FP32 peak (which would flatter it). Each maker returns ``(call, flops,
cuda_events)``; one that cannot be built raises, and the runner records why.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from digits.bench.timing import matmul_probe

Probe = tuple[Callable[[], object], int, bool]


def onnxruntime_matmul_probe(threads: int, n: int = 2048, int8: bool = False) -> Probe:
    """One large ``MatMul`` (FP32) or ``MatMulInteger`` (uint8 x int8 -> int32) through
    onnxruntime's CPU provider, in a session built exactly as the onnxruntime backend's.

    On an AMD Zen 5, onnxruntime's MLAS ran FP32 at about twice torch.mm's rate; its int8
    GEMM is what a quantized convolution runs on.
    """
    from onnx import TensorProto, helper

    from digits.export.onnx import make_model, make_session

    rng = np.random.default_rng(0)
    if int8:
        io = [helper.make_tensor_value_info("a", TensorProto.UINT8, [n, n]),
              helper.make_tensor_value_info("b", TensorProto.INT8, [n, n]),
              helper.make_tensor_value_info("c", TensorProto.INT32, [n, n])]
        node = helper.make_node("MatMulInteger", ["a", "b"], ["c"])
        feeds = {"a": rng.integers(0, 255, (n, n), dtype=np.uint8), "b": rng.integers(-127, 127, (n, n), dtype=np.int8)}
    else:
        io = [helper.make_tensor_value_info(name, TensorProto.FLOAT, [n, n]) for name in "abc"]
        node = helper.make_node("MatMul", ["a", "b"], ["c"])
        feeds = {k: rng.standard_normal((n, n), dtype=np.float32) for k in "ab"}
    graph = helper.make_graph([node], "matmul", io[:2], io[2:])
    session = make_session(make_model(graph).SerializeToString(), "cpu", threads=threads)
    return (lambda: session.run(None, feeds)), 2 * n ** 3, False


def openvino_matmul_probe(threads: int, precision: str, n: int = 2048) -> Probe:
    """One large MatMul compiled by OpenVINO's CPU plugin at ``precision`` (its inference hint;
    int8 through FakeQuantize on both operands, as a quantized ONNX model arrives)."""
    import openvino as ov
    from openvino import opset13 as ops

    from digits.bench.openvino import check_runtime_precision, compile_config, core

    rng = np.random.default_rng(0)
    a = ops.parameter([n, n], np.float32, name="a")
    b = ops.constant(rng.standard_normal((n, n), dtype=np.float32))
    if precision == "int8":
        def fq(x, lo, hi, levels):
            return ops.fake_quantize(x, ops.constant(np.float32(lo)), ops.constant(np.float32(hi)),
                                     ops.constant(np.float32(lo)), ops.constant(np.float32(hi)), levels)
        # u8 activations, symmetric 255-level i8 weights: the pattern OpenVINO lowers to int8 (256
        # symmetric levels stay FP32, which is how a mis-built probe would flatter every int8 cell)
        lhs, rhs = fq(a, 0.0, 4.0, 256), fq(b, -4.0, 4.0, 255)
    else:
        lhs, rhs = a, b
    model = ov.Model([ops.matmul(lhs, rhs, False, True)], [a], "matmul")
    compiled = core().compile_model(model, "CPU", compile_config(precision, threads))
    check_runtime_precision(compiled, precision, "the OpenVINO MatMul probe")
    request = compiled.create_infer_request()
    x = np.abs(rng.standard_normal((n, n), dtype=np.float32))
    request.set_input_tensor(ov.Tensor(x, shared_memory=True))
    request._digits_keep = x  # the shared buffer must outlive the request
    return request.infer, 2 * n ** 3, False


def gemm_probes(device: str, threads: int, precisions: list[str], backends: list[str]) -> dict[str, tuple[str, Callable]]:
    """``{name: (precision, maker)}`` for every probe worth running for this sweep."""
    makers: dict[str, tuple[str, Callable]] = {"torch.mm": ("fp32", lambda: matmul_probe(device))}
    for p in ("bf16", "fp16"):
        if p in precisions:
            makers[f"torch.mm {p}"] = (p, lambda p=p: matmul_probe(device, dtype=p))
    if device == "cpu":
        makers["onnxruntime MatMul"] = ("fp32", lambda: onnxruntime_matmul_probe(threads))
        if "int8" in precisions:
            makers["onnxruntime MatMulInteger"] = ("int8", lambda: onnxruntime_matmul_probe(threads, int8=True))
        if "openvino" in backends:
            for p in precisions:
                makers[f"openvino MatMul {p}"] = (p, lambda p=p: openvino_matmul_probe(threads, p))
    return makers
