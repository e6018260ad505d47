"""Training on the real-MNIST fixture: learning, determinism, resume, checkpoint integrity."""

from __future__ import annotations

import signal

import pytest
import torch

from digits._io import sha256_file
from digits.checkpoint import RESUME, load_checkpoint
from digits.errors import DigitsError, UsageError
from digits.models import list_models
from digits.train import TrainingInterrupted, resolve_config, train

# 900 training images, 4 epochs: enough to clear chance (10%) by a wide margin in ~1-2 s.
QUICK = dict(epochs=4, batch_size=64, augment=False, threads=1)


@pytest.mark.parametrize("name", list_models())
def test_short_run_clearly_beats_chance(name, splits, tmp_path):
    result = train(resolve_config(name, "fast", lr=3e-3, **QUICK), splits, tmp_path)
    # Chance is 10%; 60% on 1,000 unseen test images cannot happen without learning.
    assert result.test_accuracy >= 0.60, result
    assert 0 < result.val_accuracy <= 1 and len(result.history) == 4
    model, manifest = load_checkpoint(tmp_path / name)
    assert manifest["test_accuracy"] == result.test_accuracy and manifest["params"] == result.params
    assert manifest["cuda_graph"] is False and manifest["setup_seconds"] == 0.0  # the CPU has no warm-up to count


def test_same_seed_gives_identical_weights(splits, tmp_path):
    cfg = resolve_config("lenet5", "fast", seed=3, **QUICK)
    a = train(cfg, splits, tmp_path / "a")
    b = train(cfg, splits, tmp_path / "b")
    assert a.test_accuracy == b.test_accuracy
    assert sha256_file(tmp_path / "a/lenet5/model.safetensors") == sha256_file(tmp_path / "b/lenet5/model.safetensors")


def test_different_seed_gives_different_weights(splits, tmp_path):
    train(resolve_config("lenet5", "fast", seed=0, **QUICK), splits, tmp_path / "a")
    train(resolve_config("lenet5", "fast", seed=1, **QUICK), splits, tmp_path / "b")
    assert sha256_file(tmp_path / "a/lenet5/model.safetensors") != sha256_file(tmp_path / "b/lenet5/model.safetensors")


def test_sigint_saves_state_and_resume_reaches_the_same_weights(splits, tmp_path):
    cfg = resolve_config("cnn", "fast", augment=True, epochs=3, batch_size=64, threads=1)  # dropout + augmentation
    train(cfg, splits, tmp_path / "whole")

    def interrupt(p):
        if p.epoch == 2 and p.step == 5:  # mid-epoch, mid-schedule
            signal.raise_signal(signal.SIGINT)

    with pytest.raises(TrainingInterrupted, match="--resume"):
        train(cfg, splits, tmp_path / "split", on_progress=interrupt)
    assert (tmp_path / "split/cnn" / RESUME).is_file()
    assert not (tmp_path / "split/cnn/model.safetensors").exists()
    result = train(cfg, splits, tmp_path / "split", resume=True)
    assert sha256_file(tmp_path / "split/cnn/model.safetensors") == sha256_file(tmp_path / "whole/cnn/model.safetensors")
    assert not (tmp_path / "split/cnn" / RESUME).exists() and len(result.history) == 3


def test_sigterm_to_digits_train_saves_state_exits_75_and_resume_finishes_identically(splits, tmp_path, paused_run):
    import subprocess
    import sys
    from pathlib import Path

    env, wait = paused_run
    fixture = Path(__file__).parent / "data"
    args = ["train", "mlp", "--recipe", "fast", "--epochs", "3", "--batch-size", "64", "--threads", "1",
            "--device", "cpu", "--data-dir", str(fixture), "--out", str(tmp_path / "split")]  # as `whole` below
    proc = subprocess.Popen([sys.executable, "-m", "digits", *args], env=env, stderr=subprocess.PIPE, text=True)
    wait(proc)  # the training loop has started
    proc.send_signal(signal.SIGTERM)
    err = proc.communicate(timeout=60)[1]
    assert proc.returncode == 75, err[-2000:]  # EX_TEMPFAIL: a requeue script's cue
    assert "stopped by SIGTERM" in err and "--resume" in err and "Traceback" not in err
    assert (tmp_path / "split/mlp" / RESUME).is_file() and not (tmp_path / "split/mlp/model.safetensors").exists()
    from typer.testing import CliRunner

    from digits.cli import app

    threads = torch.get_num_threads()
    try:  # the resume and the uninterrupted run in this process: the same code, without two more start-ups
        done = CliRunner().invoke(app, [*args, "--resume"])
        assert done.exit_code == 0, done.output
        train(resolve_config("mlp", "fast", epochs=3, batch_size=64, threads=1), splits, tmp_path / "whole")
    finally:
        torch.set_num_threads(threads)
    assert sha256_file(tmp_path / "split/mlp/model.safetensors") == sha256_file(tmp_path / "whole/mlp/model.safetensors")


