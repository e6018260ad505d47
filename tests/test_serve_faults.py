"""`digits serve` under floods and faults: bounded queues, deadlines, a failing or dead batch
worker, readiness, and a graceful shutdown under load (nothing lost, nothing hangs)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from digits.serve.batcher import BatchFailed, Batcher, Overloaded, TimedOut, Unavailable

X = np.zeros((1, 28, 28), np.float32)


def _run(fn):
    return asyncio.run(fn())


def _batcher(run, **kw) -> Batcher:
    return Batcher(run, max_batch=kw.pop("max_batch", 8), max_wait_ms=kw.pop("max_wait_ms", 1),
                   executor=ThreadPoolExecutor(1), **kw)


def test_a_full_queue_refuses_at_once():
    gate = threading.Event()

    async def go():
        b = _batcher(lambda x: (gate.wait(5), np.zeros((len(x), 10)))[1], max_queue=2, max_batch=1)
        b.start()
        first = asyncio.create_task(b.submit(X))  # taken by the worker, blocked in the runtime
        await asyncio.sleep(0.05)
        queued = [asyncio.create_task(b.submit(X)) for _ in range(2)]  # fill the queue
        await asyncio.sleep(0.01)
        with pytest.raises(Overloaded):
            await b.submit(X)
        gate.set()
        await asyncio.gather(first, *queued)  # the admitted ones are all answered
        await b.stop(1)
    _run(go)


def test_a_deadline_gives_up_and_the_work_is_skipped():
    ran = []

    def slow(x):
        ran.append(len(x))
        time.sleep(0.2)
        return np.zeros((len(x), 10))

    async def go():
        b = _batcher(slow, max_batch=1)
        b.start()
        first = asyncio.create_task(b.submit(X))
        await asyncio.sleep(0.02)
        with pytest.raises(TimedOut):
            await b.submit(X, timeout_s=0.05)  # still queued behind the slow call when its time is up
        await first
        await asyncio.sleep(0.3)
        await b.stop(1)
    _run(go)
    assert ran == [1]  # the expired request never reached the runtime


@pytest.mark.parametrize("fault", ["runtime", "callback", "split"])
def test_a_failing_step_fails_its_batch_only_and_is_counted(fault, caplog):
    causes, calls = [], []

    def run(x):
        calls.append(1)
        if fault == "runtime" and len(calls) == 1:
            raise RuntimeError("secret internal detail")
        if fault == "split" and len(calls) == 1:
            return np.zeros((len(x) + 1, 10))  # wrong number of rows
        return np.ones((len(x), 10))

    def on_batch(n, s):
        if fault == "callback" and len(calls) == 1:
            raise RuntimeError("metrics broke")

    async def go():
        b = _batcher(run, on_batch=on_batch, on_error=causes.append)
        b.start()
        if fault == "callback":  # metrics never fail inference: the answer goes out, the error is logged once
            first = await b.submit(X)
            assert first.shape == (10,) and b.metric_errors == 1
        else:
            with pytest.raises(BatchFailed) as e:
                await b.submit(X)
            assert "secret" not in str(e.value)  # clients get a generic message
        again = await b.submit(X)  # the worker went on
        await b.stop(1)
        return again
    assert _run(go).shape == (10,) and causes == ([] if fault == "callback" else [fault])
    assert ("metrics failed" if fault == "callback" else fault) in caplog.text  # the details go to the log


def test_a_dead_worker_answers_everything_queued_and_is_not_alive():
    class Fatal(BaseException):
        pass

    async def go():
        b = _batcher(lambda x: np.zeros((len(x), 10)), max_batch=1)
        b.start()

        async def die():
            raise Fatal()
        b._gather = die  # the worker's loop itself breaks, outside any batch
        b.task.cancel()
        b.task = asyncio.get_running_loop().create_task(b._worker())
        b.task.add_done_callback(b._ended)
        await asyncio.sleep(0.01)
        assert not b.alive
        with pytest.raises(Unavailable):
            await b.submit(X)
    _run(go)


def test_stop_answers_what_is_queued():
    async def go():
        b = _batcher(lambda x: (time.sleep(0.01), np.ones((len(x), 10)))[1], max_batch=2)
        b.start()
        pending = [asyncio.create_task(b.submit(X)) for _ in range(10)]
        await asyncio.sleep(0)
        await b.stop(5)
        return await asyncio.gather(*pending, return_exceptions=True)
    results = _run(go)
    assert all(isinstance(r, np.ndarray) for r in results)


# --------------------------------------------------------------------------- the HTTP layer
@pytest.fixture
def faulty_app(served):
    from digits.serve import ServeConfig, create_app
    from digits.serve.app import load_models

    models = load_models(ServeConfig(artifacts=served, models=["lenet5"]))
    real = models["lenet5"]["backend"]

    class Flaky:
        fail = False

        def __call__(self, x):
            if Flaky.fail:
                raise RuntimeError("onnxruntime said something internal")
            return real(x)
    models["lenet5"]["backend"] = Flaky()
    return create_app(ServeConfig(artifacts=served, models=["lenet5"], max_wait_ms=1), models), Flaky


def test_http_a_failed_batch_is_a_generic_500_and_counted(faulty_app):
    from fastapi.testclient import TestClient

    app, flaky = faulty_app
    with TestClient(app) as c:
        flaky.fail = True
        r = c.post("/v1/predict?model=lenet5", json={"image": np.zeros((28, 28)).tolist()})
        assert r.status_code == 500 and "internal" not in r.json()["error"] and "server log" in r.json()["error"]
        flaky.fail = False
        assert c.post("/v1/predict?model=lenet5", json={"image": np.zeros((28, 28)).tolist()}).status_code == 200
        from prometheus_client.parser import text_string_to_metric_families

        errors = {tuple(sorted(s.labels.items())): s.value for f in text_string_to_metric_families(c.get("/metrics").text)
                  for s in f.samples if s.name == "digits_batch_errors_total"}
        assert errors == {(("cause", "runtime"), ("model", "lenet5")): 1.0}


def test_http_a_large_json_body_is_refused_unparsed(faulty_app):
    from fastapi.testclient import TestClient

    app, _ = faulty_app
    with TestClient(app) as c:
        r = c.post("/v1/predict?model=lenet5", content=b'{"image": [' + b"0," * 40_000 + b"0]}",
                   headers={"Content-Type": "application/json"})
        assert r.status_code == 413


def test_http_readiness_follows_the_worker(faulty_app):
    from fastapi.testclient import TestClient

    app, _ = faulty_app
    with TestClient(app) as c:
        assert c.get("/readyz").status_code == 200
        c.portal.call(_kill_worker, app)
        r = c.get("/readyz")
        assert r.status_code == 503 and r.json()["not_serving"] == ["lenet5"]
        assert c.get("/livez").status_code == 200  # the process is alive: restart it, do not route to it
        r = c.post("/v1/predict?model=lenet5", json={"image": np.zeros((28, 28)).tolist()})
        assert r.status_code == 503 and r.headers["Retry-After"] == "1"


async def _kill_worker(app):
    for b in app.state.batchers.values():
        b.task.cancel()  # as if the worker had died
    await asyncio.sleep(0.01)


# --------------------------------------------------------------------------- SIGTERM under load
@pytest.mark.slow
def test_sigterm_under_load_answers_every_request_and_exits_0(served, free_port):
    import httpx

    port = free_port
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-c", "from digits.cli import app; app()", "serve", "--artifacts", str(served),
                             "--models", "lenet5", "--port", str(port), "--grace-s", "5"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(url + "/readyz", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            time.sleep(0.1)
    body = {"image": np.zeros((28, 28)).tolist()}
    outcomes: list[tuple[float, object]] = []  # (when the request started, status or error)
    stop = threading.Event()

    def client():
        with httpx.Client(timeout=10) as c:
            while not stop.is_set():
                t = time.monotonic()
                try:
                    outcomes.append((t, c.post(url + "/v1/predict?model=lenet5", json=body).status_code))
                except httpx.ConnectError:
                    return  # refused: the server has stopped accepting
                except httpx.HTTPError as e:
                    outcomes.append((t, type(e).__name__))
                    return
    threads = [threading.Thread(target=client) for _ in range(16)]
    for t in threads:
        t.start()
    time.sleep(1.0)  # load is on
    t0 = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    draining = httpx.get(url + "/readyz", timeout=5)  # phase 1: still answering, but not ready
    code = proc.wait(timeout=30)
    took = time.monotonic() - t0
    stop.set()
    for t in threads:
        t.join(timeout=15)
    assert not any(t.is_alive() for t in threads)  # no client hangs
    assert code == 0 and took < 5 + 3, (code, took, proc.stdout.read()[-2000:])
    assert draining.status_code == 503 and draining.json()["status"] == "draining"
    assert draining.headers["connection"] == "close"
    # every request sent before the server stopped accepting (SIGTERM + 0.5 s of draining) was
    # answered, those of the drain included; a connection error (at most one per client, which
    # then stops) only ever hit a request sent as the listening socket closed
    before = [o for t, o in outcomes if t < t0 + 0.4]
    assert len(before) > 50 and set(before) <= {200, 503}, set(map(str, before))
    assert sum(t0 < t < t0 + 0.4 for t, _ in outcomes) > 0  # requests did arrive while draining
    assert all(t >= t0 + 0.4 for t, o in outcomes if o not in (200, 503))


@pytest.mark.slow
def test_memory_stays_bounded_under_concurrent_large_uploads(served, tmp_path):
    """scripts/serve_memory.py at 24 clients: every 16-MP upload answered, memory far under a
    full-size decode per request (a 16-MP float32 RGB array alone is 192 MB; 24 of them 4.6 GB)."""
    script = Path(__file__).resolve().parents[1] / "scripts" / "serve_memory.py"
    done = subprocess.run([sys.executable, str(script), "--clients", "24", "--artifacts", str(served), "--out",
                           str(tmp_path)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    r = json.loads(next(tmp_path.glob("serve-memory-*.json")).read_text())
    assert r["status_codes"] == {"200": 24} and r["jpeg_bytes"] > 2_000_000
    assert r["peak_above_idle_mb"] < 600, r


# --------------------------------------------------------------------------- several workers
@pytest.mark.slow
def test_workers_share_metrics_and_stop_cleanly(served, tmp_path, free_port):
    import httpx

    from digits.serve.load import run_load

    port = free_port
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "TMPDIR": str(tmp_path)}  # the metrics folder lands in tmp_path
    log = (tmp_path / "serve.log").open("w")  # a file, not an unread pipe
    proc = subprocess.Popen([sys.executable, "-c", "from digits.cli import app; app()", "serve", "--artifacts", str(served),
                             "--models", "lenet5", "--port", str(port), "--workers", "2", "--grace-s", "5"], env=env,
                            stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            try:
                if httpx.get(url + "/metrics", timeout=1).text.count("digits_worker{") == 2:
                    break  # both workers up
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        assert [p.name for p in tmp_path.glob("digits-metrics-*")], "the shared metrics folder"
        body = json.dumps({"image": np.zeros((28, 28)).tolist()}).encode()
        with ThreadPoolExecutor(1) as pool:
            r = pool.submit(run_load, "127.0.0.1", port, "/v1/predict?model=lenet5", body, concurrency=8,
                            requests=300).result()
        assert r["errors"] == 0
        from prometheus_client.parser import text_string_to_metric_families

        samples = [s for f in text_string_to_metric_families(httpx.get(url + "/metrics", timeout=5).text)
                   for s in f.samples]
        pids = {s.labels["pid"] for s in samples if s.name == "digits_worker"}
        served_ok = sum(s.value for s in samples if s.name == "digits_requests_total"
                        and s.labels == {"route": "/v1/predict", "status": "200"})
        batched = sum(s.value for s in samples if s.name == "digits_batch_size_sum")
        # one scrape, answered by one worker, reports both processes' counts
        assert len(pids) == 2 and served_ok == 300 and batched == 300, (pids, served_ok, batched)
        # a worker killed outright: the supervisor starts another, which drops the dead one's live gauge
        killed = sorted(pids)[0]
        os.kill(int(killed), signal.SIGKILL)
        now: set = set()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not (len(now) == 2 and killed not in now):
            time.sleep(0.5)
            try:
                now = {s.labels["pid"] for f in text_string_to_metric_families(httpx.get(url + "/metrics", timeout=5).text)
                       for s in f.samples if s.name == "digits_worker"}
            except httpx.HTTPError:
                pass
        assert len(now) == 2 and killed not in now, (killed, now)
        assert httpx.post(url + "/v1/predict?model=lenet5", content=body, timeout=10,
                          headers={"Content-Type": "application/json"}).status_code == 200
        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=30)
    finally:
        proc.kill()
        log.close()
    assert code == 0 and time.monotonic() - t0 < 5 + 5, (code, (tmp_path / "serve.log").read_text()[-2000:])
    assert not list(tmp_path.glob("digits-metrics-*"))  # removed with the server


def test_workers_refuse_to_start_without_a_verified_artifact(tmp_path):
    from typer.testing import CliRunner

    from digits.cli import app as cli

    result = CliRunner().invoke(cli, ["serve", "--workers", "2", "--artifacts", str(tmp_path), "--models", "lenet5"])
    assert result.exit_code == 1 and "digits export lenet5 --format onnx" in result.output
    assert "Traceback" not in result.output
