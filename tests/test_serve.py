"""digits serve: the API through an in-process client, bad input, dynamic batching, and the page in Chromium."""

from __future__ import annotations

import io
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw
from typer.testing import CliRunner

from digits.cli import app as cli
from digits.data import MEAN, STD
from digits.serve import ServeConfig, create_app

fastapi_testclient = pytest.importorskip("fastapi.testclient")
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="module")
def client(served):
    with fastapi_testclient.TestClient(create_app(ServeConfig(artifacts=served, max_wait_ms=5))) as c:
        yield c


def _png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def drawn(strokes, size=280) -> bytes:
    """White strokes on black, as the page's canvas draws them."""
    img = Image.new("L", (size, size), 0)
    d = ImageDraw.Draw(img)
    for line in strokes:
        d.line(line, fill=255, width=18, joint="curve")
    return _png(img)


ONE = [[(140, 50), (140, 230)]]
SEVEN = [[(80, 60), (200, 60), (120, 230)]]


def test_predict_an_image_for_every_model(client):
    r = client.post("/v1/predict", content=drawn(SEVEN), headers={"Content-Type": "image/png"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert [m["model"] for m in body["results"]] == ["mlp", "cnn", "lenet5"]
    for m in body["results"]:
        assert len(m["probabilities"]) == 10 and abs(sum(m["probabilities"]) - 1) < 1e-4 and m["latency_ms"] > 0
        assert m["prediction"] == int(np.argmax(m["probabilities"]))
    lenet = body["results"][2]
    assert lenet["prediction"] == 7
    assert np.array(body["image28"]).shape == (28, 28) and np.array(body["image28"]).max() > 0.5


def test_the_server_preprocesses_exactly_as_digits_predict(client, served, tmp_path):
    path = tmp_path / "seven.png"
    path.write_bytes(drawn(SEVEN))
    result = CliRunner().invoke(cli, ["predict", str(path), "--model", "cnn", "--checkpoint", str(served),
                                      "--artifacts", str(served), "--json"])
    cli_probs = json.loads(result.stdout)[0]["probabilities"]
    r = client.post("/v1/predict?model=cnn", content=path.read_bytes(), headers={"Content-Type": "image/png"}).json()
    assert r["model"] == "cnn" and np.allclose(r["probabilities"], cli_probs, atol=1e-5)


def test_multipart_and_json_array_inputs(client, test_set):
    up = client.post("/v1/predict?model=lenet5", files={"file": ("one.png", drawn(ONE), "image/png")})
    assert up.status_code == 200 and up.json()["prediction"] == 1
    x, y = test_set
    digit = (x[0, 0].numpy() * STD + MEAN).clip(0, 1)  # an MNIST test digit in MNIST's own format
    for image, extra in (((digit * 1.0).tolist(), {}), (np.round(digit * 255).tolist(), {}),  # 0..1, 0..255
                         ((digit * 255).tolist(), {"scale": 255}), ((digit * 0.999).tolist(), {"scale": 1})):
        r = client.post("/v1/predict", json={"image": image, "model": "lenet5", **extra})
        assert r.status_code == 200 and r.json()["prediction"] == int(y[0]), (extra, r.text)
        assert "image28" not in r.json()  # an array is its own 28x28 image


@pytest.mark.parametrize("body, ctype, status, words", [
    (b"", "image/png", 400, "empty"),
    (b"this is not an image", "image/png", 415, "is not a PNG, JPEG, WebP, GIF, BMP or TIFF image"),
    (b"{broken", "application/json", 400, "not valid JSON"),
    (json.dumps({"image": [[0.5] * 27] * 28}).encode(), "application/json", 422, "28x28"),
    (json.dumps({"image": "seven"}).encode(), "application/json", 422, "28x28"),
    (json.dumps({"image": [[0] * 28] * 28, "colour": "red"}).encode(), "application/json", 422, "at colour: Extra"),
    (json.dumps([[0] * 28] * 28).encode(), "application/json", 422, "at body"),
    # neither 0..1 nor whole numbers 0..255: refused, not guessed (1.0000001 was once divided by 255)
    (json.dumps({"image": [[1.5] * 28] * 28}).encode(), "application/json", 400, '"scale": 1 or "scale": 255'),
    (json.dumps({"image": [[-0.5] * 28] * 28}).encode(), "application/json", 400, "neither 0..1"),
    (json.dumps({"image": [[300] * 28] * 28, "scale": 255}).encode(), "application/json", 400, "outside 0..255"),
    (json.dumps({"image": [[0.5] * 28] * 28, "scale": 100}).encode(), "application/json", 400, "'scale' must be 1"),
    (_png(Image.new("L", (64, 64), 255)), "image/png", 422, "blank"),
    (_png(Image.new("L", (5000, 4000), 0)), "image/png", 413, "16 MP limit"),
])
def test_bad_input_gets_a_4xx_json_error_and_the_server_goes_on(client, body, ctype, status, words):
    r = client.post("/v1/predict", content=body, headers={"Content-Type": ctype})
    assert r.status_code == status and words in r.json()["error"] and r.json()["status"] == status
    assert client.post("/v1/predict?model=lenet5", content=drawn(ONE),
                       headers={"Content-Type": "image/png"}).json()["prediction"] == 1


def test_unknown_model_and_oversized_body(served):
    cfg = ServeConfig(artifacts=served, models=["lenet5"], max_body_bytes=1000)
    with fastapi_testclient.TestClient(create_app(cfg)) as c:
        r = c.post("/v1/predict?model=vgg", json={"image": [[0] * 28] * 28})
        assert r.status_code == 404 and "vgg" in r.json()["error"] and "lenet5" in r.json()["error"]
        r = c.post("/v1/predict", content=b"x" * 5000, headers={"Content-Type": "image/png"})
        assert r.status_code == 413 and "the limit is 1,000 bytes" in r.json()["error"]


def test_models_health_and_metrics(client, served):
    from digits.export import read_exports

    models = client.get("/v1/models").json()["models"]
    assert [m["name"] for m in models] == ["mlp", "cnn", "lenet5"]
    for m in models:
        entry = read_exports(served / m["name"])["formats"]["onnx"]
        assert m["sha256"] == entry["sha256"] and m["accuracy"] == entry["accuracy"] and m["params"] > 60_000
    health = client.get("/healthz").json()
    assert health["status"] == "ok" and health["models"] == ["mlp", "cnn", "lenet5"] and health["not_serving"] == []
    assert client.get("/readyz").status_code == 200 and client.get("/livez").json() == {"status": "alive"}
    got = _metrics(client.get("/metrics").text)
    assert got["digits_requests_total", (("route", "/v1/predict"), ("status", "200"))] >= 1
    assert ("digits_batch_size_bucket", (("le", "1.0"), ("model", "lenet5"))) in got
    assert got["digits_queue_depth", (("model", "lenet5"),)] == 0
    assert got["digits_request_seconds_count", (("route", "/v1/predict"),)] >= 1
    assert "/openapi.json" in client.get("/docs").text and "/v1/predict" in client.get("/openapi.json").json()["paths"]


def _concurrently(application, path: str, images: list) -> tuple[list, str]:
    """Every image POSTed at once to an in-process app: (responses, /metrics text)."""
    import asyncio

    import httpx

    async def go():
        transport = httpx.ASGITransport(app=application)
        async with application.router.lifespan_context(application), \
                httpx.AsyncClient(transport=transport, base_url="http://t") as c:
            rs = await asyncio.gather(*(c.post(path, json={"image": img}) for img in images))
            return rs, (await c.get("/metrics")).text
    return asyncio.run(go())


def test_concurrent_requests_are_batched_into_one_call(served, test_set):
    cfg = ServeConfig(artifacts=served, models=["lenet5"], max_batch=64, max_wait_ms=50)
    digit = (test_set[0][0, 0].numpy() * STD + MEAN).clip(0, 1).tolist()
    responses, text = _concurrently(create_app(cfg), "/v1/predict?model=lenet5", [digit] * 16)
    assert [r.status_code for r in responses] == [200] * 16
    got = _metrics(text)
    calls = got["digits_batch_size_count", (("model", "lenet5"),)]
    assert calls < 16 and got["digits_batch_size_sum", (("model", "lenet5"),)] == 16  # 16 images in fewer calls


def test_openvino_serves_from_batch_buckets_compiled_at_start(served, test_set):
    pytest.importorskip("openvino")
    digits28 = [(test_set[0][i, 0].numpy() * STD + MEAN).clip(0, 1).tolist() for i in range(13)]
    app_ov = create_app(ServeConfig(artifacts=served, models=["cnn"], backend="openvino", max_batch=8, max_wait_ms=50))
    backend = app_ov.state.backends["cnn"]
    assert backend.buckets == [1, 2, 4, 8] and set(backend.compiled) == {1, 2, 4, 8}
    ov, text = _concurrently(app_ov, "/v1/predict?model=cnn", digits28)  # 13 = batches of 8 and 5 (padded to 8), ...
    ort, _ = _concurrently(create_app(ServeConfig(artifacts=served, models=["cnn"])), "/v1/predict?model=cnn", digits28)
    assert [r.status_code for r in ov] == [200] * 13
    for a, b in zip(ov, ort, strict=True):
        np.testing.assert_allclose(a.json()["probabilities"], b.json()["probabilities"], atol=1e-4)
    assert set(backend.compiled) == {1, 2, 4, 8}  # nothing compiled on a request's path
    assert _metrics(text)["digits_batch_size_sum", (("model", "cnn"),)] == 13
    with pytest.raises(RuntimeError, match="not a compiled bucket"):
        backend._compiled(3)
    with pytest.raises(Exception, match="larger than the largest compiled bucket"):
        backend(test_set[0][:9])


def test_serve_refuses_to_start_without_a_verified_artifact(served, tmp_path):
    shutil.copytree(served / "mlp", tmp_path / "mlp")
    onnx = tmp_path / "mlp" / "model.onnx"
    onnx.write_bytes(onnx.read_bytes() + b"\0")  # tampered
    result = CliRunner().invoke(cli, ["serve", "--artifacts", str(tmp_path), "--models", "mlp"])
    assert result.exit_code == 1 and "cannot start" in result.output and "does not match" in result.output
    result = CliRunner().invoke(cli, ["serve", "--artifacts", str(tmp_path / "none"), "--models", "lenet5"])
    assert result.exit_code == 1 and "digits export lenet5 --format onnx" in result.output
    assert "Traceback" not in result.output


# --------------------------------------------------------------------------- the page in a real browser
@pytest.fixture(scope="module")
def page(live_server):
    if not CHROMIUM:
        if os.environ.get("CI"):
            pytest.fail("CI must run the browser test: .ci/run installs Debian's chromium")
        pytest.skip("Debian's chromium is not installed (apt-get install chromium)")
    playwright = pytest.importorskip("playwright.sync_api")
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
            "--disable-sync", "--no-first-run"])
        pg = browser.new_page(viewport={"width": 1100, "height": 760})
        pg.goto(live_server)
        yield pg
        browser.close()


