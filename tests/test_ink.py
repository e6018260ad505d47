"""The ink steps of digits.locate on crafted masks and images, where a thin pen on a large photo
used to fail (issue 26): a loop broken into arcs, the page's edge read as a 1, tilted ruling as
thin as the pen, and a tiny canvas's edge taken for a table."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from digits.grouping import candidates, mean_darkness
from digits.ink import ink_mask, page_edge
from digits.locate import locate
from digits.preprocess import Found

H, W = 384, 512


def _ellipse(dark: np.ndarray, centre=(300, 190), axes=(22, 45), gap: bool = True) -> None:
    """A thin 0: a 1-px ellipse of darkness 0.8, its faint top under the threshold if ``gap``."""
    cv2.ellipse(dark, centre, axes, 0, 0, 360, 0.8, 1)
    if gap:
        dark[centre[1] - axes[1] - 1:centre[1] - axes[1] + 2, centre[0] - 2:centre[0] + 3] = 0.05


def _components(mask: np.ndarray, box) -> int:
    x0, y0, x1, y1 = box
    return cv2.connectedComponents(mask[y0:y1, x0:x1], connectivity=8)[0] - 1


def test_a_thin_loop_stays_one_mark_though_a_thick_table_edge_is_in_the_photo():
    dark = np.zeros((H, W), np.float32)
    _ellipse(dark)
    dark[:, :60] = 0.9  # the table past the page's edge: thick and dark, touching the border
    mask = ink_mask(dark)
    # judged on the table, the pen looked thick and a 2x2 opening cut the 1-px loop to pieces
    assert _components(mask, (270, 140, 330, 240)) == 1
    assert np.count_nonzero(mask[140:240, 270:330]) >= 0.8 * np.count_nonzero(dark[140:240, 270:330] > 0.5)


def _faint_capped_zero() -> np.ndarray:
    """A thin 0 whose top and bottom, drawn flat and lightly, are under the threshold: two arcs."""
    dark = np.zeros((H, W), np.float32)
    cv2.ellipse(dark, (300, 190), (22, 45), 0, 0, 360, 0.1, 1)  # the whole loop, faint
    cv2.ellipse(dark, (300, 190), (22, 45), 0, 120, 240, 0.8, 1)  # its left side, dark
    cv2.ellipse(dark, (300, 190), (22, 45), 0, -60, 60, 0.8, 1)  # its right side
    return dark


def test_a_faint_trace_joins_the_arcs_of_a_thin_0(monkeypatch):
    import digits.ink

    dark = _faint_capped_zero()
    assert _components(ink_mask(dark), (270, 140, 330, 240)) == 1
    monkeypatch.setattr(digits.ink, "TRACE", 1.0)  # no trace under the threshold: two arcs, read "11"
    assert _components(ink_mask(dark), (270, 140, 330, 240)) == 2


def test_a_faint_trace_closes_the_loop_of_a_thin_9(monkeypatch):
    import digits.ink

    dark = np.zeros((H, W), np.float32)
    cv2.circle(dark, (300, 160), 20, 0.1, 1)  # the loop, its top drawn lightly
    cv2.ellipse(dark, (300, 160), (20, 20), 0, -30, 210, 0.8, 1)
    cv2.line(dark, (320, 160), (318, 240), 0.8, 1)  # the stem

    def holes(mask: np.ndarray) -> int:  # paper regions inside the box that are not its outside
        return cv2.connectedComponents(255 - mask[130:250, 270:330], connectivity=4)[0] - 2
    assert holes(ink_mask(dark)) == 1
    monkeypatch.setattr(digits.ink, "TRACE", 1.0)
    assert holes(ink_mask(dark)) == 0  # an open loop on a stem: read "4"


def test_a_faint_trace_through_graph_paper_joins_nothing():
    dark = _faint_capped_zero()
    grid = np.zeros((H, W), np.float32)
    grid[::12] = grid[:, ::12] = 0.1  # graph paper as faint as the 0's top: one net across the page
    dark = np.maximum(dark, grid)
    mask = ink_mask(dark)
    assert _components(mask, (270, 140, 330, 240)) == 2  # the net reaches past the arcs: no join
    assert np.count_nonzero(mask[:100]) == 0  # and none of the net became ink


def test_an_ordinary_pen_still_loses_its_specks():
    dark = np.zeros((H, W), np.float32)
    cv2.ellipse(dark, (300, 190), (22, 45), 0, 0, 360, 0.8, 6)
    dark[100, 100] = dark[300, 400] = 0.9  # sensor specks
    mask = ink_mask(dark)
    assert mask[100, 100] == 0 and mask[300, 400] == 0 and _components(mask, (270, 140, 330, 240)) == 1


def test_tilted_ruling_as_thin_as_the_pen_is_removed_and_the_digit_kept():
    dark = np.zeros((H, W), np.float32)
    _ellipse(dark, gap=False)
    for y in range(40, H - 40, 30):  # ruled lines seen at a 4 degree tilt: no horizontal run a quarter of the width
        cv2.line(dark, (0, y), (W - 1, y + int(W * np.tan(np.radians(4)))), 0.7, 1)
    mask = ink_mask(dark)
    n, _, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
    assert max(stats[1:, 2]) < 0.3 * W  # no line across the page is left
    assert np.count_nonzero(mask[150:230, 280:320]) > 0  # the 0's sides are
    assert len(ink_mask(dark, crop=True).nonzero()[0]) > len(mask.nonzero()[0])  # a tight crop keeps long marks


def test_the_page_edge_is_told_from_a_stroke_by_the_table_beside_it():
    light = np.full((H, W), 0.95, np.float32)
    light[:, 480:] = 0.35  # the table
    assert page_edge(light, 476, 100, 3, 120)  # a thin mark along the page's edge
    assert not page_edge(light, 300, 100, 3, 120)  # a 1 on the page
    soft = np.full((H, W), 0.95, np.float32) * np.clip(1 - 0.4 / (1 + np.exp(-(np.arange(W) - 300) / 20)), 0, 1)
    assert not page_edge(soft, 298, 100, 3, 120)  # a 1 on a soft shadow's edge


def test_a_felt_tip_5s_bar_over_its_body_is_no_page_edge():
    """A 5's bar written apart from its body, a felt tip's: a few px below the bar lies the
    body's top stroke, dark, along most but not all of the bar's length. It was taken for the
    page's edge (the median of that side was ink) and dropped, and the 5 was read as a 0. The
    table runs along all of the page's edge: it is judged on three quarters of the side."""
    light = np.full((H, W), 0.92, np.float32)
    light[105:125, 77:198] = 0.3  # the body's top stroke, under 66% of the bar's length
    assert not page_edge(light, 123, 81, 114, 22)
    light[105:125, 77:237] = 0.3  # under all of it: dark all along, as a table
    assert page_edge(light, 123, 81, 114, 22)


