"""Steps 1-4 of :mod:`digits.locate`: from a photo or drawing to a mask of its ink.

Work at ``WORK_SIDE`` px (small images enlarged to ``MIN_WORK_SIDE``; a shrunk image's ink
widened first, so a 1-px pen line survives); polarity (ink dark on light); flatten the light
by a closing wider than the pen; threshold each pixel against its own neighbourhood; drop
long thin lines (ruling, the page edge: :mod:`digits.ruling`) and faint hairlines away from
the strokes (pencil guide lines); with a thin pen, keep 1-2 px strokes whole, close the gaps
the threshold left in them (also by their faint trace), and drop ruling seen at a tilt (as
thin as the pen there).
"""

from __future__ import annotations

import math

import cv2
import numpy as np

from digits.ruling import crossings, ruled_lines

WORK_SIDE = 512  # px: plenty for a few handwritten digits, and a few ms per step
MIN_WORK_SIDE = 256  # smaller images are enlarged to this; between the two they are worked at their own size
RED_LEAD = 1.15  # a pixel whose red leads green and blue this much more than the paper's is the margin line
TRACE = 0.35  # with a thin pen, ink this many times fainter than the threshold joins pieces (joined_by_trace)
TINY_SIDE = 64  # px: an image this small is a canvas at MNIST's scale (a drawing app's 28x28), never a photo


def to_work(gray: np.ndarray, color: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray | None, float]:
    """Resize to ``WORK_SIDE`` (area interpolation when shrinking); returns (gray, colour, scale)."""
    h, w = gray.shape
    scale = min(max(max(h, w), MIN_WORK_SIDE), WORK_SIDE) / max(h, w)
    if abs(scale - 1) > 1e-3:
        size = (max(1, round(w * scale)), max(1, round(h * scale)))
        interp = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
        if scale < 0.75:  # shrinking: widen the ink first, so a 1-px pen line survives as ink, not a grey trace
            grow = np.ones((math.ceil(1 / scale),) * 2, np.uint8)
            gray = cv2.erode(gray, grow) if np.median(gray) >= 0.4 else cv2.dilate(gray, grow)
        gray = cv2.resize(gray, size, interpolation=interp)
        color = None if color is None else cv2.resize(color, size, interpolation=interp)
    return gray, color, scale


def ink_darkness(gray: np.ndarray, color: np.ndarray | None = None, k: int | None = None,
                 red: np.ndarray | None = None, upright: bool = False) -> np.ndarray:
    """Steps 1-2 (and the colour rule of 4): float [H, W], 0 where background, up to 1 for ink.
    ``k``: the closing's width in px (default: from the stroke width); ``red``: :func:`margin_line`
    of ``color``, when already known; ``upright``: ``gray`` is known to be dark ink on light (the
    caller took its median already: once per image, not once per closing width)."""
    g = gray.astype(np.float32)
    if not upright and np.median(g) < 0.4:  # most of an image is background: bright strokes on a dark canvas (or MNIST)
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
    red = margin_line(color) if red is None and color is not None else red
    if red is not None:
        dark[red] = 0
    return dark


def margin_line(color: np.ndarray) -> np.ndarray:
    """Where the red margin line is (bool [H, W]): not ink, as pen ink here is blue or black.
    It depends on the colours alone, so a caller trying several closings computes it once."""
    c = color.astype(np.float32)
    gb = np.maximum(c[..., 1], c[..., 2])
    redder = c[..., 0] - gb
    # in a shadow the line is as red but darker, so also by how much red leads, relative to
    # the paper's own balance of red (a yellow note's is high); that way only where it is a
    # thin line: a brown table is as red, and its edge along the page must stay whole
    ratio = c[..., 0] / np.maximum(gb, 0.02)
    lead = ((redder > 0.03) & (ratio > RED_LEAD * float(np.median(ratio[::8, ::8])))).astype(np.uint8)
    wide = cv2.dilate(cv2.morphologyEx(lead, cv2.MORPH_OPEN, np.ones((3, 3), np.uint8)), np.ones((5, 5), np.uint8))
    return (redder > 0.12) | ((lead > 0) & (wide == 0))


