"""Which int8 quantization settings make the int8 ONNX fast, and what they cost in accuracy.

    python scripts/int8_variants.py                      # every variant, every model
    python scripts/int8_variants.py --models lenet5 --variants default every-conv
    qemu-x86_64 -cpu Haswell .venv/bin/python scripts/int8_variants.py --parity-only --tag=-avx2-qemu \
        --emulated "qemu-x86_64 -cpu Haswell" --variants default full-range u8u8   # AVX2 without VNNI

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
import sys
import tempfile
from pathlib import Path

import torch

from digits._io import atomic_write_result
from digits.bench.runner import BenchConfig, cpu_name, run_bench
from digits.checkpoint import missing_checkpoint, now_iso
from digits.data import default_root, load_splits
from digits.errors import DigitsError
from digits.export import export_model, runtime_versions
from digits.export.quantize import Int8Settings
from digits.models import list_models
from digits.precision import cpu_features, int8_path

BASE = Int8Settings()
VARIANTS = {
    "default": BASE,  # QDQ, per-channel 7-bit int8 weights, uint8 activations, Conv/MatMul/Gemm, first conv FP32
    "every-conv": dataclasses.replace(BASE, exclude_first_conv=False),
    "s8-activations": dataclasses.replace(BASE, activation_type="QInt8"),
    "per-tensor-weights": dataclasses.replace(BASE, per_channel=False),
    "all-ops": dataclasses.replace(BASE, op_types=()),
    "qoperator": dataclasses.replace(BASE, quant_format="QOperator"),
    "entropy-calibration": dataclasses.replace(BASE, calibrate_method="Entropy"),
    # for x86 without VNNI, whose u8 x s8 kernels sum product pairs in a saturating int16
    "full-range": dataclasses.replace(BASE, reduce_range=False),  # 8-bit weights: saturate without VNNI
    "u8u8": dataclasses.replace(BASE, weight_type="QUInt8", reduce_range=False),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=list_models(), choices=list_models())
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    ap.add_argument("--artifacts", type=Path, default=Path("artifacts"))
    ap.add_argument("--data-dir", type=Path, default=None)
    ap.add_argument("--out", type=Path, default=Path("results"))
    ap.add_argument("--parity-only", action="store_true",
                    help="No timing: accuracy and agreement only (e.g. under `qemu-x86_64 -cpu Haswell`, which "
                         "runs onnxruntime's AVX2 kernels on any x86 host, far too slowly to time)")
    ap.add_argument("--tag", default="", help="Appended to the file name, e.g. -avx2-qemu")
    ap.add_argument("--emulated", default=None, help="Say so when run under an emulator, e.g. "
                    "'qemu-x86_64 -cpu Haswell': /proc/cpuinfo then names the host, not the CPU the kernels saw")
    args = ap.parse_args()
    if why := missing_checkpoint(args.artifacts, args.models):  # before minutes of quantizing, not after them
        ap.error(f"--artifacts {args.artifacts}: {why}")
    try:
        splits = load_splits(args.data_dir or default_root(), seed=0)
    except DigitsError as e:
        ap.error(f"--data-dir {args.data_dir or default_root()}: {e}")
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
            if args.parity_only:
                continue
            cfg = BenchConfig(models=args.models, backends=["onnxruntime", "openvino"], precisions=["fp32", "int8"],
                              batch_sizes=[1, 256], checkpoint=str(args.artifacts), artifacts=tmp, rounds=3)
            report = run_bench(cfg, x, y)
            for row in rows:
                if row["variant"] == variant:
                    row["cells"] = [{k: r[k] for k in ("backend", "precision", "batch_size", "p50_ms", "throughput",
                                                       "accuracy", "error")}
                                    for r in report["records"] if r["model"] == row["model"]]
    # Under an emulator /proc/cpuinfo describes the host, not the CPU the kernels saw: name it so.
    host = "host_" if args.emulated else ""
    env = {"date": now_iso(), "cpu": cpu_name(), f"{host}cpu_features": cpu_features(), f"{host}int8_path": int8_path(),
           # what CPUID says (torch's kernel dispatch): under qemu-user, the emulated CPU, not /proc/cpuinfo's
           "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
           "command": " ".join(sys.argv), "emulated": args.emulated, **runtime_versions()}
    stem = args.out / f"int8-variants-{env['date'][:10]}{args.tag}"
    print(atomic_write_result(stem, {"environment": env, "rows": rows}, to_markdown(env, rows))[1].read_text())


def to_markdown(env: dict, rows: list[dict]) -> str:
    where = (f"{env['cpu']} emulating another CPU ({env['emulated']}; the kernels saw "
             f"{env.get('torch_cpu_capability')})" if env.get("emulated") else env["cpu"])
    timed = any(r.get("cells") for r in rows)
    lines = [f"# int8 variants: {where}, {env['date']}", "", f"`{env.get('command', '')}`", "",
             f"onnxruntime {env['onnxruntime']}, torch {env['torch']}; "
             + ("img/s at batch 256 (p50 us at batch 1); " if timed else "parity only, no timing; ")
             + "accuracy on the full test set", "",
             "| variant | model | parity | int8 acc (FP32) | agree |" + (" ORT fp32 b256 | ORT int8 b256 | OV int8 b256 "
                                                                   "| ORT int8 b1 us | OV int8 b1 us |" if timed else ""),
             "|---|---|---|---|---:|" + ("---:|" * 5 if timed else "")]
    for r in rows:
        def cell(backend, precision, batch, key, r=r):
            for c in r.get("cells", []):
                if (c["backend"], c["precision"], c["batch_size"]) == (backend, precision, batch):
                    if c["error"]:
                        return "failed"
                    return f"{c['throughput']:,.0f}" if key == "throughput" else f"{c['p50_ms'] * 1e3:.1f}"
            return "-"
        p = r["parity"]
        line = (f"| {r['variant']} | {r['model']} | {'pass' if p['passed'] else 'FAIL'} | {p['accuracy']:.2%} "
                f"({p['eager_accuracy']:.2%}) | {p['argmax_agreement']:.2%} |")
        if timed:
            line += (f" {cell('onnxruntime', 'fp32', 256, 'throughput')} | {cell('onnxruntime', 'int8', 256, 'throughput')} | "
                     f"{cell('openvino', 'int8', 256, 'throughput')} | {cell('onnxruntime', 'int8', 1, 'p50')} | "
                     f"{cell('openvino', 'int8', 1, 'p50')} |")
        lines.append(line)
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
