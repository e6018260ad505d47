"""Running the app on uvicorn with a graceful shutdown: drain, stop accepting, answer, exit 0.

On SIGTERM (or Ctrl-C) the server first **drains** for ``drain_s``: readiness turns 503 (a load
balancer or Kubernetes stops routing to it) while requests are still answered, each with
``Connection: close`` so clients reconnect elsewhere instead of reusing a socket about to
close. Then uvicorn stops accepting, lets open requests finish within ``grace_s``, and the
app's shutdown answers whatever is still queued (digits.serve.batcher). Since 0.29 uvicorn
then raises the signal again, so the process would die of it (exit -15) after a clean
drain; here a server that shut down cleanly exits 0.

``--workers N`` runs uvicorn's own multi-process supervisor on the app factory
:func:`app_from_environment`: each worker loads and verifies the artifacts itself, and
restarts if it dies. On SIGTERM the supervisor stops each worker with uvicorn's graceful
shutdown (stop accepting, finish open requests within ``grace_s``, answer the queued),
without the readiness drain of the single-process server.
"""

from __future__ import annotations

import json
import os
import tempfile
import threading
from dataclasses import asdict
from pathlib import Path

import uvicorn

CONFIG_ENV = "DIGITS_SERVE_CONFIG"  # the ServeConfig, as JSON, for every worker the supervisor starts


class _Server(uvicorn.Server):
    drain_s = 0.5
    draining: threading.Event | None = None

    def handle_exit(self, sig, frame) -> None:
        if self.draining is not None and not self.draining.is_set() and self.drain_s > 0:
            self.draining.set()  # phase 1: not ready, Connection: close, still answering
            threading.Timer(self.drain_s, self._stop, (sig, frame)).start()
        else:  # phase 2 at once (no drain, or a second Ctrl-C)
            self._stop(sig, frame)

    def _stop(self, sig, frame) -> None:
        super().handle_exit(sig, frame)  # uvicorn's own shutdown: stop accepting, finish, lifespan
        getattr(self, "_captured_signals", []).clear()  # drained and answered: not a death by signal


def run_server(app, *, host: str, port: int, limit_concurrency: int, grace_s: float, drain_s: float = 0.5) -> None:
    config = uvicorn.Config(app, host=host, port=port, log_level="warning", access_log=False,
                            limit_concurrency=limit_concurrency, timeout_graceful_shutdown=grace_s)
    server = _Server(config)
    server.draining, server.drain_s = app.state.draining, min(drain_s, grace_s)
    server.run()


def app_from_environment():
    """uvicorn's app factory for ``--workers``: one app per worker process."""
    from digits.serve.app import ServeConfig, create_app

    fields = json.loads(os.environ[CONFIG_ENV])
    return create_app(ServeConfig(**{**fields, "artifacts": Path(fields["artifacts"])}))


def run_workers(cfg, *, host: str, port: int, workers: int) -> None:
    with tempfile.TemporaryDirectory(prefix="digits-metrics-") as shared:
        # read by prometheus_client when each worker imports it: the workers count into files here
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = shared
        os.environ[CONFIG_ENV] = json.dumps({**asdict(cfg), "artifacts": str(cfg.artifacts)})
        uvicorn.run("digits.serve.server:app_from_environment", factory=True, workers=workers, host=host, port=port,
                    log_level="warning", access_log=False, limit_concurrency=cfg.limit_concurrency,
                    timeout_graceful_shutdown=cfg.grace_s)
