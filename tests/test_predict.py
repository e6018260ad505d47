"""digits predict: MNIST-style preprocessing of users' images, and every bad-file case."""

from __future__ import annotations

import json
import struct
import zlib

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw, ImageFilter
from typer.testing import CliRunner

from digits.checkpoint import load_checkpoint
from digits.cli import app
from digits.data import normalize, raw_dir, read_arrays
from digits.predict import predict_files
from digits.preprocess import ImageError, load_gray, preprocess

N = 25  # fixture test digits per rendering


# --------------------------------------------------------------------------- renderings
def _big(img28):
    return Image.fromarray(img28).resize((280, 280), Image.Resampling.BICUBIC)


def upscaled(img28, rng):
    return _big(img28)  # white on black, 10x


def inverted(img28, rng):
    return Image.fromarray(255 - np.asarray(_big(img28)))  # dark ink on white paper


def shifted_small(img28, rng):
    canvas = Image.new("L", (600, 450), 235)  # a small digit off-centre on light paper
    canvas.paste(Image.fromarray(255 - np.asarray(_big(img28).resize((110, 110)))),
                 (int(rng.integers(10, 480)), int(rng.integers(10, 330))))
    return canvas


def thin(img28, rng):
    core = _big(img28).point(lambda v: 255 if v > 170 else 0).filter(ImageFilter.MinFilter(5))
    return Image.fromarray(255 - np.asarray(core))  # pen-thin strokes, hard edges


def rgb(img28, rng):
    ink = 255 - np.asarray(_big(img28))
    return Image.fromarray(np.stack([ink, ink, np.minimum(ink + 20, 255)], -1).astype(np.uint8), "RGB")


def rgba(img28, rng):
    a = np.zeros((280, 280, 4), np.uint8)
    a[..., :3], a[..., 3] = 25, np.asarray(_big(img28))  # dark strokes on a transparent canvas
    return Image.fromarray(a, "RGBA")


def rgba_white_strokes(img28, rng):
    a = np.zeros((280, 280, 4), np.uint8)
    a[..., :3], a[..., 3] = 255, np.asarray(_big(img28))  # white strokes on a transparent canvas
    return Image.fromarray(a, "RGBA")


def framed(img28, rng):
    page = Image.new("L", (340, 340), 245)
    page.paste(inverted(img28, rng).resize((260, 260)), (40, 40))
    ImageDraw.Draw(page).rectangle([4, 4, 335, 335], outline=40, width=4)  # a canvas border
    return page


def paper_edge(img28, rng):
    page = np.asarray(inverted(img28, rng).resize((300, 300))).copy()
    page[:, :12] = 60  # the dark table beyond the paper's edge
    return Image.fromarray(page)


RENDERINGS = [upscaled, inverted, shifted_small, thin, rgb, rgba, rgba_white_strokes, framed, paper_edge]


@pytest.fixture(scope="module")
def digits28(fixture_root):
    a = read_arrays(raw_dir(fixture_root))
    return a.test_images[:N], a.test_labels[:N].astype(np.int64)


@pytest.fixture(scope="module")
def original_accuracy(trained, digits28):
    model, _ = load_checkpoint(trained / "lenet5")
    with torch.inference_mode():
        return (model(normalize(digits28[0])).argmax(1).numpy() == digits28[1]).mean()


@pytest.mark.parametrize("render", RENDERINGS, ids=lambda f: f.__name__)
def test_user_style_images_predict_as_well_as_originals(render, digits28, original_accuracy, trained, tmp_path):
    rng = np.random.default_rng(0)
    for i, img in enumerate(digits28[0]):
        render(img, rng).save(tmp_path / f"{i:03d}.png")
    results = predict_files([tmp_path], model="lenet5", backend="eager", checkpoint=trained, artifacts=trained)
    preds = np.array([r.get("prediction", -1) for r in results])
    acc = (preds == digits28[1]).mean()
    # The briefly trained fixture model scores ~0.8-0.95 on originals; preprocessing may
    # cost at most 10 points (15 for the pen-thin rendering, which loses stroke detail).
    assert acc >= original_accuracy - (0.15 if render is thin else 0.10), (acc, original_accuracy)


def test_preprocessed_digit_is_centred_like_mnist(digits28):
    img = preprocess(load_gray_from(shifted_small(digits28[0][0], np.random.default_rng(1))))
    ys, xs = np.nonzero(img > 0.1)
    assert max(np.ptp(ys), np.ptp(xs)) + 1 in (19, 20, 21)  # longer side ~20 px
    yy, xx = np.mgrid[0:28, 0:28]
    assert abs((yy * img).sum() / img.sum() - 13.5) < 1.5 and abs((xx * img).sum() / img.sum() - 13.5) < 1.5


def load_gray_from(im: Image.Image, tmp=None):
    arr = np.asarray(im.convert("L"), dtype=np.float32) / 255
    return arr


# --------------------------------------------------------------------------- bad files
def _png_with_size(path, w, h):
    """A PNG whose header claims w x h, without allocating the pixels."""
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0)
    chunk = lambda t, d: struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d))  # noqa: E731
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00")) + chunk(b"IEND", b""))


