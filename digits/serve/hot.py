"""The two hot routes, as plain ASGI: ``POST /v1/predict`` and ``POST /v2/models/{name}/infer``.

Every request to them pays for each layer above the bare work (read, parse, normalise, one
runtime call, answer): ``scripts/serve_floor.py`` is that bare work, and bench_serve.py sets
every figure against it. So these routes skip FastAPI's routing, dependency injection and
response validation (a middleware answers them before the router; the FastAPI routes of the
same paths call the same handlers, for the OpenAPI docs and any direct use), parse with
orjson and a strict parser of our own, and answer with pre-serialised bytes. Every limit of
the server still holds: admission before the body is read (digits.serve.admission), its
size and deadline, the decode slots, bounded queues, per-request deadlines, and the drain.
"""

from __future__ import annotations

import asyncio
import logging
import time
from urllib.parse import parse_qsl

import numpy as np
import orjson
from starlette.concurrency import run_in_threadpool

from digits.calibrate import UNSURE_BELOW, read_digits
from digits.preprocess import normalize28
from digits.serve.admission import admitted, guarded, header, multipart_file, read_body
from digits.serve.batcher import BatchFailed, Overloaded, TimedOut, Unavailable
from digits.serve.inputs import ApiError, image_input, json_input
from digits.serve.v2 import VERSION, infer_response, parse_infer

log = logging.getLogger("digits.serve")
JSON = b"application/json"


class HotRoutes:
    """The hot routes, answered before FastAPI sees the request (``DigitsApp.__call__``):
    counted and timed in the metrics, ``Connection: close`` while draining."""

    def __init__(self, state):
        self.state = state

    @staticmethod
    def match(scope) -> tuple | None:
        """``(handler, metrics label)`` for a hot route, else None."""
        if scope["method"] != "POST":
            return None
        path = scope["path"]
        if path == "/v1/predict":
            return predict, path
        if path.startswith("/v2/models/") and path.endswith("/infer"):
            return v2_infer, "/v2/models/{name}/infer"
        return None

    async def answer(self, route, label: str, scope, receive, send) -> None:
        t0 = time.perf_counter()
        self.state.active += 1
        try:
            status, body, headers = await handle(route, self.state, scope, receive)
        finally:
            self.state.active -= 1
        if self.state.draining.is_set():  # shutting down: the client reconnects elsewhere, not on this socket
            headers = [*headers, (b"connection", b"close")]
        await respond(send, status, body, headers)
        self.state.metrics.request(label, status, time.perf_counter() - t0)


async def handle(route, state, scope, receive) -> tuple[int, bytes, list]:
    """``(status, body, headers)`` of ``route``, every error a JSON answer (never a 500 page)."""
    try:
        return await route(state, scope, receive)
    except ApiError as e:
        headers = [(b"retry-after", str(e.retry_after).encode())] if e.retry_after else []
        return e.status, orjson.dumps({"error": str(e), "status": e.status}), headers
    except Exception as e:  # noqa: BLE001 - a generic 500, the details in the log; the server goes on
        log.exception("%s failed: %r", scope["path"], e)
        return 500, orjson.dumps({"error": f"internal error: {type(e).__name__}", "status": 500}), []


async def respond(send, status: int, body: bytes, headers: list, content_type: bytes = JSON) -> None:
    if headers and headers[0][0] == b"content-type":  # a v2 binary answer names its own type
        content_type, headers = headers[0][1], headers[1:]
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", content_type), (b"content-length", str(len(body)).encode()), *headers]})
    await send({"type": "http.response.body", "body": body})


# --------------------------------------------------------------------------- /v1/predict
def _query(scope) -> tuple[str, bool, float]:
    q = dict(parse_qsl(scope["query_string"].decode("latin-1")))
    try:
        unsure = float(q.get("unsure_below", UNSURE_BELOW))
    except ValueError:
        raise ApiError(422, f"unsure_below must be a number, not {q['unsure_below']!r}.") from None
    single = q.get("single", "false").lower()
    if single not in ("true", "false", "1", "0", "yes", "no", "on", "off"):
        raise ApiError(422, f"single must be true or false, not {q['single']!r}.")
    return q.get("model", "all"), single in ("true", "1", "yes", "on"), unsure


def _kind(scope) -> str:
    """The request's media type, without parameters: ``multipart/form-data``, ``application/json``..."""
    return (header(scope, b"content-type") or "").split(";")[0].strip().lower()


async def _read(state, scope, receive, limit: int, kind: str) -> bytes:
    """The body under its limit and deadline (admission is the caller's ``admitted``)."""
    if (enc := header(scope, b"content-encoding")) not in (None, "identity"):
        raise ApiError(415, f"Compressed request bodies ({enc}) are not accepted; send them uncompressed.")
    rx = guarded(receive, limit, state.cfg.body_timeout_s)
    return await (multipart_file(scope, rx) if kind == "multipart/form-data" else read_body(rx))


