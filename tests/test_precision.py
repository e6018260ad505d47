"""Reduced precision: detection, thresholds, bf16/fp16/int8 exports, and the precision axis of the bench."""

from __future__ import annotations

import json

import onnx
import pytest
import torch
from typer.testing import CliRunner

from digits.bench.backends import create_backend
from digits.bench.probes import onnxruntime_matmul_probe
from digits.bench.runner import BenchConfig, pairs, run_bench
from digits.cli import app
from digits.errors import DigitsError, UsageError
from digits.export import artifact_name, export_model, read_exports, verify_path
from digits.precision import at_precision, cpu_features, native_precisions, passes, thresholds

runner = CliRunner()
QUICK = dict(warmup=1, min_iters=3, min_time=0.0, rounds=1, threads=2)
NONE = {f: False for f in cpu_features()}


# --------------------------------------------------------------------------- detection and thresholds
@pytest.mark.parametrize("flags, expected", [
    ({}, ["fp32"]),
    ({"avx512_vnni": True}, ["fp32", "int8"]),
    ({"avx512_bf16": True, "avx512_vnni": True}, ["fp32", "bf16", "int8"]),
    ({"amx_bf16": True, "amx_int8": True, "amx_fp16": True}, ["fp32", "bf16", "fp16", "int8"]),
    ({"avx512_fp16": True}, ["fp32"]),  # no convolution kernel of torch or onnxruntime uses it
])
def test_native_precisions_follow_the_cpu_flags(flags, expected):
    assert native_precisions("cpu", {**NONE, **flags}) == expected


@pytest.mark.parametrize("capability, expected", [((7, 5), ["fp32", "fp16"]), ((9, 0), ["fp32", "fp16", "bf16"])])
def test_native_precisions_on_cuda_follow_the_compute_capability(monkeypatch, capability, expected):
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a: capability)
    assert native_precisions("cuda") == expected


