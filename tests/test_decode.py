"""Images as people's devices store them: EXIF orientation, every image mode, the accepted
formats (and no others), each read as the same picture."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from digits.decode import ImageError, Unsupported, decode, load_image
from digits.preprocess import preprocess

PHOTOS = Path(__file__).parent / "data" / "photos"
ORIENTATION = 0x0112
# what a phone stores for each EXIF orientation, given the upright picture (viewers undo it)
STORED = {6: Image.Transpose.ROTATE_90, 8: Image.Transpose.ROTATE_270, 3: Image.Transpose.ROTATE_180}


def _number_photo() -> tuple[Path, str]:
    entry = next(p for p in json.loads((PHOTOS / "photos.json").read_text())["photos"] if len(p["label"]) == 3)
    return PHOTOS / entry["file"], entry["label"]


def as_phone_stores_it(upright: Image.Image, orientation: int) -> bytes:
    exif = Image.Exif()
    exif[ORIENTATION] = orientation
    buf = io.BytesIO()
    upright.transpose(STORED[orientation]).save(buf, "JPEG", quality=95, exif=exif.tobytes())
    return buf.getvalue()


def drawn_seven(size=(300, 300)) -> Image.Image:
    page = Image.new("L", size, 245)
    ImageDraw.Draw(page).line([(80, 70), (220, 70), (130, 240)], fill=20, width=18)
    return page


def _encoded(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


# --------------------------------------------------------------------------- orientation
@pytest.mark.parametrize("orientation, size", [(1, (640, 480)), (1, (4000, 3000)), (6, (4000, 3000)), (3, (4000, 3000))])
def test_decoding_says_the_size_as_sent_to_give_boxes_back_in_it(orientation, size):
    """A large photo is read from a reduced copy; a box on that copy is given back in the pixels
    of the picture as its viewer shows it (upright), so the whole copy is the whole picture."""
    upright = drawn_seven((400, 300)).convert("RGB").resize(size)
    image = decode(as_phone_stores_it(upright, orientation) if orientation != 1 else _encoded(upright, "JPEG"))
    h, w = image.gray.shape
    assert image.size == size and (w < size[0]) is (size[0] > 2000) and abs(w / h - size[0] / size[1]) < 0.01
    assert image.to_original((0, 0, w, h)) == (0, 0, *size)
    assert image.to_original((w // 4, h // 2, w // 2, h)) == (size[0] // 4, size[1] // 2, size[0] // 2, size[1])
    assert image.to_original(None) is None


@pytest.mark.parametrize("orientation", [6, 8, 3])
def test_a_photo_tagged_with_its_orientation_is_read_upright(orientation):
    path, _ = _number_photo()
    upright = Image.open(path).convert("RGB")
    stored = as_phone_stores_it(upright, orientation)
    assert Image.open(io.BytesIO(stored)).size == (upright.size if orientation == 3 else upright.size[::-1])
    gray, _ = load_image(stored)
    want, _ = load_image(_encoded(upright, "JPEG", quality=95))
    assert gray.shape == want.shape and np.abs(gray - want).mean() < 0.02  # the same picture, JPEG noise apart


@pytest.mark.parametrize("orientation", [6, 8, 3])
def test_predict_reads_the_number_in_a_rotated_photo(orientation, trained, tmp_path):
    from digits.predict import predict_files

    path, label = _number_photo()
    upright = Image.open(path).convert("RGB")
    (tmp_path / "upright.jpg").write_bytes(_encoded(upright, "JPEG", quality=95))
    (tmp_path / "phone.jpg").write_bytes(as_phone_stores_it(upright, orientation))
    got = {Path(r["path"]).name: r for r in predict_files([tmp_path], model="lenet5", backend="eager",
                                                          checkpoint=trained, artifacts=trained)}
    # the briefly trained fixture model may misread a digit: the rotated photo must read as the upright one
    assert got["phone.jpg"]["number"] == got["upright.jpg"]["number"] and len(got["phone.jpg"]["digits"]) == len(label)
    for a, b in zip(got["phone.jpg"]["digits"], got["upright.jpg"]["digits"], strict=True):
        assert np.abs(np.subtract(a["box"], b["box"])).max() <= 3  # boxes in the upright picture's pixels


# --------------------------------------------------------------------------- modes
def _reference() -> np.ndarray:
    return np.asarray(drawn_seven(), dtype=np.float32) / 255


def _as_mode(mode: str) -> Image.Image:
    page = np.asarray(drawn_seven(), dtype=np.float64) / 255
    if mode == "I;16":
        return Image.fromarray((page * 65535).astype(np.uint16))  # mode I;16
    if mode == "I":
        return Image.fromarray((page * 65535).astype(np.int32), "I")
    if mode == "F":
        return Image.fromarray((page * 3.5 - 1.0).astype(np.float32), "F")  # any range: scaled by it
    if mode == "RGBA":  # dark strokes on a transparent canvas
        a = np.zeros((*page.shape, 4), np.uint8)
        a[..., :3], a[..., 3] = 20, ((1 - page) * 255 / (1 - 20 / 255)).clip(0, 255).astype(np.uint8)
        return Image.fromarray(a, "RGBA")
    if mode == "1":  # a scanner's bilevel output: thresholded, not dithered
        return drawn_seven().convert("1", dither=Image.Dither.NONE)
    return drawn_seven().convert(mode)


@pytest.mark.parametrize("mode", ["L", "1", "P", "LA", "RGB", "RGBA", "CMYK", "I;16", "I", "F"])
def test_every_image_mode_reads_as_the_same_picture(mode):
    fmt = "TIFF" if mode in ("I", "F", "CMYK", "I;16") else "PNG"
    gray, _ = load_image(_encoded(_as_mode(mode), fmt))
    ref = _reference()
    # a bilevel image keeps only black and white; a float one is scaled by its own range (paper -> 1.0)
    tol = {"1": 0.12, "F": 0.05}.get(mode, 0.02)
    assert gray.shape == ref.shape and np.abs(gray - ref).mean() < tol, (mode, np.abs(gray - ref).mean())
    assert np.abs(preprocess(gray) - preprocess(ref)).mean() < 0.05  # and the model sees the same digit


def test_a_nearly_black_16_bit_scan_is_nearly_black_not_white():
    dark = Image.fromarray(np.full((64, 64), 1000, np.uint16))  # mode I;16
    gray, _ = load_image(_encoded(dark, "PNG"))
    assert gray.max() == pytest.approx(1000 / 65535, abs=1e-4)  # convert("L") clipped it to 255: white


@pytest.mark.parametrize("mode", ["P", "1", "LA", "RGBA", "CMYK"])
def test_large_images_of_every_mode_are_reduced_not_refused(mode):
    big = _as_mode(mode).resize((3000, 3000), Image.Resampling.NEAREST)
    fmt = "JPEG" if mode == "CMYK" else "PNG"
    gray, _ = load_image(_encoded(big, fmt))
    assert max(gray.shape) <= 1500  # reduced before any float array exists
    small = np.asarray(Image.fromarray((gray * 255).astype(np.uint8)).resize((300, 300)), np.float32) / 255
    assert np.abs(small - _reference()).mean() < 0.12, mode


def test_white_strokes_on_a_transparent_canvas_go_on_black():
    a = np.zeros((300, 300, 4), np.uint8)
    a[..., :3] = 255
    a[..., 3] = ((1 - _reference()) * 255).clip(0, 255).astype(np.uint8)  # white ink where the 7 is
    gray, rgb = load_image(_encoded(Image.fromarray(a, "RGBA"), "PNG"))
    assert rgb is None and gray[150, 10] < 0.05 and gray[70, 150] > 0.9  # black canvas, white stroke


# --------------------------------------------------------------------------- formats
@pytest.mark.parametrize("fmt, kw", [("PNG", {}), ("JPEG", {"quality": 95}), ("WEBP", {"lossless": True}),
                                     ("GIF", {}), ("BMP", {}), ("TIFF", {})])
def test_every_accepted_format_reads_as_the_same_picture(fmt, kw):
    img = drawn_seven().convert("RGB")
    if fmt == "GIF":  # an animated GIF: its first frame is the picture
        other = Image.new("RGB", img.size, "white")
        body = io.BytesIO()
        img.save(body, "GIF", save_all=True, append_images=[other], duration=100)
        body = body.getvalue()
    else:
        body = _encoded(img, fmt, **kw)
    gray, _ = load_image(body)
    assert np.abs(gray - _reference()).mean() < 0.02, fmt


@pytest.mark.parametrize("name, body", [
    ("EPS (Pillow would run Ghostscript)", b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n"),
    ("PPM", b"P5\n4 4\n255\n" + bytes(16)),
    ("ICO", _encoded(drawn_seven().resize((32, 32)), "ICO")),
    ("PDF", b"%PDF-1.4\n1 0 obj<<>>endobj\ntrailer<<>>\n%%EOF"),
    ("text", b"a note, not a picture"),
])
def test_other_formats_are_refused_by_name(name, body):
    with pytest.raises(Unsupported, match="is not a PNG, JPEG, WebP, GIF, BMP or TIFF image"):
        load_image(body)


def test_an_unsupported_format_is_415_on_the_server(served):
    from fastapi.testclient import TestClient

    from digits.serve import ServeConfig, create_app

    with TestClient(create_app(ServeConfig(artifacts=served, models=["lenet5"]))) as client:
        r = client.post("/v1/predict", content=_encoded(drawn_seven().resize((32, 32)), "ICO"),
                        headers={"Content-Type": "image/x-icon"})
        assert r.status_code == 415 and "is not a PNG, JPEG" in r.json()["error"]
        assert client.post("/v1/predict?model=lenet5", content=_encoded(drawn_seven(), "PNG"),
                           headers={"Content-Type": "image/png"}).status_code == 200


def test_a_truncated_file_is_an_image_error_not_unsupported():
    body = _encoded(drawn_seven(), "PNG")[:300]
    with pytest.raises(ImageError, match="cannot be read") as e:
        load_image(body)
    assert not isinstance(e.value, Unsupported)


def test_a_jpeg_with_a_second_picture_is_decoded_small_and_upright_like_any_jpeg(monkeypatch):
    """Phones store many photos as JPEGs with a second picture (an HDR gain map, a depth map, a
    preview: the MP format), which Pillow opens as "MPO": its first picture is the photo, and
    it is decoded at reduced size, as a plain JPEG is, not at full size and then shrunk."""
    from PIL import JpegImagePlugin

    asked = []
    draft = JpegImagePlugin.JpegImageFile.draft
    monkeypatch.setattr(JpegImagePlugin.JpegImageFile, "draft",
                        lambda self, mode, size: asked.append((self.format, size)) or draft(self, mode, size))
    upright = drawn_seven((300, 300)).convert("RGB").resize((3200, 3200), Image.Resampling.BILINEAR)
    exif = Image.Exif()
    exif[ORIENTATION] = 6
    buf = io.BytesIO()
    upright.transpose(STORED[6]).save(buf, "MPO", save_all=True, append_images=[Image.new("RGB", (400, 400), "black")],
                                      quality=95, exif=exif.tobytes())
    assert Image.open(io.BytesIO(buf.getvalue())).format == "MPO"
    gray, _ = load_image(buf.getvalue())
    assert [f for f, _ in asked] == ["MPO"]  # decoded at reduced size
    assert max(gray.shape) <= 1600
    small = np.asarray(Image.fromarray((gray * 255).astype(np.uint8)).resize((300, 300)), np.float32) / 255
    assert np.abs(small - _reference()).mean() < 0.05  # the first picture, upright (not the black second one)
