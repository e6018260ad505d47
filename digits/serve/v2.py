"""The Open Inference Protocol (KServe v2, as Triton speaks it), on the same batchers as /v1.

    GET  /v2                              server metadata
    GET  /v2/health/live, /v2/health/ready
    GET  /v2/models/{name}[/versions/1]   model metadata: tensor names, datatypes, shapes
    GET  /v2/models/{name}[/versions/1]/ready
    POST /v2/models/{name}[/versions/1]/infer

The input tensor is the exported model's own: ``input``, FP32 ``[N,1,28,28]``, already
normalized with MNIST's mean and std (``digits.data.MEAN``/``STD``), exactly what the ONNX
file takes; no image preprocessing happens here. Outputs: ``logits`` FP32 ``[N,10]`` and
``probabilities`` FP32 ``[N,10]`` (softmax of the logits over the checkpoint's calibration
temperature, as /v1 reports). Both the JSON tensor format and Triton's binary tensor
extension (``Inference-Header-Content-Length``, ``binary_data_size``, ``binary_data``,
``binary_data_output``) are read and written, so tritonclient works with its defaults.
Each of the N rows joins the model's dynamic batch like one /v1 request.
"""

from __future__ import annotations

import json

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool

from digits.calibrate import calibrated
from digits.serve.inputs import ApiError, read_body

INPUT, OUTPUTS, VERSION = "input", ("logits", "probabilities"), "1"
SHAPE = (1, 28, 28)
HEADER = "inference-header-content-length"


def tensor_meta(name: str, shape: list[int]) -> dict:
    return {"name": name, "datatype": "FP32", "shape": shape}


def parse_infer(body: bytes, header_length: str | None, max_rows: int) -> tuple[dict, np.ndarray]:
    """A v2 infer request (JSON, or JSON header + binary tensors) -> (request, input [N,1,28,28])."""
    split = len(body)
    if header_length is not None:
        if not header_length.isdigit() or int(header_length) > len(body):
            raise ApiError(400, f"Inference-Header-Content-Length {header_length!r} does not fit a "
                                f"{len(body)}-byte body.")
        split = int(header_length)
    try:
        request = json.loads(body[:split])
    except ValueError:
        raise ApiError(400, "The inference request header is not valid JSON.") from None
    inputs = request.get("inputs") if isinstance(request, dict) else None
    if not isinstance(inputs, list) or len(inputs) != 1 or not isinstance(inputs[0], dict):
        raise ApiError(400, f"The request must have 'inputs' with one tensor, {INPUT!r} FP32 [N,1,28,28].")
    tensor = inputs[0]
    if tensor.get("name") != INPUT or tensor.get("datatype") != "FP32":
        raise ApiError(400, f"The input tensor must be named {INPUT!r} with datatype FP32; got "
                            f"{tensor.get('name')!r} {tensor.get('datatype')!r}.")
    shape = tensor.get("shape")
    if (not isinstance(shape, list) or len(shape) != 4 or tuple(shape[1:]) != SHAPE
            or not isinstance(shape[0], int) or not 1 <= shape[0] <= max_rows):
        raise ApiError(400, f"The input shape must be [N,1,28,28] with 1 <= N <= {max_rows}; got {shape}.")
    size = (tensor.get("parameters") or {}).get("binary_data_size")
    try:
        if size is not None:  # Triton's binary tensor extension: raw little-endian bytes after the header
            raw = body[split:split + int(size)]
            if int(size) != shape[0] * 784 * 4 or len(raw) != int(size):
                raise ValueError(f"binary_data_size {size} for shape {shape} (a body of {len(body)} bytes)")
            x = np.frombuffer(raw, dtype="<f4").reshape(shape)
        else:
            x = np.asarray(tensor.get("data"), dtype=np.float32).reshape(shape)  # flat or nested, row-major
    except (TypeError, ValueError) as e:
        raise ApiError(400, f"The input data does not make an FP32 tensor of shape {shape}: {e}.") from None
    if not np.isfinite(x).all():
        raise ApiError(400, "The input tensor has NaN or infinite values.")
    return request, x.astype(np.float32, copy=True)


