"""Bench: the timer's statistics, every backend's logits, the record schema, failures as data."""

from __future__ import annotations

import gzip
import json
import shutil
import statistics
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from digits.bench.backends import create_backend, list_backends
from digits.bench.probes import onnxruntime_matmul_probe
from digits.bench.report import COLUMNS, fastest, to_csv, to_markdown
from digits.bench.records import Record, efficiency, round_spread
from digits.bench.runner import BenchConfig, default_backends, run_bench
from digits.bench.timing import measure, percentile, strict_fp32, summarize
from digits.checkpoint import load_checkpoint
from digits.cli import app
from digits.errors import DigitsError, UsageError
from digits.models import list_models
from digits.precision import thresholds

def gpu_provider_missing(backend: str) -> str | None:
    """Why an onnxruntime GPU backend cannot run here (its provider is not installed), else None."""
    import onnxruntime as ort

    from digits.export.onnx import gpu_provider

    be = create_backend(backend)
    if "cpu" in be.devices or not hasattr(be, "gpu_kind"):
        return None
    need = gpu_provider(be.gpu_kind)[0]
    if need in ort.get_available_providers():
        return None
    return f"{backend} needs onnxruntime's {need}, not installed here"


QUICK = dict(warmup=1, min_iters=3, min_time=0.0, rounds=2, threads=2, precisions=["fp32"])
FAST_BACKENDS = default_backends("cpu")


# --------------------------------------------------------------------------- timing
def test_summary_statistics_match_numpy():
    samples = [float(v) for v in np.random.default_rng(0).lognormal(size=501)]
    s = summarize(samples)
    for q, got in ((50, s.p50_ms), (90, s.p90_ms), (99, s.p99_ms)):
        assert got == pytest.approx(np.percentile(samples, q))
    assert s.mean_ms == pytest.approx(np.mean(samples)) and s.std_ms == pytest.approx(statistics.stdev(samples))
    assert s.iterations == 501


def test_percentile_on_a_known_list():
    assert percentile([1.0, 2.0, 3.0, 4.0], 50) == 2.5
    assert percentile([5.0], 99) == 5.0


def test_measure_counts_first_call_warmup_and_samples_separately():
    calls = []
    t = measure(lambda: calls.append(1), warmup=4, min_iters=7, min_time=0.0)
    # first call, warm-up, 7 latency samples, then 7 back-to-back calls for throughput
    assert len(calls) == 1 + 4 + 7 + 7 and t.stats.iterations == 7 and len(t.samples_ms) == 7
    assert t.throughput_calls == 7 and t.throughput_seconds > 0
    assert t.first_call_ms >= 0


def test_measure_runs_at_least_min_time():
    import time
    t = measure(lambda: time.sleep(0.002), warmup=0, min_iters=1, min_time=0.1)
    # min_time is split between the two phases: 50 ms of latency samples, 50 ms of back-to-back calls
    assert sum(t.samples_ms) >= 45 and t.stats.p50_ms >= 2 and t.throughput_seconds >= 0.045
    assert t.calls_per_second() == pytest.approx(t.throughput_calls / t.throughput_seconds)
    assert t.calls_per_second() <= 1 / 0.002  # each call sleeps 2 ms: no more than 500 a second


def _cell(backend, batch, p50, error=None):
    return {"model": "lenet5", "backend": backend, "precision": "fp32", "device": "cpu", "batch_size": batch,
            "p50_ms": p50, "error": error}


def test_round_spread_is_the_median_cell_spread():
    def rec(rounds, error=None):
        return Record(model="lenet5", backend="eager", device="cpu", batch_size=1, precision="fp32", params=1, macs_per_image=1,
                      round_p50_ms=rounds, error=error)
    records = [rec([1.0, 1.1]), rec([2.0, 2.0, 2.0]), rec([1.0, 1.5]), rec([1.0, 9.0], error="boom"), rec([5.0])]
    assert round_spread(records) == pytest.approx(0.10)  # median of 0.1, 0.0, 0.5; failed and 1-round cells skipped
    assert round_spread([rec([3.0])]) is None


def test_efficiency_arithmetic():
    # 1,000 images/s x 2 FLOP/MAC x 500,000 MACs = 1 GFLOP/s, on a 4 GFLOP/s machine: 25%.
    assert efficiency(1000, 500_000, 4.0) == pytest.approx(0.25)


