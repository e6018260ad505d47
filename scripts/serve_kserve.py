"""The peer: KServe's own Python model server on the same model.onnx, for scripts/bench_serve.py --peer kserve.

    python scripts/serve_kserve.py --artifacts artifacts --model lenet5 --port 8002

Needs the ``kserve`` package (not a digits dependency: install it in a venv of its own,
``python -m venv /tmp/kserve && /tmp/kserve/bin/pip install kserve onnxruntime``, and pass
that Python as ``--peer-python``). A ``kserve.Model`` whose ``predict`` runs the ONNX model
through onnxruntime (one intra-op thread, spinning off, as `digits serve` runs it) on the
Open Inference Protocol's input tensor, served by ``kserve.ModelServer`` with one worker
and no batching: KServe's usual way to serve a custom model.
"""

from __future__ import annotations

import argparse
import uuid
from pathlib import Path

import kserve
import numpy as np
import onnxruntime as ort
from kserve import InferOutput, InferRequest, InferResponse


class OnnxDigits(kserve.Model):
    def __init__(self, name: str, onnx_path: Path):
        super().__init__(name)
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1
        opts.inter_op_num_threads = 1
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = ort.InferenceSession(str(onnx_path), opts, providers=["CPUExecutionProvider"])
        self.ready = True

    def predict(self, payload: InferRequest, headers=None, response_headers=None) -> InferResponse:
        x = payload.inputs[0].as_numpy().astype(np.float32, copy=False)
        logits = self.session.run(None, {"input": x})[0]
        out = InferOutput(name="logits", shape=list(logits.shape), datatype="FP32")
        out.set_data_from_numpy(logits, binary_data=False)
        rid = payload.id or str(uuid.uuid4())  # the response needs an id; KServe's own runtimes make one so
        return InferResponse(model_name=self.name, infer_outputs=[out], response_id=rid)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--artifacts", type=Path, default=Path("artifacts"))
    ap.add_argument("--model", default="lenet5")
    ap.add_argument("--port", type=int, default=8002)
    args = ap.parse_args()
    kserve.ModelServer(http_port=args.port, grpc_port=args.port + 1, workers=1, enable_grpc=False).start(
        [OnnxDigits(args.model, args.artifacts / args.model / "model.onnx")])


if __name__ == "__main__":
    main()
