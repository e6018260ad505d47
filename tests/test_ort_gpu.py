"""onnxruntime on the GPU: provider options, refusals where a provider is missing, and (where
onnxruntime-gpu and a GPU exist) CUDA-graph and TensorRT cells against eager."""

from __future__ import annotations

import onnxruntime as ort
import pytest
import torch

from digits.bench.backends import create_backend
from digits.bench.runner import BenchConfig, default_backends, run_bench
from digits.checkpoint import load_checkpoint
from digits.errors import DigitsError, UsageError
from digits.export.onnx import gpu_provider, make_session

GPU_BACKENDS = ["onnxruntime", "onnxruntime-cudagraph", "tensorrt"]
NEEDS = {"onnxruntime": "CUDAExecutionProvider", "onnxruntime-cudagraph": "CUDAExecutionProvider",
         "tensorrt": "TensorrtExecutionProvider"}


def test_provider_options_are_explicit_strings():
    name, opts = gpu_provider("cuda", cuda_graph=True)
    assert name == "CUDAExecutionProvider" and opts["enable_cuda_graph"] == "1" and opts["use_tf32"] == "0"
    assert gpu_provider("cuda")[1]["enable_cuda_graph"] == "0"
    name, opts = gpu_provider("tensorrt", fp16=True)
    assert name == "TensorrtExecutionProvider" and opts["trt_fp16_enable"] == "1"
    assert gpu_provider("tensorrt")[1]["trt_fp16_enable"] == "0"
    for kind in ("cuda", "tensorrt"):
        assert all(isinstance(v, str) for v in gpu_provider(kind)[1].values())
    with pytest.raises(UsageError, match="cuda or tensorrt"):
        gpu_provider("rocm")


@pytest.mark.parametrize("backend", GPU_BACKENDS)
def test_missing_provider_names_what_to_install(backend, exported, trained, monkeypatch):
    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CPUExecutionProvider"])  # as on a CPU wheel
    with pytest.raises(DigitsError, match=f"no {NEEDS[backend]}.*make setup-gpu"):
        create_backend(backend).load("lenet5", "cuda", checkpoint=trained, artifacts=trained)


def test_a_provider_fallback_is_refused(exported, trained, monkeypatch):
    """onnxruntime quietly drops to the next provider when one fails to start: never report that."""
    class FellBack:
        def __init__(self, *a, **k):
            pass

        def get_providers(self):
            return ["CUDAExecutionProvider", "CPUExecutionProvider"]

    monkeypatch.setattr(ort, "get_available_providers", lambda: ["TensorrtExecutionProvider", "CPUExecutionProvider"])
    monkeypatch.setattr(ort, "InferenceSession", FellBack)
    with pytest.raises(DigitsError, match="fell back from TensorrtExecutionProvider to CUDAExecutionProvider"):
        make_session(trained / "lenet5/model.onnx", "cuda", provider=gpu_provider("tensorrt"))


def test_gpu_backends_are_cuda_only_and_in_the_cuda_sweep(trained):
    for b in ("onnxruntime-cudagraph", "tensorrt"):
        assert b in default_backends("cuda") and b not in default_backends("cpu")
        with pytest.raises(DigitsError, match="runs on cuda only"):
            create_backend(b).load("lenet5", "cpu", checkpoint=trained, artifacts=trained)
    assert create_backend("onnxruntime-cudagraph").precisions == ("fp32",)
    assert create_backend("tensorrt").precisions == ("fp32", "fp16")


def _runs_here(backend: str) -> bool:
    return torch.cuda.is_available() and NEEDS[backend] in ort.get_available_providers()


@pytest.mark.cuda
@pytest.mark.skipif(not _runs_here("onnxruntime-cudagraph"), reason="needs onnxruntime-gpu and a GPU")
def test_ort_cuda_graph_replays_new_inputs(exported, trained, test_set):
    b = create_backend("onnxruntime-cudagraph").load("lenet5", "cuda", checkpoint=trained, artifacts=trained)
    eager, _ = load_checkpoint(trained / "lenet5")
    x = test_set[0]
    for batch in (1, 7, 64):  # one graph id per batch size
        for start in (0, 64, 128, 0):  # replays on new data, then the first data again
            chunk = x[start:start + batch]
            with torch.inference_mode():
                assert torch.allclose(b(chunk), eager(chunk), atol=1e-4), (batch, start)
    assert b.settings["cuda_graph"] is True
    assert b.settings["provider_options"]["enable_cuda_graph"] == "1"


@pytest.mark.cuda
@pytest.mark.skipif(not _runs_here("tensorrt"), reason="needs onnxruntime-gpu with TensorRT and a GPU")
@pytest.mark.parametrize("precision,atol", [("fp32", 1e-3), ("fp16", 5e-2)])
def test_tensorrt_matches_eager(exported, trained, test_set, precision, atol):
    b = create_backend("tensorrt").load("lenet5", "cuda", checkpoint=trained, artifacts=trained, precision=precision)
    eager, _ = load_checkpoint(trained / "lenet5")
    x = test_set[0][:64]
    with torch.inference_mode():
        assert torch.allclose(b(x), eager(x), atol=atol)
    assert b.provider == "TensorrtExecutionProvider"


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_sweep_records_missing_providers_as_errors(exported, trained, test_set):
    cfg = BenchConfig(models=["lenet5"], backends=GPU_BACKENDS, device="cuda", batch_sizes=[8],
                      checkpoint=str(trained), artifacts=str(trained), warmup=1, min_iters=3, min_time=0.0,
                      rounds=1, precisions=["fp32"])
    for r in run_bench(cfg, *test_set)["records"]:
        if NEEDS[r["backend"]] in ort.get_available_providers():
            assert r["error"] is None and r["p50_ms"] > 0, r
        else:
            assert "make setup-gpu" in r["error"] and r["p50_ms"] is None


@pytest.mark.parametrize("backend", ["cudagraph", "onnxruntime-cudagraph", "tensorrt"])
def test_a_cuda_only_backend_on_the_cpu_is_bad_usage(backend):
    from typer.testing import CliRunner

    from digits.cli import app

    with pytest.raises(UsageError, match=f"{backend} runs on cuda only"):
        BenchConfig(backends=[backend], device="cpu").validate()
    result = CliRunner().invoke(app, ["bench", "--backends", backend])
    assert result.exit_code == 2 and "--device cuda" in result.output and "Traceback" not in result.output