async def predict(state, scope, receive) -> tuple[int, bytes, list]:
    cfg = state.cfg
    model, single, unsure_below = _query(scope)
    state.check_model(model)  # before reading a body that would be wasted
    kind = _kind(scope)
    is_json = kind == "application/json"
    limit = cfg.max_json_bytes if is_json else cfg.max_body_bytes
    async with admitted(scope, state.budget, limit):
        body = await _read(state, scope, receive, limit, kind)
        state.arriving += 1  # its body in hand: on its way to the queue (the batchers wait for it)
        try:
            if is_json:
                named, found = json_input(body)
                model = named or model
            else:
                async with state.decode_slots:  # a few at a time: each decode holds a photo's pixels
                    found = await run_in_threadpool(image_input, body, cfg.max_pixels, single, cfg.image_budget_s)
            del body  # the upload's bytes are not needed past decoding
            state.check_model(model)  # a JSON body may name the model too
            names = list(state.models) if model == "all" else [model]
            rows = np.stack([normalize28(img) for img in found.images()])
            t0 = time.perf_counter()
            await others_in(state)
            futures = [(n, queued(state, n, rows)) for n in names]  # every model's queue at once
        finally:
            state.arriving -= 1  # queued now (or refused): no longer a reason for the batchers to wait
    results, first28 = [], None
    for name, future in futures:
        logits = await answered(name, future, cfg.timeout_ms)
        temperature = state.models[name].get("temperature", 1.0)
        boxes, chosen, imgs = found.read(logits, temperature)  # calibrated, as `digits predict` reads them
        first28 = imgs[0] if first28 is None else first28
        results.append({"model": name, **read_digits(boxes, chosen, temperature, unsure_below),
                        "latency_ms": round((time.perf_counter() - t0) * 1e3, 3)})
    answer = results[0] if model != "all" else {"results": results}
    if not is_json:  # an array is its own 28x28 image; an upload shows what preprocessing made
        answer["image28"] = np.round(first28.astype(np.float64), 3).tolist()
    return 200, orjson.dumps(answer), []


async def others_in(state) -> None:
    """Yield once before queueing: a request whose body and parsing needed no wait would
    otherwise run from its first byte to its answer without letting the requests that arrived
    with it start, see itself alone (``state.active`` 1) and run inline, one at a time, under
    any load. After the yield, every request ready to run has been counted (1 us at c=1)."""
    await asyncio.sleep(0)


def queued(state, name: str, rows: np.ndarray) -> asyncio.Future:
    """``rows`` on ``name``'s batcher now. A request alone in the server may be run at once on
    the event loop; with others in flight it joins the queue, so that under load the batches
    form while the inference thread runs the previous one on the other core."""
    try:
        return state.batchers[name].enqueue(rows, state.cfg.timeout_ms / 1e3, others=state.active - 1)
    except Overloaded:
        raise ApiError(503, f"{name} is busy: its queue is full. Retry shortly.", retry_after=1) from None
    except Unavailable:
        raise ApiError(503, f"{name} is not serving (the server is stopping, or not ready).", retry_after=1) from None


async def answered(name: str, future: asyncio.Future, timeout_ms: float) -> np.ndarray:
    """The rows' logits, or the HTTP answer the batcher's supervision gives."""
    try:
        return await future
    except TimedOut:
        raise ApiError(504, f"{name} did not answer within {timeout_ms:g} ms.") from None
    except Unavailable:
        raise ApiError(503, f"{name} is not serving (the server is stopping, or not ready).", retry_after=1) from None
    except BatchFailed:
        raise ApiError(500, f"{name} failed on this request's batch; the cause is in the server log.") from None


# --------------------------------------------------------------------------- v2 infer
SMALL_JSON = 64 * 2**10  # tensors this small are parsed on the event loop (15 us); larger ones under the decode slots


async def v2_infer(state, scope, receive) -> tuple[int, bytes, list]:
    cfg = state.cfg
    parts = scope["path"].strip("/").split("/")  # v2 models NAME [versions V] infer
    name, version = parts[2], (parts[4] if len(parts) == 6 and parts[3] == "versions" else VERSION)
    if len(parts) not in (4, 6) or (len(parts) == 6 and parts[3] != "versions"):
        raise ApiError(404, f"Not a v2 inference path: {scope['path']}.")
    m = state.v2_model(name, version)
    async with admitted(scope, state.budget, cfg.max_body_bytes):
        body = await _read(state, scope, receive, cfg.max_body_bytes, _kind(scope))
        state.arriving += 1
        try:
            split = header(scope, b"inference-header-content-length")
            if len(body) <= SMALL_JSON:
                req, x = parse_infer(body, split, cfg.max_queue)
            else:  # a large JSON tensor costs ~30 bytes a value to parse: bounded like an image decode
                async with state.decode_slots:
                    req, x = await run_in_threadpool(parse_infer, body, split, cfg.max_queue)
            del body
            await others_in(state)
            future = queued(state, name, x)
        finally:
            state.arriving -= 1
    logits = await answered(name, future, cfg.timeout_ms)
    return infer_response(name, req, logits, m.get("temperature", 1.0))