# --------------------------------------------------------------------------- backends
# The torch.compile backends are checked in a child process: dynamo and inductor register
# operator objects in TorchScript's builtin table by id(), and some are later freed, so a
# torch.jit.script later in the same process (a TorchScript export) failed with "builtin
# cannot be used as a value" once in five full runs. Users never script after compiling in
# one process; under pytest-xdist any test may follow any other in a worker.
PARITY_CHILD = """
import sys, torch
import torch._inductor.config as inductor
from digits.bench.backends import create_backend
from digits.bench.timing import strict_fp32
from digits.checkpoint import load_checkpoint
from digits.data import load_test
backend, model, device, trained, root = sys.argv[1:]
# Cold, inductor first compiles a test program per vector ISA the CPU reports (~5 s of 11
# here): trust the CPU's flags instead. The model itself is compiled as ever.
inductor.cpp.vec_isa_ok = True
b = create_backend(backend).load(model, device, checkpoint=trained, artifacts=trained, threads=1)
eager, _ = load_checkpoint(f"{trained}/{model}")
x = load_test(root)[0][:64]
with torch.inference_mode(), strict_fp32():
    print(torch.allclose(b(x).cpu(), eager(x), atol=1e-4))
"""


@pytest.mark.parametrize("backend", list_backends())
@pytest.mark.parametrize("model", list_models())
def test_backend_logits_equal_eager(exported, trained, test_set, fixture_root, backend, model):
    if backend in ("compile", "cudagraph-compile") and model != "mlp":
        pytest.skip("torch.compile takes 6-21 s per model on 2 cores, cold; one model proves the path")
    if (missing := create_backend(backend).available()) is not None:
        pytest.skip(missing)  # an optional runtime (OpenVINO) that is not installed
    device = "cpu" if "cpu" in create_backend(backend).devices else "cuda"
    if device == "cuda" and not torch.cuda.is_available():
        pytest.skip(f"{backend} runs on CUDA only, and this machine has none")
    if (missing := gpu_provider_missing(backend)) is not None:
        pytest.skip(missing)
    if "compile" in backend:
        done = subprocess.run([sys.executable, "-c", PARITY_CHILD, backend, model, device, str(trained), str(fixture_root)],
                              capture_output=True, text=True, timeout=240)
        assert done.returncode == 0, done.stderr[-2000:]
        assert done.stdout.split()[-1] == "True"
        return
    b = create_backend(backend).load(model, device, checkpoint=trained, artifacts=trained, threads=1)
    eager, _ = load_checkpoint(trained / model)
    x = test_set[0][:64]
    # strict FP32 on CUDA: with cuDNN's default TF32 a GPU cell missed 1e-4 against the CPU on an H200
    with torch.inference_mode(), strict_fp32():
        assert torch.allclose(b(x), eager(x), atol=1e-4)


@pytest.mark.parametrize("model,optimized", [("mlp", False), ("cnn", True), ("lenet5", True)])
def test_torchscript_optimizes_only_conv_graphs(exported, trained, model, optimized):
    b = create_backend("torchscript").load(model, "cpu", checkpoint=trained, artifacts=trained)
    assert b.settings == {"optimize_for_inference": optimized}


def test_compile_never_falls_back_to_eager_silently(trained):
    import torch._dynamo.config as dynamo

    b = create_backend("compile").load("lenet5", "cpu", checkpoint=trained)  # compiles lazily: cheap
    limit = "recompile_limit" if hasattr(dynamo, "recompile_limit") else "cache_size_limit"  # torch < 2.7
    assert getattr(dynamo, limit) >= 64 and b.settings["recompile_limit"] == getattr(dynamo, limit)
    assert b.settings["fail_on_recompile_limit_hit"] is True


def test_unknown_backend_lists_choices():
    with pytest.raises(UsageError, match="onnxruntime"):
        create_backend("tensorflow")


# --------------------------------------------------------------------------- the sweep
@pytest.fixture(scope="module")
def small_report(exported, trained, test_set):
    cfg = BenchConfig(models=["lenet5"], backends=FAST_BACKENDS, batch_sizes=[1, 3], checkpoint=str(trained),
                      artifacts=str(trained), **QUICK)
    return run_bench(cfg, *test_set)


def test_a_cell_that_misses_parity_is_flagged_and_never_named_fastest(exported, trained, test_set, monkeypatch):
    from digits.bench.backends import TorchScript
    from digits.bench.report import best_cells, fastest

    import time

    from digits.bench.backends import Eager

    real_logits, real_run = TorchScript.logits, Eager.run
    monkeypatch.setattr(TorchScript, "logits", lambda self, out: real_logits(self, out) + 1e-3)  # fast, but off
    monkeypatch.setattr(Eager, "run", lambda self, p: (time.sleep(0.005), real_run(self, p))[1])  # right, but slow
    cfg = BenchConfig(models=["lenet5"], backends=["eager", "torchscript"], batch_sizes=[256],
                      checkpoint=str(trained), artifacts=str(trained), **QUICK)
    report = run_bench(cfg, *test_set)
    ts = next(r for r in report["records"] if r["backend"] == "torchscript")
    assert ts["error"] is None and ts["parity"]["passed"] is False
    assert ts["parity"]["max_abs_diff"] == pytest.approx(1e-3, rel=0.05)
    assert "| lenet5 | torchscript | fp32 | 256 |" in to_markdown(report) and "| FAIL |" in to_markdown(report)
    rows = to_csv(report["records"]).splitlines()
    column = rows[0].split(",").index("parity_passed")
    assert sorted(row.split(",")[column] for row in rows[1:]) == ["false", "true"]
    eager = next(r for r in report["records"] if r["backend"] == "eager")
    assert ts["p50_ms"] < eager["p50_ms"]  # torchscript was faster ...
    assert all(b[2] == "eager" for b in fastest(report["records"]))  # ... and is still not named fastest
    assert best_cells(report["records"])[0]["backend"] == "eager"


