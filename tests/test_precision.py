"""Reduced precision: detection, thresholds, bf16/fp16/int8 exports, and the precision axis of the bench."""

from __future__ import annotations

import json

import onnx
import onnx.numpy_helper
import pytest
import torch
from typer.testing import CliRunner

from digits.bench.backends import create_backend
from digits.bench.probes import onnxruntime_matmul_probe
from digits.bench.runner import BenchConfig, pairs, run_bench
from digits.cli import app
from digits.errors import DigitsError, UsageError
from digits.export import artifact_name, export_model, read_exports, verify_path
import digits.precision as precision_mod
from digits.bench.probes import gemm_probes
from digits.bench.timing import strict_fp32
from digits.export.parity import compare_logits
from digits.models import create_model
from digits.precision import (
    Cpu,
    Tf32,
    at_precision,
    cpu_features,
    cpu_kind,
    int8_path,
    native_precisions,
    passes,
    resolve_precisions,
    this_cpu,
    thresholds,
)

runner = CliRunner()
QUICK = dict(warmup=1, min_iters=3, min_time=0.0, rounds=1, threads=1)

# The four kinds of CPU this project meets, as their /proc/cpuinfo reads (flags trimmed to
# the ones that matter plus a few neighbours, so a rule keyed on the wrong flag would show).
KINDS = {
    "intel-amx": Cpu.from_cpuinfo("flags\t\t: fpu sse4_2 avx avx2 fma f16c avx512f avx512dq avx512bw avx512vl avx512_vnni "
                                  "avx512_bf16 avx_vnni avx512_fp16 amx_bf16 amx_tile amx_int8\n", "x86_64"),
    "amd-avx512-bf16": Cpu.from_cpuinfo("flags\t\t: fpu sse4_2 avx avx2 fma f16c avx512f avx512dq avx512bw avx512vl "
                                        "avx512_vnni avx512_bf16 avx512_vbmi2 gfni vaes\n", "x86_64"),
    "amd-avx2": Cpu.from_cpuinfo("flags\t\t: fpu sse4_2 avx avx2 fma f16c bmi2 sha_ni vaes vpclmulqdq\n", "x86_64"),
    "arm64-dotprod": Cpu.from_cpuinfo("processor\t: 0\nBogoMIPS\t: 243.75\nFeatures\t: fp asimd evtstrm aes pmull sha1 "
                                      "sha2 crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc dcpop asimddp ssbs\n", "aarch64"),
}
SWEPT = {"intel-amx": ["fp32", "bf16", "fp16", "int8"], "amd-avx512-bf16": ["fp32", "bf16", "int8"],
         "amd-avx2": ["fp32", "int8"], "arm64-dotprod": ["fp32", "int8"]}
INT8_PATH = {"intel-amx": "AMX-INT8", "amd-avx512-bf16": "AVX512-VNNI", "amd-avx2": "AVX2 without VNNI",
             "arm64-dotprod": "ARM dot-product"}


@pytest.fixture(params=list(KINDS))
def kind(request, monkeypatch):
    """Every digits function that asks which CPU this is gets this kind's answer."""
    monkeypatch.setattr(precision_mod, "this_cpu", lambda *a: KINDS[request.param])
    return request.param


# --------------------------------------------------------------------------- detection and thresholds
def test_each_kind_of_cpu_sweeps_its_native_precisions(kind):
    assert native_precisions("cpu") == SWEPT[kind] == resolve_precisions(None)
    assert INT8_PATH[kind] in int8_path()
    assert BenchConfig(backends=["eager"]).resolved_precisions() == SWEPT[kind]


def test_each_kind_of_cpu_probes_exactly_what_it_sweeps(kind):
    cfg = BenchConfig(backends=["eager", "onnxruntime", "openvino"])
    keep, left = pairs(cfg)
    runs = {"fp32": ["eager", "onnxruntime", "openvino"], "bf16": ["eager", "openvino"],
            "fp16": ["eager", "openvino"], "int8": ["onnxruntime", "openvino"]}  # what each backend has a path for
    assert keep == [(b, p) for p in SWEPT[kind] for b in runs[p]]  # int8 on every one of the four kinds
    assert ("onnxruntime bf16: onnxruntime has no bf16 path" in left) is ("bf16" in SWEPT[kind])
    names = set(gemm_probes("cpu", 2, SWEPT[kind], cfg.backends))
    want = {"torch.mm", "onnxruntime MatMul", "onnxruntime MatMulInteger"} | {f"openvino MatMul {p}" for p in SWEPT[kind]}
    want |= {f"torch.mm {p}" for p in ("bf16", "fp16") if p in SWEPT[kind]}
    assert names == want


