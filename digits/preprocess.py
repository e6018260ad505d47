"""Turn a photo or drawing of a digit into MNIST's own format: 28x28, centred by mass.

MNIST digits are white on black, anti-aliased, size-normalised so the longer side of the
bounding box is 20 px, then placed in a 28x28 field with their centre of mass at the
centre. User images are nothing like that: dark ink on white paper, thin pen strokes, a
small digit in a large photo, RGBA canvases, a frame line or a paper edge at the border.
:func:`preprocess` applies MNIST's recipe to them; every step says why below.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter, UnidentifiedImageError

from digits.data import MEAN, STD
from digits.errors import DigitsError

MAX_PIXELS = 50_000_000  # anything larger is not a photo of one digit
WORK_SIDE = 256  # images are analysed at this longer side: plenty for one digit, and fast
TARGET_STROKE = 0.13  # MNIST stroke width / box side (about 2.6 px of 20)


class ImageError(DigitsError):
    """A per-file problem: predict reports it for that file and goes on."""


class TooLarge(ImageError):
    """An image over the pixel limit (the server answers 413)."""


def load_gray(path: str | Path | bytes, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """Read any PIL-readable image (a file, or its bytes) as float32 [H, W] in 0..1, flattening alpha sensibly."""
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
        with Image.open(source) as im:
            w, h = im.size
            if w * h > max_pixels:
                raise TooLarge(f"{w}x{h} pixels ({w * h / 1e6:.1f} MP) is larger than the "
                               f"{max_pixels / 1e6:g} MP limit")
            im.load()
            img = im.copy()
    except ImageError:
        raise
    except UnidentifiedImageError:
        raise ImageError("not an image (PIL cannot identify the format)") from None
    except Image.DecompressionBombError as e:
        raise ImageError(f"refused as a decompression bomb ({e})") from None
    except (OSError, ValueError, SyntaxError) as e:
        raise ImageError(f"cannot be read ({str(e).splitlines()[0] if str(e) else type(e).__name__})") from None
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = np.asarray(img.convert("RGBA"), dtype=np.float32) / 255
        alpha = rgba[..., 3]
        lum = rgba[..., :3] @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
        if alpha.min() < 0.99:
            # Strokes on a transparent canvas: put them on the background that contrasts
            # with them (white strokes on black, dark strokes on white), never on themselves.
            opaque = alpha > 0.5
            ink_is_bright = opaque.any() and lum[opaque].mean() > 0.5
            bg = 0.0 if ink_is_bright else 1.0
            return (lum * alpha + bg * (1 - alpha)).astype(np.float32)
        return lum.astype(np.float32)
    return np.asarray(img.convert("L"), dtype=np.float32) / 255


def _resize(a: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Area-style resize of a float image; size is (width, height)."""
    return np.asarray(Image.fromarray(a.astype(np.float32), mode="F").resize(size, Image.Resampling.BOX
                      if size[0] < a.shape[1] else Image.Resampling.BILINEAR), dtype=np.float32)


def _otsu(a: np.ndarray) -> float:
    hist, edges = np.histogram(a, bins=64, range=(0.0, 1.0))
    p = hist / max(hist.sum(), 1)
    omega, mu = np.cumsum(p), np.cumsum(p * (edges[:-1] + edges[1:]) / 2)
    between = (mu[-1] * omega - mu) ** 2 / np.maximum(omega * (1 - omega), 1e-12)
    return float(edges[1:][np.argmax(between)])


def _components(mask: np.ndarray) -> np.ndarray:
    """Label 8-connected components by propagating the max label to a fixed point."""
    h, w = mask.shape
    labels = np.where(mask, np.arange(1, h * w + 1).reshape(h, w), 0)
    while True:
        padded = np.pad(labels, 1)
        neigh = np.max([padded[1 + dy:1 + dy + h, 1 + dx:1 + dx + w]
                        for dy in (-1, 0, 1) for dx in (-1, 0, 1)], axis=0)
        new = np.where(mask, neigh, 0)
        if np.array_equal(new, labels):
            return labels
        labels = new