def test_cpu_features_read_the_flags_line(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nflags\t\t: fpu sse avx512f avx512_bf16 amx_tile\n\nprocessor\t: 1\nflags\t: fpu\n")
    got = cpu_features.__wrapped__(str(info))
    assert got["avx512_bf16"] and got["amx_tile"] and got["avx512f"] and not got["amx_int8"]
    assert not any(cpu_features.__wrapped__(str(tmp_path / "absent")).values())


@pytest.mark.parametrize("precision, figures, ok", [
    ("fp32", dict(max_abs_diff=9e-5, argmax_agreement=1.0, accuracy=0.99, eager_accuracy=0.99), True),
    ("fp32", dict(max_abs_diff=2e-4, argmax_agreement=1.0, accuracy=0.99, eager_accuracy=0.99), False),
    ("fp32", dict(max_abs_diff=1e-6, argmax_agreement=0.9999, accuracy=0.99, eager_accuracy=0.99), False),
    ("int8", dict(max_abs_diff=0.5, argmax_agreement=0.995, accuracy=0.9900, eager_accuracy=0.9920), True),
    ("int8", dict(max_abs_diff=0.5, argmax_agreement=0.995, accuracy=0.9899, eager_accuracy=0.9920), False),
    ("bf16", dict(max_abs_diff=0.5, argmax_agreement=0.9949, accuracy=0.992, eager_accuracy=0.992), False),
    ("bf16", dict(max_abs_diff=0.5, argmax_agreement=0.999, accuracy=0.9942, eager_accuracy=0.992), False),
])
def test_parity_thresholds_per_precision(precision, figures, ok):
    assert passes(precision, **figures) is ok


def test_thresholds_are_the_issue_figures():
    assert thresholds("fp32") == {"max_abs_diff": 1e-4, "argmax_agreement": 1.0}
    assert thresholds("int8") == thresholds("bf16") == {"accuracy_delta": 0.002, "argmax_agreement": 0.995}
    with pytest.raises(UsageError, match="fp32, bf16, fp16, int8"):
        thresholds("fp8")


def test_at_precision_keeps_the_fp32_contract_and_leaves_the_model_alone(trained):
    from digits.checkpoint import load_checkpoint

    eager, _ = load_checkpoint(trained / "lenet5")
    half = at_precision(eager, "bf16")
    x = torch.randn(4, 1, 28, 28)
    out = half(x)
    assert out.dtype == torch.float32 and out.shape == (4, 10)
    assert next(half.parameters()).dtype == torch.bfloat16 and next(eager.parameters()).dtype == torch.float32
    assert 0 < (out - eager(x)).abs().max().item() < 0.5  # really reduced, and still the same model
    with pytest.raises(UsageError, match="onnxruntime or OpenVINO"):
        at_precision(eager, "int8")


# --------------------------------------------------------------------------- exports
def test_format_that_cannot_carry_a_precision_is_refused():
    assert artifact_name("pt2", "bf16") == "model.bf16.pt2" and artifact_name("onnx", "int8") == "model.int8.onnx"
    with pytest.raises(UsageError, match="int8 is exported as: onnx"):
        artifact_name("torchscript", "int8")
    result = runner.invoke(app, ["export", "mlp", "--format", "onnx", "--precision", "bf16"])
    assert result.exit_code == 2 and "cannot carry bf16" in result.output and "Traceback" not in result.output


@pytest.mark.parametrize("fmt", ["torchscript", "pt2"])
def test_bf16_export_is_bf16_and_judged_by_the_reduced_thresholds(exported, trained, test_set, tmp_path, fmt):
    import shutil

    shutil.copytree(trained / "cnn", tmp_path / "cnn")
    r = export_model("cnn", fmt, *test_set, checkpoint=trained, out=tmp_path, precision="bf16")
    assert r["path"].endswith(artifact_name(fmt, "bf16")) and r["precision"] == "bf16"
    assert r["max_abs_diff"] > 1e-4  # it really computes in bf16: FP32 would match to ~1e-6
    assert r["passed"] == passes("bf16", **{k: r[k] for k in ("max_abs_diff", "argmax_agreement", "accuracy",
                                                              "eager_accuracy")})
    entry = read_exports(tmp_path / "cnn")["formats"][f"{fmt}-bf16"]
    assert entry["thresholds"] == thresholds("bf16") and entry["file"] == artifact_name(fmt, "bf16")
    assert "onnx" in read_exports(tmp_path / "cnn")["formats"]  # the FP32 entries stay beside it
    again = verify_path(tmp_path / "cnn" / artifact_name(fmt, "bf16"), *test_set, checkpoint=trained)
    assert again[0]["precision"] == "bf16" and again[0]["max_abs_diff"] == pytest.approx(r["max_abs_diff"])


@pytest.fixture(scope="module")
def int8_export(trained, test_set, splits, tmp_path_factory):
    out = tmp_path_factory.mktemp("int8")
    calls = []
    import digits.export.quantize as q

    real = q.calibration_images

    def spy(train_x, settings):
        calls.append(train_x)
        return real(train_x, settings)
    q.calibration_images = spy
    try:
        rec = export_model("lenet5", "onnx", *test_set, checkpoint=trained, out=out, precision="int8",
                           train_x=splits.train_x)
    finally:
        q.calibration_images = real
    return rec, out, calls


def test_int8_export_is_quantized_qdq_with_its_settings_recorded(int8_export, splits):
    rec, out, calls = int8_export
    model = onnx.load(rec["path"])
    ops = {n.op_type for n in model.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear", "Conv"} <= ops  # QDQ around FP32-typed ops
    assert any(t.data_type == onnx.TensorProto.INT8 for t in model.graph.initializer)  # int8 weights
    entry = read_exports(out / "lenet5")["formats"]["onnx-int8"]
    settings = entry["int8"]
    assert settings["quant_format"] == "QDQ" and settings["per_channel"] is True
    assert settings["calibration_source"] == "MNIST train split"
    assert settings["calibration_images"] == min(1000, len(splits.train_x))
    assert calls and calls[0] is splits.train_x  # calibrated on training images, never the test set
    assert entry["thresholds"] == thresholds("int8") and entry["precision"] == "int8"
    assert 0.9 < rec["argmax_agreement"] <= 1.0 and rec["max_abs_diff"] > 1e-3


def test_int8_export_without_training_images_is_an_error(trained, test_set, tmp_path):
    with pytest.raises(DigitsError, match="training images"):
        export_model("lenet5", "onnx", *test_set, checkpoint=trained, out=tmp_path, precision="int8")


def test_cli_int8_export_calibrates_and_reports(trained, fixture_root, tmp_path):
    import shutil

    shutil.copytree(trained / "mlp", tmp_path / "mlp")
    result = runner.invoke(app, ["export", "mlp", "--format", "all", "--precision", "int8", "--checkpoint", str(trained),
                                 "--out", str(tmp_path), "--data-dir", str(fixture_root), "--json"])
    records = json.loads(result.stdout)
    assert [(r["format"], r["precision"]) for r in records] == [("onnx", "int8")]  # all = formats that carry int8
    assert result.exit_code == (0 if records[0]["passed"] else 1)


# --------------------------------------------------------------------------- bench
def test_sweep_pairs_leave_out_what_a_backend_cannot_run():
    cfg = BenchConfig(backends=["eager", "onnxruntime"], precisions=["fp32", "bf16", "int8"])
    keep, left = pairs(cfg)
    assert keep == [("eager", "fp32"), ("onnxruntime", "fp32"), ("eager", "bf16"), ("onnxruntime", "int8")]
    assert left == ["onnxruntime bf16: onnxruntime has no bf16 path", "eager int8: eager has no int8 path"]
    # a precision no backend runs is never silent: every backend gets an error cell for it
    assert pairs(BenchConfig(backends=["eager"], precisions=["int8"]))[0] == [("eager", "int8")]


def test_bench_reduced_precision_cells_carry_precision_and_their_own_peak(exported, int8_export, trained, test_set):
    import shutil

    rec, out, _ = int8_export
    shutil.copy(trained / "lenet5" / "model.onnx", out / "lenet5" / "model.onnx")  # FP32 beside the int8 file
    manifest = read_exports(out / "lenet5")
    manifest["formats"]["onnx"] = read_exports(trained / "lenet5")["formats"]["onnx"]
    (out / "lenet5" / "exports.json").write_text(json.dumps(manifest))
    cfg = BenchConfig(models=["lenet5"], backends=["eager", "onnxruntime"], precisions=["fp32", "bf16", "int8"],
                      batch_sizes=[2], checkpoint=str(trained), artifacts=str(out), **QUICK)
    report = run_bench(cfg, *test_set)
    env = report["environment"]
    cells = {(r["backend"], r["precision"]): r for r in report["records"]}
    assert set(cells) == {("eager", "fp32"), ("onnxruntime", "fp32"), ("eager", "bf16"), ("onnxruntime", "int8")}
    assert all(r["error"] is None for r in cells.values()), cells
    assert cells["onnxruntime", "int8"]["accuracy"] == pytest.approx(rec["accuracy"])
    assert env["gemm_precision"]["onnxruntime MatMulInteger"] == "int8" and env["gemm_precision"]["torch.mm bf16"] == "bf16"
    for (_, precision), r in cells.items():
        peak = env["peak_gflops_by_precision"][precision]
        assert peak == max(v for k, v in env["gemm_gflops"].items() if env["gemm_precision"][k] == precision)
        assert r["efficiency"] == pytest.approx(r["throughput"] * 2 * r["macs_per_image"] / (peak * 1e9))
    assert env["cpu_features"] == cpu_features() and env["precisions"] == ["fp32", "bf16", "int8"]


def test_a_precision_without_an_artifact_is_an_error_cell(exported, trained, test_set):
    cfg = BenchConfig(models=["mlp"], backends=["pt2", "eager"], precisions=["fp16", "int8"], batch_sizes=[1],
                      checkpoint=str(trained), artifacts=str(trained), **QUICK)
    cells = {(r["backend"], r["precision"]): r for r in run_bench(cfg, *test_set)["records"]}
    assert "digits export mlp --format pt2 --precision fp16" in cells["pt2", "fp16"]["error"]
    assert cells["eager", "fp16"]["error"] is None  # eager casts the checkpoint itself
    assert "eager does not run int8" in cells["eager", "int8"]["error"] and cells["pt2", "int8"]["error"]


def test_onnxruntime_int8_probe_multiplies_integers():
    import numpy as np

    call, flops = onnxruntime_matmul_probe(threads=1, n=32, int8=True)
    rng = np.random.default_rng(0)
    a = rng.integers(0, 255, (32, 32), dtype=np.uint8)
    b = rng.integers(-127, 127, (32, 32), dtype=np.int8)
    assert (call()[0] == a.astype(np.int32) @ b.astype(np.int32)).all() and flops == 2 * 32 ** 3


def test_cli_bad_precision_exits_2():
    result = runner.invoke(app, ["bench", "--precisions", "fp32,fp8"])
    assert result.exit_code == 2 and "fp8" in result.output and "Traceback" not in result.output


# --------------------------------------------------------------------------- OpenVINO
def _has_openvino() -> bool:
    return create_backend("openvino").available() is None


@pytest.mark.skipif(not _has_openvino(), reason="OpenVINO is not installed (pip install 'digits[openvino]')")
@pytest.mark.parametrize("model", ["mlp", "lenet5"])
def test_openvino_fp32_equals_eager_and_reads_back_its_precision(exported, trained, test_set, model):
    from digits.checkpoint import load_checkpoint

    b = create_backend("openvino").load(model, "cpu", artifacts=trained, checkpoint=trained, threads=2)
    eager, _ = load_checkpoint(trained / model)
    x = test_set[0][:64]
    with torch.inference_mode():
        assert torch.allclose(b(x), eager(x), atol=1e-4)
    assert b.settings["inference_precision"] == "f32" and set(b.settings["compute_layers"]) == {"f32"}
    assert torch.allclose(b(x[:7]), eager(x[:7]), atol=1e-4)  # another batch: its own static compile


@pytest.mark.skipif(not _has_openvino(), reason="OpenVINO is not installed (pip install 'digits[openvino]')")
def test_openvino_refuses_a_hint_it_ignored(exported, trained, monkeypatch):
    import digits.bench.backends.openvino as ovb

    real = ovb.compile_config
    # What a CPU without bf16 does: OpenVINO quietly compiles FP32. Simulated by asking for f32.
    monkeypatch.setattr(ovb, "compile_config", lambda precision, threads: real("fp32", threads))
    with pytest.raises(DigitsError, match="Refusing to report"):
        create_backend("openvino").load("mlp", "cpu", artifacts=trained, checkpoint=trained, precision="bf16")


@pytest.mark.skipif(not _has_openvino(), reason="OpenVINO is not installed (pip install 'digits[openvino]')")
def test_openvino_int8_runs_int8_layers(int8_export, trained):
    _, out, _ = int8_export
    b = create_backend("openvino").load("lenet5", "cpu", artifacts=out, checkpoint=trained, precision="int8")
    assert set(b.settings["compute_layers"]) & {"u8", "i8"}


def test_openvino_missing_says_what_to_install(monkeypatch, trained):
    import builtins

    real = builtins.__import__

    def no_openvino(name, *a, **k):
        if name == "openvino" or name.startswith("openvino."):
            raise ImportError("no openvino")
        return real(name, *a, **k)
    monkeypatch.setattr(builtins, "__import__", no_openvino)
    with pytest.raises(DigitsError, match=r"pip install 'digits\[openvino\]'"):
        create_backend("openvino").load("mlp", "cpu", artifacts=trained, checkpoint=trained)


@pytest.mark.skipif(not _has_openvino(), reason="OpenVINO is not installed (pip install 'digits[openvino]')")
def test_a_signal_after_an_openvino_sweep_does_not_crash(exported, trained, fixture_root):
    # Freeing compiled models after their ov.Core was gone left the process segfaulting on
    # its next signal (a Ctrl-C after `digits bench`): one Core lives for the whole process
    # now. In a subprocess, so a regression fails this test instead of killing the suite.
    import subprocess
    import sys

    code = f"""
import gc, signal
from digits.bench.runner import BenchConfig, run_bench
from digits.data import load_test
x, y = load_test({str(fixture_root)!r})
cfg = BenchConfig(models=["lenet5"], backends=["openvino"], precisions=["fp32"], batch_sizes=[1, 256], min_time=0.0,
                  min_iters=2, rounds=1, warmup=1, threads=2, checkpoint={str(trained)!r}, artifacts={str(trained)!r})
assert all(r["error"] is None for r in run_bench(cfg, x, y)["records"])
got = []
signal.signal(signal.SIGINT, lambda *a: got.append(1))
signal.raise_signal(signal.SIGINT)
gc.collect()
print("survived", len(got))
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and "survived 1" in done.stdout, (done.returncode, done.stderr[-800:])
