"""Numeric precisions: which ones exist, which this machine runs natively, and what parity each must keep.

    fp32  the reference: every export must match eager to max_abs_diff <= 1e-4, agreement 1.0
    bf16  bfloat16 weights and activations (AVX512-BF16 / AMX-BF16 / ARM BF16 on CPUs, any recent GPU)
    fp16  float16 (GPUs; CPUs with AVX512-FP16 or AMX-FP16)
    tf32  FP32 weights and activations, matmuls and convolutions on TF32 tensor cores (CUDA, Ampere and
          later): the checkpoint's own models only (eager, cudagraph*, compile), never passed off as fp32
    int8  onnxruntime static quantization (QDQ), calibrated on training images (x86 AVX2 and up, ARM dot-product)

A reduced precision cannot match FP32 to 1e-4, so its parity is judged on what users
feel: test accuracy within 0.2 points of FP32 and the same prediction on >= 99.5% of
images. The thresholds are written into the export manifest beside the figures.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import os
import platform
from dataclasses import dataclass
from pathlib import Path

import torch

from digits.errors import UsageError

PRECISIONS = ("fp32", "bf16", "fp16", "int8", "tf32")
TORCH_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}

# Parity thresholds, per precision (fractions, not points).
FP32_THRESHOLDS = {"max_abs_diff": 1e-4, "argmax_agreement": 1.0}
REDUCED_THRESHOLDS = {"accuracy_delta": 0.002, "argmax_agreement": 0.995}
# TF32 rounds each product's inputs to 10 mantissa bits (FP32 accumulation): logits move by
# ~1e-3 of their size (scripts/tf32_emulate.py: <= 0.004 on the test set, every prediction kept),
# so it is held to 0.05 and to 99.9% of FP32's predictions.
TF32_THRESHOLDS = {"max_abs_diff": 0.05, "argmax_agreement": 0.999}

# /proc/cpuinfo flags that decide a precision's path: x86's "flags" line, ARM64's "Features".
X86_FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_tile", "amx_bf16", "amx_int8",
             "avx512_fp16", "amx_fp16")
ARM_FLAGS = ("asimd", "asimddp", "bf16", "i8mm", "asimdhp", "sve")
CPU_FLAGS = X86_FLAGS + ARM_FLAGS


def check_precision(name: str) -> str:
    if name not in PRECISIONS:
        raise UsageError(f"Unknown precision {name!r}. Choose from: {', '.join(PRECISIONS)}.")
    return name


def thresholds(precision: str) -> dict:
    table = {"fp32": FP32_THRESHOLDS, "tf32": TF32_THRESHOLDS}
    return dict(table.get(check_precision(precision), REDUCED_THRESHOLDS))


def passes(precision: str, *, max_abs_diff: float, argmax_agreement: float, accuracy: float,
           eager_accuracy: float) -> bool:
    """Whether parity figures meet ``precision``'s thresholds."""
    t = thresholds(precision)
    if "max_abs_diff" in t:  # fp32 and tf32: judged on the logits themselves
        return max_abs_diff <= t["max_abs_diff"] and argmax_agreement >= t["argmax_agreement"]
    # The tiny epsilon keeps an exact 0.2-point difference (20 of 10,000 images) a pass.
    return abs(accuracy - eager_accuracy) <= t["accuracy_delta"] + 1e-12 and argmax_agreement >= t["argmax_agreement"]


@dataclass(frozen=True)
class Cpu:
    """What the precision rules read of a CPU: its architecture and its flags. Tests build
    one per kind of machine (:meth:`from_cpuinfo`); :func:`this_cpu` reads this machine."""
    arch: str  # platform.machine(): x86_64, aarch64, ...
    flags: frozenset[str] = frozenset()

    @classmethod
    def from_cpuinfo(cls, text: str, arch: str) -> Cpu:
        for line in text.splitlines():
            if line.startswith(("flags", "Features")):
                return cls(arch, frozenset(line.split(":", 1)[1].split()))  # every core lists the same flags
        return cls(arch)

    @property
    def x86(self) -> bool:
        return self.arch in ("x86_64", "AMD64", "i686")

    @property
    def arm64(self) -> bool:
        return self.arch in ("aarch64", "arm64")


@functools.lru_cache(maxsize=1)
def this_cpu(cpuinfo: str | None = None) -> Cpu:
    """This machine's :class:`Cpu` (no flags where /proc/cpuinfo is absent: FP32 only).

    ``DIGITS_CPUINFO`` names another file to read instead: under an emulator such as
    ``qemu-x86_64 -cpu Haswell`` /proc/cpuinfo still describes the host, while the kernels
    see the emulated CPU (docs/development.md runs the precision tests that way)."""
    cpuinfo = cpuinfo or os.environ.get("DIGITS_CPUINFO") or "/proc/cpuinfo"
    try:
        text = Path(cpuinfo).read_text()
    except OSError:
        text = ""
    return Cpu.from_cpuinfo(text, platform.machine())


def cpu_features(cpu: Cpu | None = None) -> dict[str, bool]:
    """The precision-relevant flags of ``cpu`` (default: this machine's), for its architecture."""
    cpu = cpu or this_cpu()
    return {f: f in cpu.flags for f in (ARM_FLAGS if cpu.arm64 else X86_FLAGS)}


