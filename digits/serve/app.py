"""The ASGI app behind ``digits serve``: a drawing page and a JSON inference API.

    GET  /              the drawing page (plain HTML/CSS/JS shipped in digits/serve/static)
    POST /v1/predict    an image (multipart or raw body) or {"image": 28x28 array} -> predictions
    GET  /v1/models     names, params, accuracy, artifact sha256
    GET  /readyz        readiness (every batch worker serving, not draining); /healthz the same
    GET  /livez         liveness
    GET  /metrics       Prometheus text: requests, latency, batch sizes, failed batches
    /v2/...             the Open Inference Protocol (KServe v2, Triton's HTTP API): digits.serve.v2

Admission control, supervision and the batching live in ``digits.serve.batcher``, request
parsing in ``digits.serve.inputs``, the graceful shutdown in ``digits.serve.server``.

Every model's artifact is loaded, sha256-checked, at start-up. Images go through
``digits.preprocess``, exactly as ``digits predict`` does; a 28x28 array is taken as an
input already in MNIST's format (white digit on black, 0..1 or 0..255) and only
normalized. Bad input gets a 4xx JSON error and the server goes on.
"""

from __future__ import annotations

import asyncio
import gc
import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse, PlainTextResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.concurrency import run_in_threadpool

from digits.calibrate import UNSURE_BELOW, read_digits
from digits.errors import DigitsError
from digits.serve.batcher import BatchFailed, Batcher, Overloaded, TimedOut, Unavailable
from digits.preprocess import normalize28
from digits.serve.inputs import PREDICT_DOC, ApiError, image_input, json_input, multipart_file, read_body
from digits.serve.metrics import CONTENT_TYPE, Metrics
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
    max_queue: int = 256  # per model; a full queue answers 503 with Retry-After
    timeout_ms: float = 2000.0  # a request not answered by then gets 504, and its work is skipped
    limit_concurrency: int = 512  # uvicorn's: connections beyond it get 503 at once
    grace_s: float = 10.0  # on SIGTERM: time to answer what is queued and in flight
    decode_concurrency: int = 4  # images decoded at once (Starlette's pool would run 40): bounds memory
    image_budget_s: float = 2.0  # to find the digits in one upload (digits.decode.TIME_BUDGET_S); longer: 422


def load_models(cfg: ServeConfig) -> dict[str, dict]:
    """Every model's runtime, loaded from its sha256-checked artifact; refuses to start otherwise."""
    from digits.bench.backends import create_backend
    from digits.calibrate import temperature_of
    from digits.checkpoint import checkpoint_dir, read_manifest
    from digits.export import read_exports
    from digits.models import list_models, model_info

    names = cfg.models or list_models()
    loaded = {}
    for name in names:
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
                        "info": {
            "name": name, "params": info.params, "macs_per_image": info.macs, "runtime": cfg.backend,
            "artifact": str(backend.artifact), "sha256": entry.get("sha256"), "accuracy": entry.get("accuracy"),
            "precision": entry.get("precision", "fp32"), "batch_buckets": buckets}}
    return loaded


