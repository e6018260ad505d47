"""Untrusted image bytes -> an upright float image, the way people's images really arrive.

- **Formats**: PNG, JPEG, WebP, GIF (first frame), BMP and TIFF only (Pillow's ``formats=``):
  Pillow knows dozens more, some parsed by plugins or external programs (EPS runs
  Ghostscript), and none of them is how a digit reaches us. Anything else is
  :class:`Unsupported` (the server's 415).
- **Orientation**: a phone stores a portrait photo as landscape pixels plus an EXIF
  ``Orientation`` tag (6, 8 or 3) that every viewer applies; so do we
  (``ImageOps.exif_transpose``), so the digits and their boxes are where the user sees them.
- **Size**: a large JPEG is decoded at reduced size (draft mode; also one with a second
  picture, Pillow's "MPO", as phones store HDR gain maps and depth maps), and any large image is
  reduced to about ``DECODE_SIDE`` px before a float array exists: memory does not grow
  with megapixels. :func:`decode` says by how much, so that boxes found on the reduced copy
  are given back in the pixels of the image the user sent (:meth:`Decoded.to_original`).
- **Modes**: 16-bit and 32-bit integer greyscale are scaled by their bit depth (or range), float
  by its range, never clipped (a 16-bit scan at 1,000/65,535 is nearly black, not white);
  palette, bilevel, CMYK and YCbCr become RGB or L before any resize; alpha is composited on
  the background that contrasts with the strokes (dark ink on white, white strokes on black).
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from digits.errors import DigitsError

FORMATS = ("PNG", "JPEG", "WEBP", "GIF", "BMP", "TIFF")
SUPPORTED = "PNG, JPEG, WebP, GIF, BMP or TIFF"
MAX_PIXELS = 50_000_000  # anything larger is not a photo of one digit
TIME_BUDGET_S = 2.0  # to find the digits in one image (digits.locate); a photo takes ~0.05 s
DECODE_SIDE = 1024  # large photos are decoded at reduced size, to at least this longer side (locate works at 512;
# a 1-px pen line must survive until it can be widened there: at 640, the JPEG decoder averaged it away)
ORIENTATION = 0x0112  # the EXIF tag
LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)


class ImageError(DigitsError):
    """A per-file problem: predict reports it for that file and goes on (the server: 422)."""


class TooLarge(ImageError):
    """An image over the pixel limit (the server answers 413)."""


class Unsupported(ImageError):
    """Not an image in one of :data:`FORMATS` (the server answers 415)."""


Box = tuple[int, int, int, int]


@dataclass
class Decoded:
    """An image as digits reads it: ``gray`` float32 [H, W] and, for a colour image, ``rgb``
    float32 [H, W, 3] in 0..1, upright; ``size`` is the (width, height) of the upright image
    as sent, which ``gray`` may be a reduced copy of."""

    gray: np.ndarray
    rgb: np.ndarray | None
    size: tuple[int, int]

    def to_original(self, box: Box | None) -> Box | None:
        """A box (x0, y0, x1, y1) on ``gray`` in the pixels of the image as sent (the one the user sees)."""
        if box is None:
            return None
        sx, sy = self.size[0] / self.gray.shape[1], self.size[1] / self.gray.shape[0]
        return (int(box[0] * sx), int(box[1] * sy), min(self.size[0], math.ceil(box[2] * sx)),
                min(self.size[1], math.ceil(box[3] * sy)))


def decode(path: str | Path | bytes, max_pixels: int = MAX_PIXELS) -> Decoded:
    """Any supported image (a file, or its bytes), upright, alpha flattened, large ones reduced."""
    img, size = _open(path, max_pixels)
    return Decoded(*_arrays(img), size)


def load_gray(path: str | Path | bytes, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """Any supported image (a file, or its bytes) as float32 [H, W] in 0..1, upright, alpha flattened."""
    return load_image(path, max_pixels)[0]


def load_image(path: str | Path | bytes, max_pixels: int = MAX_PIXELS) -> tuple[np.ndarray, np.ndarray | None]:
    """``(gray, rgb)``: float32 [H, W] and, for a colour image, float32 [H, W, 3] in 0..1, upright
    (a large image reduced: :func:`decode` also gives its size as sent)."""
    image = decode(path, max_pixels)
    return image.gray, image.rgb


def _arrays(img: Image.Image) -> tuple[np.ndarray, np.ndarray | None]:
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        return _flatten_alpha(np.asarray(img.convert("RGBA"), dtype=np.float32) / 255)
    if img.mode in ("RGB", "CMYK", "YCbCr", "P"):
        rgb = np.asarray(img.convert("RGB"), dtype=np.float32) / 255
        return (rgb @ LUMA).astype(np.float32), rgb
    if img.mode in ("1", "L"):
        return np.asarray(img.convert("L"), dtype=np.float32) / 255, None
    return _deep_gray(img), None


def _open(path: str | Path | bytes, max_pixels: int) -> tuple[Image.Image, tuple[int, int]]:
    """Decode, upright, and (large images) reduced: a PIL image of a mode ``load_image`` knows,
    and the upright image's size before it was reduced."""
    if isinstance(path, bytes):
        if not path:
            raise ImageError("is empty")
        source = io.BytesIO(path)
    else:
        path = Path(path)
        if not path.exists():
            raise ImageError("does not exist")
        if not path.is_file():
            raise ImageError("is not a regular file")
        source = path
    try:
        with Image.open(source, formats=FORMATS) as im:
            w, h = im.size
            if w * h > max_pixels:
                raise TooLarge(f"{w}x{h} pixels ({w * h / 1e6:.1f} MP) is larger than the "
                               f"{max_pixels / 1e6:g} MP limit")
            # MPO: a JPEG with a second picture (a phone's HDR gain map or depth map); the first is the photo
            if max(w, h) > 2 * DECODE_SIDE and im.format in ("JPEG", "MPO"):
                f = DECODE_SIDE / max(w, h)
                im.draft(im.mode if im.mode in ("L", "RGB") else "RGB", (max(1, int(w * f)), max(1, int(h * f))))
            im.load()  # a GIF's or TIFF's first frame
            turned = im.getexif().get(ORIENTATION, 1) in (5, 6, 7, 8)  # a quarter turn: width and height swap
            img = ImageOps.exif_transpose(im)  # upright, as every viewer shows it (a copy)
        if (k := max(img.size) // DECODE_SIDE) >= 2:
            if img.mode in ("1", "P", "CMYK", "YCbCr", "PA"):  # reduce() cannot average these
                img = img.convert("RGBA" if img.mode in ("P", "PA") and _has_alpha(img) else
                                  "L" if img.mode == "1" else "RGB")
            img = img.reduce(k)
    except ImageError:
        raise
    except UnidentifiedImageError:
        raise Unsupported(f"is not a {SUPPORTED} image") from None
    except Image.DecompressionBombError as e:
        raise ImageError(f"refused as a decompression bomb ({e})") from None
    except (OSError, ValueError, SyntaxError) as e:
        raise ImageError(f"cannot be read ({str(e).splitlines()[0] if str(e) else type(e).__name__})") from None
    return img, ((h, w) if turned else (w, h))


def _has_alpha(img: Image.Image) -> bool:
    return img.mode == "PA" or "transparency" in img.info


def _flatten_alpha(rgba: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    alpha = rgba[..., 3]
    lum = rgba[..., :3] @ LUMA
    if alpha.min() >= 0.99:
        return lum.astype(np.float32), rgba[..., :3]
    # Strokes on a transparent canvas: put them on the background that contrasts with them
    # (dark ink on white, white strokes on black), never on themselves.
    opaque = alpha > 0.5
    bg = 0.0 if opaque.any() and lum[opaque].mean() > 0.5 else 1.0
    return (lum * alpha + bg * (1 - alpha)).astype(np.float32), None


def _deep_gray(img: Image.Image) -> np.ndarray:
    """16-bit, 32-bit integer and float greyscale to 0..1 by bit depth or range, never clipped."""
    a = np.asarray(img, dtype=np.float64)
    if img.mode.startswith("I;16"):
        return (a / 65535).astype(np.float32)
    lo, hi = float(a.min()), float(a.max())
    if img.mode == "I" and lo >= 0 and hi <= 65535:  # 16-bit PNGs open as I: their depth is 16 bits
        return (a / (255 if hi <= 255 else 65535)).astype(np.float32)
    if img.mode == "F" and lo >= 0 and hi <= 1:  # already 0..1
        return a.astype(np.float32)
    if hi <= lo:
        return np.zeros(a.shape, np.float32) + (0.0 if hi <= 0 else 1.0)
    return ((a - lo) / (hi - lo)).astype(np.float32)
