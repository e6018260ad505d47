"""Find the digits in a photo or a drawing: flatten the light, threshold, drop ruled lines and
clutter, group strokes into digits, and read a number left to right.

Built on OpenCV (morphology, connected components, resizing). The steps, on a working copy
whose longer side is ``WORK_SIDE`` px:

1. **polarity**: ink is made dark on a light background (a canvas of white strokes on black
   is inverted), judged from the median pixel: most of any such image is background;
2. **flatten**: the background is estimated by a morphological closing four times as wide
   as the pen's stroke (it paints over the ink but follows a shadow's edge) and smoothed; the image is divided by it, so shadows,
   uneven light and the paper's colour become 1.0 and ink stays dark wherever it is;
3. **threshold**: ink darkness (1 - flattened) over Otsu's cut, with a floor. After the
   division this is a local threshold: each pixel is judged against its own neighbourhood;
4. **lines**: long thin horizontal and vertical runs (ruling, graph paper, the margin line,
   the page edge) found by openings with kernels a quarter of the image long are removed,
   and strokes they crossed are closed again; reddish pixels (a margin line, where the ink
   is blue or black) are not ink;
5. **candidates**: connected components, without specks, remnants of lines and anything
   touching the image border (the table, a shadow's edge), unless nothing else is left;
6. **grouping**: components stacked above each other with overlapping columns are one digit
   (the detached bar of a 5, the open top of a 4);
7. **choice**: each group is scored by how much it looks like a handwritten digit (size in
   the image, aspect, ink density, closeness to the centre); the best one is the digit, and
   groups of a similar height on the same line, close enough, are the rest of a number;
8. **touching digits** (numbers only): a group wider than ``SPLIT_ASPECT`` times its height
   may be several digits written touching. It stays one digit here, and ``splits`` offers
   the other reading: as many digits as its width holds, each cut at the column with the
   least ink near its expected place (the vertical projection, as classic OCR segments
   touching characters). A wide 0 or 2 is one digit, so the choice is the model's, by
   which reading it is surer of (recognition-based segmentation: ``Found.read`` in
   digits.preprocess).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import cv2
import numpy as np

WORK_SIDE = 512  # px: plenty for a few handwritten digits, and a few ms per step
MIN_WORK_SIDE = 256  # smaller images are enlarged to this; between the two they are worked at their own size
SPLIT_ASPECT = 1.15  # width / height above which a group of a number may be several touching digits
DIGIT_ASPECT = 0.75  # a handwritten digit's typical width / height, to count the digits in a wide group


@dataclass
class Located:
    boxes: list[tuple[int, int, int, int]]  # x0, y0, x1, y1 of each digit, left to right, in input pixels
    ink: list[np.ndarray]  # each digit's ink darkness (0..1, ink bright), cropped to its box
    steps: dict[str, np.ndarray] = field(default_factory=dict, repr=False)  # for the mosaic: uint8 images
    # the index of a digit that may be touching digits -> [(box, ink)] of each, left to right
    splits: dict[int, list[tuple[tuple[int, int, int, int], np.ndarray]]] = field(default_factory=dict, repr=False)


def to_work(gray: np.ndarray, color: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray | None, float]:
    """Resize to ``WORK_SIDE`` (area interpolation when shrinking); returns (gray, colour, scale)."""
    h, w = gray.shape
    scale = min(max(max(h, w), MIN_WORK_SIDE), WORK_SIDE) / max(h, w)
    if abs(scale - 1) > 1e-3:
        size = (max(1, round(w * scale)), max(1, round(h * scale)))
        interp = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
        gray = cv2.resize(gray, size, interpolation=interp)
        color = None if color is None else cv2.resize(color, size, interpolation=interp)
    return gray, color, scale


def ink_darkness(gray: np.ndarray, color: np.ndarray | None = None, k: int | None = None) -> np.ndarray:
    """Steps 1-2 (and the colour rule of 4): float [H, W], 0 where background, up to 1 for ink.
    ``k``: the closing's width in px (default: from the stroke width)."""
    g = gray.astype(np.float32)
    if np.median(g) < 0.4:  # most of an image is background: bright strokes on a dark canvas (or MNIST)
        g = 1.0 - g
    side = max(g.shape)
    k = (k or _closing_size(g, side)) | 1
    # The background is smooth, so it is estimated at reduced size (a wide closing costs
    # O(k) per pixel): the same result within a grey level, several times faster.
    f = max(1, k // 12)
    small = cv2.resize(g, (max(1, g.shape[1] // f), max(1, g.shape[0] // f)), interpolation=cv2.INTER_AREA) if f > 1 else g
    ks = max(3, k // f) | 1
    background = cv2.morphologyEx(small, cv2.MORPH_CLOSE, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (ks, ks)))
    background = cv2.blur(background, (ks // 4 | 1, ks // 4 | 1))
    if f > 1:
        background = cv2.resize(background, (g.shape[1], g.shape[0]), interpolation=cv2.INTER_LINEAR)
    dark = np.clip(1.0 - g / np.maximum(background, 0.05), 0, 1)
    if color is not None:  # a red margin line is not ink: pen ink here is blue or black
        c = color.astype(np.float32)
        red = (c[..., 0] - np.maximum(c[..., 1], c[..., 2])) > 0.12
        dark[red] = 0
    return dark


def _closing_size(g: np.ndarray, side: int) -> int:
    """A closing this wide paints over every pen stroke but follows shadows: 4x the stroke
    width, estimated from a local threshold as ink area over half its outline."""
    u8 = (np.clip(g, 0, 1) * 255).astype(np.uint8)
    # only what is much darker than its surroundings: pen ink, not the paper's faint ruling
    local = cv2.adaptiveThreshold(u8, 255, cv2.ADAPTIVE_THRESH_MEAN_C, cv2.THRESH_BINARY_INV, 31, 45)
    area = int(np.count_nonzero(local))
    if area < 20:
        return (side // 12) | 1
    edges = cv2.Canny(local, 50, 150)
    width = 2 * area / max(int(np.count_nonzero(edges)), 1)
    return int(np.clip(4 * width, 9, side // 6)) | 1


def _otsu(values: np.ndarray) -> float:
    # np.histogram sorts: bincount of the 64 bins is several times faster, with the same counts
    hist = np.bincount(np.clip((values.ravel() * 64).astype(np.int32), 0, 63), minlength=64)
    edges = np.linspace(0.0, 1.0, 65)
    p = hist / max(hist.sum(), 1)
    omega, mu = np.cumsum(p), np.cumsum(p * (edges[:-1] + edges[1:]) / 2)
    between = (mu[-1] * omega - mu) ** 2 / np.maximum(omega * (1 - omega), 1e-12)
    return float(edges[1:][np.argmax(between)])


def ink_mask(dark: np.ndarray) -> np.ndarray:
    """Steps 3-4: the ink as a uint8 mask (255 = ink), without long lines."""
    if dark.max() < 0.12:
        return np.zeros(dark.shape, np.uint8)
    mask = (dark > max(0.5 * _otsu(dark / dark.max()) * dark.max(), 0.18)).astype(np.uint8) * 255
    h, w = mask.shape
    lines = _long_thin(cv2.morphologyEx(mask, cv2.MORPH_OPEN, cv2.getStructuringElement(cv2.MORPH_RECT, (max(8, w // 4), 1))),
                       axis=1)
    lines |= _long_thin(cv2.morphologyEx(mask, cv2.MORPH_OPEN, cv2.getStructuringElement(cv2.MORPH_RECT, (1, max(8, h // 4)))),
                        axis=0)
    lines = cv2.dilate(lines, np.ones((3, 3), np.uint8))
    kept = cv2.subtract(mask, lines)
    # strokes a removed line crossed: close the gap it left (only where ink was)
    kept = cv2.morphologyEx(kept, cv2.MORPH_CLOSE, np.ones((5, 3), np.uint8)) & mask
    return cv2.morphologyEx(kept, cv2.MORPH_OPEN, np.ones((2, 2), np.uint8))


def _long_thin(runs: np.ndarray, axis: int) -> np.ndarray:
    """Of the straight runs an opening found, those that are lines: spanning most of the image
    along ``axis`` (1: horizontal) and thin. A digit's stroke is shorter, or (a drawing that
    fills its canvas) much thicker than a pen's ruling."""
    if not cv2.countNonZero(runs):  # most drawings: no long straight run at all
        return runs
    n, labels, stats, _ = cv2.connectedComponentsWithStats(runs, connectivity=8)
    H, W = runs.shape
    keep = np.zeros(n, bool)
    for i in range(1, n):
        x, y, w, h, area = stats[i]
        length = w if axis == 1 else h
        if length >= 0.45 * (W if axis == 1 else H) and area / max(length, 1) <= max(4.0, 0.012 * max(H, W)):
            keep[i] = True
    return (keep[labels] * 255).astype(np.uint8)


@dataclass
class _Group:
    x0: int
    y0: int
    x1: int
    y1: int
    area: int
    labels: list[int]

    @property
    def h(self) -> int:
        return self.y1 - self.y0

    @property
    def w(self) -> int:
        return self.x1 - self.x0

    def absorb(self, o: _Group) -> None:
        self.x0, self.y0, self.x1, self.y1 = min(self.x0, o.x0), min(self.y0, o.y0), max(self.x1, o.x1), max(self.y1, o.y1)
        self.area += o.area
        self.labels += o.labels


def _candidates(mask: np.ndarray) -> tuple[np.ndarray, list[_Group]]:
    """Step 5: components that may be (part of) a digit."""
    n, labels, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
    H, W = mask.shape
    inner, border = [], []
    for i in range(1, n):
        x, y, w, h, area = (int(v) for v in stats[i])
        if area < 0.00015 * H * W or max(w, h) < 0.02 * max(H, W):
            continue  # a speck
        if w > 5 * h and h < 0.05 * H:
            continue  # what is left of a line
        if area < 0.04 * w * h:
            continue  # a sparse net (grid remnants)
        g = _Group(x, y, x + w, y + h, area, [i])
        touches = x <= 1 or y <= 1 or x + w >= W - 1 or y + h >= H - 1
        (border if touches else inner).append(g)
    # a drawing that fills its canvas touches the border: fall back to those, but never to the
    # frame or table around a page (a component spanning most of the image)
    fallback = [g for g in border if g.w < 0.9 * W or g.h < 0.9 * H]
    return labels, inner or fallback


def _group(cands: list[_Group]) -> list[_Group]:
    """Step 6: strokes of one digit overlap in x and sit above one another."""
    groups = sorted(cands, key=lambda g: -g.area)
    merged = True
    while merged:
        merged = False
        for i, a in enumerate(groups):
            for b in groups[i + 1:]:
                overlap = min(a.x1, b.x1) - max(a.x0, b.x0)
                gap = max(a.y0, b.y0) - min(a.y1, b.y1)
                if overlap >= 0.5 * min(a.w, b.w) and gap < 0.5 * max(a.h, b.h):
                    a.absorb(b)
                    groups.remove(b)
                    merged = True
                    break
            if merged:
                break
    return groups


def _score(g: _Group, shape: tuple[int, int], darkness: float) -> float:
    """Step 7: how much a group looks like one handwritten digit (``darkness``: its mean ink
    darkness; a shadow's or page's edge is grey, a pen stroke is dark)."""
    H, W = shape
    size = g.h / H
    aspect = g.h / max(g.w, 1)
    density = g.area / max(g.w * g.h, 1)
    s = 1.0
    s *= np.clip(size / 0.06, 0, 1) * np.clip((0.95 - size) / 0.2, 0, 1)  # not a speck, not the whole frame
    s *= 1.0 if 0.7 <= aspect <= 8 else 0.3  # digits are taller than wide ('1' very much so)
    s *= 1.0 if 0.06 <= density <= 0.7 else 0.4  # strokes, not a blob or a hairline
    cx, cy = (g.x0 + g.x1) / 2 / W - 0.5, (g.y0 + g.y1) / 2 / H - 0.5
    s *= 1.0 - 0.5 * min(1.0, (cx * cx + cy * cy) ** 0.5)  # people centre what they photograph
    return float(s * g.area ** 0.5 * darkness ** 2)


def _line_of(best: _Group, groups: list[_Group]) -> list[_Group]:
    """Groups of a similar height on ``best``'s line, chained by gaps under 1.5 heights."""
    mid = (best.y0 + best.y1) / 2
    same = [g for g in groups if 0.55 * best.h <= g.h <= 1.8 * best.h and abs((g.y0 + g.y1) / 2 - mid) < 0.5 * best.h]
    same.sort(key=lambda g: g.x0)
    i = same.index(best)
    line = [best]
    for step in (1, -1):
        j, edge = i + step, best
        while 0 <= j < len(same):
            g = same[j]
            gap = g.x0 - edge.x1 if step == 1 else edge.x0 - g.x1
            if gap > 1.5 * max(edge.h, g.h):
                break
            line.append(g)
            edge, j = g, j + step
    return sorted(line, key=lambda g: g.x0)


def _pieces(g: _Group, labels: np.ndarray) -> list[_Group]:
    """Step 8: a wide group cut into the digits its width holds, where the vertical ink profile is thinnest."""
    own = np.isin(labels[g.y0:g.y1, g.x0:g.x1], g.labels)
    n = max(2, round(g.w / (DIGIT_ASPECT * g.h)))
    profile = np.convolve(own.sum(0), np.ones(3) / 3, mode="same")
    step = g.w / n
    cuts = [0] + [int(k * step - 0.35 * step) + int(np.argmin(profile[int(k * step - 0.35 * step):int(k * step + 0.35 * step)]))
                  for k in range(1, n)] + [g.w]
    out = []
    for a, b in zip(cuts[:-1], cuts[1:], strict=True):
        rows = np.flatnonzero(own[:, a:b].any(1))
        if b - a >= 2 and len(rows):
            out.append(_Group(g.x0 + a, g.y0 + int(rows[0]), g.x0 + b, g.y0 + int(rows[-1]) + 1,
                              int(own[:, a:b].sum()), list(g.labels)))
    return out if len(out) >= 2 else []


def _mean_dark(dark: np.ndarray, labels: np.ndarray, gr: _Group) -> float:
    own = np.isin(labels[gr.y0:gr.y1, gr.x0:gr.x1], gr.labels)
    return float(dark[gr.y0:gr.y1, gr.x0:gr.x1][own].mean())


def locate(gray: np.ndarray, color: np.ndarray | None = None, *, single: bool = False) -> Located:
    """The digits in ``gray`` (float [H, W] in 0..1; ``color`` the same image as float RGB, if any).

    Returns them left to right (one with ``single``); none found is an empty list."""
    H0, W0 = gray.shape
    g, c, scale = to_work(gray.astype(np.float32), None if color is None else color.astype(np.float32))
    side = max(g.shape)
    # The closing must be wider than the pen's stroke but as narrow as possible to follow
    # shadows; stroke widths vary 20-fold between a ballpoint photo and a finger on a canvas,
    # so try a few widths and keep the one whose best digit candidate scores highest.
    best_try = None
    for k in sorted({_closing_size(g, side), side // 24, side // 12, side // 6}):
        dark = ink_darkness(g, c, k=k)
        mask = ink_mask(dark)
        labels, cands = _candidates(mask)
        groups = _group(cands)
        scored = [(_score(gr, mask.shape, _mean_dark(dark, labels, gr)), gr) for gr in groups]
        top = max(scored, key=lambda t: t[0], default=(0.0, None))
        if best_try is None or top[0] > best_try[0]:
            best_try = (top[0], top[1], dark, mask, labels, groups)
    _, best, dark, mask, labels, groups = best_try
    steps = {"flattened": (255 * (1 - dark)).astype(np.uint8), "mask": mask}
    if best is None:
        return Located([], [], steps)
    chosen = [best] if single else _line_of(best, groups)

    def cut(gr: _Group) -> tuple[tuple[int, int, int, int], np.ndarray]:
        own = np.isin(labels[gr.y0:gr.y1, gr.x0:gr.x1], gr.labels)
        own = cv2.dilate(own.astype(np.uint8), np.ones((3, 3), np.uint8)) > 0  # keep the anti-aliased rim
        return ((int(gr.x0 / scale), int(gr.y0 / scale), min(W0, int(np.ceil(gr.x1 / scale))),
                 min(H0, int(np.ceil(gr.y1 / scale)))), np.where(own, dark[gr.y0:gr.y1, gr.x0:gr.x1], 0).astype(np.float32))
    boxes, inks = (list(t) for t in zip(*map(cut, chosen), strict=True))
    splits = {} if single else {i: [cut(p) for p in pieces] for i, gr in enumerate(chosen)
                                if gr.w > SPLIT_ASPECT * gr.h and (pieces := _pieces(gr, labels))}
    chosen_img = cv2.cvtColor(steps["flattened"], cv2.COLOR_GRAY2BGR)
    for gr in chosen:
        cv2.rectangle(chosen_img, (gr.x0, gr.y0), (gr.x1, gr.y1), (0, 0, 255), 2)
    steps["chosen"] = chosen_img
    return Located(boxes, inks, steps, splits)