@pytest.mark.parametrize("case, words", [
    ("text", "not a PNG, JPEG, WebP, GIF, BMP or TIFF image"), ("empty", "not a PNG"), ("truncated", "cannot be read"),
    ("blank", "blank"), ("huge", "MP limit"), ("missing", "does not exist"), ("frame_only", "blank"),
])
def test_bad_file_gets_a_clear_error(tmp_path, case, words, digits28):
    path = tmp_path / f"{case}.png"
    if case == "text":
        path.write_text("hello, not a picture")
    elif case == "empty":
        path.write_bytes(b"")
    elif case == "truncated":
        inverted(digits28[0][0], None).save(path)
        path.write_bytes(path.read_bytes()[:200])
    elif case == "blank":
        Image.new("L", (400, 300), 250).save(path)
    elif case == "huge":
        _png_with_size(path, 9000, 6000)
    elif case == "frame_only":
        page = Image.new("L", (300, 300), 250)
        ImageDraw.Draw(page).rectangle([5, 5, 294, 294], outline=0, width=3)
        page.save(path)
    with pytest.raises(ImageError, match=words):
        preprocess(load_gray(path))


def test_bad_files_do_not_stop_the_others(tmp_path, trained, digits28):
    inverted(digits28[0][0], None).save(tmp_path / "good.png")
    (tmp_path / "notes.txt").write_text("not an image")
    Image.new("RGB", (200, 200), "white").save(tmp_path / "blank.jpg")
    results = {r["path"].rsplit("/", 1)[1]: r for r in
               predict_files([tmp_path], backend="eager", checkpoint=trained, artifacts=trained)}
    assert results["good.png"]["prediction"] in range(10) and len(results["good.png"]["probabilities"]) == 10
    assert "not a PNG, JPEG" in results["notes.txt"]["error"] and "blank" in results["blank.jpg"]["error"]


# --------------------------------------------------------------------------- CLI
runner = CliRunner()


def test_cli_json_save_preprocessed_and_exit_code(tmp_path, trained, digits28, exported):
    imgs = tmp_path / "imgs"
    imgs.mkdir()
    for i in range(3):
        inverted(digits28[0][i], None).save(imgs / f"d{i}.png")
    pre = tmp_path / "pre"
    result = runner.invoke(app, ["predict", str(imgs), "--checkpoint", str(trained), "--artifacts", str(trained),
                                 "--save-preprocessed", str(pre), "--json"])
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert [r["path"].rsplit("/", 1)[1] for r in out] == ["d0.png", "d1.png", "d2.png"]
    for r in out:
        assert abs(sum(r["probabilities"]) - 1) < 1e-4 and r["prediction"] == int(np.argmax(r["probabilities"]))
        # the mosaic: image, flattened, ink mask, chosen box, then each 28x28 the model saw
        assert r["number"] == ("?" if r["unsure"] else str(r["prediction"])) and len(r["digits"]) == 1
        assert r["unsure"] == (max(r["probabilities"]) < 0.6)
        assert Image.open(r["preprocessed"]).size == (160 * (4 + len(r["digits"])), 160)
    (imgs / "broken.png").write_bytes(b"\x89PNG broken")
    result = runner.invoke(app, ["predict", str(imgs), "--checkpoint", str(trained), "--artifacts", str(trained), "--json"])
    assert result.exit_code == 1 and "broken.png" in result.output
    assert len(json.loads(result.stdout)) == 4


def test_cli_table_shows_top_k(tmp_path, trained, digits28, exported):
    inverted(digits28[0][0], None).save(tmp_path / "seven.png")
    result = runner.invoke(app, ["predict", str(tmp_path / "seven.png"), "--backend", "onnxruntime", "--top-k", "2",
                                 "--checkpoint", str(trained), "--artifacts", str(trained)])
    assert result.exit_code == 0, result.output
    assert "seven.png" in result.stdout and result.stdout.count("%") == 2


def test_cli_exports_when_only_the_checkpoint_exists(tmp_path, trained, digits28, fixture_root):
    import shutil
    ckpt = tmp_path / "ckpt"
    shutil.copytree(trained / "mlp", ckpt / "mlp", ignore=shutil.ignore_patterns("model.onnx", "exports.json", "*.pt*"))
    inverted(digits28[0][0], None).save(tmp_path / "d.png")
    result = runner.invoke(app, ["predict", str(tmp_path / "d.png"), "--model", "mlp", "--checkpoint", str(ckpt),
                                 "--artifacts", str(tmp_path / "art"), "--data-dir", str(fixture_root), "--json"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "art/mlp/model.onnx").is_file() and "exporting mlp" in result.output


@pytest.mark.parametrize("args, code", [(["--top-k", "0"], 2), (["--backend", "tflite"], 2), (["--model", "vgg"], 2)])
def test_cli_bad_options(tmp_path, args, code):
    result = runner.invoke(app, ["predict", str(tmp_path), *args])
    assert result.exit_code == code and "Traceback" not in result.output
