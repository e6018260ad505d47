"""Data-parallel training (DDP, gloo, 2 CPU processes) proven equal to one process.

The ranks are started as PyTorch's own tests start them: ``torch.multiprocessing.spawn``
meeting over a FileStore. The CLI tests start real torchrun processes.
"""

from __future__ import annotations

import datetime
import json
import os
import signal
import subprocess
import time
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from safetensors.torch import load_file
from typer.testing import CliRunner

from digits.cli import app as cli
from digits.distributed import Dist, finish
from digits.errors import UsageError

from conftest import _built_once

FIXTURE = Path(__file__).parent / "data"
WORLD = 2
# the default lenet5 recipe (augmentation, label smoothing), short: 2 epochs of 15 steps
E2E = dict(epochs=2, batch_size=64, threads=1)


def _join(rank: int, store: str) -> Dist:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", store=dist.FileStore(store, WORLD), rank=rank, world_size=WORLD,
                            timeout=datetime.timedelta(seconds=60))  # a rank left waiting fails, never hangs
    from digits.distributed import current

    return current()


def _spawn(fn, tmp_path: Path, *args) -> None:
    mp.spawn(fn, args=(str(tmp_path / "store"), *args), nprocs=WORLD, join=True)


# --------------------------------------------------------------------------- gradients
def _grads_checked(d: Dist, out: Path) -> None:
    """Every model's DDP gradients against one process's, written as the failures found (none
    is a pass): run in the ranks of ``ddp_run``, so that the check costs no processes of its own."""
    from digits.data import load_test
    from digits.models import list_models

    x, y = load_test(FIXTURE)
    failures = []
    for name in list_models():
        for batch in (64, 63):  # 63: an uneven split, 32 + 31
            try:
                _same_grads(d, name, x[:batch], y[:batch])
            except AssertionError as e:
                failures.append(str(e))
    (out / f"grads{d.rank}.json").write_text(json.dumps(failures))


def _same_grads(d: Dist, name: str, xb: torch.Tensor, yb: torch.Tensor) -> None:
    """One model's gradients, one process against DDP; the DDP wrapper dies on return, so no
    wrapper holds the group past finish()."""
    from digits.distributed import shard_loss
    from digits.models import create_model

    torch.manual_seed(0)
    one = create_model(name).eval()  # eval: no dropout, so both see the same function
    torch.manual_seed(0)
    ddp = torch.nn.parallel.DistributedDataParallel(create_model(name).eval())
    torch.nn.functional.cross_entropy(one(xb), yb, label_smoothing=0.1).backward()
    shard_loss(ddp(d.shard(xb)), d.shard(yb), 0.1, len(xb), d).backward()
    for (n, p), q in zip(one.named_parameters(), ddp.module.parameters(), strict=True):
        torch.testing.assert_close(q.grad, p.grad, rtol=1.3e-6, atol=5e-5, msg=f"{name} b{len(xb)} {n}")


def test_ddp_gradients_equal_one_process_on_the_whole_batch(ddp_run):
    tmp, _ = ddp_run
    for rank in range(WORLD):
        assert json.loads((tmp / f"grads{rank}.json").read_text()) == [], rank


# --------------------------------------------------------------------------- end to end
def _ctrl_c_on_rank_1(d: Dist, after: int = 20):
    """A stand-in for digits.resume.StopFlag: Ctrl-C reaches rank 1 only, before its 21st step."""
    reads = [0]

    class Flag:
        signum = signal.SIGINT

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            pass

        @property
        def set(self):
            reads[0] += 1
            return d.rank == 1 and reads[0] > after
    return Flag


