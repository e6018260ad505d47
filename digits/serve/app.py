"""The ASGI app behind ``digits serve``: a drawing page and a JSON inference API.

    GET  /              the drawing page (plain HTML/CSS/JS shipped in digits/serve/static)
    POST /v1/predict    an image (multipart or raw body) or {"image": 28x28 array} -> predictions
    GET  /v1/models     names, params, accuracy, artifact sha256
    GET  /readyz        readiness (every batch worker serving, not draining); /healthz the same
    GET  /livez         liveness
    GET  /metrics       Prometheus text: requests, latency, batch sizes, failed batches
    /v2/...             the Open Inference Protocol (KServe v2, Triton's HTTP API): digits.serve.v2

Layout, in the manner of FastAPI's "bigger applications": :class:`ServeState` holds what
every route shares (models, batchers, metrics, the body budget and decode slots); the
routers are small functions of it; the two hot routes (``/v1/predict``, v2 infer) are
answered by ``digits.serve.hot`` before FastAPI's router; admission is
``digits.serve.admission``, batching ``digits.serve.batcher``, parsing
``digits.serve.inputs``, the graceful shutdown ``digits.serve.server``.

Every model's artifact is loaded, sha256-checked, at start-up. Images go through
``digits.preprocess``, exactly as ``digits predict`` does. Bad input gets a 4xx JSON error
and the server goes on.
"""

from __future__ import annotations

import asyncio
import gc
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch
from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse, PlainTextResponse, Response
from fastapi.staticfiles import StaticFiles

from digits.errors import DigitsError
from digits.serve.admission import BodyBudget
from digits.serve.batcher import Batcher
from digits.serve.hot import HotRoutes, handle, predict
from digits.serve.inputs import PREDICT_DOC, ApiError
from digits.serve.metrics import CONTENT_TYPE, Metrics
from digits.serve.v2 import VERSION
from digits.serve.v2 import add_routes as add_v2_routes

STATIC = Path(__file__).parent / "static"


@dataclass
class ServeConfig:
    artifacts: Path = Path("artifacts")
    models: list[str] = field(default_factory=list)  # empty: every registered model
    backend: str = "onnxruntime"
    threads: int | None = 1  # one core for the runtime, the other for the event loop (2-core machines)
    max_batch: int = 64  # 1: plain batch-1 serving
    max_wait_ms: float = 2.0
    max_body_bytes: int = 10 * 2**20  # larger bodies get 413 before they are read
    max_json_bytes: int = 64 * 2**10  # a 28x28 array is under 16 KiB: larger JSON gets 413 unparsed
    max_pixels: int = 16_000_000  # larger images get 413 after the header is read
    max_queue: int = 256  # rows waiting per model; a full queue answers 503 with Retry-After
    timeout_ms: float = 2000.0  # a request not answered by then gets 504, and its work is skipped
    limit_concurrency: int = 512  # uvicorn's: connections beyond it get 503 at once
    grace_s: float = 10.0  # on SIGTERM: time to answer what is queued and in flight
    decode_concurrency: int = 4  # images decoded at once (Starlette's pool would run 40): bounds memory
    image_budget_s: float = 2.0  # to find the digits in one upload (digits.decode.TIME_BUDGET_S); longer: 422
    body_budget_bytes: int = 64 * 2**20  # request bodies held at once; beyond it 503 before reading
    body_timeout_s: float = 30.0  # a body not received by then gets 408


def load_models(cfg: ServeConfig) -> dict[str, dict]:
    """Every model's runtime, loaded from its sha256-checked artifact; refuses to start otherwise."""
    from digits.bench.backends import create_backend
    from digits.calibrate import temperature_of
    from digits.checkpoint import checkpoint_dir, read_manifest
    from digits.export import read_exports
    from digits.models import list_models, model_info

    loaded = {}
    for name in cfg.models or list_models():
        if name not in list_models():
            raise DigitsError(f"Unknown model {name!r}. Choose from: {', '.join(list_models())}.", exit_code=2)
        backend = create_backend(cfg.backend)
        backend.spinning = False  # idle runtime threads must not spin on the cores the server needs
        try:
            backend.load(name, "cpu", checkpoint=cfg.artifacts, artifacts=cfg.artifacts, threads=cfg.threads)
        except DigitsError as e:
            raise DigitsError(f"digits serve cannot start: {e}") from None
        buckets = backend.compile_buckets(cfg.max_batch) if hasattr(backend, "compile_buckets") else None
        entry = next((e for e in read_exports(checkpoint_dir(cfg.artifacts, name))["formats"].values()
                      if e["file"] == backend.artifact.name), {})
        info = model_info(name)
        loaded[name] = {"backend": backend, "temperature": temperature_of(read_manifest(checkpoint_dir(cfg.artifacts, name))),
                        "info": {"name": name, "params": info.params, "macs_per_image": info.macs, "runtime": cfg.backend,
                                 "artifact": str(backend.artifact), "sha256": entry.get("sha256"),
                                 "accuracy": entry.get("accuracy"), "precision": entry.get("precision", "fp32"),
                                 "batch_buckets": buckets}}
    return loaded


