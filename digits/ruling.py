"""Step 4 of :mod:`digits.locate`: the ruled lines in an ink mask (ruling, graph paper, the
margin, a guide line, the page's edge), to be removed before the digits are looked for.

Three finders, from the cheapest: long straight runs along the image's axes (an opening a
quarter of the image long); with a thin pen, lines at any tilt by a probabilistic Hough
transform, and lines broken into dashes at a small tilt by projection (:func:`dashed_lines`).
"""

from __future__ import annotations

import cv2
import numpy as np

DASHED_TILT = 10.0  # degrees either side of the axes searched for dashed lines
PEN_DARKER = 1.5  # a pen stroke along a dashed line: this much darker than the line (median)
MAX_VOTERS = 20_000  # pixels that vote per family: the cost is theirs times the angles
DASHED_STEP = 0.4  # degrees: over 512 px a line misses by at most 1.8 px, within the 2-px band


def ruled_lines(mask: np.ndarray, thin: np.ndarray | None, crop: bool,
                dark: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray | None]:
    """The mask's ruled lines (uint8, 255 = line), to be removed with a margin, and with a thin
    pen its dashed ruling (exact pixels; else None). ``thin``: the marks drawn with a 1-2 px
    pen (digits.ink), or None; ``crop``: a tight crop, where a long mark may be the digit
    itself; ``dark``: the ink darkness the mask was cut from."""
    h, w = mask.shape
    lines = long_thin(cv2.morphologyEx(mask, cv2.MORPH_OPEN, cv2.getStructuringElement(cv2.MORPH_RECT, (max(8, w // 4), 1))),
                      axis=1)
    lines |= long_thin(cv2.morphologyEx(mask, cv2.MORPH_OPEN, cv2.getStructuringElement(cv2.MORPH_RECT, (1, max(8, h // 4)))),
                       axis=0)
    if thin is not None and not crop:  # ruling as thin as the pen, seen at a tilt, among what is left
        rest = cv2.subtract(mask & thin, lines)
        return lines | tilted_lines(rest), dashed_lines(rest, dark)
    return lines, None


def tilted_lines(thin: np.ndarray) -> np.ndarray:
    """Thin straight lines at any angle that span most of the image (ruling, a guide line, the
    page's edge seen at a tilt), which the axis-aligned openings miss; at a thin pen's scale
    they are as thin as the pen. A gap of a few px is bridged: such a line thresholds into
    dashes. The transform is probabilistic and finds a line in part, or not at once: each one
    found is drawn across the image, and the search repeats on what is left."""
    h, w = thin.shape
    out = np.zeros_like(thin)
    left = thin.copy()
    for _ in range(3):
        if cv2.countNonZero(left) < 0.45 * min(h, w):
            break
        segs = cv2.HoughLinesP(left, 1, np.pi / 180, threshold=max(20, min(h, w) // 6),
                               minLineLength=0.45 * min(h, w), maxLineGap=max(3, max(h, w) // 100))
        drawn = 0
        for x0, y0, x1, y1 in ([] if segs is None else segs.reshape(-1, 4).tolist()):
            dx, dy = x1 - x0, y1 - y0
            if abs(dx) >= abs(dy) and abs(dx) >= 0.45 * w:
                cv2.line(out, (0, round(y0 - x0 * dy / dx)), (w - 1, round(y0 + (w - 1 - x0) * dy / dx)), 255, 3)
            elif abs(dy) > abs(dx) and abs(dy) >= 0.45 * h:
                cv2.line(out, (round(x0 - y0 * dx / dy), 0), (round(x0 + (h - 1 - y0) * dx / dy), h - 1), 255, 3)
            else:
                continue
            drawn += 1
        if not drawn:
            break
        left = cv2.subtract(thin, out)
    return out & thin


def long_thin(runs: np.ndarray, axis: int) -> np.ndarray:
    """Of the straight runs an opening found, those that are lines: spanning most of the image
    along ``axis`` (1: horizontal) and thin. A digit's stroke is shorter, or (a drawing that
    fills its canvas) much thicker than a pen's ruling."""
    if not cv2.countNonZero(runs):  # most drawings: no long straight run at all
        return runs
    _, labels, stats, _ = cv2.connectedComponentsWithStats(runs, connectivity=8)
    H, W = runs.shape
    length = stats[:, cv2.CC_STAT_WIDTH if axis == 1 else cv2.CC_STAT_HEIGHT]
    keep = (length >= 0.45 * (W if axis == 1 else H)) & \
        (stats[:, cv2.CC_STAT_AREA] / np.maximum(length, 1) <= max(4.0, 0.012 * max(H, W)))
    keep[0] = False  # the background
    if not keep.any():  # most photos: straight runs, but none a line
        return np.zeros_like(runs)
    return (keep.astype(np.uint8) * 255)[labels]


def dashed_lines(thin: np.ndarray, dark: np.ndarray | None = None) -> np.ndarray:
    """Straight lines within ``DASHED_TILT`` degrees of the axes that span most of the image,
    though the threshold broke them into dashes (faint ruling at a thin pen's scale: the Hough
    transform bridges only short gaps). Each line is a peak of the projection of the marks'
    pixels along its angle (a Hough accumulator over small tilts): a 2-px band holding ink over
    30% of the image's width, spread over 45% of it, that is a local maximum over angle and
    offset and twice the band's count 2 px to either side (two lines of a page in perspective
    cross at a slant and sum to a smooth ridge, not a peak). Only pixels running along the
    axis vote (a horizontal line's pixels fill no band of the vertical family). Given ``dark``,
    a line's pixels ``PEN_DARKER`` times darker than its median are a pen stroke along it."""
    H, W = thin.shape
    out = np.zeros(thin.shape, bool)
    tans = np.tan(np.radians(np.arange(-DASHED_TILT, DASHED_TILT + 1e-6, DASHED_STEP)))
    Y, X = np.nonzero(thin)
    for axis in (1, 0):
        length, span = (W, H) if axis == 1 else (H, W)
        run = cv2.morphologyEx(thin, cv2.MORPH_OPEN, np.ones((1, 3) if axis == 1 else (3, 1), np.uint8))
        voters = np.nonzero(run if axis == 1 else run.T)  # (across, along) of the pixels running along the axis
        if len(voters[0]) < 0.3 * length:
            continue
        stride = -(-len(voters[0]) // MAX_VOTERS)  # a busy page (graph paper) votes with every stride-th pixel
        voters = voters[0][::stride], voters[1][::stride]
        pad = int(np.ceil(length * tans.max())) + 2
        n = span + 2 * pad  # offsets across the axis: every line within the tilt lands in 0..n-1
        shift = np.round(np.arange(length)[None] * tans[:, None]).astype(np.int32) - pad  # [angle, along]
        offsets = voters[0][None] - shift[:, voters[1]]  # [angle, voter]
        acc = np.bincount((offsets + np.arange(len(tans))[:, None] * n).ravel(), minlength=len(tans) * n)
        acc = acc.reshape(len(tans), n)
        two = acc[:, :-1] + acc[:, 1:]  # the band of offsets k and k + 1
        p = np.pad(two, 1)
        around = np.max([p[1 + i:1 + i + two.shape[0], 1 + j:1 + j + two.shape[1]]
                         for i in (-1, 0, 1) for j in (-1, 0, 1) if i or j], axis=0)
        beside = np.maximum(np.pad(two, ((0, 0), (2, 0)))[:, :-2], np.pad(two, ((0, 0), (0, 2)))[:, 2:])
        peak = (two >= 0.3 * length / stride) & (two >= around) & (two >= 2 * beside)
        ink = (Y, X) if axis == 1 else (X, Y)  # (across, along), as the voters
        for a in np.flatnonzero(peak.any(1)):
            band, on = _bands(peak[a], voters[0] - shift[a, voters[1]])
            lo, hi = np.full(n - 1, length), np.full(n - 1, -1)
            np.minimum.at(lo, band[on], voters[1][on])
            np.maximum.at(hi, band[on], voters[1][on])
            line = peak[a] & (hi - lo >= 0.45 * length)
            if not line.any():
                continue
            band, on = _bands(line, ink[0] - shift[a, ink[1]])
            ys, xs = (ink[0][on], ink[1][on]) if axis == 1 else (ink[1][on], ink[0][on])
            if dark is not None:  # a pen stroke along the line is darker than the line itself
                pen = _above_median(band[on], dark[ys, xs], PEN_DARKER)
                ys, xs = ys[~pen], xs[~pen]
            out[ys, xs] = True
    return out.astype(np.uint8) * 255


def _bands(peak: np.ndarray, offsets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each pixel's band (offset k for bands k, k + 1 of the ``peak`` row) and whether it is in one."""
    last = len(peak) - 1
    band = np.where(peak[np.clip(offsets, 0, last)], offsets, offsets - 1).clip(0, last)
    return band, peak[band]


def _above_median(groups: np.ndarray, values: np.ndarray, factor: float) -> np.ndarray:
    """Whether each value is over ``factor`` times the median of its group."""
    order = np.lexsort((values, groups))
    g, v = groups[order], values[order]
    starts = np.flatnonzero(np.r_[True, g[1:] != g[:-1]])
    counts = np.diff(np.r_[starts, len(g)])
    median = np.repeat(v[starts + counts // 2], counts)
    out = np.empty(len(values), bool)
    out[order] = v > factor * median
    return out


def crossings(mask: np.ndarray, kept: np.ndarray, reach: int = 5) -> np.ndarray:
    """Where a removed line crossed a stroke: the removed pixels with kept ink within ``reach``
    px on both sides of them, above and below or left and right (a line's own pixels have
    nothing but paper beside them, or more line)."""
    removed = cv2.subtract(mask, kept)
    out = np.zeros_like(mask)
    side = np.ones((reach + 1, 5), np.uint8)
    side[reach] = 0  # rows 1..reach away, not the pixel's own row
    for k in (side, side.T):
        cy, cx = (reach, 2) if k is side else (2, reach)
        before = cv2.dilate(kept, k, anchor=(cx, cy))  # kept ink above (left of) the pixel
        after = cv2.dilate(kept, k[::-1, ::-1].copy(), anchor=(k.shape[1] - 1 - cx, k.shape[0] - 1 - cy))
        out |= removed & before & after
    return out
