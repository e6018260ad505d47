"""The Open Inference Protocol (KServe v2) on `digits serve`, with Triton's own HTTP client."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

from digits.data import MEAN, STD

httpclient = pytest.importorskip("tritonclient.http")
from tritonclient.utils import InferenceServerException  # noqa: E402


@pytest.fixture(scope="module")
def triton(live_server):
    c = httpclient.InferenceServerClient(live_server.removeprefix("http://"), connection_timeout=10, network_timeout=10)
    yield c
    c.close()


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def _infer(triton, x: np.ndarray, binary: bool, model="lenet5"):
    inp = httpclient.InferInput("input", list(x.shape), "FP32")
    inp.set_data_from_numpy(x, binary_data=binary)
    outs = [httpclient.InferRequestedOutput(n, binary_data=binary) for n in ("logits", "probabilities")]
    return triton.infer(model, [inp], outputs=outs, request_id="req-7")


def test_health_and_metadata_through_tritonclient(triton):
    assert triton.is_server_live() and triton.is_server_ready() and triton.is_model_ready("lenet5")
    assert not triton.is_model_ready("resnet50")
    meta = triton.get_model_metadata("cnn")
    assert meta["name"] == "cnn" and meta["versions"] == ["1"]
    assert meta["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 1, 28, 28]}]
    assert [o["name"] for o in meta["outputs"]] == ["logits", "probabilities"]
    assert "binary_tensor_data" in triton.get_server_metadata()["extensions"]


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_infer_equals_the_v1_api_on_the_same_digits(triton, live_server, test_set, binary):
    import httpx

    x, y = test_set
    batch = x[:6].numpy().astype(np.float32)  # normalized, as the exported model takes it
    result = _infer(triton, batch, binary)
    logits, probs = result.as_numpy("logits"), result.as_numpy("probabilities")
    assert logits.shape == probs.shape == (6, 10) and logits.dtype == np.float32
    assert result.get_response()["id"] == "req-7" and result.get_response()["model_name"] == "lenet5"
    assert np.allclose(probs.sum(axis=1), 1, atol=1e-5)
    # the same models through /v1 (a 28x28 array in MNIST's own format, normalized by the server)
    for i in range(6):
        pixels = (batch[i, 0] * STD + MEAN).tolist()
        v1 = httpx.post(f"{live_server}/v1/predict?model=lenet5", json={"image": pixels}, timeout=10).json()
        np.testing.assert_allclose(probs[i], v1["probabilities"], atol=1e-4)
        assert int(np.argmax(logits[i])) == v1["prediction"]
    # calibrated: the probabilities are a softmax of the logits over one temperature T, not T = 1 here
    t = np.polyfit(np.log(probs[0]) - np.log(probs[0]).mean(), logits[0] - logits[0].mean(), 1)[0]
    assert np.allclose(probs, _softmax(logits / t), atol=1e-5)


def test_default_request_gets_every_output_in_binary(triton, test_set):
    inp = httpclient.InferInput("input", [2, 1, 28, 28], "FP32")
    inp.set_data_from_numpy(test_set[0][:2].numpy())
    result = triton.infer("mlp", [inp])  # no outputs named: Triton answers all of them, binary
    assert result.as_numpy("logits").shape == (2, 10) and result.as_numpy("probabilities").shape == (2, 10)


@pytest.mark.parametrize("shape,dtype,name,words", [
    ([1, 28, 28], "FP32", "input", "shape must be [N,1,28,28]"),
    ([1, 1, 28, 28], "FP64", "input", "datatype FP32"),
    ([1, 1, 28, 28], "FP32", "image", "must be named 'input'"),
])
def test_bad_tensors_get_a_clear_400(triton, shape, dtype, name, words):
    inp = httpclient.InferInput(name, shape, dtype)
    inp.set_data_from_numpy(np.zeros(shape, dtype=np.float64 if dtype == "FP64" else np.float32))
    with pytest.raises(InferenceServerException, match=re.escape(words)) as e:
        triton.infer("lenet5", [inp])
    assert e.value.status() == "400"


def test_unknown_model_output_and_bad_bodies(triton, live_server):
    import httpx

    inp = httpclient.InferInput("input", [1, 1, 28, 28], "FP32")
    inp.set_data_from_numpy(np.zeros((1, 1, 28, 28), np.float32))
    with pytest.raises(InferenceServerException, match="Unknown model 'resnet50'"):
        triton.infer("resnet50", [inp])
    with pytest.raises(InferenceServerException, match="Unknown output 'softmax'"):
        triton.infer("lenet5", [inp], outputs=[httpclient.InferRequestedOutput("softmax")])
    url = f"{live_server}/v2/models/lenet5/infer"
    tensor = {"name": "input", "datatype": "FP32", "shape": [1, 1, 28, 28]}
    cases = [
        (b"{not json", {}, "not valid JSON"),
        (json.dumps({"inputs": [{**tensor, "data": [0.0] * 783}]}).encode(), {}, "does not make an FP32 tensor"),
        (json.dumps({"inputs": [{**tensor, "data": [float("nan")] * 784}]}).encode(), {}, "NaN"),
        (json.dumps({"inputs": [{**tensor, "parameters": {"binary_data_size": 3136}}]}).encode() + b"\0" * 100,
         "header", "binary_data_size 3136"),
        (json.dumps({"inputs": [{**tensor, "shape": [10_000, 1, 28, 28], "data": []}]}).encode(), {}, "1 <= N <="),
    ]
    for body, header, words in cases:
        headers = {"Inference-Header-Content-Length": str(body.index(b"\0"))} if header else {}
        r = httpx.post(url, content=body, headers=headers, timeout=10)
        assert r.status_code == 400 and words in r.json()["error"], (words, r.text)
    assert httpx.get(f"{live_server}/v2/models/lenet5/versions/2", timeout=10).status_code == 404
    ok = httpx.post(f"{live_server}/v2/models/lenet5/versions/1/infer", timeout=10,
                    json={"inputs": [{**tensor, "data": [[[[0.0] * 28] * 28]]}]})  # nested data is fine too
    assert ok.status_code == 200 and ok.json()["outputs"][0]["shape"] == [1, 10]
    metrics = httpx.get(f"{live_server}/metrics", timeout=10).text
    assert 'route="/v2/models/{name}/infer"' in metrics and 'route="/v2/models/{name}"' in metrics