class ServeState:
    """What every route shares: the models and their batchers, metrics, admission."""

    def __init__(self, cfg: ServeConfig, models: dict[str, dict]):
        self.cfg, self.models = cfg, models
        self.metrics = Metrics()
        self.inference = ThreadPoolExecutor(max_workers=1, thread_name_prefix="digits-infer")  # one runtime call at a time
        self.budget = BodyBudget(cfg.body_budget_bytes)
        self.arriving = 0  # requests whose body is in, not yet queued: the batchers wait for them
        self.active = 0  # hot-route requests in the server (any stage): 1 means a request is alone
        self.decode_slots: asyncio.Semaphore | None = None  # made in the server's own event loop, at start-up
        self.draining = threading.Event()  # set on SIGTERM (digits.serve.server): not ready, Connection: close
        self.batchers = {name: self._batcher(name, m) for name, m in models.items()}

    def _batcher(self, name: str, m: dict) -> Batcher:
        backend = m["backend"]
        run = getattr(backend, "numpy_call", None) or (lambda batch: backend(torch.from_numpy(batch)).numpy())
        return Batcher(run, max_batch=self.cfg.max_batch, max_wait_ms=self.cfg.max_wait_ms, executor=self.inference,
                       on_batch=lambda n, s: self.metrics.batch_done(name, n, s),
                       others_coming=lambda: self.arriving > 0, max_queue=self.cfg.max_queue, name=name,
                       on_error=lambda cause: self.metrics.error(name, cause),
                       on_depth=lambda depth: self.metrics.queue_depth(name, depth))

    def check_model(self, model: str) -> None:
        if model != "all" and model not in self.models:
            raise ApiError(404, f"Unknown model {model!r}: this server has {', '.join(self.models)} (or 'all').")

    def v2_model(self, name: str, version: str = VERSION) -> dict:
        if name not in self.models:
            raise ApiError(404, f"Unknown model {name!r}: this server has {', '.join(self.models)}.")
        if version != VERSION:
            raise ApiError(404, f"Model {name!r} has version {VERSION!r} only, not {version!r}.")
        return self.models[name]

    def readiness(self) -> tuple[dict, int]:
        down = [n for n, b in self.batchers.items() if not (b.alive and b.accepting)]
        draining = self.draining.is_set()
        body = {"status": "draining" if draining else "not ready" if down else "ok", "models": list(self.models),
                "not_serving": down, "queue_depth": {n: b.depth() for n, b in self.batchers.items()}}
        return body, 503 if down or draining else 200

    @asynccontextmanager
    async def running(self, _app):
        """The app's lifespan: batchers and decode slots in the server's loop; on shutdown the
        queued work is answered (uvicorn has stopped accepting and waited for open connections)."""
        self.decode_slots = asyncio.Semaphore(self.cfg.decode_concurrency)
        for b in self.batchers.values():
            b.start()
        # Everything loaded so far lives as long as the server: keep it out of the collector's
        # walks. A full collection over it took ~80 ms and stalled every request in flight.
        gc.collect()
        gc.freeze()
        yield
        await asyncio.gather(*(b.stop(self.cfg.grace_s) for b in self.batchers.values()))
        self.inference.shutdown(wait=False)
        self.metrics.close()


class DigitsApp(FastAPI):
    """FastAPI with the hot routes answered before it (``digits.serve.hot``): a prediction
    pays for none of FastAPI's per-request telemetry check, Starlette's error and exception
    layers or the metrics middleware (the hot routes count and time themselves). OpenTelemetry
    instrumentation, if configured, therefore sees every route but these two."""

    hot: HotRoutes | None = None

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and self.hot is not None and (route := self.hot.match(scope)):
            return await self.hot.answer(*route, scope, receive, send)
        await super().__call__(scope, receive, send)


