"""Numeric precisions: which ones exist, which this machine runs natively, and what parity each must keep.

    fp32  the reference: every export must match eager to max_abs_diff <= 1e-4, agreement 1.0
    bf16  bfloat16 weights and activations (AVX512-BF16 / AMX-BF16 on CPUs, any recent GPU)
    fp16  float16 (GPUs; CPUs with AMX-FP16)
    int8  onnxruntime static quantization (QDQ), calibrated on training images

A reduced precision cannot match FP32 to 1e-4, so its parity is judged on what users
feel: test accuracy within 0.2 points of FP32 and the same prediction on >= 99.5% of
images. The thresholds are written into the export manifest beside the figures.
"""

from __future__ import annotations

import copy
import functools
from pathlib import Path

import torch

from digits.errors import UsageError

PRECISIONS = ("fp32", "bf16", "fp16", "int8")
TORCH_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}

# Parity thresholds, per precision (fractions, not points).
FP32_THRESHOLDS = {"max_abs_diff": 1e-4, "argmax_agreement": 1.0}
REDUCED_THRESHOLDS = {"accuracy_delta": 0.002, "argmax_agreement": 0.995}

# /proc/cpuinfo flags that give a precision native (hardware) arithmetic on x86.
CPU_FLAGS = ("avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_tile", "amx_bf16", "amx_int8",
             "avx512_fp16", "amx_fp16")


def check_precision(name: str) -> str:
    if name not in PRECISIONS:
        raise UsageError(f"Unknown precision {name!r}. Choose from: {', '.join(PRECISIONS)}.")
    return name


def thresholds(precision: str) -> dict:
    return dict(FP32_THRESHOLDS if check_precision(precision) == "fp32" else REDUCED_THRESHOLDS)


def passes(precision: str, *, max_abs_diff: float, argmax_agreement: float, accuracy: float,
           eager_accuracy: float) -> bool:
    """Whether parity figures meet ``precision``'s thresholds."""
    t = thresholds(precision)
    if precision == "fp32":
        return max_abs_diff <= t["max_abs_diff"] and argmax_agreement >= t["argmax_agreement"]
    # The tiny epsilon keeps an exact 0.2-point difference (20 of 10,000 images) a pass.
    return abs(accuracy - eager_accuracy) <= t["accuracy_delta"] + 1e-12 and argmax_agreement >= t["argmax_agreement"]


@functools.lru_cache(maxsize=1)
def cpu_features(cpuinfo: str = "/proc/cpuinfo") -> dict[str, bool]:
    """The precision-relevant x86 flags of this CPU (all False where /proc/cpuinfo is absent)."""
    try:
        text = Path(cpuinfo).read_text()
    except OSError:
        return {f: False for f in CPU_FLAGS}
    flags: set[str] = set()
    for line in text.splitlines():
        if line.startswith(("flags", "Features")):
            flags.update(line.split(":", 1)[1].split())
            break  # every core lists the same flags
    return {f: f in flags for f in CPU_FLAGS}


def resolve_precisions(chosen: list[str] | None, device: str = "cpu") -> list[str]:
    """``chosen`` (each checked), or, when none are, fp32 + the device's native precisions."""
    return [check_precision(p) for p in chosen] if chosen else native_precisions(device)


def native_precisions(device: str = "cpu", features: dict[str, bool] | None = None) -> list[str]:
    """fp32 plus every reduced precision this device computes in hardware, not emulated.

    CPU: bf16 needs AVX512-BF16 or AMX-BF16; int8 needs VNNI (AVX512 or AVX) or AMX-INT8;
    fp16 needs AMX-FP16 (AVX512-FP16 alone is not used by PyTorch's or onnxruntime's
    convolutions). CUDA: fp16 everywhere, bf16 from compute capability 8.0 (Ampere).
    """
    if device == "cuda":
        major, _ = torch.cuda.get_device_capability()
        return ["fp32", "fp16"] + (["bf16"] if major >= 8 else [])
    f = features if features is not None else cpu_features()
    out = ["fp32"]
    if f.get("avx512_bf16") or f.get("amx_bf16"):
        out.append("bf16")
    if f.get("amx_fp16"):
        out.append("fp16")
    if f.get("avx512_vnni") or f.get("avx_vnni") or f.get("amx_int8"):
        out.append("int8")
    return out


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


def at_precision(model: torch.nn.Module, precision: str) -> torch.nn.Module:
    """``model`` itself for fp32, else wrapped in :class:`AtPrecision` (int8 is not a torch dtype here)."""
    if check_precision(precision) == "fp32":
        return model
    if precision not in TORCH_DTYPES:
        raise UsageError(f"PyTorch runs {precision} through onnxruntime or OpenVINO only here: "
                         "export it with `digits export --format onnx --precision int8`.")
    return AtPrecision(model, TORCH_DTYPES[precision]).eval()
