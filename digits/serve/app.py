"""The ASGI app behind ``digits serve``: a drawing page and a JSON inference API.

    GET  /              the drawing page (plain HTML/CSS/JS shipped in digits/serve/static)
    POST /v1/predict    an image (multipart or raw body) or {"image": 28x28 array} -> predictions
    GET  /v1/models     names, params, accuracy, artifact sha256
    GET  /healthz       liveness
    GET  /metrics       Prometheus text: requests, latency, batch sizes

Every model's artifact is loaded, sha256-checked, at start-up. Images go through
``digits.preprocess``, exactly as ``digits predict`` does; a 28x28 array is taken as an
input already in MNIST's format (white digit on black, 0..1 or 0..255) and only
normalized. Bad input gets a 4xx JSON error and the server goes on.
"""

from __future__ import annotations

import asyncio
import gc
import json
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

from digits.errors import DigitsError
from digits.serve.batcher import Batcher
from digits.serve.metrics import Metrics

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
    max_pixels: int = 16_000_000  # larger images get 413 after the header is read


class ApiError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


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
        entry = next((e for e in read_exports(checkpoint_dir(cfg.artifacts, name))["formats"].values()
                      if e["file"] == backend.artifact.name), {})
        info = model_info(name)
        loaded[name] = {"backend": backend, "temperature": temperature_of(read_manifest(checkpoint_dir(cfg.artifacts, name))),
                        "info": {
            "name": name, "params": info.params, "macs_per_image": info.macs, "runtime": cfg.backend,
            "artifact": str(backend.artifact), "sha256": entry.get("sha256"), "accuracy": entry.get("accuracy"),
            "precision": entry.get("precision", "fp32")}}
    return loaded


