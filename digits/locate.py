"""Find the digits in a photo or a drawing: flatten the light, threshold, drop ruled lines and
clutter, group strokes into digits, and read a number left to right.

Built on OpenCV (morphology, connected components, resizing). Steps 1-4 are :mod:`digits.ink`,
on a working copy whose longer side is ``WORK_SIDE`` px (a shrunk image's ink widened first,
so a 1-px pen line survives):

1. **polarity**: ink is made dark on a light background (a canvas of white strokes on black
   is inverted), judged from the median pixel: most of any such image is background;
2. **flatten**: the background is estimated by a morphological closing four times as wide
   as the pen's stroke (it paints over the ink but follows a shadow's edge) and smoothed;
   the image is divided by it, so shadows, uneven light and the paper's colour become 1.0
   and ink stays dark wherever it is;
3. **threshold**: ink darkness (1 - flattened) over Otsu's cut, with a floor. After the
   division this is a local threshold: each pixel is judged against its own neighbourhood;
4. **lines**: long thin horizontal and vertical runs (ruling, graph paper, the margin line,
   the page edge) found by openings with kernels a quarter of the image long are removed,
   and strokes they crossed are closed again; faint hairlines away from the strokes (pencil
   guide lines) are dropped; reddish pixels (a margin line, also in a shadow) are not ink. With a thin pen
   (1-2 px strokes: a thin pen on a large photo, a mouse; judged on the marks clear of the
   border, not the table's edge) strokes are kept whole, not opened into pieces, gaps the
   threshold left in them are closed, and ruling at a tilt is found by a Hough transform,
   or, broken into dashes, by projection along small tilts (:mod:`digits.ruling`);
5. **candidates** (:mod:`digits.grouping`): connected components, without specks, line
   remnants, nets and pieces of the page's edge (a long thin mark with the table on one
   side); what touches the border (the table, a shadow's edge) only when nothing else is
   left, unless the image's edge is paper (a tight crop, or a canvas of at most
   ``digits.ink.TINY_SIDE`` px: what it cuts is the subject, and may fill the whole frame
   both ways, unlike a frame drawn around a canvas, which runs along all four sides); more than
   ``digits.grouping.MAX_CANDIDATES`` is too cluttered to search;
6. **grouping** (:mod:`digits.grouping`): components stacked above each other with overlapping
   columns are one digit (the detached bar of a 5, the open top of a 4); once the digits
   are chosen (7), each takes the flat mark just above its top, if any (a 5's bar written
   apart, to its upper right);
7. **choice**: each group is scored by how much it looks like a handwritten digit (size in
   the image, aspect, ink density, closeness to the centre); the best one is the digit, and
   groups of a similar height on the same line are the rest of a number, followed from
   neighbour to neighbour (a long row photographed at a tilt); then once more with the
   ink at a lower threshold, for a digit written more lightly than the rest of its number
   (:func:`digits.grouping.fainter`). **Small digits in a large
   image** (a number written small on a page photographed whole): when a shrunk image
   leaves nothing, only the table past the page's edge, or digits under ``FINE_BELOW`` px,
   steps 5-7 run again with the speck limit ``SMALL_SPECK`` times as low; digits still
   under ``FINE_BELOW`` px are then looked for again, steps 2-8, in a crop of the input
   around them (:func:`_refined`), where they have several times the pixels;
8. **touching digits** (numbers only): a group wider than ``SPLIT_ASPECT`` times its height
   (``TINY_SPLIT_ASPECT`` on a tiny canvas) may be several digits written touching; in a
   row beside two or more others, only if it is also ``LINE_SPLIT`` times as wide as their
   median (a wide 3 among digits as wide is one digit, not "23"). It stays
   one digit here, and ``splits`` offers the other reading: as many digits as its width
   holds, each cut at the column with the least ink near its expected place (the vertical
   projection, as classic OCR segments touching characters), every piece at least half
   the group's height; never through a hole across most of the group's width (a wide 0's).
   A wide 0 or 2 is one digit,
   so the choice is the model's, by which reading it is surer of, and by shape: a sure
   whole as wide as almost no MNIST digit of its class gives way to sure pieces each
   shaped as usual (recognition-based segmentation: ``Found.read`` in digits.preprocess,
   digits.aspect).

The whole search has a deadline (``locate(deadline=...)``): past it, :class:`TooSlow`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import cv2
import numpy as np

from digits.decode import ImageError
from digits.grouping import Group, candidates, fainter, group, group_darkness, mean_darkness, overlap, with_flags
from digits.ink import TINY_SIDE, ink_darkness, ink_mask, margin_line, paper_border as edge_is_paper, stroke_width, to_work

SPLIT_ASPECT = 1.15  # width / height above which a group of a number may be several touching digits
TINY_SPLIT_ASPECT = 0.95  # ...on a tiny canvas, where a digit is drawn to fill the height (digits.preprocess._split_wins)
LINE_SPLIT = 1.4  # ...and, beside two or more other digits, at least this many times their median width
DIGIT_ASPECT = 0.75  # a handwritten digit's typical width / height, to count the digits in a wide group
FINE_BELOW = 24  # px: digits this short on the work copy of a shrunk image are looked for again at full size
SMALL_SPECK = 0.6  # ...and first searched for with the speck limit of digits.grouping.candidates this much lower


class TooSlow(ImageError):
    """Finding the digits took longer than the image's time budget."""


