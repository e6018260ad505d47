"""int8 ONNX (``model.int8.onnx``): onnxruntime static quantization of the FP32 export.

    digits export lenet5 --format onnx --precision int8

The FP32 graph goes through onnxruntime's pre-processing (symbolic shape inference and
graph optimization), then ``quantize_static`` in QDQ format with per-channel int8
weights, calibrated on MNIST *training* images only (the test set judges the result).
Every setting lands in ``exports.json`` so the artifact can be re-made exactly.
"""

from __future__ import annotations

import contextlib
import io
import logging
import tempfile
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from digits._io import atomic_path
from digits.errors import DigitsError


@dataclass
class Int8Settings:
    calibration_images: int = 1000  # drawn from the training split (seeded), never the test set
    calibration_batch: int = 100
    calibrate_method: str = "MinMax"  # MinMax | Entropy | Percentile (onnxruntime's CalibrationMethod)
    quant_format: str = "QDQ"  # QDQ | QOperator
    per_channel: bool = True
    activation_type: str = "QUInt8"
    weight_type: str = "QInt8"
    op_types: tuple[str, ...] = ("Conv", "MatMul", "Gemm")  # what gets int8 kernels (empty: every op onnxruntime can)
    # The first conv sees 1 input channel: too little arithmetic for int8 to pay, and
    # onnxruntime's QLinearConv then loses its NCHWc layout. Keeping it FP32 made the int8
    # CNN/LeNet-5 2.4-2.7x faster through onnxruntime (results/int8-variants-*.md).
    exclude_first_conv: bool = True
    # 7-bit weights: a u8 x s8 product pair then fits the saturating int16 sum of x86 kernels
    # without VNNI (digits.precision.int8_path), so the artifact computes the same on every
    # CPU it is copied to. Measured (results/int8-variants-2026-11-30-*): on AVX2 the full
    # range cost the MLP 0.14 points (agreement 99.69%), 7 bits nothing; on VNNI 7 bits cost
    # nothing measurable, and the kernel, hence the speed, is the same.
    reduce_range: bool = True
    seed: int = 0

    def to_dict(self) -> dict:
        return {**asdict(self), "op_types": list(self.op_types), "calibration_source": "MNIST train split"}


def calibration_images(train_x: torch.Tensor, settings: Int8Settings) -> np.ndarray:
    """A seeded sample of training images as float32 [N,1,28,28]."""
    if len(train_x) == 0:
        raise DigitsError("int8 calibration needs training images, and the training split is empty.")
    n = min(settings.calibration_images, len(train_x))
    idx = torch.randperm(len(train_x), generator=torch.Generator().manual_seed(settings.seed))[:n]
    return np.ascontiguousarray(train_x[idx].numpy(), dtype=np.float32)


def quantize_int8(fp32_onnx: Path, path: Path, train_x: torch.Tensor, settings: Int8Settings) -> dict:
    """Quantize ``fp32_onnx`` into ``path`` (atomically); returns the manifest fields."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    images = calibration_images(train_x, settings)

    class Reader(CalibrationDataReader):
        def __init__(self):
            step = settings.calibration_batch
            self.batches = iter([{"input": images[i:i + step]} for i in range(0, len(images), step)])

        def get_next(self):
            return next(self.batches, None)

    try:
        method, fmt = CalibrationMethod[settings.calibrate_method], QuantFormat[settings.quant_format]
        act, weight = QuantType[settings.activation_type], QuantType[settings.weight_type]
    except KeyError as e:
        raise DigitsError(f"Unknown int8 setting {e}: see digits.export.quantize.Int8Settings.") from None
    with tempfile.TemporaryDirectory(prefix="digits-int8-") as tmp, _quiet():
        pre = Path(tmp) / "pre.onnx"
        symbolic = True
        try:
            quant_pre_process(str(fp32_onnx), str(pre), skip_symbolic_shape=False)
        except Exception:  # noqa: BLE001
            # onnxruntime < 1.21's symbolic shape inference cannot read the Constant nodes
            # that onnxscript 0.7 writes; ONNX's own shape inference is enough for these
            # graphs, whose only symbolic dimension is the batch.
            symbolic = False
            quant_pre_process(str(fp32_onnx), str(pre), skip_symbolic_shape=True)
        excluded = _first_conv(pre) if settings.exclude_first_conv else []
        with atomic_path(path) as out:
            quantize_static(str(pre), str(out), Reader(), quant_format=fmt, per_channel=settings.per_channel,
                            activation_type=act, weight_type=weight, op_types_to_quantize=list(settings.op_types) or None,
                            nodes_to_exclude=excluded, calibrate_method=method, reduce_range=settings.reduce_range,
                            extra_options={"CalibTensorRangeSymmetric": False})
    return {"int8": {**settings.to_dict(), "calibration_images": len(images), "nodes_excluded": excluded,
                     "symbolic_shape_inference": symbolic}}


def _first_conv(model_path: Path) -> list[str]:
    import onnx

    convs = [n.name for n in onnx.load(str(model_path)).graph.node if n.op_type == "Conv"]
    return convs[:1]


@contextlib.contextmanager
def _quiet():
    # The quantizer logs and warns per tensor; none of it is the user's business.
    root = logging.getLogger()
    old = root.level
    root.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        root.setLevel(old)