def create_app(cfg: ServeConfig, models: dict[str, dict] | None = None) -> FastAPI:
    models = models if models is not None else load_models(cfg)
    metrics = Metrics()
    inference = ThreadPoolExecutor(max_workers=1, thread_name_prefix="digits-infer")  # one runtime call at a time
    batchers: dict[str, Batcher] = {}
    arriving = [0]  # requests received but not yet queued (body, parsing, preprocessing)
    for name, m in models.items():
        def run(batch: np.ndarray, backend=m["backend"]) -> np.ndarray:
            return backend(torch.from_numpy(batch)).numpy()
        batchers[name] = Batcher(run, max_batch=cfg.max_batch, max_wait_ms=cfg.max_wait_ms, executor=inference,
                                 on_batch=lambda n, s, name=name: metrics.batch_done(name, n, s),
                                 others_coming=lambda: arriving[0] > 0)

    @asynccontextmanager
    async def lifespan(app):
        for b in batchers.values():
            b.start()
        # Everything loaded so far (torch, onnxruntime, the app) lives as long as the
        # server: keep it out of the collector's walks. A full collection over it took
        # ~80 ms and stalled every request in flight (the p99 of the load test).
        gc.collect()
        gc.freeze()
        yield
        for b in batchers.values():
            await b.stop()
        inference.shutdown(wait=False)

    app = FastAPI(title="digits", version=__import__("digits").__version__, lifespan=lifespan,
                  description="Handwritten-digit recognition on the exported MNIST models.")
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    app.state.metrics, app.state.config, app.state.models = metrics, cfg, list(models)

    app.add_middleware(MetricsMiddleware, metrics=metrics)

    @app.exception_handler(ApiError)
    async def api_error(_request, e: ApiError):
        return JSONResponse({"error": str(e), "status": e.status}, status_code=e.status)

    @app.exception_handler(Exception)
    async def unexpected(_request, e: Exception):  # never a bare 500 page: a JSON error, and the server goes on
        return JSONResponse({"error": f"internal error: {type(e).__name__}", "status": 500}, status_code=500)

    @app.get("/", include_in_schema=False)
    async def page():
        return FileResponse(STATIC / "index.html")

    @app.get("/healthz")
    async def healthz():
        return {"status": "ok", "models": list(models)}

    @app.get("/v1/models")
    async def list_models_():
        return {"models": [m["info"] for m in models.values()], "max_batch": cfg.max_batch,
                "max_wait_ms": cfg.max_wait_ms}

    @app.get("/metrics", response_class=PlainTextResponse)
    async def prometheus():
        return PlainTextResponse(metrics.text(), media_type="text/plain; version=0.0.4")

    @app.post("/v1/predict", openapi_extra=PREDICT_DOC)
    async def predict(request: Request, model: str = "all", single: bool = False, unsure_below: float = 0.6):
        arriving[0] += 1  # the batchers wait for more only while others are on their way
        try:
            return await _predict(request, model, single, unsure_below)
        finally:
            arriving[0] -= 1

    def check_model(model: str) -> None:
        if model != "all" and model not in models:
            raise ApiError(404, f"Unknown model {model!r}: this server has {', '.join(models)} (or 'all').")

    async def _predict(request: Request, model: str, single: bool, unsure_below: float):
        check_model(model)  # before reading a body that would be wasted
        body = await read_body(request, cfg.max_body_bytes)
        kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if kind == "application/json":
            payload = _json(body)
            model = payload.get("model", model) if isinstance(payload, dict) else model
            x, seen = array_input(payload.get("image") if isinstance(payload, dict) else payload)
            found = [(None, x, seen)]
        else:
            if kind == "multipart/form-data":
                body = await multipart_file(request, body)
            found = await run_in_threadpool(image_input, body, cfg.max_pixels, single)
        check_model(model)  # a JSON body may name the model too
        names = list(models) if model == "all" else [model]

        async def one(name: str) -> dict:
            t0 = time.perf_counter()
            try:
                every = await asyncio.gather(*(batchers[name].submit(x) for _, x, _ in found))
            except Exception as e:  # noqa: BLE001
                raise ApiError(503, f"{name} failed on this input: {e}") from None
            digits = []
            for (box, _, _), logits in zip(found, every, strict=True):
                z = logits / models[name].get("temperature", 1.0)  # calibrated (digits.calibrate)
                probs = np.exp(z - z.max())
                probs = probs / probs.sum()
                digits.append({"box": box, "prediction": int(probs.argmax()),
                               "probabilities": [round(float(p), 6) for p in probs],
                               "unsure": bool(probs.max() < unsure_below)})
            answer = {"model": name, "number": "".join("?" if d["unsure"] else str(d["prediction"]) for d in digits),
                      "unsure": any(d["unsure"] for d in digits), "digits": digits,
                      "latency_ms": round((time.perf_counter() - t0) * 1e3, 3)}
            if len(digits) == 1:  # one digit: its answer at the top level too, as before numbers were read
                answer.update(prediction=digits[0]["prediction"], probabilities=digits[0]["probabilities"])
            return answer
        seen = found[0][2]
        arriving[0] -= 1  # queued now: no longer a reason for the batchers to wait
        try:
            results = await asyncio.gather(*(one(n) for n in names))  # every model's queue at once
        finally:
            arriving[0] += 1
        answer = results[0] if model != "all" else {"results": results}
        if kind != "application/json":  # an array is its own 28x28 image; an upload shows what preprocessing made
            answer["image28"] = np.round(seen.astype(np.float64), 3).tolist()
        # json.dumps directly: FastAPI's encoder walks every float and cost ~1 ms a response here
        return Response(json.dumps(answer, separators=(",", ":")), media_type="application/json")

    return app


ROUTES = ("/", "/v1/predict", "/v1/models", "/healthz", "/metrics")


class MetricsMiddleware:
    """Counts every response by route and status, and times it: plain ASGI, because
    FastAPI's ``@app.middleware("http")`` costs a task and a stream per request."""

    def __init__(self, app, metrics: Metrics):
        self.app, self.metrics = app, metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        t0, status = time.perf_counter(), [500]

        async def sending(message):
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)
        try:
            await self.app(scope, receive, sending)
        finally:
            route = scope["path"] if scope["path"] in ROUTES else "other"
            self.metrics.request(route, status[0], time.perf_counter() - t0)