def _check(deadline: float | None) -> None:
    if deadline is not None and time.monotonic() > deadline:
        raise TooSlow("took too long to search for digits (more than its time budget: a page this busy is not a "
                      "photo of a few digits); crop it to the digits")


@dataclass
class Located:
    boxes: list[tuple[int, int, int, int]]  # x0, y0, x1, y1 of each digit, left to right, in input pixels
    ink: list[np.ndarray]  # each digit's ink darkness (0..1, ink bright), cropped to its box
    steps: dict[str, np.ndarray] = field(default_factory=dict, repr=False)  # for the mosaic: uint8 images
    # the index of a digit that may be touching digits -> [(box, ink)] of each, left to right
    splits: dict[int, list[tuple[tuple[int, int, int, int], np.ndarray]]] = field(default_factory=dict, repr=False)
    tiny: bool = False  # the input is a canvas of at most digits.ink.TINY_SIDE px (MNIST's scale)


def _score(g: Group, shape: tuple[int, int], darkness: float, crop: bool = False) -> float:
    """Step 7: how much a group looks like one handwritten digit (``darkness``: its mean ink
    darkness; a shadow's or page's edge is grey, a pen stroke is dark). A mark the border cuts
    may fill the frame's height: it is a tight crop's subject; where the image's edge is paper
    (``crop``), it may fill its width too."""
    H, W = shape
    size = g.h / H
    aspect = g.h / max(g.w, 1)
    density = g.area / max(g.w * g.h, 1)
    s = 1.0
    s *= np.clip(size / 0.06, 0, 1)  # not a speck
    if not g.edge or (g.w >= 0.85 * W and not crop):  # the whole frame's height is a digit only when a crop cut it so
        s *= np.clip((0.95 - size) / 0.2, 0, 1)
    s *= 1.0 if 0.7 <= aspect <= 8 else 0.3  # digits are taller than wide ('1' very much so)
    s *= 1.0 if 0.06 <= density <= 0.7 else 0.4  # strokes, not a blob or a hairline
    cx, cy = (g.x0 + g.x1) / 2 / W - 0.5, (g.y0 + g.y1) / 2 / H - 0.5
    s *= 1.0 - 0.5 * min(1.0, (cx * cx + cy * cy) ** 0.5)  # people centre what they photograph
    return float(s * g.area ** 0.5 * darkness ** 2)


def _line_of(best: Group, groups: list[Group]) -> list[Group]:
    """Groups written on ``best``'s line: from it, to the right and then to the left, the nearest
    group of a similar height whose middle is within half a height of the last one taken, and
    whose gap to it is under 1.5 heights. Each step is judged against its neighbour, not
    ``best``, so a long row photographed at a tilt is followed to its ends."""
    line = [best]
    for step in (1, -1):
        edge = best
        while True:
            mid = (edge.y0 + edge.y1) / 2
            ahead = [g for g in groups if g not in line and 0.55 * edge.h <= g.h <= 1.8 * edge.h
                     and abs((g.y0 + g.y1) / 2 - mid) < 0.5 * edge.h
                     and (g.x0 > edge.x0 if step == 1 else g.x1 < edge.x1)]
            gaps = [(g.x0 - edge.x1 if step == 1 else edge.x0 - g.x1, g) for g in ahead]
            gap, nxt = min(gaps, key=lambda t: t[0], default=(None, None))
            if nxt is None or gap > 1.5 * max(edge.h, nxt.h):
                break
            line.append(nxt)
            edge = nxt
    return sorted(line, key=lambda g: g.x0)