def _closing_size(g: np.ndarray, side: int) -> int:
    """A closing this wide paints over every pen stroke but follows shadows: 4x the stroke width."""
    width = stroke_width(g)
    return (side // 12) | 1 if width is None else int(np.clip(4 * width, 9, side // 6)) | 1


def stroke_width(g: np.ndarray) -> float | None:
    """The pen's stroke width in px, from a local threshold as ink area over half its outline
    (None when there is hardly any ink)."""
    u8 = (np.clip(g, 0, 1) * 255).astype(np.uint8)
    # only what is much darker than its surroundings: pen ink, not the paper's faint ruling
    local = cv2.adaptiveThreshold(u8, 255, cv2.ADAPTIVE_THRESH_MEAN_C, cv2.THRESH_BINARY_INV, 31, 45)
    area = int(np.count_nonzero(local))
    if area < 20:
        return None
    return 2 * area / max(int(np.count_nonzero(cv2.Canny(local, 50, 150))), 1)


def _otsu(values: np.ndarray) -> float:
    # np.histogram sorts: bincount of the 64 bins is several times faster, with the same counts
    hist = np.bincount(np.clip((values.ravel() * 64).astype(np.int32), 0, 63), minlength=64)
    edges = np.linspace(0.0, 1.0, 65)
    p = hist / max(hist.sum(), 1)
    omega, mu = np.cumsum(p), np.cumsum(p * (edges[:-1] + edges[1:]) / 2)
    between = (mu[-1] * omega - mu) ** 2 / np.maximum(omega * (1 - omega), 1e-12)
    return float(edges[1:][np.argmax(between)])


def ink_mask(dark: np.ndarray, crop: bool = False, lower: float = 1.0) -> np.ndarray:
    """Steps 3-4: the ink as a uint8 mask (255 = ink), without long lines. ``crop``: the image's
    edge is paper (a tight crop), so a long thin mark may be the digit itself. ``lower``
    scales the threshold (below 1: fainter marks, digits.grouping.fainter)."""
    if dark.max() < 0.12:
        return np.zeros(dark.shape, np.uint8)
    cut = lower * max(0.5 * _otsu(dark / dark.max()) * dark.max(), 0.18)
    mask = (dark > cut).astype(np.uint8) * 255
    h, w = mask.shape
    _, labels, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
    thin = _thin_strokes(mask, labels, stats)  # None: the pen's strokes are not 1-2 px here
    # faint hairlines (pencil guide lines, ruling) away from the pen's strokes are not ink; with a
    # thin pen, only where a mark runs across the page (a guide line): a thin, light digit stays
    core = cv2.morphologyEx(mask, cv2.MORPH_OPEN, np.ones((3, 3), np.uint8))
    core = cv2.dilate(core if thin is None else core & ~thin, np.ones((3, 3), np.uint8))
    faint = (dark <= 0.45 * np.percentile(dark[mask > 0], 90)) & (core == 0) if mask.any() else None
    if faint is not None:
        long_marks = (stats[:, 2] >= 0.3 * w) | (stats[:, 3] >= 0.3 * h)
        long_marks[0] = False
        mask[faint if thin is None else faint & long_marks[labels]] = 0
    lines, dashed = ruled_lines(mask, thin, crop, dark)
    lines = cv2.dilate(lines, np.ones((3, 3), np.uint8))
    kept = cv2.subtract(mask, lines)
    if dashed is not None:  # dashed ruling (a thin pen's): its exact pixels, and back where it crossed a stroke
        kept = cv2.subtract(kept, dashed)
        kept |= crossings(mask, kept) & dashed
    # strokes a removed line crossed: close the gap it left (only where ink was)
    kept = cv2.morphologyEx(kept, cv2.MORPH_CLOSE, np.ones((5, 3), np.uint8)) & mask
    # a 2x2 opening clears specks off ordinary strokes; 1-2 px strokes it would cut to pieces, so
    # those are kept whole, and where the threshold broke one (the faint top of a thin 0) a 3x3
    # closing joins it again: else two arcs, two "1"s
    opened = cv2.morphologyEx(kept, cv2.MORPH_OPEN, np.ones((2, 2), np.uint8))
    if thin is None:
        return opened
    whole = np.maximum(opened, cv2.morphologyEx(kept, cv2.MORPH_CLOSE, np.ones((3, 3), np.uint8))
                       & cv2.dilate(thin, np.ones((5, 5), np.uint8)))
    return joined_by_trace(whole, dark > TRACE * cut)


def joined_by_trace(mask: np.ndarray, trace: np.ndarray) -> np.ndarray:
    """``mask`` with the faint ``trace`` (bool, ink under the threshold) that joins its pieces,
    or closes one, and stays within them: a thin 0 whose top and bottom, drawn lightly or flat (an
    anti-aliased 1-px line at a shallow angle is grey), fell under the threshold and left two
    arcs, read "11"; a 9 whose loop the threshold opened, read "4". A trace that reaches past
    its pieces' box (by a sixth of it), or pieces spanning half the image, are ruling or
    graph paper joining everything: left out. On plain paper the trace is the strokes'
    own grey rim and breaks; the background's noise stays under it."""
    n, owner, stats, _ = cv2.connectedComponentsWithStats((trace | (mask > 0)).astype(np.uint8), connectivity=8)
    pieces, own, piece_stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
    if pieces < 2:  # no ink
        return mask
    ys, xs = np.nonzero(mask)
    of = np.zeros(pieces, np.int64)  # the trace's component each piece lies in (the paper, 0, in none)
    of[own[ys, xs]] = owner[ys, xs]
    x0, y0 = np.full(n, 1 << 30), np.full(n, 1 << 30)
    x1, y1, count = np.zeros(n, np.int64), np.zeros(n, np.int64), np.bincount(of[1:], minlength=n)
    px, py, pw, ph = (piece_stats[1:, k].astype(np.int64) for k in range(4))
    np.minimum.at(x0, of[1:], px), np.minimum.at(y0, of[1:], py)
    np.maximum.at(x1, of[1:], px + pw), np.maximum.at(y1, of[1:], py + ph)
    reach = (np.maximum(x1 - x0, y1 - y0) / 6).astype(np.int64)
    tx, ty, tw, th = (stats[:, k].astype(np.int64) for k in range(4))
    join = ((count >= 1) & (np.maximum(x1 - x0, y1 - y0) <= 0.5 * max(mask.shape))
            & (tx >= x0 - reach) & (ty >= y0 - reach) & (tx + tw <= x1 + reach) & (ty + th <= y1 + reach))
    join[0] = False
    return np.where(join[owner], np.uint8(255), mask) if join.any() else mask


def _thin_strokes(mask: np.ndarray, labels: np.ndarray, stats: np.ndarray) -> np.ndarray | None:
    """With a thin pen (on a large photo; a mouse), the marks drawn with a 1-2 px stroke, else
    None. Such strokes a 3x3 erosion all but removes (a 3-px stroke keeps a third). The pen is
    judged on the large marks clear of the border, as the table's thick edge around a page
    says nothing of it; then each mark on its own, as thick ones (a blot) are no pen strokes.
    ``labels``, ``stats``: the mask's 8-connected components (cv2.connectedComponentsWithStats)."""
    n = len(stats)
    H, W = mask.shape
    x, y, w, h, area = stats.T
    survived = np.bincount(labels[cv2.erode(mask, np.ones((3, 3), np.uint8)) > 0], minlength=n)
    inner = (x > 1) & (y > 1) & (x + w < W - 1) & (y + h < H - 1)
    large = (area >= max(50, 0.0004 * mask.size)) & (np.arange(n) > 0)
    large &= inner if (large & inner).any() else large  # ruling that runs off the photo carries the digits with it
    if not large.any() or survived[large].sum() >= 0.15 * area[large].sum():
        return None
    thin = (np.maximum(w, h) >= 0.02 * max(H, W)) & (survived < 0.15 * area)
    thin[0] = False
    return (thin[labels] * 255).astype(np.uint8)


def page_edge(light: np.ndarray, x: int, y: int, w: int, h: int, off: int = 4) -> bool:
    """Whether a long thin mark at box (x, y, w, h) divides paper from something much darker
    (the table: the page's edge), from the brightness ``off`` px to either side of it across
    its length: the table is dark along all of it, so the side's upper quartile. A pen stroke
    has paper on both sides (a felt tip's 5's bar may have its body's top stroke on one, but
    not all along: by the median it was the page's edge); a shadow's edge is soft, so a few
    px apart it is nearly as bright."""
    H, W = light.shape
    if h >= w:
        a = light[y:y + h, max(0, x - off)]
        b = light[y:y + h, min(W - 1, x + w - 1 + off)]
    else:
        a = light[max(0, y - off), x:x + w]
        b = light[min(H - 1, y + h - 1 + off), x:x + w]
    sides = float(np.percentile(a, 75)), float(np.percentile(b, 75))
    return min(sides) < 0.8 * max(sides)


def paper_border(light: np.ndarray) -> bool:
    """Whether the image's edge is (nearly all) paper, as in a tight crop, rather than a table,
    a hand or a shadow around a page: border pixels within 25% of the paper's brightness."""
    edge = np.concatenate([light[:3].ravel(), light[-3:].ravel(), light[:, :3].ravel(), light[:, -3:].ravel()])
    return float(np.mean(edge > 0.75 * np.percentile(light, 90))) >= 0.9