def _draw(page, strokes):
    box = page.locator("#pad").bounding_box()
    for line in strokes:
        page.mouse.move(box["x"] + line[0][0], box["y"] + line[0][1])
        page.mouse.down()
        for x, y in line[1:]:
            page.mouse.move(box["x"] + x, box["y"] + y, steps=12)
        page.mouse.up()


def _answer(page, model="lenet5") -> str:
    page.wait_for_selector(f'.model[data-model="{model}"]', timeout=10_000)
    page.wait_for_function("document.body.dataset.state === 'ready'", timeout=10_000)
    return page.locator(f'.model[data-model="{model}"]').get_attribute("data-prediction")


def test_page_draw_a_one_and_a_seven(page):
    page.click("#clear")
    _draw(page, ONE)
    assert _answer(page) == "1"
    assert page.locator(".model").count() == 3 and page.locator(".model .bar").count() == 30
    assert "ms" in page.locator('.model[data-model="lenet5"] .latency').inner_text()
    page.click("#clear")
    assert page.locator(".model").count() == 0
    _draw(page, SEVEN)
    assert _answer(page) == "7"
    seen = page.evaluate("Array.from(document.getElementById('seen').getContext('2d')"
                         ".getImageData(0, 0, 28, 28).data).filter((v, i) => i % 4 === 0 && v > 128).length")
    assert seen > 20  # the 28x28 image the models saw is drawn on the page
    if os.environ.get("DIGITS_SCREENSHOT"):  # make the README's screenshot: DIGITS_SCREENSHOT=docs/serve.png
        page.screenshot(path=os.environ["DIGITS_SCREENSHOT"])