def _labels(mask: np.ndarray, k: int = 4) -> np.ndarray:
    """Components at 1/k resolution (block max keeps thin strokes), mapped back to full size."""
    h, w = mask.shape
    ph, pw = -h % k, -w % k
    small = np.pad(mask, ((0, ph), (0, pw))).reshape((h + ph) // k, k, (w + pw) // k, k).any(axis=(1, 3))
    labels = _components(small)
    return np.repeat(np.repeat(labels, k, 0), k, 1)[:h, :w] * mask


def _drop_border_clutter(mask: np.ndarray) -> np.ndarray:
    """Remove what is not the digit: frame lines, paper edges, shadows, specks.

    Dropped: components touching the image border (paper edges, shadows, a canvas
    border) unless nothing else is left; outlines spanning most of the image (a frame
    drawn inside the border); long thin lines along a side; specks under 2% of the
    heaviest remaining component.
    """
    labels = _labels(mask)
    H, W = mask.shape
    border = set(np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))) - {0}
    inner, outer = [], []
    for i in np.unique(labels[labels > 0]):
        ys, xs = np.nonzero(labels == i)
        h, w = np.ptp(ys) + 1, np.ptp(xs) + 1
        frame = h >= 0.8 * H and w >= 0.8 * W and len(ys) < 0.3 * h * w
        line = (h >= 0.8 * H and w < 0.1 * W) or (w >= 0.8 * W and h < 0.1 * H)
        if frame or line:
            continue
        (outer if i in border else inner).append((len(ys), i))
    candidates = inner or outer[:]  # a digit that fills the image touches the border too
    if not candidates:
        return np.zeros_like(mask)
    heaviest = max(c for c, _ in candidates)
    keep = np.zeros_like(mask)
    for count, i in candidates:
        if count >= 0.02 * heaviest:
            keep |= labels == i
    return keep


def preprocess(gray: np.ndarray) -> np.ndarray:
    """float [H, W] in 0..1 -> MNIST-like float [28, 28] in 0..1 (white digit on black)."""
    h, w = gray.shape
    scale = WORK_SIDE / max(h, w)
    if scale < 1:
        gray = _resize(gray, (max(1, round(w * scale)), max(1, round(h * scale))))
    # 1. auto-invert: the border is mostly background; MNIST wants bright ink on dark.
    border = np.concatenate([gray[0], gray[-1], gray[:, 0], gray[:, -1]])
    if np.median(border) > 0.5:
        gray = 1.0 - gray
    # 2. threshold away the background: subtract its level, cut at Otsu's threshold.
    gray = np.clip(gray - np.median(gray), 0, None)
    if gray.max() < 0.1:
        raise ImageError("blank image: no digit found (the canvas has no contrast)")
    gray = gray / gray.max()
    mask = gray > max(_otsu(gray), 0.2)
    mask = _drop_border_clutter(mask)
    if mask.sum() < 4:
        raise ImageError("blank image: no digit found after removing background and border clutter")
    gray = np.where(_grow(mask), gray, 0.0)
    # 3. crop to the digit's bounding box.
    ys, xs = np.nonzero(mask)
    gray = gray[ys.min():ys.max() + 1, xs.min():xs.max() + 1]
    mask = mask[ys.min():ys.max() + 1, xs.min():xs.max() + 1]
    # 4. thin strokes (a pen on a big photo) become MNIST-thick before shrinking.
    side = max(gray.shape)
    width = _stroke_width(mask)
    grow = int(round(TARGET_STROKE * side - width))
    if grow >= 2:
        img = Image.fromarray((gray * 255).astype(np.uint8)).filter(ImageFilter.MaxFilter(2 * (grow // 2) + 1))
        gray = np.asarray(img, dtype=np.float32) / 255
    # 5. longer side to 20 px, aspect kept.
    hh, ww = gray.shape
    f = 20 / max(hh, ww)
    small = _resize(gray, (max(1, round(ww * f)), max(1, round(hh * f))))
    small = np.clip(small / max(small.max(), 1e-6), 0, 1)
    # 6. paste into 28x28 with the centre of mass at the centre.
    out = np.zeros((28, 28), np.float32)
    sh, sw = small.shape
    yy, xx = np.mgrid[0:sh, 0:sw]
    total = small.sum()
    cy, cx = (yy * small).sum() / total, (xx * small).sum() / total
    top = int(np.clip(round(14 - cy - 0.5), 0, 28 - sh))
    left = int(np.clip(round(14 - cx - 0.5), 0, 28 - sw))
    out[top:top + sh, left:left + sw] = small
    return out


def _grow(mask: np.ndarray) -> np.ndarray:
    # Keep the anti-aliased rim around the kept strokes, not just the thresholded core.
    img = Image.fromarray(mask.astype(np.uint8) * 255).filter(ImageFilter.MaxFilter(3))
    return np.asarray(img) > 0


def _stroke_width(mask: np.ndarray) -> float:
    """Mean stroke width: ink area over half the outline length."""
    m = mask.astype(bool)
    edges = (m & ~np.roll(m, 1, 0)).sum() + (m & ~np.roll(m, -1, 0)).sum() + \
        (m & ~np.roll(m, 1, 1)).sum() + (m & ~np.roll(m, -1, 1)).sum()
    return m.sum() / max(edges / 2, 1)


def normalize28(img28: np.ndarray) -> np.ndarray:
    """[28, 28] in 0..1 -> the model's input [1, 28, 28], normalized like training."""
    return ((img28 - MEAN) / STD).astype(np.float32)[None]
