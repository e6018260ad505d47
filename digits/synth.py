"""Realistic phone photos of handwritten digits and numbers, made from MNIST digits.

What makes a phone photo of a digit hard, each drawn at random per image: ruled paper with
a red margin line, graph paper, a yellow sticky note or plain paper; blue or black ink; the
page seen at a slight tilt and perspective with the table visible past its edge; a soft
shadow across one side; uneven light; blur, sensor noise and JPEG compression; the digit
at any size and place, or a number of 2-6 digits written left to right.

Each image comes with its ground truth: the string written and one box per digit (in the
photo's pixels), so localisation is testable apart from classification.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass, field
from typing import Callable

import cv2
import numpy as np
from PIL import Image

PAPERS = ("ruled", "graph", "sticky", "plain")
INKS = {"blue": (150, 45, 30), "black": (28, 25, 22), "dark blue": (110, 40, 35)}  # BGR


@dataclass
class Photo:
    jpeg: bytes
    label: str  # the digits written, left to right
    boxes: list[tuple[int, int, int, int]]  # x0, y0, x1, y1 per digit, in the photo
    settings: dict = field(default_factory=dict)


def _paper(rng: np.random.Generator, h: int, w: int, kind: str) -> np.ndarray:
    if kind == "sticky":
        base = np.array([120, 235, 250], np.float32) + rng.uniform(-10, 5, 3)  # yellow, BGR
    else:
        base = np.array([243, 246, 248], np.float32) + rng.uniform(-12, 4, 3)
    page = np.ones((h, w, 3), np.float32) * base
    if kind == "ruled":
        step = int(rng.integers(22, 34))
        line = np.array([200, 150, 110], np.float32)  # light blue
        for y in range(int(rng.integers(30, 60)), h, step):
            cv2.line(page, (0, y), (w, y), line.tolist(), 1, cv2.LINE_AA)
        x = int(rng.integers(50, 90))
        cv2.line(page, (x, 0), (x, h), (90, 90, 215), 2, cv2.LINE_AA)  # the red margin
    elif kind == "graph":
        step = int(rng.integers(14, 24))
        line = np.array([205, 185, 160], np.float32)
        for y in range(0, h, step):
            cv2.line(page, (0, y), (w, y), line.tolist(), 1, cv2.LINE_AA)
        for x in range(0, w, step):
            cv2.line(page, (x, 0), (x, h), line.tolist(), 1, cv2.LINE_AA)
    return page


def _ink_alpha(digit28: np.ndarray, height: int, rng: np.random.Generator) -> np.ndarray:
    """A 28x28 MNIST digit (0..1, white on black) as a pen stroke mask ``height`` px tall."""
    ys, xs = np.nonzero(digit28 > 0.1)
    crop = digit28[ys.min():ys.max() + 1, xs.min():xs.max() + 1]
    f = height / crop.shape[0]
    big = cv2.resize(crop, (max(2, round(crop.shape[1] * f)), height), interpolation=cv2.INTER_CUBIC)
    # a pen is thinner than MNIST's strokes: erode a little, then keep the anti-aliased edge
    k = max(1, int(height * rng.uniform(0.0, 0.03)))
    if k > 1:
        big = cv2.erode(big, np.ones((k, k), np.uint8))
    return np.clip((big - 0.25) / 0.5, 0, 1).astype(np.float32)


def make_photo(digits28: list[np.ndarray], labels: list[int], rng: np.random.Generator,
               size: tuple[int, int] = (640, 480), gap: tuple[float, float] = (0.08, 0.35), *,
               ink_alpha: Callable | None = None, blur: tuple[float, float] = (0.3, 1.4), guides: int = 0,
               shadow: float = 0.7, paper: str | None = None, height: tuple[float, float] | None = None) -> Photo:
    """One photo of the given MNIST digits written left to right (one digit: a single digit),
    ``gap`` apart (in digit heights: a negative gap writes them touching or overlapping).

    Options for the kinds of digits.kinds: ``ink_alpha(i, height_px, rng)`` draws digit i's
    pen mask instead (a marker, a thin pen); ``blur`` is the range of the Gaussian sigma;
    ``guides`` faint pencil lines cross the written line; ``shadow`` is the chance of a soft
    shadow over one side; ``paper`` picks one of PAPERS; ``height`` is the range of the digits'
    height over the page's (default 0.12-0.35 for one digit, 0.12-0.2 for a number)."""
    W, H = size
    paper = paper or str(rng.choice(PAPERS))
    pw, ph = int(W * rng.uniform(1.0, 1.25)), int(H * rng.uniform(1.0, 1.25))
    page = _paper(rng, ph, pw, paper)
    ink = np.array(list(INKS.values())[int(rng.integers(len(INKS)))], np.float32)
    n = len(digits28)
    height = int(rng.uniform(*(height or (0.12, 0.35 if n == 1 else 0.2))) * ph)
    draw_alpha = ink_alpha or (lambda i, h, rng: _ink_alpha(digits28[i], h, rng))
    alphas = [draw_alpha(i, int(height * rng.uniform(0.9, 1.1)), rng) for i in range(n)]
    gaps = [int(height * rng.uniform(*gap)) for _ in range(n)]
    total = sum(a.shape[1] for a in alphas) + sum(gaps[:-1])
    if total > 0.76 * pw:  # a long row: written smaller, so that it fits on the page
        f = 0.76 * pw / total
        alphas = [cv2.resize(a, (max(1, int(a.shape[1] * f)), max(1, int(a.shape[0] * f))), interpolation=cv2.INTER_AREA)
                  for a in alphas]
        gaps, height = [int(g * f) for g in gaps], int(height * f)
        total = sum(a.shape[1] for a in alphas) + sum(gaps[:-1])
    x = int(rng.uniform(0.12 * pw, max(0.12 * pw + 1, 0.88 * pw - total)))
    base_y = int(rng.uniform(0.15 * ph, 0.85 * ph - height))
    for _ in range(guides):  # a faint pencil line across the written line, as people rule their own
        y = base_y + int(rng.uniform(0.25, 0.8) * height)
        cv2.line(page, (0, y), (pw, y + int(rng.uniform(-0.05, 0.05) * ph)),
                 (page[y % ph, 0] * rng.uniform(0.62, 0.78)).tolist(), int(rng.integers(1, 3)), cv2.LINE_AA)
    boxes = []
    for a, gap in zip(alphas, gaps, strict=True):
        y = base_y + int(rng.uniform(-0.06, 0.06) * height)
        h, w = a.shape
        x1, y1 = min(pw, x + w), min(ph, y + h)
        a = a[:y1 - y, :x1 - x, None] * rng.uniform(0.75, 0.95)
        page[y:y1, x:x1] = page[y:y1, x:x1] * (1 - a) + ink * a
        boxes.append((x, y, x1, y1))
        x = x1 + gap
    # the page onto the table, seen at a tilt: a perspective warp of its corners
    table = np.array([rng.uniform(60, 140), rng.uniform(80, 150), rng.uniform(100, 180)], np.float32)
    frame = np.ones((H, W, 3), np.float32) * table
    frame += rng.normal(0, 6, (H, W, 1)).astype(np.float32)  # the table's grain
    src = np.float32([[0, 0], [pw, 0], [pw, ph], [0, ph]])
    inset = rng.uniform(-0.08, 0.1, (4, 2)) * [W, H]
    dst = np.float32([[0, 0], [W, 0], [W, H], [0, H]]) + inset * [[1, 1], [-1, 1], [-1, -1], [1, -1]]
    angle = math.radians(rng.uniform(-7, 7))
    c = dst.mean(0)
    rot = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]], np.float32)
    dst = ((dst - c) @ rot.T + c).astype(np.float32)
    m = cv2.getPerspectiveTransform(src, dst)
    warped = cv2.warpPerspective(page, m, (W, H), flags=cv2.INTER_LINEAR, borderValue=(-1, -1, -1))
    inside = warped[..., :1] >= 0
    img = np.where(inside, warped, frame)
    # light: one smooth gradient across the photo, and a soft shadow over one side
    yy, xx = np.mgrid[0:H, 0:W].astype(np.float32)
    gx, gy = rng.uniform(-1, 1, 2)
    light = 1 + 0.18 * ((xx / W - 0.5) * gx + (yy / H - 0.5) * gy)
    if rng.random() < shadow:
        side = rng.uniform(0, 2 * math.pi)
        d = (xx / W - 0.5) * math.cos(side) + (yy / H - 0.5) * math.sin(side)
        edge = rng.uniform(0.1, 0.4)
        light *= 1 - rng.uniform(0.25, 0.5) / (1 + np.exp(-(d - edge) / 0.04))
    img = img * light[..., None]
    sigma = rng.uniform(*blur)
    img = cv2.GaussianBlur(img, (0, 0), sigma)
    img += rng.normal(0, rng.uniform(1.5, 5), img.shape).astype(np.float32)
    img = np.clip(img, 0, 255).astype(np.uint8)
    quality = int(rng.integers(55, 92))
    buf = io.BytesIO()
    Image.fromarray(img[..., ::-1]).save(buf, format="JPEG", quality=quality)
    out_boxes = []
    for x0, y0, x1, y1 in boxes:
        pts = cv2.perspectiveTransform(np.float32([[[x0, y0]], [[x1, y0]], [[x1, y1]], [[x0, y1]]]), m)[:, 0]
        out_boxes.append((int(pts[:, 0].min()), int(pts[:, 1].min()), int(pts[:, 0].max()), int(pts[:, 1].max())))
    return Photo(jpeg=buf.getvalue(), label="".join(map(str, labels)), boxes=out_boxes,
                 settings={"paper": paper, "height_px": height, "blur_sigma": round(sigma, 2), "jpeg_quality": quality})
