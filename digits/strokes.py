"""Digits drawn as pen strokes, the way people draw them on the page's canvas.

Not MNIST pixels (digits.synth composites those onto paper): each digit is a few polylines
in a unit box, in several common shapes (a 1 with or without its flag, an open or closed
4, a 6 whose loop stays open, a 7 with a crossbar), then slanted, rotated, squeezed,
scaled, moved and jittered at random, and drawn with a round pen of random width as white
strokes on black, 280x280, as the page's canvas sends them. Used to measure how the models
read drawings (scripts/canvas_eval.py) apart from the photo set.
"""

from __future__ import annotations

import io
import math

import numpy as np
from PIL import Image, ImageDraw

Stroke = list[tuple[float, float]]
# x right, y down, in [0, 1]: the shapes people write, several per digit
SHAPES: dict[int, list[list[Stroke]]] = {
    0: [[[(0.5 + 0.32 * math.sin(t), 0.5 - 0.46 * math.cos(t)) for t in np.linspace(0, 2 * math.pi, 25)]]],
    1: [[[(0.5, 0.03), (0.5, 0.97)]],
        [[(0.3, 0.22), (0.55, 0.03), (0.55, 0.97)]],
        [[(0.3, 0.22), (0.55, 0.03), (0.55, 0.97)], [(0.3, 0.97), (0.8, 0.97)]]],
    2: [[[(0.2, 0.25), (0.32, 0.08), (0.52, 0.03), (0.72, 0.1), (0.8, 0.28), (0.72, 0.48), (0.2, 0.95), (0.85, 0.95)]],
        [[(0.2, 0.2), (0.5, 0.03), (0.8, 0.2), (0.75, 0.42), (0.18, 0.95), (0.45, 0.85), (0.85, 0.97)]]],
    3: [[[(0.2, 0.12), (0.5, 0.03), (0.78, 0.15), (0.75, 0.36), (0.45, 0.48), (0.8, 0.62), (0.8, 0.85),
          (0.52, 0.97), (0.2, 0.88)]],
        [[(0.2, 0.05), (0.8, 0.05), (0.45, 0.42), (0.78, 0.58), (0.75, 0.88), (0.45, 0.97), (0.18, 0.85)]]],
    4: [[[(0.62, 0.97), (0.62, 0.03), (0.12, 0.66), (0.88, 0.66)]],
        [[(0.25, 0.03), (0.18, 0.6), (0.88, 0.6)], [(0.68, 0.25), (0.68, 0.97)]]],
    5: [[[(0.8, 0.05), (0.28, 0.05), (0.22, 0.45), (0.5, 0.37), (0.78, 0.5), (0.8, 0.76), (0.55, 0.96), (0.2, 0.88)]],
        [[(0.28, 0.05), (0.22, 0.45), (0.5, 0.37), (0.78, 0.5), (0.8, 0.76), (0.55, 0.96), (0.2, 0.88)],
         [(0.28, 0.05), (0.82, 0.03)]]],
    6: [[[(0.72, 0.05), (0.45, 0.2), (0.26, 0.5), (0.22, 0.76), (0.36, 0.94), (0.6, 0.96), (0.77, 0.8),
          (0.72, 0.6), (0.5, 0.52), (0.26, 0.62)]],
        [[(0.7, 0.03), (0.4, 0.25), (0.25, 0.55), (0.25, 0.8), (0.42, 0.96), (0.65, 0.92), (0.75, 0.74),
          (0.62, 0.58), (0.45, 0.6)]]],  # the loop left open
    7: [[[(0.15, 0.08), (0.85, 0.08), (0.4, 0.97)]],
        [[(0.15, 0.12), (0.85, 0.08), (0.45, 0.97)], [(0.35, 0.5), (0.78, 0.5)]]],
    8: [[[(0.5, 0.5), (0.25, 0.3), (0.35, 0.07), (0.65, 0.07), (0.75, 0.3), (0.5, 0.5), (0.2, 0.73), (0.35, 0.95),
          (0.65, 0.95), (0.8, 0.73), (0.5, 0.5)]]],
    9: [[[(0.76, 0.3), (0.6, 0.07), (0.35, 0.09), (0.24, 0.3), (0.4, 0.48), (0.7, 0.42), (0.76, 0.3), (0.74, 0.6),
          (0.66, 0.97)]],
        [[(0.76, 0.25), (0.55, 0.05), (0.3, 0.12), (0.26, 0.35), (0.5, 0.45), (0.76, 0.25), (0.76, 0.97)]]],
}


def draw(digit: int, rng: np.random.Generator, size: int = 280, *, shape: int | None = None,
         width_px: tuple[int, int] = (10, 26)) -> tuple[bytes, dict]:
    """One drawing of ``digit`` as a PNG (white strokes on black, as the page's canvas sends
    it), and the settings drawn for it. ``shape`` picks one of the digit's SHAPES (default: at
    random); ``width_px``: the pen width is drawn from [low, high) px."""
    mask, s = render(digit, rng, size, shape=shape, width_px=width_px)
    buf = io.BytesIO()
    Image.fromarray(mask).save(buf, format="PNG")
    return buf.getvalue(), s


def render(digit: int, rng: np.random.Generator, size: int = 280, *, shape: int | None = None,
           width_px: tuple[int, int] = (10, 26)) -> tuple[np.ndarray, dict]:
    """``(uint8 [size, size] stroke mask, settings)``: the strokes of one drawing of ``digit``."""
    shapes = SHAPES[digit]
    shape = int(rng.integers(len(shapes))) if shape is None else shape
    s = {"shape": shape, "slant": float(rng.uniform(-0.2, 0.4)), "rotate": float(rng.uniform(-12, 12)),
         "squeeze": float(rng.uniform(0.55, 1.1)), "height": float(rng.uniform(0.45, 0.85)),
         "width_px": int(rng.integers(*width_px)), "dx": float(rng.uniform(-0.15, 0.15)),
         "dy": float(rng.uniform(-0.1, 0.1))}
    a = math.radians(s["rotate"])
    img = Image.new("L", (size, size), 0)
    pen = ImageDraw.Draw(img)
    for stroke in shapes[shape]:
        pts = []
        for x, y in stroke:
            x, y = x + rng.normal(0, 0.012), y + rng.normal(0, 0.012)  # a hand is not a ruler
            x, y = (x - 0.5) * s["squeeze"] + s["slant"] * (0.5 - y), y - 0.5  # slant: the top leans right
            x, y = x * math.cos(a) - y * math.sin(a), x * math.sin(a) + y * math.cos(a)
            pts.append(((0.5 + s["dx"] + x * s["height"]) * size, (0.5 + s["dy"] + y * s["height"]) * size))
        pen.line(pts, fill=255, width=s["width_px"], joint="curve")
        for p in (pts[0], pts[-1]):  # round pen ends, as the canvas's lineCap
            r = s["width_px"] / 2
            pen.ellipse([p[0] - r, p[1] - r, p[0] + r, p[1] + r], fill=255)
    return np.asarray(img), s