def _pieces(g: Group, labels: np.ndarray) -> list[Group]:
    """Step 8: a wide group cut into the digits its width holds, each cut at the column with
    the least ink near its expected place; a column away from it pays for the distance (a cut
    through a 0's hole crosses as little ink as one between two 0s)."""
    own = np.isin(labels[g.y0:g.y1, g.x0:g.x1], g.labels)
    n = max(2, round(g.w / (DIGIT_ASPECT * g.h)))
    profile = np.convolve(own.sum(0), np.ones(3) / 3, mode="same")
    step = g.w / n
    per_px = 0.5 * float(np.median(profile[profile > 0])) / max(0.35 * step, 1.0)  # half a column's ink at the window's edge
    cuts = [0]
    for k in range(1, n):
        c = np.arange(int(k * step - 0.35 * step), min(int(k * step + 0.35 * step) + 1, g.w))
        cuts.append(int(c[np.argmin(profile[c] + per_px * np.abs(c - k * step))]))
    cuts.append(g.w)
    if _cuts_a_loop(own, cuts[1:-1]):
        return []
    out = []
    for a, b in zip(cuts[:-1], cuts[1:], strict=True):
        rows = np.flatnonzero(own[:, a:b].any(1))
        if b - a >= 2 and len(rows):
            out.append(Group(g.x0 + a, g.y0 + int(rows[0]), g.x0 + b, g.y0 + int(rows[-1]) + 1,
                              int(own[:, a:b].sum()), list(g.labels)))
    # every piece is a digit of the number, about as tall as the group: a flat sliver (the end of a
    # wide 7's bar, read as a "2") is no reading to offer
    return out if len(out) >= 2 and min(p.h for p in out) >= 0.5 * g.h else []


def _cuts_a_loop(own: np.ndarray, cuts: list[int]) -> bool:
    """Whether the group is one wide loop that a cut would run through: a wide 0, whose hole
    spans most of its width. Two digits written touching can enclose a hole between them
    too (a 3 meeting a 7's bar), but only a small part of their width."""
    contours, hierarchy = cv2.findContours(own.astype(np.uint8), cv2.RETR_CCOMP, cv2.CHAIN_APPROX_SIMPLE)
    H, W = own.shape
    for c, (_, _, _, parent) in zip(contours, hierarchy[0] if hierarchy is not None else [], strict=False):
        x, _, w, h = cv2.boundingRect(c)
        if parent >= 0 and w >= 0.5 * W and h >= 0.25 * H and any(x + 0.15 * w < k < x + 0.85 * w for k in cuts):
            return True
    return False


def _median_h(groups: list[Group]) -> float:
    return float(np.median([g.h for g in groups])) if groups else 0.0


def _refined(gray: np.ndarray, color: np.ndarray | None, chosen: list[Group], scale: float, single: bool,
             deadline: float | None) -> Located | None:
    """The digits ``chosen`` on the work copy, under ``FINE_BELOW`` px tall there (a number
    written small on a page photographed whole), found again in the input around them (a
    digit's height above and below, three to the sides, where the rest of a row may be):
    a crop of the full-size image, worked at up to ``WORK_SIDE`` px like any image, where
    the digits are drawn with many more pixels. None if it finds nothing there."""
    h = _median_h(chosen)
    H0, W0 = gray.shape
    x0, x1 = (max(0, int((min(g.x0 for g in chosen) - 3 * h) / scale)),
              min(W0, int(np.ceil((max(g.x1 for g in chosen) + 3 * h) / scale))))
    y0, y1 = (max(0, int((min(g.y0 for g in chosen) - h) / scale)),
              min(H0, int(np.ceil((max(g.y1 for g in chosen) + h) / scale))))
    if max(x1 - x0, y1 - y0) > 0.8 * max(H0, W0):  # a row across the page: the crop would be shrunk as much
        return None
    fine = locate(gray[y0:y1, x0:x1], None if color is None else color[y0:y1, x0:x1], single=single,
                  deadline=deadline, refine=False)
    if not fine.boxes:
        return None

    def moved(box: tuple[int, int, int, int]) -> tuple[int, int, int, int]:
        return box[0] + x0, box[1] + y0, box[2] + x0, box[3] + y0
    return Located([moved(b) for b in fine.boxes], fine.ink, fine.steps,
                   {i: [(moved(b), ink) for b, ink in pieces] for i, pieces in fine.splits.items()}, fine.tiny)