def test_the_sweep_runs_with_tf32_off_and_restores_it(exported, trained, test_set, monkeypatch):
    from digits.bench.backends import Eager

    seen, real_run = [], Eager.run
    monkeypatch.setattr(Eager, "run", lambda self, p: (seen.append(
        (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)), real_run(self, p))[1])
    old = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = True  # as a user might have them
    try:
        cfg = BenchConfig(models=["lenet5"], backends=["eager"], batch_sizes=[8], checkpoint=str(trained),
                          artifacts=str(trained), **QUICK)
        report = run_bench(cfg, *test_set)
        assert seen and set(seen) == {(False, False)} and report["environment"]["tf32"] is False
        assert torch.backends.cudnn.allow_tf32 and torch.backends.cuda.matmul.allow_tf32
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = old


def test_record_schema(small_report):
    recs = small_report["records"]
    assert len(recs) == len(FAST_BACKENDS) * 2
    assert set(recs[0]) == set(Record.__dataclass_fields__)
    assert set(COLUMNS) - {"parity_passed"} <= set(recs[0])  # parity_passed: derived from parity in the CSV
    for r in recs:
        assert r["error"] is None, r
        assert r["p50_ms"] > 0 and r["iterations"] == 4 and r["first_call_ms"] > 0  # 2 rounds x ceil(3/2)
        assert len(r["round_p50_ms"]) == 2 and min(r["round_p50_ms"]) <= r["p50_ms"] <= max(r["round_p50_ms"])
        # images over the wall time of the back-to-back phase (2 rounds x ceil(3/2) calls at least),
        # not batch / p50 (test_measure_runs_at_least_min_time checks the rate against a known call time)
        assert r["throughput_calls"] >= 4 and r["throughput_seconds"] > 0
        assert r["throughput"] == pytest.approx(r["batch_size"] * r["throughput_calls"] / r["throughput_seconds"])
        cell = r["cell_parity"]  # this cell's own timed output, against eager FP32 on the same images
        assert cell["passed"] and cell["images"] == r["batch_size"] and cell["max_abs_diff"] <= 1e-4, r
        assert r["untrusted"] is None and r["missing"] is False
        # model FLOP/s over the FP32 GEMM peak, computed here rather than by the code under test
        assert r["efficiency"] == pytest.approx(r["throughput"] * 2 * r["macs_per_image"]
                                                / (small_report["environment"]["peak_gflops"] * 1e9))
        assert 0.5 < r["accuracy"] <= 1 and r["threads"] == 2
        par = r["parity"]  # every cell against eager FP32 on the same device, FP32's thresholds
        assert par["passed"] and par["max_abs_diff"] <= 1e-4 and par["argmax_agreement"] == 1.0, r
        assert par["reference"] == "eager fp32 on cpu" and par["accuracy"] == r["accuracy"]
    env = small_report["environment"]
    for key in ("cpu", "cores", "torch", "onnxruntime", "onnx", "device_name", "date", "peak_gflops",
                "harness_overhead_ms"):
        assert key in env
    assert env["peak_gflops"] > 0.1
    fp32 = [n for n, p in env["gemm_precision"].items() if p == "fp32"]
    assert {"torch.mm", "onnxruntime MatMul"} <= set(fp32)
    assert env["peak_gflops"] == max(env["gemm_gflops"][n] for n in fp32)  # the fastest FP32 GEMM seen
    assert env["peak_gflops_by_precision"] == {"fp32": env["peak_gflops"]}
    assert env["round_spread"] >= 0


def test_onnxruntime_matmul_probe_multiplies():
    call, flops = onnxruntime_matmul_probe(threads=1, n=64)
    rng = np.random.default_rng(0)
    a, b = (rng.standard_normal((64, 64), dtype=np.float32) for _ in "ab")
    np.testing.assert_allclose(call()[0], a @ b, rtol=1e-4, atol=1e-4)
    assert flops == 2 * 64 ** 3


def test_onnxruntime_records_its_settings(small_report):
    ort = [r for r in small_report["records"] if r["backend"] == "onnxruntime"][0]
    assert ort["provider"] == "CPUExecutionProvider"
    assert ort["settings"]["intra_op_num_threads"] == 2 and ort["settings"]["graph_optimization_level"] == "ORT_ENABLE_ALL"