def test_page_upload_a_photo_and_a_bad_file(page, tmp_path):
    photo = Image.new("RGB", (400, 300), "white")
    ImageDraw.Draw(photo).line([(200, 40), (200, 260)], fill="black", width=14)  # a dark 1 on white paper
    (tmp_path / "photo.png").write_bytes(_png(photo))
    page.click("#clear")
    page.set_input_files("#upload", str(tmp_path / "photo.png"))
    assert _answer(page) == "1"
    (tmp_path / "notes.txt").write_text("not an image")
    page.set_input_files("#upload", str(tmp_path / "notes.txt"))
    page.wait_for_selector("#error:not([hidden])", timeout=10_000)
    assert "not a PNG, JPEG" in page.locator("#error").inner_text()


def test_page_reads_a_number_in_a_photo_and_boxes_each_digit(page):
    photos = Path(__file__).parent / "data" / "photos"
    entry = next(p for p in json.loads((photos / "photos.json").read_text())["photos"] if len(p["label"]) == 3)
    page.click("#clear")
    page.set_input_files("#upload", str(photos / entry["file"]))
    _answer(page)
    card = page.locator('.model[data-model="lenet5"]')
    assert len(card.get_attribute("data-number")) == 3  # three digits read, '?' where unsure
    page.wait_for_selector("#photo:not([hidden])", timeout=10_000)
    # the photo is drawn with a box per digit: the box colour's pixels are there
    red = page.evaluate("(() => { const c = document.getElementById('photo'); const d = c.getContext('2d')"
                        ".getImageData(0, 0, c.width, c.height).data; let n = 0; for (let i = 0; i < d.length; i += 4)"
                        " if (d[i] > 200 && d[i + 1] < 120 && d[i + 2] < 90) n++; return n; })()")
    assert red > 100
    page.click("#clear")
    _draw(page, ONE)
    _answer(page)
    assert page.locator("#photo").is_hidden()  # drawing again hides the photo


