"""Turn a photo or drawing of a digit into MNIST's own format: 28x28, centred by mass.

MNIST digits are white on black, anti-aliased, size-normalised so the longer side of the
bounding box is 20 px, then placed in a 28x28 field with their centre of mass at the
centre. User images are nothing like that: dark ink on white paper, thin pen strokes, a
small digit in a large photo, RGBA canvases, a frame line or a paper edge at the border.
:func:`preprocess` applies MNIST's recipe to them; every step says why below.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import cv2
import numpy as np
from PIL import Image

from digits.aspect import aspects, fit
from digits.data import MEAN, STD
from digits.decode import TIME_BUDGET_S, Box, ImageError, TooLarge, Unsupported, load_gray, load_image  # noqa: F401 (their old home)
from digits.locate import Located, locate

TARGET_STROKE = 0.13  # MNIST stroke width / box side (about 2.6 px of 20)
STROKE_SLACK = 0.5  # strokes within this fraction of TARGET_STROKE are MNIST's already: left as written
CENTRE = 14.0  # px: where MNIST's digits have their centre of mass (training set mean: 13.99, 14.00)
SURE_WHOLE = float(np.log(0.9))  # a wide digit read whole at least this surely stays one digit
TINY_LEGIBLE = float(np.log(0.5))  # pieces of a wide group on a tiny canvas at least this sure are its digits
# ...unless the whole is shaped as almost no MNIST digit of its class is (digits.aspect.fit):
MISSHAPEN = 0.05  # a "3" touching a "7", squashed into 28x28, is a sure 0 too wide for a 0
SURE_PIECE = float(np.log(0.99))  # ...and its pieces each read at least this surely, and surer than it,
USUAL_PIECE = 0.3  # ...and each shaped as its class usually is (fit at least this): the pieces win


def _resize(a: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Area-style resize of a float image; size is (width, height)."""
    return np.asarray(Image.fromarray(a.astype(np.float32), mode="F").resize(size, Image.Resampling.BOX
                      if size[0] < a.shape[1] else Image.Resampling.BILINEAR), dtype=np.float32)


def preprocess(gray: np.ndarray, color: np.ndarray | None = None) -> np.ndarray:
    """float [H, W] in 0..1 -> MNIST-like float [28, 28] in 0..1 (white digit on black): the
    best digit candidate :func:`digits.locate.locate` finds, in MNIST's format."""
    digits = preprocess_all(gray, color, single=True)[0]
    return digits[0][1]


def preprocess_all(gray: np.ndarray, color: np.ndarray | None = None, *, single: bool = False,
                   deadline: float | None = None) -> tuple[list[tuple[tuple[int, int, int, int], np.ndarray]], Located]:
    """Every digit found, left to right: ``([(box, 28x28)], the localisation)`` (one with ``single``).
    :func:`found_in` adds the touching-digit readings a number may have. Past ``deadline``
    (``time.monotonic()``) the search gives up with an :class:`ImageError`."""
    found = locate(gray, color, single=single, deadline=deadline)
    if not found.boxes:
        raise ImageError("blank image: no digit found (nothing with a digit's size, shape and contrast)")
    return [(box, to_mnist(ink)) for box, ink in zip(found.boxes, found.ink, strict=True)], found


@dataclass
class Found:
    """What one image holds for a model to read: its digits, and for a digit wide enough to be
    several written touching, that reading too. ``images()`` lists every 28x28 to classify;
    ``read(logits)`` keeps, for each wide one, whichever reading the model is surer of."""

    digits: list[tuple[Box | None, np.ndarray]]
    splits: dict[int, list[tuple[Box, np.ndarray]]] = field(default_factory=dict)
    tiny: bool = False  # the image is a canvas at MNIST's scale (see _split_wins)

    def images(self) -> list[np.ndarray]:
        return [img for _, img in self.digits] + [img for i in sorted(self.splits) for _, img in self.splits[i]]

    def read(self, logits, temperature: float = 1.0) -> tuple[list[Box | None], np.ndarray, list[np.ndarray]]:
        """(boxes, logits, 28x28s) of the digits read, left to right. Touching digits win when
        their mean log top probability (calibrated) is above the whole group's: a wide 0 read
        whole is surer than its two halves, a 3 touching a 3 is not a sure 8."""
        from digits.calibrate import calibrated

        logits = np.asarray(logits, dtype=np.float32)
        if not self.splits:  # nothing to choose between (a JSON array, separate digits): read as found
            return [box for box, _ in self.digits], logits[:len(self.digits)], [img for _, img in self.digits]
        probs = calibrated(logits, temperature)
        top = np.log(probs.max(1))  # log of each row's top probability
        # each reading's shape: the ink's width / height in its 28x28, as digits.aspect measured MNIST's
        shape = [fit(a, int(c)) for a, c in zip(aspects(np.stack(self.images()) * 255), probs.argmax(1), strict=True)]
        boxes, rows, imgs, at = [], [], [], len(self.digits)
        for i, (box, img) in enumerate(self.digits):
            pieces = self.splits.get(i, [])
            span = slice(at, at + len(pieces))
            at += len(pieces)
            if pieces and _split_wins(top[i], top[span], shape[i], shape[span], box,
                                      self.tiny and len(self.digits) == 1):
                boxes += [b for b, _ in pieces]
                rows += list(logits[span])
                imgs += [im for _, im in pieces]
            else:
                boxes.append(box)
                rows.append(logits[i])
                imgs.append(img)
        return boxes, np.stack(rows), imgs