def infer_response(name: str, request: dict, logits: np.ndarray, temperature: float) -> Response:
    values = {"logits": logits.astype(np.float32), "probabilities": calibrated(logits, temperature).numpy()}
    params = request.get("parameters") or {}
    asked = request.get("outputs") or [{"name": n} for n in OUTPUTS]
    outputs, blobs = [], []
    for out in asked:
        if not isinstance(out, dict) or out.get("name") not in values:
            raise ApiError(400, f"Unknown output {out.get('name') if isinstance(out, dict) else out!r}: this model "
                                f"has {', '.join(OUTPUTS)}.")
        a = values[out["name"]]
        meta = tensor_meta(out["name"], list(a.shape))
        if (out.get("parameters") or {}).get("binary_data", params.get("binary_data_output", False)):
            blobs.append(a.astype("<f4").tobytes())
            meta["parameters"] = {"binary_data_size": len(blobs[-1])}
        else:
            meta["data"] = a.ravel().tolist()
        outputs.append(meta)
    head = {"model_name": name, "model_version": VERSION, "outputs": outputs}
    if "id" in request:
        head["id"] = request["id"]
    text = json.dumps(head, separators=(",", ":")).encode()
    if not blobs:
        return Response(text, media_type="application/json")
    return Response(text + b"".join(blobs), media_type="application/octet-stream",
                    headers={"Inference-Header-Content-Length": str(len(text))})


def add_routes(app: FastAPI, models: dict[str, dict], answered, ready, arriving: list[int]) -> None:
    """Mount the v2 endpoints. ``answered(name, rows)`` queues rows on the model's batcher
    and returns their logits (or raises the ApiError admission control gives); ``ready()``
    is the server's readiness; ``arriving`` counts requests not yet queued."""
    cfg = app.state.config

    def model(name: str, version: str = VERSION) -> dict:
        if name not in models:
            raise ApiError(404, f"Unknown model {name!r}: this server has {', '.join(models)}.")
        if version != VERSION:
            raise ApiError(404, f"Model {name!r} has version {VERSION!r} only, not {version!r}.")
        return models[name]

    @app.get("/v2")
    async def server_metadata():
        return {"name": "digits", "version": app.version, "extensions": ["binary_tensor_data"]}

    @app.get("/v2/health/live")
    async def live():
        return {"live": True}

    @app.get("/v2/health/ready")
    async def server_ready():
        ok = ready()
        return JSONResponse({"ready": ok}, status_code=200 if ok else 503)

    @app.get("/v2/models/{name}")
    @app.get("/v2/models/{name}/versions/{version}")
    async def metadata(name: str, version: str = VERSION):
        info = model(name, version)["info"]
        return {"name": name, "versions": [VERSION], "platform": f"{info['runtime']}_onnx",
                "inputs": [tensor_meta(INPUT, [-1, *SHAPE])],
                "outputs": [tensor_meta(o, [-1, 10]) for o in OUTPUTS]}

    @app.get("/v2/models/{name}/ready")
    @app.get("/v2/models/{name}/versions/{version}/ready")
    async def model_ready(name: str, version: str = VERSION):
        model(name, version)
        b = app.state.batchers[name]
        ok = b.alive and b.accepting and not app.state.draining.is_set()
        return JSONResponse({"name": name, "ready": ok}, status_code=200 if ok else 503)

    @app.post("/v2/models/{name}/infer")
    @app.post("/v2/models/{name}/versions/{version}/infer")
    async def infer(request: Request, name: str, version: str = VERSION):
        m = model(name, version)
        arriving[0] += 1  # as /v1: the batchers wait for more only while others are on their way
        try:
            body = await read_body(request, cfg.max_body_bytes)
            if request.headers.get("content-encoding", "identity") != "identity":
                raise ApiError(415, "Compressed request bodies are not accepted; send them uncompressed.")
            # a large JSON tensor takes a while to parse: off the event loop
            req, x = await run_in_threadpool(parse_infer, body, request.headers.get(HEADER), cfg.max_queue)
            del body
        finally:
            arriving[0] -= 1
        logits = np.stack(await answered(name, list(x)))
        return infer_response(name, req, logits, m.get("temperature", 1.0))