def test_a_piece_of_the_page_edge_is_no_candidate():
    mask = np.zeros((H, W), np.uint8)
    mask[100:220, 476:479] = 255  # the edge's piece, as tall as the digit
    cv2.ellipse(mask, (300, 160), (25, 60), 0, 0, 360, 255, 4)
    light = np.full((H, W), 0.95, np.float32)
    light[:, 482:] = 0.35
    assert len(candidates(mask, False)[2]) == 2
    (only,) = candidates(mask, False, light)[2]
    assert only.x0 < 300 < only.x1
    assert len(candidates(mask, True, light)[2]) == 2  # a tight crop: all paper, nothing to tell by


def _tiny_two_zeros() -> np.ndarray:
    """A 28x28 canvas of "00" (white on black), the second 0 touching the right edge."""
    big = np.zeros((112, 112), np.uint8)
    cv2.ellipse(big, (30, 56), (20, 40), 0, 0, 360, 255, 8)
    cv2.ellipse(big, (88, 56), (20, 40), 0, 0, 360, 255, 8)
    return cv2.resize(big, (28, 28), interpolation=cv2.INTER_AREA).astype(np.float32) / 255


def test_a_tiny_canvas_has_no_table_a_digit_on_its_edge_is_read():
    assert len(locate(_tiny_two_zeros()).boxes) == 2  # the second 0 used to be dropped as the border's clutter