def locate(gray: np.ndarray, color: np.ndarray | None = None, *, single: bool = False,
           deadline: float | None = None, refine: bool = True) -> Located:
    """The digits in ``gray`` (float [H, W] in 0..1; ``color`` the same image as float RGB, if any).

    Returns them left to right (one with ``single``); none found is an empty list. Past
    ``deadline`` (``time.monotonic()``) it gives up with :class:`TooSlow`. ``refine``: digits
    found small in a large image are looked for again in the input around them (:func:`_refined`)."""
    H0, W0 = gray.shape
    g, c, scale = to_work(gray.astype(np.float32), None if color is None else color.astype(np.float32))
    side = max(g.shape)
    # The closing must be wider than the pen's stroke but as narrow as possible to follow
    # shadows; stroke widths vary 20-fold between a ballpoint photo and a finger on a canvas,
    # so try a few widths and keep the one whose best digit candidate scores highest.
    light = g if np.median(g) >= 0.4 else 1 - g  # ink dark on light
    width = stroke_width(light)
    tiny = max(H0, W0) <= TINY_SIDE
    paper_border = tiny or edge_is_paper(light)  # a tiny canvas has no table around it
    closing = (side // 12) | 1 if width is None else int(np.clip(4 * width, 9, side // 6)) | 1
    # a tight crop's digit may be a fifth of the image wide: a closing as wide as a third follows it;
    # also where the image was not shrunk, as a crop's paper edge may lie in a shadow (not on a large
    # photo: there it paints over a row's shadows and finds them instead)
    widest = {side // 3} if paper_border or scale >= 0.75 else set()
    inks, red = [], None if c is None else margin_line(c)
    for k in sorted({closing, side // 24, side // 12, side // 6} | widest):
        _check(deadline)
        dark = ink_darkness(light, k=k, red=red, upright=True)
        inks.append((dark, ink_mask(dark, crop=paper_border)))

    def search(speck: float):
        best_try = None
        for dark, mask in inks:
            labels, stats, cands = candidates(mask, paper_border, light, speck)
            groups = group(cands)
            per_label = mean_darkness(dark, labels, len(stats))
            scored = [(_score(gr, mask.shape, group_darkness(gr, per_label), paper_border), gr) for gr in groups]
            top = max(scored, key=lambda t: t[0], default=(0.0, None))
            if best_try is None or top[0] > best_try[0]:
                best_try = (top[0], top[1], dark, mask, labels, stats, groups)
        _, best, dark, mask, labels, stats, groups = best_try
        return best, dark, mask, labels, stats, [] if best is None else [best] if single else _line_of(best, groups), groups
    speck = 1.0
    best, dark, mask, labels, stats, chosen, groups = search(speck)
    shrunk = refine and scale < 0.75
    # Digits written small in a large image may be under the speck limit, leaving nothing, or small
    # digits, or only the table past the page's edge (step 5's last resort): look below it then.
    if shrunk and (best is None or _median_h(chosen) < FINE_BELOW or best.edge and not paper_border):
        _check(deadline)
        alt = search(SMALL_SPECK)
        if alt[0] is not None and not (alt[0].edge and best is not None):
            (best, dark, mask, labels, stats, chosen, groups), speck = alt, SMALL_SPECK
    _check(deadline)
    steps = {"flattened": (255 * (1 - dark)).astype(np.uint8), "mask": mask}
    if best is None:
        return Located([], [], steps, tiny=tiny)
    if not single:  # a digit written more lightly than the rest of its number
        labels, new = fainter(dark, mask, labels, chosen, paper_border, light, speck)
        chosen = _line_of(best, [g for g in groups if not any(overlap(g, n) for n in new)] + new) if new else chosen
    chosen = with_flags(chosen, stats)
    if shrunk and _median_h(chosen) < FINE_BELOW:
        fine = _refined(gray, color, chosen, scale, single, deadline)
        if fine is not None:
            return fine

    def cut(gr: Group) -> tuple[tuple[int, int, int, int], np.ndarray]:
        own = np.isin(labels[gr.y0:gr.y1, gr.x0:gr.x1], gr.labels)
        own = cv2.dilate(own.astype(np.uint8), np.ones((3, 3), np.uint8)) > 0  # keep the anti-aliased rim
        return ((int(gr.x0 / scale), int(gr.y0 / scale), min(W0, int(np.ceil(gr.x1 / scale))),
                 min(H0, int(np.ceil(gr.y1 / scale)))), np.where(own, dark[gr.y0:gr.y1, gr.x0:gr.x1], 0).astype(np.float32))
    boxes, inks = (list(t) for t in zip(*map(cut, chosen), strict=True))
    split_aspect = TINY_SPLIT_ASPECT if tiny else SPLIT_ASPECT
    widths = [gr.w for gr in chosen]

    def as_wide_as_two(i: int) -> bool:  # in a row, a digit as wide as its neighbours is one (a wide 3, a 0)
        others = widths[:i] + widths[i + 1:]
        return len(others) < 2 or widths[i] >= LINE_SPLIT * float(np.median(others))
    splits = {} if single else {i: [cut(p) for p in pieces] for i, gr in enumerate(chosen)
                                if gr.w > split_aspect * gr.h and as_wide_as_two(i) and (pieces := _pieces(gr, labels))}
    chosen_img = cv2.cvtColor(steps["flattened"], cv2.COLOR_GRAY2BGR)
    for gr in chosen:
        cv2.rectangle(chosen_img, (gr.x0, gr.y0), (gr.x1, gr.y1), (0, 0, 255), 2)
    steps["chosen"] = chosen_img
    return Located(boxes, inks, steps, splits, tiny)
