"""Shared fixtures: the committed real-MNIST fixture (1,000 train + 1,000 test images)."""

from __future__ import annotations

import json
import os
import shutil
import socket
from pathlib import Path

import pytest
from filelock import FileLock  # torch's own dependency

FIXTURE_ROOT = Path(__file__).parent / "data"  # holds MNIST/raw/*.gz + digits-manifest.json


@pytest.fixture(scope="session")
def fixture_root() -> Path:
    return FIXTURE_ROOT


@pytest.fixture
def fixture_copy(tmp_path) -> Path:
    """A writable copy of the fixture root, for tests that damage files."""
    dest = tmp_path / "root"
    shutil.copytree(FIXTURE_ROOT / "MNIST", dest / "MNIST")
    return dest


@pytest.fixture(scope="session")
def splits():
    from digits.data import load_splits

    return load_splits(FIXTURE_ROOT, seed=0)


def _built_once(tmp_path_factory, name: str, build) -> Path:
    """A folder that ``build(folder)`` fills, made once per run. Under pytest-xdist each worker
    is its own session, and built the same models again (~25 s of CPU each, on the two cores
    the workers share): the first worker to need it builds it in the run's shared temp folder,
    under a lock, and the others wait for it and use it. Tests copy a folder before damaging it."""
    if not os.environ.get("PYTEST_XDIST_WORKER"):
        out = tmp_path_factory.mktemp(name)
        build(out)
        return out
    root = tmp_path_factory.getbasetemp().parent  # one per run, shared by its workers
    out = root / name
    with FileLock(str(root / f"{name}.lock")):
        if not (out / ".built").exists():
            shutil.rmtree(out, ignore_errors=True)  # a worker that died half-way
            out.mkdir()
            build(out)
            (out / ".built").touch()
    return out


@pytest.fixture(scope="session")
def trained(tmp_path_factory, splits, test_set) -> Path:
    """Every registered model trained briefly on the fixture and exported to every format: an
    artifacts/ folder (``exported`` holds the export records)."""
    from digits.export import export_model, list_formats
    from digits.models import list_models
    from digits.train import resolve_config, train

    def build(out: Path) -> None:
        for name in list_models():
            # Explicit settings, so tuning a recipe cannot change what the fixture models look like.
            # One thread: the other xdist worker has the second core (two cost 26% more CPU here).
            train(resolve_config(name, "fast", epochs=3, batch_size=64, lr=3e-3, augment=False, threads=1), splits, out)
        records = [export_model(m, f, *test_set, checkpoint=out, out=out) for m in list_models() for f in list_formats()]
        (out / "exported.json").write_text(json.dumps(records))
    return _built_once(tmp_path_factory, "artifacts", build)


@pytest.fixture(scope="session")
def test_set():
    from digits.data import load_test

    return load_test(FIXTURE_ROOT)


@pytest.fixture(scope="session")
def exported(trained) -> dict:
    """(model, format) -> export record, for every model x format, exported once per run."""
    return {(r["model"], r["format"]): r for r in json.loads((trained / "exported.json").read_text())}


@pytest.fixture(scope="session")
def served(tmp_path_factory, splits, test_set):
    """Models good enough to read a drawn digit: 15 augmented epochs on the fixture (~92%, a few seconds)."""
    from digits.export import export_model
    from digits.models import list_models
    from digits.train import resolve_config, train

    def build(out: Path) -> None:
        for name in list_models():
            train(resolve_config(name, "fast", epochs=15, batch_size=64, lr=3e-3, augment=True, threads=1), splits, out)
            assert export_model(name, "onnx", *test_set, checkpoint=out, out=out)["passed"]
    return _built_once(tmp_path_factory, "served", build)


def _unused_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def free_port() -> int:
    """A loopback TCP port nothing listens on, for a server a test starts."""
    return _unused_port()


@pytest.fixture(scope="session")
def live_server(served):
    """`digits serve`'s app on uvicorn in a thread, on a free port: its base URL."""
    import threading
    import time

    import uvicorn

    from digits.serve import ServeConfig, create_app

    port = _unused_port()
    server = uvicorn.Server(uvicorn.Config(create_app(ServeConfig(artifacts=served)), host="127.0.0.1", port=port,
                                           log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    for _ in range(200):
        if server.started:
            break
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(timeout=10)


# Imported at start-up by every Python process of a run (the CLI, a torchrun launcher and its
# workers): the first progress update touches a marker file and pauses, so that a test's
# signal lands mid-run, as a scheduler's would.
SITECUSTOMIZE = """
import os, pathlib, time
marker = pathlib.Path(os.environ["DIGITS_TEST_MARKER"])
import digits.ui as ui
real = ui.advance
def advance(*a):
    if not marker.exists():
        marker.touch()
        time.sleep(1)
    real(*a)
ui.advance = advance
"""


@pytest.fixture
def paused_run(tmp_path):
    """``(env, wait)``: run a `digits train` subprocess with ``env``; ``wait(proc)`` returns
    once its training loop has started (and is paused for 1 s)."""
    import os
    import time

    hook, marker = tmp_path / "hook", tmp_path / "started"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(SITECUSTOMIZE)
    env = {**os.environ, "PYTHONPATH": f"{hook}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
           "DIGITS_TEST_MARKER": str(marker)}

    def wait(proc) -> None:
        for _ in range(1200):
            if marker.exists() or proc.poll() is not None:
                return
            time.sleep(0.05)
    return env, wait