PREDICT_DOC = {
    "requestBody": {"required": True, "content": {
        "image/png": {"schema": {"type": "string", "format": "binary"}},
        "multipart/form-data": {"schema": {"type": "object", "properties": {"file": {"type": "string",
                                                                                      "format": "binary"}}}},
        "application/json": {"schema": {"type": "object", "properties": {
            "image": {"type": "array", "items": {"type": "array", "items": {"type": "number"}},
                      "description": "28x28, white digit on black, 0..1 or 0..255"},
            "model": {"type": "string"}}}}}},
    "description": "Any image `digits predict` reads, as a raw body or a multipart `file` field, or a JSON "
                   "28x28 array. An image is read as a number written left to right (`?single=true`: one digit). "
                   "`?model=lenet5` answers {model, number, unsure, digits: [{box, prediction, probabilities, "
                   "unsure}], latency_ms}, plus prediction and probabilities when one digit was read; `all` (the "
                   "default) answers {results: [...]}. Probabilities are calibrated (temperature scaling); a digit "
                   "under `?unsure_below=` (0.6) is unsure, a '?' in number. An image upload also gets image28, the "
                   "28x28 image the models saw (its first digit).",
}


async def read_body(request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise ApiError(413, f"The body is {int(declared):,} bytes; the limit is {limit:,} bytes.")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise ApiError(413, f"The body is over the {limit:,}-byte limit.")
        chunks.append(chunk)
    body = b"".join(chunks)
    if not body:
        raise ApiError(400, "The body is empty: send an image, or JSON {\"image\": a 28x28 array}.")
    return body


async def multipart_file(request: Request, body: bytes) -> bytes:
    async def replay():
        return {"type": "http.request", "body": body, "more_body": False}
    try:
        form = await Request(request.scope, replay).form()
    except Exception as e:  # noqa: BLE001
        raise ApiError(400, f"The multipart body cannot be parsed ({e}).") from None
    files = [v for v in form.values() if hasattr(v, "read")]
    if not files:
        raise ApiError(400, "The multipart body has no file field (send the image as 'file').")
    return await files[0].read()


def _json(body: bytes):
    try:
        return json.loads(body)
    except ValueError:
        raise ApiError(400, "The body is not valid JSON.") from None


def array_input(image) -> tuple[np.ndarray, np.ndarray]:
    """A 28x28 array in MNIST's format -> (normalized [1,28,28], the 28x28 image seen)."""
    from digits.preprocess import normalize28

    try:
        a = np.asarray(image, dtype=np.float32)
    except (TypeError, ValueError):
        raise ApiError(422, "'image' must be a 28x28 array of numbers.") from None
    if a.shape != (28, 28) or not np.isfinite(a).all():
        raise ApiError(422, f"'image' must be a 28x28 array of finite numbers; got shape {list(a.shape)}.")
    if a.max() > 1.0:
        a = a / 255.0
    a = np.clip(a, 0.0, 1.0)
    return normalize28(a), a


def image_input(body: bytes, max_pixels: int, single: bool = False) -> list[tuple[list[int], np.ndarray, np.ndarray]]:
    """Image bytes -> ``digits.preprocess`` (as `digits predict`) -> every digit found, left to
    right: ``[(box, normalized [1,28,28], 28x28 seen)]``."""
    from digits.preprocess import ImageError, TooLarge, load_image, normalize28, preprocess_all

    try:
        digits, _ = preprocess_all(*load_image(body, max_pixels=max_pixels), single=single)
    except TooLarge as e:
        raise ApiError(413, f"The image {e}.") from None
    except ImageError as e:
        raise ApiError(422, f"The upload cannot be used: {e}.") from None
    return [(list(box), normalize28(img28), img28) for box, img28 in digits]
