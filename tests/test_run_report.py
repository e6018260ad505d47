"""digits run (the pipeline with skip/resume) and digits report, on the fixture."""

from __future__ import annotations

import json
import re
import shutil

import pytest
from typer.testing import CliRunner

from digits.cli import app
from digits.errors import DigitsError
from digits.models import list_models
from digits.pipeline import RunConfig, run_all, summary_rows

TINY_BENCH = dict(batch_sizes=[1, 256], min_time=0.0, min_iters=2, rounds=1, warmup=1, threads=1)
# The pipeline's wiring needs two runtimes, not every one (test_bench.py covers each backend);
# the reduced-precision run below keeps the default backends.
WIRING = dict(TINY_BENCH, backends=["eager", "onnxruntime"])


@pytest.fixture
def workspace(exported, trained, tmp_path):
    """A copy of the session's trained + exported artifacts, safe to damage."""
    art = tmp_path / "artifacts"
    shutil.copytree(trained, art)
    return art


def _cfg(fixture_root, art, tmp_path, **kw):
    # FP32 alone by default: which reduced precisions run depends on the CPU (see the test below)
    kw = {"precisions": ["fp32"], **kw}
    # the bench in-process (a child costs ~3-8 s of CPU to start): test_run_skips... keeps the child
    kw = {"bench": WIRING, "bench_in_child": False, **kw}
    return RunConfig(data_root=fixture_root, artifacts=art, results=tmp_path / "results", **kw)


@pytest.mark.slow  # a whole `digits run` on the fixture: 7-18 s
def test_run_skips_verified_stages_and_writes_the_report(fixture_root, workspace, tmp_path):
    res = run_all(_cfg(fixture_root, workspace, tmp_path, bench_in_child=True))  # as `digits run` does
    assert res.done["train"].startswith("skipped") and res.done["export"].startswith("skipped")
    assert res.done["bench"] == "ran" and res.done["report"] == "ran"
    assert res.done["data"] == "verified"  # the fixture holds a manifest: nothing fetched
    rows = summary_rows(res)
    assert [r["model"] for r in rows] == list_models()
    for r in rows:
        assert r["onnx_accuracy"] == r["test_accuracy"] or abs(r["onnx_accuracy"] - r["test_accuracy"]) < 0.002
        # the summary's figures are those of the model's lowest-p50 cell at each batch size
        for b, key in ((1, "batch1_p50_us"), (256, "batch256_throughput")):
            cells = [c for c in res.bench["records"] if c["model"] == r["model"] and c["batch_size"] == b]
            top = min(cells, key=lambda c: c["p50_ms"])
            assert r[key] == (top["p50_ms"] * 1e3 if b == 1 else top["throughput"])
    again = run_all(_cfg(fixture_root, workspace, tmp_path, bench_in_child=True))
    assert again.done["bench"].startswith("skipped")  # bench JSON is newer than every export
    _check_report(tmp_path / "results", res)


@pytest.mark.slow  # a whole `digits run` on the fixture: 7-18 s
def test_tampered_checkpoint_is_retrained_and_reexported(fixture_root, workspace, tmp_path, one_epoch):
    weights = workspace / "mlp" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-4] + b"\x00\x00\x00\x00")
    old_onnx = (workspace / "mlp" / "model.onnx").read_bytes()
    res = run_all(_cfg(fixture_root, workspace, tmp_path, models=["mlp"]))  # the other models: test_run_skips...
    assert res.done["train"] == "ran" and res.done["export"] == "ran"
    assert res.checkpoints["mlp"]["recipe"] == "default" and list(res.checkpoints) == ["mlp"]
    assert (workspace / "mlp" / "model.onnx").read_bytes() != old_onnx  # exported from the new checkpoint


def test_failed_stage_is_named_and_earlier_stages_kept(fixture_root, workspace, tmp_path, monkeypatch):
    import digits.export as export

    def boom(*a, **k):
        raise DigitsError("simulated exporter crash.")
    monkeypatch.setattr(export, "export_model", boom)
    (workspace / "cnn" / "model.pt2").unlink()
    with pytest.raises(DigitsError, match=r"Stage 'export' failed: simulated exporter crash\. Completed stages are kept "
                                          r"\(data, train\).*digits run"):
        run_all(_cfg(fixture_root, workspace, tmp_path))
    assert (workspace / "cnn" / "model.safetensors").is_file()


def test_a_bench_that_fails_in_its_process_is_a_clear_stage_error(fixture_root, workspace, tmp_path):
    with pytest.raises(DigitsError, match=r"Stage 'bench' failed: Batch sizes must be whole numbers >= 1, got \[0\]\.") as e:
        run_all(_cfg(fixture_root, workspace, tmp_path, bench_in_child=True, bench={**WIRING, "batch_sizes": [0]}))
    assert e.value.exit_code == 2  # the child's exit code: bad usage


def test_a_bench_whose_cells_failed_is_still_done(tmp_path):
    """A failed cell is a result: OpenVINO refusing bf16 on a CPU without bf16 fails the same
    way on every run, and requiring every cell to pass re-ran the bench on every `digits run`
    (seen on an AVX2-only EPYC)."""
    from digits.pipeline import _bench_ok

    cells = [("eager", "fp32"), ("openvino", "bf16")]
    records = [{"model": m, "backend": b, "precision": p, "batch_size": n, "error": "refused" if b == "openvino" else None}
               for m in list_models() for b, p in cells for n in (1, 256)]
    (tmp_path / "bench-cpu-2026-11-30.json").write_text(json.dumps({"environment": {}, "records": records}))
    assert _bench_ok(tmp_path, 0.0, cells, [1, 256]) is not None
    assert _bench_ok(tmp_path, 0.0, cells, [1, 8, 256]) is None  # a batch size it never timed
    assert _bench_ok(tmp_path, 0.0, [*cells, ("onnxruntime", "int8")], [1, 256]) is None  # a cell it lacks
    assert _bench_ok(tmp_path, 2e9, cells, [1, 256]) is None  # exports newer than the bench


