"""Temperature scaling and ECE (digits.calibrate), in training and in predictions."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from digits.calibrate import calibration, ece, fit_temperature
from digits.checkpoint import read_manifest
from digits.cli import app


def _overconfident(n: int, t_true: float, seed: int):
    """Labels drawn from softmax(z); the model reports z * t_true, i.e. t_true times too sure."""
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, 10, generator=g) * 2
    y = torch.multinomial(torch.softmax(z, 1), 1, generator=g).squeeze(1)
    return z * t_true, y


def test_the_fitted_temperature_undoes_known_overconfidence():
    logits, y = _overconfident(20_000, 2.5, seed=0)
    assert fit_temperature(logits, y) == pytest.approx(2.5, rel=0.05)
    logits, y = _overconfident(20_000, 1.0, seed=1)
    assert fit_temperature(logits, y) == pytest.approx(1.0, rel=0.05)


def test_ece_by_hand_and_its_fall_after_calibration():
    # 4 predictions at confidence 0.9, 3 right: one bin, |0.9 - 0.75| = 0.15
    probs = torch.tensor([[0.9, 0.1]] * 4)
    assert ece(probs, torch.tensor([0, 0, 0, 1])) == pytest.approx(0.15)
    val, yv = _overconfident(10_000, 3.0, seed=2)
    test, yt = _overconfident(10_000, 3.0, seed=3)
    c = calibration(val, yv, test, yt)
    assert c["temperature"] == pytest.approx(3.0, rel=0.06)
    assert c["test_ece_before"] > 0.1 and c["test_ece_after"] < 0.02


def test_training_writes_the_calibration_into_the_manifest(trained):
    c = read_manifest(trained / "lenet5")["calibration"]
    assert 0.05 < c["temperature"] < 20 and c["fitted_on"] == "validation split"
    assert 0 <= c["test_ece_after"] <= 1 and 0 <= c["test_ece_before"] <= 1


def test_unsure_is_said_below_the_threshold(trained, exported, tmp_path, fixture_root):
    from digits.data import raw_dir, read_arrays
    from PIL import Image

    a = read_arrays(raw_dir(fixture_root))
    Image.fromarray(255 - a.test_images[0]).save(tmp_path / "d.png")
    base = ["predict", str(tmp_path / "d.png"), "--checkpoint", str(trained), "--artifacts", str(trained)]
    never = json.loads(CliRunner().invoke(app, [*base, "--json", "--unsure-below", "0"]).stdout)[0]
    always = CliRunner().invoke(app, [*base, "--unsure-below", "1"])
    assert never["unsure"] is False and never["number"] == str(never["prediction"])
    assert always.exit_code == 0 and "unsure" in always.stdout