def test_each_kind_of_cpu_is_recorded_in_the_bench_environment(kind):
    from digits.bench.environment import environment

    env = environment(BenchConfig(backends=["eager"]))
    assert env["native_precisions"] == env["precisions"] == SWEPT[kind]
    assert INT8_PATH[kind] in env["int8_path"] and env["cpu_features"] == cpu_features()
    assert all(env["cpu_features"][f] for f in ("asimddp",) if kind == "arm64-dotprod")
    assert env["cpu_features"].get("avx2", False) is (kind != "arm64-dotprod")


KIND_NAMED = {"intel-amx": "(AVX-512, AVX512-BF16, AVX512-FP16, AMX)", "amd-avx512-bf16": "(AVX-512, AVX512-BF16)",
              "amd-avx2": "(AVX2, no AVX-512)", "arm64-dotprod": "(ARM64, dot product)"}


def test_each_kind_of_cpu_is_named_apart_in_every_result(kind):
    # a VM names two of these kinds only "AMD EPYC": every result file's "cpu" says which one
    from digits.bench.environment import cpu_name

    assert cpu_name().endswith(" " + KIND_NAMED[kind]), cpu_name()
    assert len({cpu_kind(c) for c in KINDS.values()}) == len(KINDS)


@pytest.mark.parametrize("flags, arch, expected", [
    ("", "x86_64", ["fp32"]),  # no /proc/cpuinfo flags: FP32 only
    ("sse4_2 avx", "x86_64", ["fp32"]),  # pre-AVX2 x86: no int8 kernel onnxruntime would pick
    ("avx2 fma", "x86_64", ["fp32", "int8"]),
    ("avx2 avx512_fp16", "x86_64", ["fp32", "fp16", "int8"]),
    ("avx2 amx_bf16 amx_int8 amx_fp16", "x86_64", ["fp32", "bf16", "fp16", "int8"]),
    ("fp asimd", "aarch64", ["fp32"]),  # ARM64 without dot-product
    ("fp asimd asimddp bf16 i8mm", "aarch64", ["fp32", "bf16", "int8"]),
    ("bf16 asimddp", "x86_64", ["fp32"]),  # ARM flag names mean nothing on x86
])
def test_native_precisions_follow_the_flags_and_the_architecture(flags, arch, expected):
    assert native_precisions("cpu", Cpu(arch, frozenset(flags.split()))) == expected


@pytest.mark.parametrize("capability, expected", [((7, 5), ["fp32", "fp16"]),
                                                     ((9, 0), ["fp32", "fp16", "bf16", "tf32"])])
def test_native_precisions_on_cuda_follow_the_compute_capability(monkeypatch, capability, expected):
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a: capability)
    assert native_precisions("cuda") == expected