def test_resume_with_other_settings_is_refused(splits, tmp_path):
    cfg = resolve_config("mlp", "fast", **QUICK)
    with pytest.raises(TrainingInterrupted):
        train(cfg, splits, tmp_path, on_progress=lambda p: signal.raise_signal(signal.SIGINT))
    with pytest.raises(UsageError, match="lr"):
        train(resolve_config("mlp", "fast", **{**QUICK, "lr": 0.5}), splits, tmp_path, resume=True)


def test_resume_names_a_setting_the_saved_run_did_not_have():
    from dataclasses import asdict
    from types import SimpleNamespace

    from digits.resume import restore

    cfg = resolve_config("cnn", "default")
    saved = {k: v for k, v in asdict(cfg).items() if k != "continental"}  # saved before the setting existed
    with pytest.raises(UsageError, match="continental: saved None vs now True"):
        restore({"config": saved}, cfg, None, None, None, None, SimpleNamespace(world=1))


def test_resume_without_state_says_so(splits, tmp_path):
    with pytest.raises(DigitsError, match="Nothing to resume"):
        train(resolve_config("mlp", "fast", **QUICK), splits, tmp_path, resume=True)


def test_tampered_checkpoint_is_refused(splits, tmp_path):
    train(resolve_config("mlp", "fast", **QUICK), splits, tmp_path)
    weights = tmp_path / "mlp/model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-3] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(DigitsError, match="does not match its manifest") as e:
        load_checkpoint(tmp_path / "mlp")
    assert str(weights) in str(e.value)


def test_missing_checkpoint_says_to_train(tmp_path):
    with pytest.raises(DigitsError, match="digits train lenet5"):
        load_checkpoint(tmp_path / "lenet5", "lenet5")


def test_recipes_and_overrides():
    fast = resolve_config("lenet5", "fast")
    assert fast.epochs < resolve_config("lenet5", "default").epochs
    assert resolve_config("lenet5", "fast", epochs=7, lr=None).epochs == 7
    with pytest.raises(UsageError, match="batch-size"):
        resolve_config("lenet5", batch_size=0)


def test_cuda_request_without_cuda_is_an_error(monkeypatch, splits, tmp_path):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # so it runs on a GPU machine too
    with pytest.raises(DigitsError, match="CUDA is not available"):
        train(resolve_config("mlp", "fast", device="cuda", **{k: v for k, v in QUICK.items()}), splits, tmp_path)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_training_learns(splits, tmp_path):
    result = train(resolve_config("lenet5", "fast", device="cuda", lr=3e-3, **QUICK), splits, tmp_path)
    assert result.test_accuracy >= 0.60


def test_running_loss_reads_the_device_back_only_every_n_steps():
    from digits.train import RunningLoss

    reads = []

    class Counted(torch.Tensor):
        def item(self):
            reads.append(1)
            return super().item()
    losses = [torch.tensor(float(i)).as_subclass(Counted) for i in range(1, 121)]
    lazy, eager = RunningLoss(lazy=True, every=50), RunningLoss()
    for v in losses:
        lazy.add(v)
    assert len(reads) == 2 and lazy.mean() == pytest.approx(sum(range(1, 101)) / 100)  # read at steps 50, 100
    assert lazy.flush() == pytest.approx(sum(range(1, 121))) and len(reads) == 3
    for v in losses:
        eager.add(v)
    assert eager.total == lazy.total and eager.mean() == lazy.mean()
    resumed = RunningLoss(10.0, 4, lazy=True)
    assert resumed.mean() == 2.5  # a resumed epoch starts from its saved sum and step