def create_app(cfg: ServeConfig, models: dict[str, dict] | None = None) -> FastAPI:
    _bound_threads(cfg)
    state = ServeState(cfg, models if models is not None else load_models(cfg))
    app = DigitsApp(title="digits", version=__import__("digits").__version__, lifespan=state.running,
                  description="Handwritten-digit recognition on the exported MNIST models.")
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    app.state.serve, app.state.config, app.state.models = state, cfg, list(state.models)
    app.state.metrics, app.state.batchers, app.state.draining = state.metrics, state.batchers, state.draining
    app.state.backends = {n: m["backend"] for n, m in state.models.items()}
    app.exception_handler(ApiError)(_api_error)
    app.exception_handler(Exception)(_unexpected)
    app.include_router(pages_router())
    app.include_router(health_router(state))
    app.include_router(api_router(state))
    add_v2_routes(app, state)
    app.add_middleware(MetricsMiddleware, metrics=state.metrics, draining=state.draining)  # every other route
    app.hot = HotRoutes(state)
    return app


def _bound_threads(cfg: ServeConfig) -> None:
    """One serving process's pools: torch and OpenCV each as many threads as the runtime has,
    not every core (four decodes at once would each start a pool of all of them)."""
    import cv2

    threads = max(1, cfg.threads or 1)
    torch.set_num_threads(threads)
    cv2.setNumThreads(threads)


async def _api_error(_request, e: ApiError):
    headers = {"Retry-After": str(e.retry_after)} if e.retry_after else None
    return JSONResponse({"error": str(e), "status": e.status}, status_code=e.status, headers=headers)


async def _unexpected(_request, e: Exception):  # never a bare 500 page: a JSON error, and the server goes on
    return JSONResponse({"error": f"internal error: {type(e).__name__}", "status": 500}, status_code=500)


def pages_router() -> APIRouter:
    r = APIRouter()

    @r.get("/", include_in_schema=False)
    async def page():
        return FileResponse(STATIC / "index.html")
    return r


def health_router(state: ServeState) -> APIRouter:
    r = APIRouter()

    @r.get("/healthz")
    @r.get("/readyz")  # Kubernetes' readiness probe: every model's batch worker is serving
    async def readyz():
        return JSONResponse(*state.readiness())

    @r.get("/livez")  # liveness: the process and its event loop answer
    async def livez():
        return {"status": "alive"}

    @r.get("/metrics", response_class=PlainTextResponse)
    async def prometheus():
        return PlainTextResponse(state.metrics.text(), media_type=CONTENT_TYPE)
    return r


def api_router(state: ServeState) -> APIRouter:
    r = APIRouter()

    @r.get("/v1/models")
    async def list_models_():
        return {"models": [m["info"] for m in state.models.values()], "max_batch": state.cfg.max_batch,
                "max_wait_ms": state.cfg.max_wait_ms}

    @r.post("/v1/predict", openapi_extra=PREDICT_DOC)
    async def predict_(request: Request, model: str = "all", single: bool = False, unsure_below: float = 0.6):
        """Served by digits.serve.hot before this router; the same handler, for the docs and direct use."""
        status, body, headers = await handle(predict, state, request.scope, request.receive)
        return Response(body, status_code=status, media_type="application/json",
                        headers={k.decode(): v.decode() for k, v in headers})
    return r


ROUTES = ("/", "/v1/predict", "/v1/models", "/healthz", "/readyz", "/livez", "/metrics", "/v2",
          "/v2/health/live", "/v2/health/ready")


def route_label(path: str) -> str:
    """A bounded set of labels: the model's name is not part of a v2 route's label."""
    if path in ROUTES:
        return path
    if path.startswith("/v2/models/"):
        tail = path.rstrip("/").rsplit("/", 1)[-1]
        return f"/v2/models/{{name}}/{tail}" if tail in ("infer", "ready") else "/v2/models/{name}"
    return "other"


class MetricsMiddleware:
    """Counts every response by route and status, and times it: plain ASGI, because
    FastAPI's ``@app.middleware("http")`` costs a task and a stream per request."""

    def __init__(self, app, metrics: Metrics, draining: threading.Event):
        self.app, self.metrics, self.draining = app, metrics, draining

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        t0, status = time.perf_counter(), [500]

        async def sending(message):
            if message["type"] == "http.response.start":
                status[0] = message["status"]
                if self.draining.is_set():  # shutting down: the client reconnects elsewhere, not on this socket
                    message = {**message, "headers": [*message.get("headers", []), (b"connection", b"close")]}
            await send(message)
        try:
            await self.app(scope, receive, sending)
        finally:
            self.metrics.request(route_label(scope["path"]), status[0], time.perf_counter() - t0)
