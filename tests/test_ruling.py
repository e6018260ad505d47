"""Ruled lines at a thin pen's scale (digits.ruling): faint ruling that the threshold broke into
dashes, seen in perspective (each line at its own small tilt), is found and removed; the pen's
strokes that cross it or run along it stay."""

from __future__ import annotations

import cv2
import numpy as np

from digits.ink import ink_mask
from digits.ruling import crossings, dashed_lines

H, W = 384, 512


def _dashed_page(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Darkness of a ruled page photographed in perspective: lines 9 px apart whose tilt goes
    from -1 to 3 degrees down the page, each broken into 8-40 px dashes with 4-16 px gaps
    (no run a quarter of the width long, no gap the Hough transform bridges); and the ruling's mask."""
    rng = np.random.default_rng(seed)
    dark = np.zeros((H, W), np.float32)
    for k, y in enumerate(range(20, H - 20, 9)):
        t = np.tan(np.radians(-1 + 4 * k / ((H - 40) / 9)))
        x = int(rng.integers(0, 10))
        while x < W:
            x1 = min(W - 1, x + int(rng.integers(8, 40)))
            cv2.line(dark, (x, round(y + x * t)), (x1, round(y + x1 * t)), 0.35, 1)
            x = x1 + int(rng.integers(4, 16))
    return dark, dark > 0


def test_dashed_ruling_in_perspective_is_found_and_a_thin_digit_crossing_it_kept():
    dark, ruling = _dashed_page()
    zero = np.zeros((H, W), np.float32)
    cv2.ellipse(zero, (300, 190), (22, 45), 0, 0, 360, 0.8, 1)  # a thin 0 across ten lines
    dark = np.maximum(dark, zero)
    thin = (dark > 0).astype(np.uint8) * 255
    found = dashed_lines(thin, dark) > 0
    assert found[ruling & (zero == 0)].mean() > 0.9  # nearly all the ruling, every tilt
    assert found[zero > 0].mean() < 0.15  # of the 0, only where a line crosses it
    mask = ink_mask(dark)
    x0, y0, x1, y1 = 270, 140, 330, 240
    left = mask.copy()
    left[y0:y1, x0:x1] = 0
    assert np.count_nonzero(left) < 0.1 * np.count_nonzero(ruling)  # specks of the ruling at most
    assert cv2.connectedComponentsWithStats(left, connectivity=8)[2][1:, 2].max() < 0.1 * W
    assert cv2.connectedComponents(mask[y0:y1, x0:x1], connectivity=8)[0] - 1 == 1  # the 0 is one mark
    assert np.count_nonzero(mask[y0:y1, x0:x1]) >= 0.8 * np.count_nonzero(zero[y0:y1, x0:x1])


def test_a_pen_stroke_along_a_dashed_line_is_darker_than_the_line_and_stays():
    dark, ruling = _dashed_page(seed=1)
    y = 20 + 9 * 20  # line 20: its tilt is -1 + 4 * 20 / 38 degrees
    t = np.tan(np.radians(-1 + 4 * 20 / ((H - 40) / 9)))
    stroke = np.zeros((H, W), np.float32)
    cv2.line(stroke, (200, round(y + 200 * t)), (260, round(y + 260 * t)), 0.8, 1)  # the base of a 2, on the line
    dark = np.maximum(dark, stroke)
    thin = (dark > 0).astype(np.uint8) * 255
    assert not (dashed_lines(thin, dark) > 0)[stroke > 0].any()
    assert (dashed_lines(thin) > 0)[stroke > 0].mean() > 0.8  # without the darkness, it went with the line


def test_the_pixels_where_a_removed_line_crossed_a_stroke_come_back_and_no_others():
    mask = np.zeros((40, 40), np.uint8)
    mask[20, :] = 255  # a line
    mask[:, 10] = 255  # a stroke across it
    kept = mask.copy()
    kept[19:22, :] = 0  # the line removed, 3 px wide
    back = np.argwhere(crossings(mask, kept))
    assert {tuple(p) for p in back} >= {(20, 10)}  # the crossing
    assert all(abs(x - 10) <= 2 for _, x in back)  # nothing of the line away from the stroke
