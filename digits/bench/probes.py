"""GEMM probes: the fastest matrix multiply each runtime shows, per precision, in the same run.

``efficiency`` divides a cell's arithmetic rate by the fastest probe *of its precision*,
so a bf16 or int8 cell is set against what bf16 or int8 hardware did here, never against
the slower FP32 peak (which would flatter it). Each maker returns ``(call,
flops)``; one that cannot be built raises, and the runner records why. A probe is timed
as a cell is (:func:`digits.bench.timing.measure`), and its rate comes from its
throughput phase.

Every probe is sized by time, not by a fixed n: :func:`sized` doubles n until one call
takes ``TARGET_CALL_S``. A fixed 2048x2048 fp16 ``torch.mm`` ran at 2.5 GFLOP/s on an AMD
EPYC without AVX512-FP16 (6-7 s a call), which made one bench, and the suite, sit for
many minutes; the runner caps what each probe may spend in all (``PROBE_BUDGET_S``).
"""

from __future__ import annotations

from typing import Callable

import time

import numpy as np
import torch

from digits.bench.environment import reason
from digits.bench.timing import gflops, matmul_probe

Probe = tuple[Callable[[], object], int]

TARGET_CALL_S = 0.01  # one call this long is past launch and cache effects, yet cheap
PROBE_BUDGET_S = 1.0  # what one probe may spend on timed calls over all rounds (runner), at most 2 x --min-time
N_RANGE = {"cpu": (128, 2048), "cuda": (1024, 8192)}  # a GPU needs large n to reach its peak


def sized(build: Callable[[int], Probe], device: str = "cpu", target_s: float = TARGET_CALL_S) -> tuple[Probe, int]:
    """``(build(n), n)`` for the smallest power-of-two n whose call takes ``target_s`` (or the
    device's largest n). Each size is called twice: the first call pays one-off set-up."""
    n, n_max = N_RANGE[device]
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    while True:
        probe = build(n)
        probe[0]()
        sync()
        t0 = time.perf_counter()
        probe[0]()
        sync()
        if time.perf_counter() - t0 >= target_s or n >= n_max:
            return probe, n
        n *= 2


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
    return (lambda: session.run(None, feeds)), 2 * n ** 3


def openvino_matmul_probe(threads: int, precision: str, n: int = 2048) -> Probe:
    """One large MatMul compiled by OpenVINO's CPU plugin at ``precision`` (its inference hint;
    int8 through FakeQuantize on both operands, as a quantized ONNX model arrives)."""
    import openvino as ov
    from openvino import opset13 as ops

    from digits.bench.backends.openvino import check_runtime_precision, compile_config, core

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
    return request.infer, 2 * n ** 3


def gemm_probes(device: str, threads: int, precisions: list[str], backends: list[str]) -> dict[str, tuple[str, Callable]]:
    """``{name: (precision, build)}`` for every probe worth running for this sweep: only the
    ``precisions`` its cells run. ``build(n)`` makes the probe at size n (:func:`sized` picks n)."""
    makers: dict[str, tuple[str, Callable]] = {}
    for p in ("fp32", "tf32", "bf16", "fp16"):
        if p in precisions:
            makers["torch.mm" + ("" if p == "fp32" else f" {p}")] = (p, lambda n, p=p: matmul_probe(device, n=n, dtype=p))
    if device == "cpu":
        if "fp32" in precisions:
            makers["onnxruntime MatMul"] = ("fp32", lambda n: onnxruntime_matmul_probe(threads, n=n))
        if "int8" in precisions:
            makers["onnxruntime MatMulInteger"] = ("int8", lambda n: onnxruntime_matmul_probe(threads, n=n, int8=True))
        if "openvino" in backends:
            for p in precisions:
                makers[f"openvino MatMul {p}"] = (p, lambda n, p=p: openvino_matmul_probe(threads, p, n=n))
    return makers


class GemmProbes:
    """The sweep's GEMM probes. Each is built when its turn comes (sized by time the first
    time, at that size after), timed for a number of rounds, and freed: a probe's matrices
    (up to 2048 x 2048 of each operand, in every precision and runtime: 220 MB here) never
    sit in memory beside a model's loaded runtimes. The runner times them after each model's
    cells, so a machine that changes speed during a sweep moves cells and probes together."""

    def __init__(self, device: str, threads: int, backends: list[str]):
        self.device, self.threads, self.backends = device, threads, backends
        self.sizes: dict[str, int] = {}  # name -> n, once sized
        self.flops: dict[str, int] = {}
        self.precision: dict[str, str] = {}
        self.timings: dict = {}  # name -> pooled Timing
        self.errors: dict[str, str] = {}  # name -> why it could not be built or run

    def run(self, precisions: list[str], rounds: int, min_iters: int, max_time: float) -> None:
        """Time every probe of ``precisions`` for ``rounds`` slices of ``max_time`` each."""
        from digits.bench.timing import measure

        for name, (precision, build) in gemm_probes(self.device, self.threads, precisions, self.backends).items():
            if name in self.errors:
                continue  # a probe that failed once is not tried again
            try:
                if name in self.sizes:
                    call, flops = build(self.sizes[name])
                else:
                    (call, flops), self.sizes[name] = sized(build, self.device)
                self.flops[name], self.precision[name] = flops, precision
                for _ in range(rounds):
                    t = measure(call, device=self.device, warmup=1 if name in self.timings else 2, min_iters=min_iters,
                                min_time=0.0, max_time=max_time)
                    self.timings[name] = self.timings[name].extend(t) if name in self.timings else t
            except Exception as e:  # noqa: BLE001 - a probe is a second opinion, never the main job
                self.errors[name] = reason(e)
                self.timings.pop(name, None)
            finally:
                call = None  # the probe's operands go now, not when the next one is built

    def record(self, env: dict) -> None:
        """Every probe's rate and precision into ``env``, and the fastest of each precision (the peaks)."""
        env["gemm_gflops"] = {name: gflops(self.flops[name], t) for name, t in self.timings.items()}
        env["gemm_precision"] = {name: self.precision[name] for name in self.timings}
        env["probe_errors"].update(self.errors)
        peaks: dict[str, float] = {}
        for name, rate in env["gemm_gflops"].items():
            p = env["gemm_precision"][name]
            peaks[p] = max(peaks.get(p, 0.0), rate)
        env["peak_gflops_by_precision"] = peaks
        env["peak_gflops"] = peaks.get("fp32")  # None if every FP32 probe failed: no FP32 efficiency