def test_reports_hold_every_record(small_report):
    csv_text = to_csv(small_report["records"])
    assert csv_text.count("\n") == len(small_report["records"]) + 1
    assert to_markdown(small_report).count("| lenet5 |") == len(small_report["records"])
    assert {b for (_, _, b, _) in fastest(small_report["records"])} <= set(FAST_BACKENDS)


def test_failing_cell_becomes_an_error_record(exported, trained, test_set, tmp_path):
    art = tmp_path / "artifacts"
    shutil.copytree(trained / "mlp", art / "mlp")
    (art / "mlp" / "model.pt2").unlink()  # missing artifact
    onnx_path = art / "mlp" / "model.onnx"
    onnx_path.write_bytes(onnx_path.read_bytes()[:-1] + b"\x00")  # corrupted artifact
    cfg = BenchConfig(models=["mlp"], backends=["eager", "pt2", "onnxruntime"], batch_sizes=[2],
                      checkpoint=str(trained), artifacts=str(art), **QUICK)
    recs = {r["backend"]: r for r in run_bench(cfg, *test_set)["records"]}
    assert recs["eager"]["error"] is None and recs["eager"]["p50_ms"] > 0
    assert "digits export mlp --format pt2" in recs["pt2"]["error"] and recs["pt2"]["p50_ms"] is None
    assert "does not match" in recs["onnxruntime"]["error"]


def _broken_probe(*_, **__):
    raise DigitsError("The model is not a loadable ONNX model (Unsupported model IR version: 12).")


def _probe_that_fails_when_called(*_, **__):
    def call():
        raise RuntimeError("probe kernel crashed")
    return call, 1


@pytest.mark.parametrize("where, make", [
    ("onnxruntime MatMul", _broken_probe),
    ("onnxruntime MatMul", _probe_that_fails_when_called),
    ("torch.mm", _probe_that_fails_when_called),
])
def test_a_failing_gemm_probe_is_recorded_and_the_bench_goes_on(exported, trained, test_set, monkeypatch, where, make):
    import digits.bench.probes as probes

    monkeypatch.setattr(probes, "onnxruntime_matmul_probe" if where != "torch.mm" else "matmul_probe", make)
    cfg = BenchConfig(models=["mlp"], backends=["eager"], batch_sizes=[2], checkpoint=str(trained),
                      artifacts=str(trained), **QUICK)
    report = run_bench(cfg, *test_set)
    env, rec = report["environment"], report["records"][0]
    assert rec["error"] is None and rec["p50_ms"] > 0 and rec["accuracy"] > 0.5
    assert where in env["probe_errors"] and where not in env["gemm_gflops"]
    assert ("IR version" if make is _broken_probe else "probe kernel crashed") in env["probe_errors"][where]
    other = "torch.mm" if where != "torch.mm" else "onnxruntime MatMul"
    assert env["gemm_gflops"][other] > 0.1
    # efficiency divides by the FP32 probe that is left, never by a made-up one
    assert env["peak_gflops"] == env["gemm_gflops"][other]
    assert rec["efficiency"] == pytest.approx(rec["throughput"] * 2 * rec["macs_per_image"] / (env["peak_gflops"] * 1e9))
    assert f"{where} failed" in to_markdown(report)


def test_a_failing_version_query_is_recorded_and_the_bench_goes_on(exported, trained, test_set, monkeypatch):
    import digits.bench.environment as environment_mod

    def broken():
        raise ImportError("onnxruntime's version could not be read")
    monkeypatch.setattr(environment_mod, "runtime_versions", broken)
    cfg = BenchConfig(models=["mlp"], backends=["eager"], batch_sizes=[2], checkpoint=str(trained),
                      artifacts=str(trained), **QUICK)
    report = run_bench(cfg, *test_set)
    assert report["records"][0]["error"] is None and report["records"][0]["p50_ms"] > 0
    assert "could not be read" in report["environment"]["probe_errors"]["runtime_versions"]
    assert "| mlp | eager | fp32 |" in to_markdown(report)