def _split_wins(whole: float, pieces: np.ndarray, whole_shape: float, piece_shapes: list[float],
                box: Box | None, tiny: bool) -> bool:
    """Whether a wide group reads as touching digits (``whole``: the log top probability of the
    group read as one digit; ``pieces``: its pieces'; the shapes: how usual each one's width is
    for the class read, digits.aspect.fit). When all of a ``tiny`` canvas's ink (MNIST's scale,
    at most ``digits.ink.TINY_SIDE`` px) is that group, where one digit would have been drawn to
    fill the height, ink wider than tall is two digits whenever they are legible. Elsewhere a
    sure whole reading stays (a wide 4 on a photo, a round 6 beside an 8 on a tiny canvas)
    unless it is ``MISSHAPEN`` and every piece is sure, surer than the whole, and usually shaped
    (a "03" read as a sure but very wide 0); an unsure one gives way to surer pieces."""
    if tiny and box is not None and box[2] - box[0] >= box[3] - box[1]:
        return pieces.mean() > TINY_LEGIBLE
    if whole >= SURE_WHOLE:
        return whole_shape < MISSHAPEN and pieces.min() >= max(SURE_PIECE, whole) and min(piece_shapes) >= USUAL_PIECE
    return pieces.mean() > whole


def found_in(digits: list[tuple[Box, np.ndarray]], located: Located,
             to_original: Callable[[Box], Box] = lambda box: box) -> Found:
    """What :func:`preprocess_all` found, to read; ``to_original`` gives its boxes in the pixels
    of the image as sent, where it was decoded reduced (digits.decode.Decoded.to_original)."""
    splits = {}
    for i, pieces in located.splits.items():
        try:
            splits[i] = [(to_original(box), to_mnist(ink)) for box, ink in pieces]
        except ImageError:  # a piece with hardly any ink: not a reading worth offering
            continue
    return Found([(to_original(box), img) for box, img in digits], splits, located.tiny)


def to_mnist(ink: np.ndarray) -> np.ndarray:
    """A digit's ink (0..1, ink bright, cropped to it) -> 28x28 as MNIST made its digits."""
    ys, xs = np.nonzero(ink > 0.05)
    if len(ys) < 4:
        raise ImageError("blank image: the digit found has almost no ink")
    gray = ink[ys.min():ys.max() + 1, xs.min():xs.max() + 1]
    gray = gray / max(float(gray.max()), 1e-6)
    mask = gray > 0.35
    # 4. strokes to MNIST's width before shrinking: a thin pen thickened, a marker thinned; a
    # stroke as wide as MNIST's varied is left alone, as MNIST's own were: reshaping those cost
    # the CNNs 8-10 errors in 10,000 MNIST test digits written large (scripts/skew_eval.py)
    # (cv2's dilation and erosion are O(1) per pixel; PIL's MaxFilter was O(size^2))
    side = max(gray.shape)
    width = _stroke_width(mask)
    grow = int(round(TARGET_STROKE * side - width))
    if abs(grow) >= max(2.0, STROKE_SLACK * TARGET_STROKE * side):
        kernel = np.ones((2 * (abs(grow) // 2) + 1,) * 2, np.uint8)
        gray = (cv2.dilate if grow > 0 else cv2.erode)(gray.astype(np.float32), kernel)
    # 5. longer side to 20 px, aspect kept.
    hh, ww = gray.shape
    f = 20 / max(hh, ww)
    small = _resize(gray, (max(1, round(ww * f)), max(1, round(hh * f))))
    small = np.clip(small / max(small.max(), 1e-6), 0, 1)
    # 6. paste into 28x28 with the centre of mass where MNIST's is: pixel (14, 14), not 13.5
    out = np.zeros((28, 28), np.float32)
    sh, sw = small.shape
    yy, xx = np.mgrid[0:sh, 0:sw]
    total = small.sum()
    if not total > 0:  # a speck all stroke, which thinning to MNIST's width left nothing of
        raise ImageError("blank image: the digit found has almost no ink")
    cy, cx = (yy * small).sum() / total, (xx * small).sum() / total
    top = int(np.clip(round(CENTRE - cy), 0, 28 - sh))
    left = int(np.clip(round(CENTRE - cx), 0, 28 - sw))
    out[top:top + sh, left:left + sw] = small
    return out


def _stroke_width(mask: np.ndarray) -> float:
    """Mean stroke width: ink area over half the outline length."""
    m = mask.astype(bool)
    edges = (m & ~np.roll(m, 1, 0)).sum() + (m & ~np.roll(m, -1, 0)).sum() + \
        (m & ~np.roll(m, 1, 1)).sum() + (m & ~np.roll(m, -1, 1)).sum()
    return m.sum() / max(edges / 2, 1)


def normalize28(img28: np.ndarray) -> np.ndarray:
    """[28, 28] in 0..1 -> the model's input [1, 28, 28], normalized like training."""
    return ((img28 - MEAN) / STD).astype(np.float32)[None]