def test_page_boxes_land_on_the_digits_of_a_photo_stored_sideways(page, tmp_path):
    """A phone's portrait photo: landscape pixels plus EXIF orientation 6, 12 MP. The browser shows
    it upright and whole, so the server's boxes must be in the upright picture's own pixels (not
    the reduced copy's it was read from)."""
    from PIL import Image

    photos = Path(__file__).parent / "data" / "photos"
    entry = next(p for p in json.loads((photos / "photos.json").read_text())["photos"] if len(p["label"]) == 3)
    small = Image.open(photos / entry["file"]).convert("RGB")
    upright = small.resize((4032, 3024), Image.Resampling.BICUBIC)  # 12 MP, as phones take them: decoded reduced
    k = upright.width / small.width
    boxes = [[(x0 - 25) * k, (y0 - 30) * k, (x1 + 25) * k, (y1 + 25) * k] for x0, y0, x1, y1 in entry["boxes"]]  # and labels
    exif = Image.Exif()
    exif[0x0112] = 6  # stored rotated a quarter turn; viewers turn it back
    upright.transpose(Image.Transpose.ROTATE_90).save(tmp_path / "phone.jpg", quality=95, exif=exif.tobytes())
    page.click("#clear")
    page.set_input_files("#upload", str(tmp_path / "phone.jpg"))
    _answer(page)
    page.wait_for_selector("#photo:not([hidden])", timeout=10_000)
    w, h, inside, outside = page.evaluate("""(boxes) => { const c = document.getElementById('photo');
        const s = c.width / %d; const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
        let inside = 0, outside = 0;
        for (let y = 0; y < c.height; y++) for (let x = 0; x < c.width; x++) { const i = 4 * (y * c.width + x);
          if (!(d[i] > 200 && d[i + 1] < 120 && d[i + 2] < 90)) continue;
          const near = boxes.some(([x0, y0, x1, y1]) => x >= x0 * s && x <= x1 * s && y >= y0 * s && y <= y1 * s);
          if (near) inside++; else outside++; }
        return [c.width, c.height, inside, outside]; }""" % upright.width, boxes)
    assert w > h  # shown upright (landscape), as the photo was taken
    assert inside > 100 and outside < 0.05 * inside  # the box strokes sit around the written digits