def create_app(cfg: ServeConfig, models: dict[str, dict] | None = None) -> FastAPI:
    models = models if models is not None else load_models(cfg)
    batchers: dict[str, Batcher] = {}
    metrics = Metrics(queue_depth=lambda: {n: b.depth() for n, b in batchers.items()})
    inference = ThreadPoolExecutor(max_workers=1, thread_name_prefix="digits-infer")  # one runtime call at a time
    arriving = [0]  # requests received but not yet queued (body, parsing, preprocessing)
    decode_slots: list[asyncio.Semaphore] = []  # made in the server's own event loop, at start-up
    for name, m in models.items():
        def run(batch: np.ndarray, backend=m["backend"]) -> np.ndarray:
            return backend(torch.from_numpy(batch)).numpy()
        batchers[name] = Batcher(run, max_batch=cfg.max_batch, max_wait_ms=cfg.max_wait_ms, executor=inference,
                                 on_batch=lambda n, s, name=name: metrics.batch_done(name, n, s),
                                 others_coming=lambda: arriving[0] > 0, max_queue=cfg.max_queue, name=name,
                                 on_error=lambda cause, name=name: metrics.error(name, cause))

    @asynccontextmanager
    async def lifespan(app):
        decode_slots[:] = [asyncio.Semaphore(cfg.decode_concurrency)]
        for b in batchers.values():
            b.start()
        # Everything loaded so far (torch, onnxruntime, the app) lives as long as the
        # server: keep it out of the collector's walks. A full collection over it took
        # ~80 ms and stalled every request in flight (the p99 of the load test).
        gc.collect()
        gc.freeze()
        yield
        # uvicorn has stopped accepting and waited for open connections (--grace-s); answer
        # whatever is still queued, then stop
        await asyncio.gather(*(b.stop(cfg.grace_s) for b in batchers.values()))
        inference.shutdown(wait=False)
        metrics.close()

    app = FastAPI(title="digits", version=__import__("digits").__version__, lifespan=lifespan,
                  description="Handwritten-digit recognition on the exported MNIST models.")
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    app.state.metrics, app.state.config, app.state.models = metrics, cfg, list(models)
    app.state.batchers, app.state.backends = batchers, {n: m["backend"] for n, m in models.items()}

    app.state.draining = threading.Event()  # set on SIGTERM (digits.serve.server): not ready, Connection: close
    app.add_middleware(MetricsMiddleware, metrics=metrics, draining=app.state.draining)

    @app.exception_handler(ApiError)
    async def api_error(_request, e: ApiError):
        headers = {"Retry-After": str(e.retry_after)} if e.retry_after else None
        return JSONResponse({"error": str(e), "status": e.status}, status_code=e.status, headers=headers)

    @app.exception_handler(Exception)
    async def unexpected(_request, e: Exception):  # never a bare 500 page: a JSON error, and the server goes on
        return JSONResponse({"error": f"internal error: {type(e).__name__}", "status": 500}, status_code=500)

    @app.get("/", include_in_schema=False)
    async def page():
        return FileResponse(STATIC / "index.html")

    def readiness() -> tuple[dict, int]:
        down = [n for n, b in batchers.items() if not (b.alive and b.accepting)]
        draining = app.state.draining.is_set()
        status = "draining" if draining else "not ready" if down else "ok"
        body = {"status": status, "models": list(models), "not_serving": down,
                "queue_depth": {n: b.depth() for n, b in batchers.items()}}
        return body, 503 if down or draining else 200

    @app.get("/healthz")
    async def healthz():
        return JSONResponse(*readiness())

    @app.get("/readyz")  # Kubernetes' readiness probe: every model's batch worker is serving
    async def readyz():
        return JSONResponse(*readiness())

    @app.get("/livez")  # liveness: the process and its event loop answer
    async def livez():
        return {"status": "alive"}

    @app.get("/v1/models")
    async def list_models_():
        return {"models": [m["info"] for m in models.values()], "max_batch": cfg.max_batch,
                "max_wait_ms": cfg.max_wait_ms}

    @app.get("/metrics", response_class=PlainTextResponse)
    async def prometheus():
        return PlainTextResponse(metrics.text(), media_type=CONTENT_TYPE)

    @app.post("/v1/predict", openapi_extra=PREDICT_DOC)
    async def predict(request: Request, model: str = "all", single: bool = False, unsure_below: float = UNSURE_BELOW):
        arriving[0] += 1  # the batchers wait for more only while others are on their way
        try:
            return await _predict(request, model, single, unsure_below)
        finally:
            arriving[0] -= 1

    def check_model(model: str) -> None:
        if model != "all" and model not in models:
            raise ApiError(404, f"Unknown model {model!r}: this server has {', '.join(models)} (or 'all').")

    async def answered(name: str, xs: list[np.ndarray]) -> list[np.ndarray]:
        """Each input's logits, or the HTTP answer admission control or supervision gives."""
        try:
            return await asyncio.gather(*(batchers[name].submit(x, cfg.timeout_ms / 1e3) for x in xs))
        except Overloaded:
            raise ApiError(503, f"{name} is busy: its queue is full. Retry shortly.", retry_after=1) from None
        except TimedOut:
            raise ApiError(504, f"{name} did not answer within {cfg.timeout_ms:g} ms.") from None
        except Unavailable:
            raise ApiError(503, f"{name} is not serving (the server is stopping, or not ready).", retry_after=1) from None
        except BatchFailed:
            raise ApiError(500, f"{name} failed on this request's batch; the cause is in the server log.") from None

    add_v2_routes(app, models, answered, lambda: readiness()[1] == 200, arriving)

    async def _predict(request: Request, model: str, single: bool, unsure_below: float):
        check_model(model)  # before reading a body that would be wasted
        kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
        body = await read_body(request, cfg.max_json_bytes if kind == "application/json" else cfg.max_body_bytes)
        if kind == "application/json":
            named, found = json_input(body)
            model = named or model
        else:
            if kind == "multipart/form-data":
                body = await multipart_file(request, body)
            async with decode_slots[0]:  # a few at a time: each decode holds a photo's pixels for a moment
                found = await run_in_threadpool(image_input, body, cfg.max_pixels, single, cfg.image_budget_s)
            del body  # the upload's bytes are not needed past decoding
        check_model(model)  # a JSON body may name the model too
        names = list(models) if model == "all" else [model]

        async def one(name: str) -> tuple[dict, np.ndarray]:  # the answer, and the first 28x28 read
            t0 = time.perf_counter()
            every = await answered(name, inputs)
            # calibrated by the checkpoint's temperature, as `digits predict` reads them (digits.calibrate)
            temperature = models[name].get("temperature", 1.0)
            boxes, logits, imgs = found.read(np.stack(every), temperature)
            read = read_digits(boxes, logits, temperature, unsure_below)
            return {"model": name, **read, "latency_ms": round((time.perf_counter() - t0) * 1e3, 3)}, imgs[0]
        inputs = [normalize28(img) for img in found.images()]
        arriving[0] -= 1  # queued now: no longer a reason for the batchers to wait
        try:
            both = await asyncio.gather(*(one(n) for n in names))  # every model's queue at once
        finally:
            arriving[0] += 1
        results = [r for r, _ in both]
        answer = results[0] if model != "all" else {"results": results}
        if kind != "application/json":  # an array is its own 28x28 image; an upload shows what preprocessing made
            answer["image28"] = np.round(both[0][1].astype(np.float64), 3).tolist()
        # json.dumps directly: FastAPI's encoder walks every float and cost ~1 ms a response here
        return Response(json.dumps(answer, separators=(",", ":")), media_type="application/json")

    return app


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
            route = route_label(scope["path"])
            self.metrics.request(route, status[0], time.perf_counter() - t0)