def test_running_loss_copies_a_static_loss_buffer():
    from digits.train import RunningLoss

    static = torch.tensor(1.0)  # a CUDA graph's loss output: overwritten in place by each replay
    lazy = RunningLoss(lazy=True, every=50)
    lazy.add(static)
    static.fill_(2.0)
    lazy.add(static)
    assert lazy.flush() == 3.0


def _static_on_cpu(monkeypatch):
    """Route the loop through StaticStep's buffers and body, eagerly, as CUDA would with a graph."""
    import digits.train as tr
    from digits.train_step import StaticStep, batch_sizes

    sizes = []

    class Counted(StaticStep):
        def __call__(self, idx, aug):
            sizes.append(len(idx))
            return super().__call__(idx, aug)

    def static(model, data, cfg, device):
        return Counted(model, data.train_x, data.train_y, sizes=batch_sizes(len(data.train_x), cfg.batch_size),
                       label_smoothing=cfg.label_smoothing, augment=cfg.augment, capture=False)
    monkeypatch.setattr(tr, "_static_step", static)
    return sizes


@pytest.mark.parametrize("name", ["mlp", "cnn"])  # dropout; convolutions in channels-last
def test_static_step_computes_what_the_eager_loop_computes(name, splits, monkeypatch, tmp_path):
    cfg = resolve_config(name, "fast", augment=True, epochs=2, batch_size=96, threads=1, label_smoothing=0.1)
    assert len(splits.train_x) % cfg.batch_size, "the test needs a remainder batch"
    eager = train(cfg, splits, tmp_path / "eager")
    sizes = _static_on_cpu(monkeypatch)
    static = train(cfg, splits, tmp_path / "static")
    assert set(sizes) == {96, len(splits.train_x) % 96}  # every step, the remainder included, went through it
    assert sha256_file(tmp_path / f"static/{name}/model.safetensors") == \
        sha256_file(tmp_path / f"eager/{name}/model.safetensors")
    assert static.history == eager.history


def test_batch_sizes_of_an_epoch():
    from digits.train_step import batch_sizes

    assert batch_sizes(1000, 256) == [256, 232]
    assert batch_sizes(1024, 256) == [256]
    assert batch_sizes(100, 256) == [100]


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("graph", [True, False])
def test_cuda_training_with_and_without_the_graph(graph, splits, tmp_path):
    cfg = resolve_config("mlp", "fast", device="cuda", lr=3e-3, cuda_graph=graph, **{**QUICK, "augment": True})
    result = train(cfg, splits, tmp_path)
    manifest = load_checkpoint(tmp_path / "mlp")[1]
    assert result.test_accuracy >= 0.60
    assert manifest["cuda_graph"] is graph and manifest["setup_seconds"] > 0


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_captured_step_equals_its_eager_body(splits):
    from digits.bench.timing import strict_fp32
    from digits.models import create_model
    from digits.train_step import StaticStep

    torch.manual_seed(0)
    model = create_model("lenet5").cuda()
    x, y = splits.train_x.cuda(), splits.train_y.cuda()
    from digits.augment import draw

    # every augmentation at once
    idx, aug = torch.arange(64, device="cuda"), draw(64, torch.Generator().manual_seed(0), continental=True)
    steps = [StaticStep(model, x, y, sizes=[64], label_smoothing=0.1, augment=True, capture=c, continental=True)
             for c in (True, False)]
    results = []
    for step in steps:
        with strict_fp32():  # the same FP32 arithmetic both ways, whatever the user's TF32 settings
            step.warm_up()
            loss = step(idx, aug).clone()
            torch.cuda.synchronize()
        results.append((loss, [p.grad.clone() for p in model.parameters()]))
    (la, ga), (lb, gb) = results
    torch.testing.assert_close(la, lb, rtol=1e-5, atol=1e-6)
    for a, b in zip(ga, gb, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