def _train_worker(rank: int, store: str, out: str) -> None:
    import digits.train as tr
    from digits.data import load_splits
    from digits.train import TrainingInterrupted, resolve_config, train

    d = _join(rank, store)
    out = Path(out)
    splits = load_splits(FIXTURE, seed=0)
    cfg = resolve_config("lenet5", "default", **E2E)
    real_flag = tr.StopFlag
    try:
        _grads_checked(d, out)
        result = train(cfg, splits, out / f"rank{rank}")  # rank 1's folder must stay empty
        (out / f"result{rank}.json").write_text(json.dumps(result.to_dict()))
        for folder in ("split", "state"):  # "split" is resumed below, "state" is left for the parent
            tr.StopFlag = _ctrl_c_on_rank_1(d)
            try:
                train(cfg, splits, out / folder)
                raise AssertionError("not interrupted")
            except TrainingInterrupted as e:
                assert e.exit_code == 130
        tr.StopFlag = real_flag
        train(cfg, splits, out / "split", resume=True)

        def term(p):  # a real SIGTERM, to rank 0 alone (on_progress runs there), mid-epoch 2
            if (p.epoch, p.step) == (2, 3):
                signal.raise_signal(signal.SIGTERM)
        with pytest.raises(TrainingInterrupted, match="stopped by SIGTERM") as stopped:
            train(cfg, splits, out / "term", on_progress=term)
        assert stopped.value.exit_code == 75
        train(cfg, splits, out / "term", resume=True)
        with pytest.raises(UsageError, match="global batch: 63"):
            train(resolve_config("lenet5", "default", epochs=1, batch_size=63, threads=1), splits, out / "odd")
        _failing_write(d, splits, out / "fail")  # last: the ranks leave through finish() right after it
    finally:
        tr.StopFlag = real_flag
        finish()


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory, splits):
    """One spawn of 2 ranks (the gradient check, a DDP run, interrupted and resumed ones, rank 0
    failing to write) and the same run in one process. Made once per test run, not once per
    xdist worker that runs a test of this module: each rank costs ~8 s of CPU to start."""
    from digits.train import resolve_config, train

    def build(tmp: Path) -> None:
        _spawn(_train_worker, tmp, str(tmp))
        single = train(resolve_config("lenet5", "default", **E2E), splits, tmp / "single")
        (tmp / "single.json").write_text(json.dumps(single.to_dict()))
    tmp = _built_once(tmp_path_factory, "ddp", build)
    return tmp, json.loads((tmp / "single.json").read_text())


def _weights(folder: Path) -> dict:
    return load_file(folder / "lenet5" / "model.safetensors")


def _assert_same_run(a: dict, b: dict) -> None:
    assert a.keys() == b.keys() and not any(k.startswith("module.") for k in a)
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-5, msg=k)


def test_two_ranks_train_to_the_one_process_weights(ddp_run):
    tmp, single = ddp_run
    _assert_same_run(_weights(tmp / "rank0"), _weights(tmp / "single"))
    r0, r1 = (json.loads((tmp / f"result{r}.json").read_text()) for r in (0, 1))
    assert r0["best_epoch"] == r1["best_epoch"] == single["best_epoch"]
    assert r0["test_accuracy"] == r1["test_accuracy"]  # metrics are all-reduced: every rank agrees
    assert abs(r0["test_accuracy"] - single["test_accuracy"]) <= 1 / 1000 + 1e-12  # within one image of 1,000
    manifest = json.loads((tmp / "rank0/lenet5/manifest.json").read_text())
    assert manifest["distributed"] == {"world_size": 2, "backend": "gloo", "nodes": 1}
    assert manifest["config"]["batch_size"] == 64  # the global batch
    single_manifest = json.loads((tmp / "single/lenet5/manifest.json").read_text())
    assert single_manifest["distributed"] == {"world_size": 1, "backend": None, "nodes": 1}


def test_rank_1_writes_nothing_and_the_checkpoint_exports(ddp_run, tmp_path):
    tmp, _ = ddp_run
    assert not (tmp / "rank1").exists()
    assert sorted(p.name for p in (tmp / "rank0/lenet5").iterdir()) == ["manifest.json", "model.safetensors"]
    r = CliRunner().invoke(cli, ["export", "lenet5", "--format", "onnx", "--checkpoint", str(tmp / "rank0"),
                                 "--out", str(tmp_path), "--data-dir", str(FIXTURE)])
    assert r.exit_code == 0, r.output
    r = CliRunner().invoke(cli, ["verify", str(tmp_path), "--checkpoint", str(tmp / "rank0"),
                                 "--data-dir", str(FIXTURE)])
    assert r.exit_code == 0, r.output