def test_on_a_tiny_canvas_ink_wider_than_tall_needs_near_certainty_to_stay_one_digit():
    img = np.zeros((28, 28), np.float32)
    whole, halves = np.full(10, -5.0), np.full(10, -9.0)
    whole[8], halves[0] = 0.0, 2.0  # the whole read as an 8 at about 0.98; each half a 0 at about 0.9996

    def read(tiny: bool, box=(0, 4, 27, 24)) -> int:
        found = Found([(box, img)], {0: [((0, 4, 13, 24), img), ((13, 4, 27, 24), img)]}, tiny)
        return len(found.read(np.stack([whole, halves, halves]))[0])
    assert read(tiny=True) == 2  # the halves are surer
    assert read(tiny=False) == 1  # a photo: 0.98 is sure enough for one wide digit (a wide 4 is not rare)
    assert read(tiny=True, box=(0, 0, 20, 24)) == 1  # taller than wide: the usual rule
    beside = Found([((0, 4, 27, 24), img), ((27, 4, 28, 24), img)], {0: [((0, 4, 13, 24), img), ((13, 4, 27, 24), img)]}, True)
    assert len(beside.read(np.stack([whole, whole, halves, halves]))[0]) == 2  # a round 6 beside an 8: the usual rule


def test_a_red_margin_line_is_not_ink_in_a_shadow_and_a_brown_table_stays_as_it_was(monkeypatch):
    """The margin line is dropped by its colour; under a hand's shadow it is as red but darker,
    where red leading green and blue by a fixed amount missed it and it was read as a 1 (a
    small_on_page photo). A brown table is as red, but wide: it is left as it was."""
    import digits.ink
    from digits.ink import ink_darkness

    rgb = np.ones((H, W, 3), np.float32) * np.float32([0.95, 0.94, 0.93])  # paper
    rgb[:, :60] = [0.50, 0.42, 0.33]  # a brown table past the page's edge, as red for its brightness as the line
    rgb[:, 200] = 0.6 * rgb[:, 200] + 0.4 * np.float32([0.85, 0.35, 0.35])  # a faint 1-px margin line
    cv2.line(rgb, (300, 100), (330, 250), (0.12, 0.18, 0.45), 2)  # a blue pen stroke
    rgb[H // 2:] *= 0.45  # a shadow over the lower half
    gray = rgb @ np.float32([0.299, 0.587, 0.114])
    plain = ink_darkness(gray, None, k=21)
    dark = ink_darkness(gray, rgb, k=21)
    line = np.s_[:, 200]
    assert plain[line][: H // 2 - 20].min() > 0.05 and plain[line][H // 2 + 20:].min() > 0.05  # as ink without colour
    assert dark[line].max() == 0  # dropped, in the light and in the shadow
    other = np.ones((H, W), bool)
    other[:, 199:202] = False
    assert np.array_equal(dark[other], plain[other])  # the table, the paper and the pen as they were
    assert dark[175, 315] > 0.5
    monkeypatch.setattr(digits.ink, "RED_LEAD", np.inf)  # by the difference alone: the shadowed line stays ink
    before = ink_darkness(gray, rgb, k=21)
    assert before[line][: H // 2 - 20].max() == 0 and before[line][H // 2 + 20:].min() > 0.05


def test_each_marks_mean_darkness_is_its_own_pixels_mean():
    rng = np.random.default_rng(3)
    dark = rng.random((60, 80)).astype(np.float32)
    labels = np.zeros((60, 80), np.int32)
    labels[5:20, 5:15], labels[30:33, 40:70], labels[50, 2] = 1, 2, 4  # label 3: no pixel
    means, counts = mean_darkness(dark, labels, 5)
    assert counts.tolist() == [0, 150, 90, 0, 1]  # the background is never a mark
    for k in (1, 2, 4):
        assert means[k] == pytest.approx(dark[labels == k].mean(), rel=1e-6)
    assert means[3] == 0.0