def test_this_cpu_reads_the_first_flags_line(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nflags\t\t: fpu sse avx2 avx512_bf16 amx_tile\n\nprocessor\t: 1\nflags\t: fpu\n")
    got = cpu_features(this_cpu.__wrapped__(str(info)))
    assert got["avx512_bf16"] and got["amx_tile"] and got["avx2"] and not got["amx_int8"]
    assert this_cpu.__wrapped__(str(tmp_path / "absent")).flags == frozenset()


@pytest.mark.parametrize("precision, figures, ok", [
    ("fp32", dict(max_abs_diff=9e-5, argmax_agreement=1.0, accuracy=0.99, eager_accuracy=0.99), True),
    ("fp32", dict(max_abs_diff=2e-4, argmax_agreement=1.0, accuracy=0.99, eager_accuracy=0.99), False),
    ("fp32", dict(max_abs_diff=1e-6, argmax_agreement=0.9999, accuracy=0.99, eager_accuracy=0.99), False),
    ("int8", dict(max_abs_diff=0.5, argmax_agreement=0.995, accuracy=0.9900, eager_accuracy=0.9920), True),
    ("int8", dict(max_abs_diff=0.5, argmax_agreement=0.995, accuracy=0.9899, eager_accuracy=0.9920), False),
    ("bf16", dict(max_abs_diff=0.5, argmax_agreement=0.9949, accuracy=0.992, eager_accuracy=0.992), False),
    ("bf16", dict(max_abs_diff=0.5, argmax_agreement=0.999, accuracy=0.9942, eager_accuracy=0.992), False),
    # tf32: looser than fp32 on logits, stricter than bf16 on predictions
    ("tf32", dict(max_abs_diff=0.01, argmax_agreement=0.9995, accuracy=0.99, eager_accuracy=0.99), True),
    ("tf32", dict(max_abs_diff=0.06, argmax_agreement=1.0, accuracy=0.99, eager_accuracy=0.99), False),
    ("tf32", dict(max_abs_diff=0.01, argmax_agreement=0.998, accuracy=0.99, eager_accuracy=0.99), False),
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
    weights = [onnx.numpy_helper.to_array(t) for t in model.graph.initializer if t.data_type == onnx.TensorProto.INT8]
    assert weights  # int8 weights, in 7 bits: no u8 x s8 pair can saturate an int16 on x86 without VNNI
    assert all(w.min() >= -64 and w.max() <= 64 for w in weights) and max(w.max() for w in weights) > 32  # [-64, 64]
    entry = read_exports(out / "lenet5")["formats"]["onnx-int8"]
    settings = entry["int8"]
    assert settings["quant_format"] == "QDQ" and settings["per_channel"] is True and settings["reduce_range"] is True
    assert settings["calibration_source"] == "MNIST train split"
    assert settings["calibration_images"] == min(1000, len(splits.train_x))
    assert calls and calls[0] is splits.train_x  # calibrated on training images, never the test set
    assert entry["thresholds"] == thresholds("int8") and entry["precision"] == "int8"
    assert 0.9 < rec["argmax_agreement"] <= 1.0 and rec["max_abs_diff"] > 1e-3


def test_int8_export_quantizes_the_verified_fp32_file_beside_it(exported, trained, test_set, splits, tmp_path):
    import shutil

    shutil.copytree(trained / "mlp", tmp_path / "mlp")
    rec = export_model("mlp", "onnx", *test_set, checkpoint=tmp_path, out=tmp_path, precision="int8", train_x=splits.train_x)
    assert read_exports(tmp_path / "mlp")["formats"]["onnx-int8"]["quantized_from"] == "model.onnx"
    assert rec["precision"] == "int8" and rec["max_abs_diff"] > 1e-3  # quantized, not a copy
    onnx_file = tmp_path / "mlp" / "model.onnx"
    onnx_file.write_bytes(onnx_file.read_bytes() + b"\0")  # no longer what the manifest says: exported afresh
    export_model("mlp", "onnx", *test_set, checkpoint=tmp_path, out=tmp_path, precision="int8", train_x=splits.train_x)
    assert "quantized_from" not in read_exports(tmp_path / "mlp")["formats"]["onnx-int8"]


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
def test_compare_logits_holds_tf32_to_its_own_logit_threshold():
    ref = torch.randn(100, 10) * 5
    near, far = ref + 0.01, ref + 0.2  # the same predictions, logits 0.01 and 0.2 off
    assert compare_logits(near, ref, "tf32")["passed"] and not compare_logits(near, ref, "fp32")["passed"]
    assert not compare_logits(far, ref, "tf32")["passed"] and compare_logits(far, ref, "bf16")["passed"]


def test_tf32_wrapper_turns_tf32_on_for_its_own_calls_only():
    seen = []

    class Recorder(torch.nn.Module):
        def forward(self, x):
            seen.append((torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32))
            return x

    with strict_fp32():
        Tf32(Recorder())(torch.zeros(1))
        after = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    assert seen == [(True, True)] and after == (False, False)


def test_tf32_is_refused_off_cuda(trained):
    model = create_model("lenet5")
    with pytest.raises(UsageError, match="tf32 is a CUDA precision"):
        at_precision(model, "tf32")
    with pytest.raises(UsageError, match="tf32 is a CUDA precision"):
        BenchConfig(models=["lenet5"], backends=["eager"], precisions=["fp32", "tf32"]).validate()
    result = runner.invoke(app, ["bench", "--precisions", "tf32", "--checkpoint", str(trained)])
    assert result.exit_code == 2 and "tf32 is a CUDA precision" in result.output and "Traceback" not in result.output
    # only backends that run the checkpoint itself have the switch; exports are left out, and said so
    keep, left = pairs(BenchConfig(backends=["eager", "torchscript", "pt2"], precisions=["tf32"], device="cuda"))
    assert keep == [("eager", "tf32")] and left == ["torchscript tf32: torchscript has no tf32 path",
                                                      "pt2 tf32: pt2 has no tf32 path"]


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


def _saturating_u8s8(a, b):
    """What x86 without VNNI computes for u8 x s8: ``vpmaddubsw`` adds each adjacent pair of
    products into a saturating int16, then the int16s are summed in int32 (checked against
    onnxruntime's AVX2 kernel under `qemu-x86_64 -cpu Haswell`)."""
    import numpy as np

    pairs = a[:, 0::2, None] * b[None, 0::2, :] + a[:, 1::2, None] * b[None, 1::2, :]
    return np.clip(pairs, -32768, 32767).sum(1)


def test_onnxruntime_int8_probe_multiplies_as_this_cpu_documents():
    import numpy as np

    call, flops = onnxruntime_matmul_probe(threads=1, n=32, int8=True)
    rng = np.random.default_rng(0)
    a = rng.integers(0, 255, (32, 32), dtype=np.uint8).astype(np.int32)  # the probe's own inputs
    b = rng.integers(-127, 127, (32, 32), dtype=np.int8).astype(np.int32)
    exact = a @ b
    # VNNI, AMX and ARM's dot products sum in int32: exact. x86 without VNNI saturates pairs,
    # as onnxruntime's quantization docs say; these inputs do saturate there (255 x 127 x 2).
    expected = _saturating_u8s8(a, b) if "without VNNI" in (int8_path() or "") else exact
    assert (call()[0] == expected).all() and flops == 2 * 32 ** 3
    assert not (_saturating_u8s8(a, b) == exact).all()  # the two expectations really differ


def test_int8_products_that_cannot_saturate_are_exact_on_every_cpu():
    import numpy as np

    from digits.export.onnx import make_model, make_session
    from onnx import TensorProto, helper

    # 7-bit weights (onnxruntime's reduce_range: [-64, 64]): 255 x 64 x 2 = 32,640 fits an
    # int16, so every kernel, saturating or not, must give exact int32 arithmetic.
    rng = np.random.default_rng(1)
    a = rng.integers(0, 256, (16, 64), dtype=np.uint8)
    b = rng.integers(-64, 65, (64, 8), dtype=np.int8)
    io = [helper.make_tensor_value_info("a", TensorProto.UINT8, [16, 64]),
          helper.make_tensor_value_info("b", TensorProto.INT8, [64, 8]),
          helper.make_tensor_value_info("c", TensorProto.INT32, [16, 8])]
    graph = helper.make_graph([helper.make_node("MatMulInteger", ["a", "b"], ["c"])], "mm", io[:2], io[2:])
    session = make_session(make_model(graph).SerializeToString(), "cpu", threads=1)
    got = session.run(None, {"a": a, "b": b})[0]
    assert (got == a.astype(np.int32) @ b.astype(np.int32)).all()
    assert (_saturating_u8s8(a.astype(np.int32), b.astype(np.int32)) == got).all()


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

    b = create_backend("openvino").load(model, "cpu", artifacts=trained, checkpoint=trained, threads=1)
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
                  min_iters=2, rounds=1, warmup=1, threads=1, checkpoint={str(trained)!r}, artifacts={str(trained)!r})
assert all(r["error"] is None for r in run_bench(cfg, x, y)["records"])
got = []
signal.signal(signal.SIGINT, lambda *a: got.append(1))
signal.raise_signal(signal.SIGINT)
gc.collect()
print("survived", len(got))
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and "survived 1" in done.stdout, (done.returncode, done.stderr[-800:])


def test_tf32_emulation_keeps_ten_mantissa_bits_rounding_to_nearest_even():
    """scripts/tf32_emulate.py, the source of TF32_THRESHOLDS: it must round like TF32 does."""
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location("tf32_emulate", Path(__file__).parent.parent / "scripts/tf32_emulate.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    ulp = 2.0 ** -10  # TF32's last mantissa bit at 1.0
    x = torch.tensor([1 + ulp, 1 + ulp / 4, 1 + 3 * ulp / 4, 1 + ulp / 2, 1 + 3 * ulp / 2, -(1 + 3 * ulp / 4)])
    assert mod.to_tf32(x).tolist() == [1 + ulp, 1.0, 1 + ulp, 1.0, 1 + 2 * ulp, -(1 + ulp)]  # ties go to even
