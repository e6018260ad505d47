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

import numpy as np
import orjson
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

from digits.calibrate import calibrated
from digits.serve.inputs import ApiError, nan_hint

INPUT, OUTPUTS, VERSION = "input", ("logits", "probabilities"), "1"
SHAPE = (1, 28, 28)


def tensor_meta(name: str, shape: list[int]) -> dict:
    return {"name": name, "datatype": "FP32", "shape": shape}


def parse_infer(body: bytes, header_length: str | None, max_rows: int) -> tuple[dict, np.ndarray]:
    """A v2 infer request (JSON, or JSON header + binary tensors) -> (request, input [N,1,28,28]).
    Everything is checked here, before any inference: the input, ``parameters`` and ``outputs``."""
    split = len(body)
    if header_length is not None:
        if not header_length.isdigit() or int(header_length) > len(body):
            raise ApiError(400, f"Inference-Header-Content-Length {header_length!r} does not fit a "
                                f"{len(body)}-byte body.")
        split = int(header_length)
    try:
        request = orjson.loads(body[:split])
    except orjson.JSONDecodeError:
        raise ApiError(400, "The inference request header is not valid JSON" + nan_hint(body[:split]) + ".") from None
    inputs = request.get("inputs") if isinstance(request, dict) else None
    if not isinstance(inputs, list) or len(inputs) != 1 or not isinstance(inputs[0], dict):
        raise ApiError(400, f"The request must have 'inputs' with one tensor, {INPUT!r} FP32 [N,1,28,28].")
    _check_outputs(request)
    tensor = inputs[0]
    if tensor.get("name") != INPUT or tensor.get("datatype") != "FP32":
        raise ApiError(400, f"The input tensor must be named {INPUT!r} with datatype FP32; got "
                            f"{tensor.get('name')!r} {tensor.get('datatype')!r}.")
    shape = tensor.get("shape")
    if (not isinstance(shape, list) or len(shape) != 4 or tuple(shape[1:]) != SHAPE
            or not isinstance(shape[0], int) or not 1 <= shape[0] <= max_rows):
        raise ApiError(400, f"The input shape must be [N,1,28,28] with 1 <= N <= {max_rows}; got {shape}.")
    size = _params(tensor.get("parameters"), "the input's").get("binary_data_size")
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


def _params(value, whose: str) -> dict:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ApiError(400, f"{whose} 'parameters' must be a JSON object, not {type(value).__name__}.")
    return value


def _check_outputs(request: dict) -> None:
    """``parameters`` an object, ``outputs`` a list of objects naming this model's outputs: a 400
    now, not a 500 after the model ran."""
    _params(request.get("parameters"), "the request's")
    outputs = request.get("outputs")
    if outputs is None:
        return
    if not isinstance(outputs, list):
        raise ApiError(400, f"'outputs' must be a list of {{\"name\": ...}} objects, not {type(outputs).__name__}.")
    for out in outputs:
        if not isinstance(out, dict) or out.get("name") not in OUTPUTS:
            raise ApiError(400, f"Unknown output {out.get('name') if isinstance(out, dict) else out!r}: this model "
                                f"has {', '.join(OUTPUTS)}.")
        _params(out.get("parameters"), f"output {out['name']!r}")


def infer_response(name: str, request: dict, logits: np.ndarray, temperature: float) -> tuple[int, bytes, list]:
    """``(200, body, headers)``: JSON, or Triton's JSON header + binary tensors (its own content type)."""
    values = {"logits": logits.astype(np.float32), "probabilities": calibrated(logits, temperature)}
    params = request.get("parameters") or {}
    asked = request.get("outputs") or [{"name": n} for n in OUTPUTS]  # checked by parse_infer
    outputs, blobs = [], []
    for out in asked:
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
    text = orjson.dumps(head)
    if not blobs:
        return 200, text, []
    return 200, text + b"".join(blobs), [(b"content-type", b"application/octet-stream"),
                                         (b"inference-header-content-length", str(len(text)).encode())]


def add_routes(app: FastAPI, state) -> None:
    """Mount the v2 endpoints. Inference itself is a hot route (digits.serve.hot); its FastAPI
    route calls the same handler, for the OpenAPI docs and any direct use."""

    @app.get("/v2")
    async def server_metadata():
        return {"name": "digits", "version": app.version, "extensions": ["binary_tensor_data"]}

    @app.get("/v2/health/live")
    async def live():
        return {"live": True}

    @app.get("/v2/health/ready")
    async def server_ready():
        ok = state.readiness()[1] == 200
        return JSONResponse({"ready": ok}, status_code=200 if ok else 503)

    @app.get("/v2/models/{name}")
    @app.get("/v2/models/{name}/versions/{version}")
    async def metadata(name: str, version: str = VERSION):
        info = state.v2_model(name, version)["info"]
        return {"name": name, "versions": [VERSION], "platform": f"{info['runtime']}_onnx",
                "inputs": [tensor_meta(INPUT, [-1, *SHAPE])],
                "outputs": [tensor_meta(o, [-1, 10]) for o in OUTPUTS]}

    @app.get("/v2/models/{name}/ready")
    @app.get("/v2/models/{name}/versions/{version}/ready")
    async def model_ready(name: str, version: str = VERSION):
        state.v2_model(name, version)
        b = state.batchers[name]
        ok = b.alive and b.accepting and not state.draining.is_set()
        return JSONResponse({"name": name, "ready": ok}, status_code=200 if ok else 503)

    @app.post("/v2/models/{name}/infer")
    @app.post("/v2/models/{name}/versions/{version}/infer")
    async def infer(request: Request, name: str, version: str = VERSION):
        from digits.serve.hot import handle, v2_infer

        status, body, headers = await handle(v2_infer, state, request.scope, request.receive)
        kind = headers[0][1] if headers and headers[0][0] == b"content-type" else b"application/json"
        return Response(body, status_code=status, media_type=kind.decode(),
                        headers={k.decode(): v.decode() for k, v in headers if k != b"content-type"})
