"""Which int8 quantization settings make the int8 ONNX fast, and what they cost in accuracy.

    python scripts/int8_variants.py                      # every variant, every model
    python scripts/int8_variants.py --models lenet5 --variants default exclude-first-conv

For each variant of :class:`digits.export.quantize.Int8Settings`, every model's trained
checkpoint (artifacts/, from `digits train`) is quantized into a temporary folder, its
parity checked on the full test set, and it is benchmarked through onnxruntime and
OpenVINO at batch 1 and 256 in one interleaved sweep. Writes
results/int8-variants-<date>.{json,md}. The README's int8 figures come from that file.
"""

from __future__ import annotations

import argparse
import dataclasses
import shutil
import tempfile
from pathlib import Path

from digits._io import atomic_write_result
from digits.bench.runner import BenchConfig, cpu_name, run_bench
from digits.checkpoint import now_iso
from digits.data import default_root, load_splits
from digits.export import export_model, runtime_versions
from digits.export.quantize import Int8Settings
from digits.models import list_models
from digits.precision import cpu_features

BASE = Int8Settings()
VARIANTS = {
    "default": BASE,  # QDQ, per-channel int8 weights, uint8 activations, Conv/MatMul/Gemm, first conv FP32
    "every-conv": dataclasses.replace(BASE, exclude_first_conv=False),
    "s8-activations": dataclasses.replace(BASE, activation_type="QInt8"),
    "per-tensor-weights": dataclasses.replace(BASE, per_channel=False),
    "all-ops": dataclasses.replace(BASE, op_types=()),
    "qoperator": dataclasses.replace(BASE, quant_format="QOperator"),
    "entropy-calibration": dataclasses.replace(BASE, calibrate_method="Entropy"),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=list_models())
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    ap.add_argument("--artifacts", type=Path, default=Path("artifacts"))
    ap.add_argument("--data-dir", type=Path, default=None)
    ap.add_argument("--out", type=Path, default=Path("results"))
    args = ap.parse_args()

    splits = load_splits(args.data_dir or default_root(), seed=0)
    x, y = splits.test_x, splits.test_y
    rows = []
    for variant in args.variants:
        with tempfile.TemporaryDirectory(prefix="digits-int8-variant-") as tmp:
            for model in args.models:  # the FP32 ONNX and exports.json come along; model.int8.onnx is rebuilt
                shutil.copytree(args.artifacts / model, Path(tmp) / model)
                parity = export_model(model, "onnx", x, y, checkpoint=args.artifacts, out=tmp, precision="int8",
                                      train_x=splits.train_x, int8=VARIANTS[variant])
                rows.append({"variant": variant, "model": model, "settings": VARIANTS[variant].to_dict(),
                             "parity": {k: parity[k] for k in ("passed", "accuracy", "eager_accuracy",
                                                              "argmax_agreement", "max_abs_diff", "bytes")}})
            cfg = BenchConfig(models=args.models, backends=["onnxruntime", "openvino"], precisions=["fp32", "int8"],
                              batch_sizes=[1, 256], checkpoint=str(args.artifacts), artifacts=tmp, rounds=3)
            report = run_bench(cfg, x, y)
            for row in rows:
                if row["variant"] == variant:
                    row["cells"] = [{k: r[k] for k in ("backend", "precision", "batch_size", "p50_ms", "throughput",
                                                       "accuracy", "error")}
                                    for r in report["records"] if r["model"] == row["model"]]
    env = {"date": now_iso(), "cpu": cpu_name(), "cpu_features": cpu_features(), **runtime_versions()}
    stem = args.out / f"int8-variants-{env['date'][:10]}"
    print(atomic_write_result(stem, {"environment": env, "rows": rows}, to_markdown(env, rows))[1].read_text())


def to_markdown(env: dict, rows: list[dict]) -> str:
    lines = [f"# int8 variants: {env['cpu']}, {env['date']}", "",
             f"onnxruntime {env['onnxruntime']}, torch {env['torch']}; img/s at batch 256 (p50 us at batch 1); "
             "accuracy on the full test set", "",
             "| variant | model | parity | int8 acc (FP32) | agree | ORT fp32 b256 | ORT int8 b256 | OV int8 b256 "
             "| ORT int8 b1 us | OV int8 b1 us |", "|---|---|---|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        def cell(backend, precision, batch, key, r=r):
            for c in r["cells"]:
                if (c["backend"], c["precision"], c["batch_size"]) == (backend, precision, batch):
                    if c["error"]:
                        return "failed"
                    return f"{c['throughput']:,.0f}" if key == "throughput" else f"{c['p50_ms'] * 1e3:.1f}"
            return "-"
        p = r["parity"]
        lines.append(f"| {r['variant']} | {r['model']} | {'pass' if p['passed'] else 'FAIL'} | {p['accuracy']:.2%} "
                     f"({p['eager_accuracy']:.2%}) | {p['argmax_agreement']:.2%} | "
                     f"{cell('onnxruntime', 'fp32', 256, 'throughput')} | {cell('onnxruntime', 'int8', 256, 'throughput')} | "
                     f"{cell('openvino', 'int8', 256, 'throughput')} | {cell('onnxruntime', 'int8', 1, 'p50')} | "
                     f"{cell('openvino', 'int8', 1, 'p50')} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