def test_ctrl_c_on_one_rank_stops_every_rank_at_the_same_step_and_resumes(ddp_run, splits):
    from digits.train import resolve_config, train

    tmp, _ = ddp_run
    # rank 0 never saw Ctrl-C, yet the state it saved is at rank 1's step: the 21st, epoch 2 step 6
    saved = torch.load(tmp / "state/lenet5/resume.pt", weights_only=True)
    # the vote is read one step after it is cast (no blocking all-reduce per step): the 22nd step
    assert saved["world_size"] == 2 and (saved["loop"]["epoch"], saved["loop"]["step"]) == (1, 6)
    assert len(saved["torch_rng_by_rank"]) == 2 and saved["loss_sum_by_rank"].shape == (2,)
    assert saved["loss_sum_by_rank"][0] != saved["loss_sum_by_rank"][1]  # each rank's own partial sum
    # the resumed runs (after Ctrl-C on rank 1, after SIGTERM on rank 0) reached exactly the
    # uninterrupted 2-rank run's weights, and the same history: the resumed epoch's loss included
    b = _weights(tmp / "rank0")
    history = json.loads((tmp / "rank0/lenet5/manifest.json").read_text())["history"]
    for folder in ("split", "term"):
        a = _weights(tmp / folder)
        assert all(torch.equal(a[k], b[k]) for k in a), folder
        assert json.loads((tmp / folder / "lenet5/manifest.json").read_text())["history"] == history, folder
        assert not (tmp / folder / "lenet5/resume.pt").exists()
    with pytest.raises(UsageError, match="ran on 2 process"):  # a resume on another world size
        train(resolve_config("lenet5", "default", **E2E), splits, tmp / "state", resume=True)


# --------------------------------------------------------------------------- rank 0 fails alone
def _failing_write(d: Dist, splits, out: Path) -> None:
    """Rank 0's checkpoint write fails (a directory is where the file goes); each rank records
    what it was told and how long it took (in ``ddp_run``'s ranks)."""
    from digits.distributed import RankFailed
    from digits.errors import DigitsError
    from digits.train import resolve_config, train

    if d.rank == 0:
        (out / "lenet5/model.safetensors").mkdir(parents=True)
    t0 = time.monotonic()
    try:
        train(resolve_config("lenet5", "fast", epochs=1, batch_size=64, threads=1), splits, out)
        outcome = "trained"
    except RankFailed as e:
        outcome = f"RankFailed: {e}"
    except DigitsError as e:
        outcome = f"DigitsError: {e}"
    (out.parent / f"outcome{d.rank}.json").write_text(json.dumps({"outcome": outcome, "seconds": time.monotonic() - t0}))


def test_rank_0_failing_to_write_alone_stops_the_others_at_once(ddp_run):
    """Outside torchrun nobody stops the other ranks: they must learn of rank 0's failure
    instead of waiting at a barrier for the collective timeout (60 s here, 30 min by default)."""
    tmp, _ = ddp_run
    r0, r1 = (json.loads((tmp / f"outcome{r}.json").read_text()) for r in (0, 1))
    assert r0["outcome"].startswith("DigitsError: Could not write the checkpoint"), r0
    assert r1["outcome"].startswith("RankFailed: Stopped: another rank could not write the checkpoint"), r1
    assert max(r0["seconds"], r1["seconds"]) < 40  # far below the 60-s collective timeout a barrier would wait for


def test_ddp_rules():
    from digits.recipes import resolve_config
    from digits.distributed import check_training as _check_world

    two = Dist(rank=0, world=2)
    with pytest.raises(UsageError, match="--no-cuda-graph"):
        _check_world(resolve_config("lenet5", device="cuda"), torch.device("cuda"), two)
    _check_world(resolve_config("lenet5", device="cuda", cuda_graph=False), torch.device("cuda"), two)
    assert Dist(rank=1, world=2).shard(torch.arange(7)).tolist() == [1, 3, 5]