@pytest.mark.slow  # a whole `digits run` on the fixture: 7-18 s
def test_run_exports_and_benches_the_reduced_precisions(fixture_root, workspace, tmp_path, monkeypatch):
    import digits.precision as precision

    # The fixture's models are trained on 900 images (75-86% accuracy), so one image is 0.1
    # points and their int8/bf16 parity is a coin toss. The thresholds are tested in
    # test_precision.py; here they are loosened so the test checks the wiring.
    monkeypatch.setitem(precision.REDUCED_THRESHOLDS, "accuracy_delta", 0.05)
    monkeypatch.setitem(precision.REDUCED_THRESHOLDS, "argmax_agreement", 0.9)
    # one model: the wiring is the same for each (test_precision.py exports every model's int8 and bf16)
    res = run_all(_cfg(fixture_root, workspace, tmp_path, precisions=["fp32", "bf16", "int8"], html=False,
                       bench=TINY_BENCH, models=["mlp"]))
    assert res.done["export"] == "ran"  # the fixture workspace had FP32 artifacts only
    for model in ["mlp"]:
        assert (workspace / model / "model.int8.onnx").is_file() and (workspace / model / "model.bf16.pt2").is_file()
        assert res.exports[(model, "onnx-int8")]["passed"] and res.exports[(model, "torchscript-bf16")]["passed"]
    cells = {(r["backend"], r["precision"]) for r in res.bench["records"] if r["error"] is None}
    assert {("onnxruntime", "int8"), ("eager", "bf16"), ("pt2", "bf16"), ("onnxruntime", "fp32")} <= cells
    rows = summary_rows(res)
    assert all(r["batch256_speedup_over_fp32"] >= 1.0 and " " in r["batch256_backend"] for r in rows)
    again = run_all(_cfg(fixture_root, workspace, tmp_path, precisions=["fp32", "bf16", "int8"], html=False,
                         bench=TINY_BENCH, models=["mlp"]))
    assert again.done["export"].startswith("skipped") and again.done["bench"].startswith("skipped")


@pytest.fixture
def one_epoch(monkeypatch):
    """The default recipes cut to one epoch: what these tests check is which stages ran, not
    how well a model trained on 900 images learns (test_train.py covers that)."""
    import dataclasses

    import digits.train

    real = digits.train.resolve_config
    monkeypatch.setattr(digits.train, "resolve_config", lambda *a, **k: dataclasses.replace(real(*a, **k), epochs=1))


@pytest.mark.slow  # a whole `digits run` on the fixture: 7-18 s
def test_force_redoes_everything(fixture_root, workspace, tmp_path, one_epoch):
    res = run_all(_cfg(fixture_root, workspace, tmp_path, force=True, html=False, models=["lenet5"]))
    assert all(v == "ran" for k, v in res.done.items() if k != "data")
    assert {r["model"] for r in res.bench["records"]} == {"lenet5"} and res.report["figures"]


def _check_report(results, res):
    """Every section, every figure on disk, and an HTML page with the images embedded."""
    md = (results / "REPORT.md").read_text()
    for heading in ("## Summary", "## Training", "## Per-class accuracy", "## Speed", "## Environment"):
        assert heading in md
    for model in list_models():
        for kind in ("training", "confusion", "mistakes"):
            assert f"report-{kind}-{model}.png" in md
            assert (results / f"report-{kind}-{model}.png").stat().st_size > 5000
    for img in re.findall(r"!\[[^\]]*\]\(([^)]+)\)", md):
        assert (results / img).is_file()
    page = (results / "REPORT.html").read_text()
    assert page.count("data:image/png;base64,") == len(re.findall(r"!\[", md))
    assert 'src="http' not in page and "src='http" not in page
    assert res.report["html"].endswith("REPORT.html")


def test_report_without_checkpoints_says_to_train(fixture_root, tmp_path):
    result = CliRunner().invoke(app, ["report", "--checkpoint", str(tmp_path), "--results", str(tmp_path),
                                      "--data-dir", str(fixture_root)])
    assert result.exit_code == 1 and "digits train all" in result.output


@pytest.mark.slow  # a whole `digits run` on the fixture: 7-18 s
def test_cli_run_json(fixture_root, workspace, tmp_path, monkeypatch):
    import digits.pipeline as pipeline

    monkeypatch.setattr(pipeline.RunConfig, "__init__", _tiny_init(pipeline.RunConfig.__init__))
    result = CliRunner().invoke(app, ["run", "--artifacts", str(workspace), "--results", str(tmp_path / "r"),
                                      "--precisions", "fp32", "--models", "cnn,mlp", "--data-dir", str(fixture_root),
                                      "--json"])
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert set(out["stages"]) == {"data", "train", "export", "bench", "report"}
    assert [m["model"] for m in out["models"]] == ["cnn", "mlp"]  # registry order, only those asked for
    bad = CliRunner().invoke(app, ["run", "--models", "lenet6", "--artifacts", str(workspace)])
    assert bad.exit_code == 2 and "lenet6" in bad.output and "Traceback" not in bad.output


def _tiny_init(init):
    def wrapped(self, *a, **k):  # the bench in-process: test_run_skips... runs it in its child as `digits run` does
        init(self, *a, **{**k, "bench": WIRING, "bench_in_child": False})
    return wrapped