def test_cuda_without_cuda_is_refused(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # so it runs on a GPU machine too
    with pytest.raises(DigitsError, match="CUDA is not available"):
        BenchConfig(device="cuda").validate()


@pytest.mark.parametrize("bad", [dict(batch_sizes=[0]), dict(batch_sizes=[]), dict(models=["vgg"]),
                                 dict(backends=["tflite"]), dict(threads=0), dict(rounds=0)])
def test_bad_config_is_usage_error(bad):
    with pytest.raises(UsageError):
        BenchConfig(**bad).validate()


# --------------------------------------------------------------------------- CLI
runner = CliRunner()


def test_cli_json_and_files(exported, trained, fixture_root, tmp_path):
    result = runner.invoke(app, ["bench", "--models", "mlp", "--backends", "eager,onnxruntime", "--batch-sizes", "1,4",
                                 "--min-time", "0", "--warmup", "1", "--precisions", "fp32",
                                 "--checkpoint", str(trained), "--artifacts",
                                 str(trained), "--out", str(tmp_path), "--data-dir", str(fixture_root), "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert len(report["records"]) == 4 and "peak_gflops" in report["environment"]
    stem = f"bench-cpu-{report['environment']['date'][:10]}"
    assert json.loads((tmp_path / f"{stem}.json").read_text()) == report
    for suffix in (".csv", ".md", "-latency.png", "-accuracy.png"):
        assert (tmp_path / f"{stem}{suffix}").stat().st_size > 100


@pytest.mark.parametrize("args, words", [(["--batch-sizes", "0"], "Batch sizes"), (["--batch-sizes", "a,b"], "comma-separated"),
                                         (["--backends", "tflite"], "onnxruntime"), (["--models", "vgg"], "lenet5")])
def test_cli_bad_values_exit_2(args, words):
    result = runner.invoke(app, ["bench", *args])
    assert result.exit_code == 2 and words in result.output and "Traceback" not in result.output


def test_cli_cuda_without_cuda_exits_1(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # so it runs on a GPU machine too
    result = runner.invoke(app, ["bench", "--device", "cuda"])
    assert result.exit_code == 1 and "CUDA is not available" in result.output


def test_cli_missing_artifacts_says_export(trained, fixture_root, tmp_path):
    result = runner.invoke(app, ["bench", "--models", "cnn", "--backends", "onnxruntime", "--batch-sizes", "1",
                                 "--checkpoint", str(trained), "--artifacts", str(tmp_path / "none"),
                                 "--out", str(tmp_path), "--data-dir", str(fixture_root)])
    assert result.exit_code == 1 and "digits export" in result.output
    assert "Every cell failed" in result.output and "fastest backend" not in result.output  # no table of failures
    assert json.loads(next(tmp_path.glob("bench-cpu-*.json")).read_text())["records"][0]["error"]  # records kept


def test_cli_partial_failure_keeps_the_good_cells(exported, trained, fixture_root, tmp_path):
    art = tmp_path / "artifacts"
    shutil.copytree(trained / "lenet5", art / "lenet5")
    (art / "lenet5" / "model.pt2").unlink()
    result = runner.invoke(app, ["bench", "--models", "lenet5", "--backends", "eager,pt2", "--batch-sizes", "1,2",
                                 "--min-time", "0", "--warmup", "1", "--precisions", "fp32", "--rounds", "1",
                                 "--checkpoint", str(art),
                                 "--artifacts", str(art), "--out", str(tmp_path / "out"), "--data-dir", str(fixture_root)])
    assert result.exit_code == 0, result.output
    assert result.output.count("lenet5/pt2 fp32 failed at batch 1,2: ") == 1 and "digits export lenet5" in result.output
    report = json.loads(next((tmp_path / "out").glob("bench-cpu-*.json")).read_text())
    assert [r["error"] is None for r in report["records"]] == [True, True, False, False]


def test_cli_samples_file_holds_the_raw_latencies(exported, trained, fixture_root, tmp_path):
    result = runner.invoke(app, ["bench", "--models", "lenet5", "--backends", "eager,onnxruntime", "--batch-sizes",
                                 "1,3", "--min-time", "0", "--warmup", "1", "--precisions", "fp32", "--rounds", "2", "--samples",
                                 "--checkpoint", str(trained), "--artifacts", str(trained), "--out", str(tmp_path),
                                 "--data-dir", str(fixture_root)])
    assert result.exit_code == 0, result.output
    with gzip.open(next(tmp_path.glob("bench-cpu-*-samples.json.gz")), "rt") as f:
        samples = json.load(f)["samples_ms"]
    records = json.loads(next(tmp_path.glob("bench-cpu-????-??-??.json")).read_text())["records"]
    assert len(samples) == len(records) == 4 and not any(r["error"] for r in records)
    for r in records:  # every statistic is derived from exactly these samples
        s = samples[f"lenet5/{r['backend']}/fp32/cpu/{r['batch_size']}"]
        assert len(s) == r["iterations"] and statistics.median(s) == pytest.approx(r["p50_ms"])
        assert statistics.fmean(s) == pytest.approx(r["mean_ms"])


@pytest.mark.parametrize("spread,warns", [(0.35, True), (0.02, False), (None, False)])
def test_cli_warns_when_the_machine_changed_speed(trained, fixture_root, tmp_path, monkeypatch, spread, warns):
    import digits.bench.runner as runner_mod

    real = runner_mod.run_bench

    def with_spread(*args, **kwargs):
        report = real(*args, **kwargs)
        report["environment"]["round_spread"] = spread
        return report
    monkeypatch.setattr(runner_mod, "run_bench", with_spread)
    result = runner.invoke(app, ["bench", "--models", "lenet5", "--backends", "eager", "--batch-sizes", "1",
                                 "--min-time", "0", "--warmup", "1", "--precisions", "fp32", "--rounds", "2",
                                 "--checkpoint", str(trained),
                                 "--artifacts", str(trained), "--out", str(tmp_path), "--data-dir", str(fixture_root)])
    assert result.exit_code == 0, result.output
    assert ("changed speed during the run" in result.output) == warns
    if warns:
        assert "35%" in result.output


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_sweep_times_every_torch_backend_and_precision_on_the_gpu(exported, trained, test_set, tmp_path):
    """Every torch backend in every GPU precision at two batch sizes: each cell runs on the GPU
    and passes parity on its own timed output. Batch 1 is first built inside the parity check
    (under inference_mode) and timed outside it, as a sweep does."""
    from digits.export import export_model

    x, y = test_set
    art = tmp_path / "artifacts"  # a copy: the session's shared folder keeps exactly its fp32 exports
    shutil.copytree(trained, art)
    for fmt in ("pt2", "torchscript"):
        for p in ("fp16", "bf16"):
            export_model("lenet5", fmt, x, y, checkpoint=art, out=art, precision=p)
    cfg = BenchConfig(models=["lenet5"], backends=["eager", "torchscript", "pt2", "cudagraph"], device="cuda",
                      batch_sizes=[1, 64], checkpoint=str(art), artifacts=str(art),
                      **{**QUICK, "precisions": ["fp32", "fp16", "bf16"]})
    report = run_bench(cfg, x, y)
    assert len(report["records"]) == 4 * 3 * 2
    for r in report["records"]:
        assert r["error"] is None and r["provider"] == "torch-cuda" and r["p50_ms"] > 0, r
        assert r["cell_parity"]["passed"] and r["cell_parity"]["images"] == r["batch_size"], r
        assert r["parity"]["passed"] and r["untrusted"] is None and r["throughput"] > 0, r
    env = report["environment"]
    assert env["device_name"] == torch.cuda.get_device_name() and env["gpu_capability"]
    assert set(env["peak_gflops_by_precision"]) == {"fp32", "fp16", "bf16"}


LEVERS = ["cudagraph-autotune", "cudagraph-cl", "cudagraph-tuned", "cudagraph-compile"]


def test_default_backends_follow_the_device():
    assert "cudagraph" not in default_backends("cpu") and "cudagraph" in default_backends("cuda")
    assert "openvino" not in default_backends("cuda")
    assert not set(LEVERS) & set(default_backends("cuda"))  # the levers are named, never swept by default


@pytest.mark.parametrize("backend", ["cudagraph", *LEVERS])
def test_cuda_graph_backend_refuses_the_cpu(trained, backend):
    with pytest.raises(DigitsError, match=f"{backend} runs on cuda only"):
        create_backend(backend).load("lenet5", "cpu", checkpoint=trained)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_graph_levers_and_tf32_sweep_on_the_gpu(trained, test_set):
    """Each lever captures what it says and keeps FP32 parity; tf32 cells are judged by TF32's
    own thresholds, TF32 is on only inside them, and the tf32 GEMM probe gives them a peak."""
    x, y = test_set
    backends = ["eager", "cudagraph", "cudagraph-autotune", "cudagraph-cl", "cudagraph-tuned"]
    cfg = BenchConfig(models=["lenet5"], backends=backends, device="cuda", batch_sizes=[1, 256],
                      checkpoint=str(trained), artifacts=str(trained), **{**QUICK, "precisions": ["fp32", "tf32"]})
    old = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    report = run_bench(cfg, x, y)
    assert (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32) == old
    assert len(report["records"]) == len(backends) * 2 * 2
    for r in report["records"]:
        assert r["error"] is None and r["cell_parity"]["passed"] and r["parity"]["passed"], r
        assert r["parity"]["thresholds"] == thresholds(r["precision"]), r
        if r["backend"] != "eager":
            s = r["settings"]
            assert s["cudnn_benchmark"] == ("autotune" in r["backend"] or r["backend"] == "cudagraph-tuned"), r
            assert s["channels_last"] == (r["backend"] in ("cudagraph-cl", "cudagraph-tuned")), r
    assert {"fp32", "tf32"} <= set(report["environment"]["peak_gflops_by_precision"])


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_cuda_graph_equals_eager(trained, test_set, precision):
    b = create_backend("cudagraph").load("lenet5", "cuda", checkpoint=trained, precision=precision)
    eager, _ = load_checkpoint(trained / "lenet5")
    x = test_set[0][:64]
    with torch.inference_mode():
        ref = eager(x)  # FP32 on the CPU
    with strict_fp32():  # TF32 would miss FP32's 1e-4 against the CPU, and is not what fp32 means here
        got = b(x)
        again = b(test_set[0][64:128])  # the same graph on new data: the static buffer really is refilled
    assert b.settings["cuda_graph"] is True
    tol = 1e-4 if precision == "fp32" else 5e-2
    assert torch.allclose(got, ref, atol=tol) and not torch.allclose(again, got)
    assert (got.argmax(1) == ref.argmax(1)).float().mean() > 0.98


def _slow_matmul(rate_flops: float, sizes: list):
    """A fake ``matmul_probe`` as slow as fp16 on a CPU without AVX512-FP16 (2.5 GFLOP/s there)."""
    def make(device="cpu", n=2048, dtype="fp32"):
        sizes.append(n)
        return (lambda: time.sleep(2 * n ** 3 / rate_flops)), 2 * n ** 3
    return make


def test_a_probe_grows_until_a_call_takes_its_target(monkeypatch):
    import digits.bench.probes as probes

    sizes = []
    monkeypatch.setattr(probes, "matmul_probe", _slow_matmul(2.5e9, sizes))
    (_, flops), n = probes.sized(lambda n: probes.matmul_probe("cpu", n=n, dtype="fp16"))
    # n=128 is 1.7 ms a call, n=256 is 13 ms: past the 10 ms target, so growth stops there
    assert sizes == [128, 256] and flops == 2 * 256 ** 3
    sizes.clear()
    monkeypatch.setattr(probes, "matmul_probe", _slow_matmul(1e15, sizes))  # instant: grows to the cap
    probes.sized(lambda n: probes.matmul_probe("cpu", n=n))
    assert sizes[-1] == probes.N_RANGE["cpu"][1]


def test_a_slow_precision_keeps_the_bench_within_its_probe_budget(trained, test_set, monkeypatch):
    import digits.bench.probes as probes

    sizes = []
    # 0.2 GFLOP/s: even the smallest size (n=128) takes 21 ms a call, so only the budget caps it
    monkeypatch.setattr(probes, "matmul_probe", _slow_matmul(2e8, sizes))
    cfg = BenchConfig(models=["mlp"], backends=["eager"], batch_sizes=[1], checkpoint=str(trained),
                      **{**QUICK, "precisions": ["fp16"], "rounds": 5})
    t0 = time.perf_counter()
    env = run_bench(cfg, *test_set)["environment"]
    took = time.perf_counter() - t0
    assert set(env["gemm_gflops"]) == {"torch.mm fp16"}  # only the precision the cells run is probed
    assert env["gemm_gflops"]["torch.mm fp16"] == pytest.approx(0.2, rel=0.5)
    assert sizes == [128]
    # sizing (2 calls) + 5 rounds x (1 warm-up + at most 1.0/5 s + 1 call): ~1.5 s, never minutes
    assert took < 6, took


def test_a_backend_wrong_at_one_timed_batch_size_fails_that_cell_only(exported, trained, test_set, monkeypatch):
    """The full-test-set check runs batches of 1,000, 1, 7 and 64; a runtime that builds
    something per shape can still be wrong at a size the sweep times. The cell's own output
    catches it there and nowhere else."""
    from digits.bench.backends import TorchScript
    from digits.bench.report import fastest

    real_logits = TorchScript.logits
    monkeypatch.setattr(TorchScript, "logits", lambda self, out: real_logits(self, out) + (1e-2 if len(out) == 8 else 0))
    cfg = BenchConfig(models=["lenet5"], backends=["torchscript"], batch_sizes=[2, 8], checkpoint=str(trained),
                      artifacts=str(trained), **QUICK)
    cells = {r["batch_size"]: r for r in run_bench(cfg, *test_set)["records"]}
    assert cells[2]["parity"]["passed"] and cells[8]["parity"]["passed"]  # the backend-level check saw nothing
    assert cells[2]["cell_parity"]["passed"] and not cells[8]["cell_parity"]["passed"]
    assert cells[8]["cell_parity"]["max_abs_diff"] == pytest.approx(1e-2, rel=0.05)
    assert {b for _, b, _, _ in fastest(list(cells.values()))} == {2}


def test_without_a_reference_every_cell_is_untrusted_and_says_why(exported, trained, test_set, monkeypatch):
    import digits.bench.trust as trust
    from digits.bench.report import fastest, trusted

    monkeypatch.setattr(trust, "reference_logits", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("eager broke")))
    cfg = BenchConfig(models=["mlp"], backends=["torchscript"], batch_sizes=[2], checkpoint=str(trained),
                      artifacts=str(trained), **QUICK)
    (rec,) = run_bench(cfg, *test_set)["records"]
    assert rec["error"] is None and rec["p50_ms"] > 0 and rec["parity"] is None and rec["cell_parity"] is None
    assert "no parity reference" in rec["untrusted"] and "eager broke" in rec["untrusted"]
    assert not trusted(rec) and fastest([rec]) == set()


def _bench_cli(trained, fixture_root, tmp_path, *extra):
    return runner.invoke(app, ["bench", "--models", "lenet5", "--batch-sizes", "2", "--min-time", "0", "--warmup", "1",
                               "--precisions", "fp32", "--rounds", "1", "--checkpoint", str(trained),
                               "--artifacts", str(trained), "--out", str(tmp_path), "--data-dir", str(fixture_root), *extra])


def test_cli_exits_1_when_a_cell_misses_parity_and_still_writes_everything(exported, trained, fixture_root, tmp_path,
                                                                          monkeypatch):
    from digits.bench.backends import TorchScript

    real_logits = TorchScript.logits
    monkeypatch.setattr(TorchScript, "logits", lambda self, out: real_logits(self, out) + 1e-3)
    result = _bench_cli(trained, fixture_root, tmp_path, "--backends", "eager,torchscript")
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert "lenet5/torchscript" in result.output and "misses parity" in result.output
    assert "1 backend/batch check(s) missed parity" in " ".join(result.output.split())
    report = json.loads(next(tmp_path.glob("bench-cpu-*.json")).read_text())
    assert len(report["records"]) == 2 and (tmp_path / f"{next(tmp_path.glob('bench-cpu-*.md')).name}").exists()


def test_cli_a_missing_optional_runtime_exits_0_unless_strict(exported, trained, fixture_root, tmp_path, monkeypatch):
    from digits.bench.backends import OnnxRuntime

    monkeypatch.setattr(OnnxRuntime, "available", classmethod(lambda cls: "pip install an-optional-runtime"))
    result = _bench_cli(trained, fixture_root, tmp_path, "--backends", "eager,onnxruntime")
    assert result.exit_code == 0, result.output
    records = json.loads(next(tmp_path.glob("bench-cpu-*.json")).read_text())["records"]
    assert [(r["backend"], r["missing"]) for r in records] == [("eager", False), ("onnxruntime", True)]
    assert "pip install an-optional-runtime" in " ".join(result.output.split())  # rich wraps at the terminal width
    strict = _bench_cli(trained, fixture_root, tmp_path / "strict", "--backends", "eager,onnxruntime", "--strict")
    assert strict.exit_code == 1 and "1 cell(s) failed" in " ".join(strict.output.split())
    assert "Traceback" not in strict.output


# --------------------------------------------------------------------------- --processes
def test_cli_processes_makes_one_sample_per_worker_process(exported, trained, fixture_root, tmp_path):
    result = runner.invoke(app, ["bench", "--models", "lenet5", "--backends", "eager,onnxruntime", "--batch-sizes",
                                 "1", "--min-time", "0", "--warmup", "1", "--precisions", "fp32", "--rounds", "2",
                                 "--processes", "2", "--samples", "--checkpoint", str(trained), "--artifacts",
                                 str(trained), "--out", str(tmp_path), "--data-dir", str(fixture_root), "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["environment"]["processes"] == 2 and report["environment"]["process_spread"] is not None
    with gzip.open(next(tmp_path.glob("bench-cpu-*-samples.json.gz")), "rt") as f:
        samples = json.load(f)["samples_ms"]
    for r in report["records"]:
        assert r["error"] is None and len(r["process_p50_ms"]) == 2 and len(r["round_p50_ms"]) == 4
        assert r["p50_ms"] == pytest.approx(statistics.median(r["process_p50_ms"]))
        assert len(samples[f"lenet5/{r['backend']}/fp32/cpu/1"]) == r["iterations"]  # both workers' calls


def test_merging_worker_processes():
    from digits.bench.processes import merge_processes

    def rec(p50, calls, seconds, error=None, passed=True):
        return {"model": "mlp", "backend": "eager", "precision": "fp32", "device": "cpu", "batch_size": 8,
                "macs_per_image": 100, "p50_ms": p50, "p90_ms": p50, "p99_ms": p50, "mean_ms": p50, "std_ms": 0.0,
                "first_call_ms": 1.0, "iterations": 10, "throughput_calls": calls, "throughput_seconds": seconds,
                "round_p50_ms": [p50, p50], "parity": {"passed": True}, "cell_parity": {"passed": passed},
                "untrusted": None, "error": error}
    env = {"round_spread": 0.01, "peak_gflops_by_precision": {"fp32": 1.0}}
    merged = merge_processes([{"environment": env, "records": [rec(1.0, 100, 1.0)]},
                              {"environment": env, "records": [rec(3.0, 100, 3.0, passed=False)]},
                              {"environment": env, "records": [rec(2.0, 100, 2.0)]}])
    r = merged["records"][0]
    assert r["p50_ms"] == 2.0 and r["process_p50_ms"] == [1.0, 3.0, 2.0] and len(r["round_p50_ms"]) == 6
    assert r["throughput"] == pytest.approx(300 * 8 / 6.0)  # every worker's calls over their summed time
    assert not r["cell_parity"]["passed"]  # the worst worker's verdict stands
    assert merged["environment"]["process_spread"] == pytest.approx(2.0)  # 3.0 / 1.0 - 1
    failed = merge_processes([{"environment": env, "records": [rec(1.0, 1, 1.0)]},
                              {"environment": env, "records": [rec(1.0, 1, 1.0, error="boom")]}])
    assert failed["records"][0]["error"] == "boom (in 1 of 2 worker processes)"