# --------------------------------------------------------------------------- the CLI and torchrun
def test_cli_exit_codes(monkeypatch, tmp_path):
    args = ["train", "lenet5", "--device", "cpu", "--data-dir", str(FIXTURE), "--out", str(tmp_path)]
    r = CliRunner().invoke(cli, [*args, "--nproc", "2", "--batch-size", "63"])
    assert r.exit_code == 2 and "multiple of 2" in r.output and "Traceback" not in r.output
    monkeypatch.setenv("RANK", "0")
    r = CliRunner().invoke(cli, [*args, "--nproc", "2"])
    assert r.exit_code == 2 and "already started by torchrun" in r.output
    assert not list(tmp_path.iterdir())


# --device cpu: compared with the CPU runs above (gloo); `auto` would pick a GPU where there is one
COMMON = ["lenet5", "--epochs", "2", "--batch-size", "64", "--threads", "1", "--device", "cpu", "--data-dir", str(FIXTURE)]


@pytest.mark.slow
def test_sigterm_to_a_2_rank_run_saves_state_and_two_nodes_resume_it_identically(ddp_run, tmp_path, paused_run,
                                                                                  free_port):
    """`digits train --nproc 2` stopped by SIGTERM, then resumed by two torchrun nodes meeting
    through the c10d rendezvous: one test, as each torchrun process and rank costs ~4-8 s of CPU
    to start on 2 cores."""
    env, wait = paused_run
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "digits", "train", *COMMON, "--nproc", "2", "--out", str(out)]
    proc = subprocess.Popen(cmd, env=env, stderr=subprocess.PIPE, text=True)
    wait(proc)
    proc.send_signal(signal.SIGTERM)  # to the launcher, as Slurm or the kubelet would: torchrun passes it on
    err = proc.communicate(timeout=120)[1]
    assert proc.returncode == 75, err[-3000:]
    assert "resume state is in" in err and (out / "lenet5/resume.pt").is_file()
    node = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc-per-node", "1",
            "--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{free_port}", "--rdzv-id", "digits-test",
            "-m", "digits", "train", *COMMON, "--out", str(out), "--resume", "--json"]
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE")}
    nodes = [subprocess.Popen(node, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outputs = [p.communicate(timeout=240) for p in nodes]
    assert [p.returncode for p in nodes] == [0, 0], outputs[0][1][-2000:] + outputs[1][1][-2000:]
    printed = [o for o, _ in outputs if o.strip()]  # rank 0 alone prints: one JSON document, on its node
    assert len(printed) == 1 and json.loads(printed[0])["model"] == "lenet5"
    assert json.loads((out / "lenet5/manifest.json").read_text())["distributed"] == \
        {"world_size": 2, "backend": "gloo", "nodes": 2}
    assert not (out / "lenet5/resume.pt").exists()
    a, b = _weights(out), _weights(ddp_run[0] / "rank0")  # interrupted, then resumed on two nodes,
    assert all(torch.equal(a[k], b[k]) for k in a)  # bit-equal to the uninterrupted 2-rank run


def test_a_slurm_task_is_found_from_its_variables(monkeypatch):
    from digits import distributed

    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "GROUP_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.setenv(name, "")  # recorded, so that what _from_slurm sets below is undone after the test
        monkeypatch.delenv(name)
    assert not distributed.launched()
    monkeypatch.setenv("SLURM_NTASKS", "8")  # a batch script of an 8-task job: not a rank itself
    assert not distributed.launched()
    slurm = {"SLURM_PROCID": "5", "SLURM_STEP_NUM_TASKS": "8", "SLURM_LOCALID": "1",
             "SLURM_STEP_TASKS_PER_NODE": "4(x2)", "SLURM_STEP_NUM_NODES": "2"}
    for name, value in slurm.items():
        monkeypatch.setenv(name, value)
    assert distributed.launched()
    with pytest.raises(UsageError, match="MASTER_ADDR"):
        distributed._from_slurm()
    monkeypatch.setenv("MASTER_ADDR", "node-a")
    distributed._from_slurm()
    assert [os.environ[n] for n in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "GROUP_WORLD_SIZE",
                                     "MASTER_PORT")] == ["5", "8", "1", "4", "2", "29500"]