def cpu_kind(cpu: Cpu | None = None) -> str:
    """The vector extensions that tell this project's kinds of CPU apart, in words: a VM may name
    two of them only "AMD EPYC" (one AVX2-only, one with AVX-512 and bf16, twice as fast), so a
    result names its CPU by both. Empty for an architecture without such flags here."""
    cpu = cpu or this_cpu()
    f = cpu.flags
    if cpu.arm64:
        return ", ".join(["ARM64"] + [w for flag, w in (("asimddp", "dot product"), ("bf16", "BF16"), ("i8mm", "I8MM"),
                                                         ("sve", "SVE")) if flag in f])
    if not cpu.x86 or not f:
        return ""
    if "avx512f" not in f:
        return "AVX2, no AVX-512" if "avx2" in f else "no AVX2"
    return ", ".join(["AVX-512"] + [w for flag, w in (("avx512_bf16", "AVX512-BF16"), ("avx512_fp16", "AVX512-FP16"),
                                                      ("amx_tile", "AMX")) if flag in f])


def resolve_precisions(chosen: list[str] | None, device: str = "cpu") -> list[str]:
    """``chosen`` (each checked), or, when none are, fp32 + the device's native precisions."""
    return [check_precision(p) for p in chosen] if chosen else native_precisions(device)


def native_precisions(device: str = "cpu", cpu: Cpu | None = None) -> list[str]:
    """fp32 plus every reduced precision this device has a hardware kernel path for.

    CPU: int8 on any x86-64 with AVX2 (VNNI or not: see :func:`int8_path`) or AMX-INT8,
    and on ARM64 with the dot-product instructions; bf16 with AVX512-BF16, AMX-BF16 or
    ARM's BF16; fp16 with AVX512-FP16 or AMX-FP16. CUDA: fp16 everywhere, bf16 from compute
    capability 8.0 (Ampere), and tf32 there too. Whether a path is also *faster* than FP32 here is what the
    bench measures and says (docs/bench.md), not something assumed.
    """
    if device == "cuda":
        major, _ = torch.cuda.get_device_capability()
        return ["fp32", "fp16"] + (["bf16", "tf32"] if major >= 8 else [])
    cpu = cpu or this_cpu()
    f = cpu.flags
    out = ["fp32"]
    if f & {"avx512_bf16", "amx_bf16"} or (cpu.arm64 and "bf16" in f):
        out.append("bf16")
    if f & {"avx512_fp16", "amx_fp16"}:
        out.append("fp16")
    if int8_path(cpu) is not None:
        out.append("int8")
    return out


def int8_path(cpu: Cpu | None = None) -> str | None:
    """The int8 GEMM instructions onnxruntime's and OpenVINO's kernels pick here (by CPUID), or None.

    Without VNNI, x86's u8 x s8 kernels multiply with ``vpmaddubsw``, which adds each pair of
    products into a *saturating* int16: 255 x 127 x 2 overflows it, so a result can differ
    from exact integer arithmetic (onnxruntime's quantization docs; ``reduce_range`` avoids it).
    """
    cpu = cpu or this_cpu()
    f = cpu.flags
    if cpu.arm64:
        return "ARM dot-product (sdot/udot)" if "asimddp" in f else None
    if not cpu.x86:
        return None
    if "amx_int8" in f:
        return "AMX-INT8"
    if "avx512_vnni" in f or "avx_vnni" in f:
        return "AVX512-VNNI" if "avx512_vnni" in f else "AVX-VNNI"
    return "AVX2 without VNNI (int16 pair sums saturate)" if "avx2" in f else None


class AtPrecision(torch.nn.Module):
    """A model whose weights and arithmetic are in ``dtype`` behind the FP32 contract.

    Input stays float32 [N,1,28,28] and logits come back float32, so every runtime, the
    parity check and ``digits predict`` treat a bf16 artifact exactly as an FP32 one.
    Convolutions run channels-last: oneDNN's fast layout for bf16 on CPUs.
    """

    def __init__(self, inner: torch.nn.Module, dtype: torch.dtype):
        super().__init__()
        self.inner = copy.deepcopy(inner).to(dtype=dtype, memory_format=torch.channels_last)
        self.dtype = dtype

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(x.to(self.dtype).contiguous(memory_format=torch.channels_last)).float()


class Tf32(torch.nn.Module):
    """``inner`` with TF32 allowed for its matmuls and convolutions during its own calls only:
    the flags are process-wide, and every other cell of a sweep stays strict FP32. A CUDA
    graph captured through it keeps the TF32 kernels it captured."""

    def __init__(self, inner: torch.nn.Module):
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with allow_tf32(True):
            return self.inner(x)


@contextlib.contextmanager
def allow_tf32(on: bool):
    """CUDA's TF32 for matmuls and cuDNN convolutions set to ``on`` inside, restored after."""
    old = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = on
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old


def check_tf32_device(device: str) -> None:
    """TF32 is a tensor-core mode of CUDA GPUs: on any other device it is bad usage."""
    if device != "cuda":
        raise UsageError("tf32 is a CUDA precision (TF32 tensor cores): use --device cuda, "
                         "or leave it out of --precisions.")


def at_precision(model: torch.nn.Module, precision: str) -> torch.nn.Module:
    """``model`` itself for fp32, else wrapped in :class:`AtPrecision` or :class:`Tf32` (int8 is
    not a torch dtype here)."""
    if check_precision(precision) == "fp32":
        return model
    if precision == "tf32":
        check_tf32_device(next(model.parameters()).device.type)
        return Tf32(model).eval()
    if precision not in TORCH_DTYPES:
        raise UsageError(f"PyTorch runs {precision} through onnxruntime or OpenVINO only here: "
                         "export it with `digits export --format onnx --precision int8`.")
    return AtPrecision(model, TORCH_DTYPES[precision]).eval()