def test_page_reads_a_number_drawn_on_the_canvas(page):
    page.click("#clear")
    _draw(page, [[(60, 70), (60, 210)], [(150, 70), (215, 70), (170, 210)]])  # a 1 and a 7, side by side
    _answer(page)  # the page answers after each stroke: wait for the answer to the last one
    page.wait_for_function("(document.querySelector('.model[data-model=\"lenet5\"]') || {dataset: {}})"
                           ".dataset.number?.length === 2", timeout=10_000)
    number = page.locator('.model[data-model="lenet5"]').get_attribute("data-number")
    assert number[1] in "7?"  # two digits read; the 7 unless the model is unsure of it


def _metrics(text: str) -> dict:
    """/metrics as {(sample name, sorted labels): value}, read by prometheus_client's own parser."""
    from prometheus_client.parser import text_string_to_metric_families

    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def test_load_generators_closed_and_open_loop(live_server, test_set):
    from concurrent.futures import ThreadPoolExecutor

    from digits.errors import UsageError
    from digits.serve.load import run_load, run_open_loop

    port = int(live_server.rsplit(":", 1)[1])
    digit = (test_set[0][0, 0].numpy() * STD + MEAN).clip(0, 1).round(3).tolist()
    body = json.dumps({"image": digit}).encode()
    # in a thread of their own, as in their own process: the browser tests' sync Playwright keeps an
    # event loop on this module's main thread, and asyncio.run refuses to nest in it
    with ThreadPoolExecutor(1) as pool:
        closed = pool.submit(run_load, "127.0.0.1", port, "/v1/predict?model=lenet5", body, concurrency=4,
                             requests=40).result()
        opened = pool.submit(run_open_loop, "127.0.0.1", port, "/v1/predict?model=lenet5", body, rate=60,
                             duration=1.0).result()
    assert closed["requests"] == 40 and closed["errors"] == 0 and closed["p99_ms"] >= closed["p50_ms"] > 0
    # Poisson arrivals at 60/s for 1 s: about 60 sent (a 5-sigma band), every one answered
    assert 25 <= opened["sent"] <= 100 and opened["answered"] == opened["sent"] and opened["errors"] == 0
    assert opened["p99_ms"] >= opened["p50_ms"] > 0
    with pytest.raises(UsageError, match="only targets this machine"):
        run_open_loop("example.invalid", port, "/", body, rate=1)  # refused before any connection
