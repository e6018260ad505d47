"""The floor for a Python model server on this machine: a bare ASGI app on uvicorn, not part of digits.

    python scripts/serve_floor.py --artifacts artifacts --model lenet5 --port 8001

It does exactly the work any server of this model must do and nothing else: read the body,
``json.loads`` it, normalise the 28x28 array with numpy, one onnxruntime batch-1 call (one
intra-op thread, spinning off, as `digits serve` runs it) and a JSON answer with the
probabilities. Same uvicorn, event loop and HTTP implementation as `digits serve`.
``scripts/bench_serve.py`` starts it beside the server and reports every figure as a ratio
to it. It accepts ``POST /v1/predict`` (body ``{"image": 28x28}``) and the v2 infer route
(``{"inputs": [{"name": "input", "datatype": "FP32", "shape": [1,1,28,28], "data": [...]}]}``),
and answers ``GET /healthz``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import uvicorn

MEAN, STD = 0.1307, 0.3081


def make_app(onnx_path: Path):
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = ort.InferenceSession(str(onnx_path), opts, providers=["CPUExecutionProvider"])

    async def app(scope, receive, send):
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        if scope["method"] == "GET":
            return await _answer(send, 200, b'{"status":"ok"}')
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        request = json.loads(body)
        if "inputs" in request:  # the Open Inference Protocol's JSON tensor: already normalised
            x = np.asarray(request["inputs"][0]["data"], dtype=np.float32).reshape(1, 1, 28, 28)
        else:
            x = ((np.asarray(request["image"], dtype=np.float32) - MEAN) / STD).reshape(1, 1, 28, 28)
        logits = session.run(None, {"input": x})[0][0]
        e = np.exp(logits - logits.max())
        p = e / e.sum()
        await _answer(send, 200, json.dumps({"prediction": int(p.argmax()), "probabilities": p.tolist()}).encode())
    return app


async def _answer(send, status: int, body: bytes) -> None:
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--artifacts", type=Path, default=Path("artifacts"))
    ap.add_argument("--model", default="lenet5")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8001)
    args = ap.parse_args()
    uvicorn.run(make_app(args.artifacts / args.model / "model.onnx"), host=args.host, port=args.port,
                log_level="warning", access_log=False)


if __name__ == "__main__":
    main()
