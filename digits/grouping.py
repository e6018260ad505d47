"""Steps 5-6 of :mod:`digits.locate`: which ink components may be a digit, and which of them
are strokes of one digit (the detached bar of a 5, the open top of a 4).

Bounded in time whatever the image: at most ``MAX_CANDIDATES`` components are considered
(more is :class:`TooCluttered`: a page of print, graph paper, noise), and grouping compares
all pairs at once with numpy, merges every connected set (union-find), then compares the
merged boxes again, a few rounds in all. The greedy scan it replaces restarted after every
merge, O(n^3) in components: a 5 KB PNG of a block grid took 25 s on a slow CPU.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from digits.decode import ImageError
from digits.ink import ink_mask, page_edge

MAX_CANDIDATES = 1500  # components that pass the speck and line filters; a handwritten page has far fewer
FAINT = 0.6  # the threshold, times this, for a second look at fainter marks beside the digits found
SEEDED = 0.1  # ...of whose ink at least this share was ink at the full threshold
PAIR_CHUNK = 512  # rows of the pair comparison at a time: 512 x 1,500 booleans, not 1,500 x 1,500 floats


class TooCluttered(ImageError):
    """More candidate marks than a photo of handwritten digits has."""


@dataclass
class Group:
    x0: int
    y0: int
    x1: int
    y1: int
    area: int
    labels: list[int]
    edge: bool = False  # touches the image's border

    @property
    def h(self) -> int:
        return self.y1 - self.y0

    @property
    def w(self) -> int:
        return self.x1 - self.x0


def candidates(mask: np.ndarray, paper_border: bool = False,
               light: np.ndarray | None = None, speck: float = 1.0) -> tuple[np.ndarray, np.ndarray, list[Group]]:
    """Step 5: ``(labels, stats, groups)``: components that may be (part of) a digit, without
    specks, line remnants, sparse nets and (given ``light``, the image with ink dark on light)
    pieces of the page's edge, and without those touching the border (the table, a shadow's
    edge) unless nothing else is left, or ``paper_border`` says the image's edge is paper (a
    tight crop: what it cuts is the subject). ``speck`` scales the size under which a mark is a
    speck (below 1: small digits in a large photo). Raises :class:`TooCluttered` past the cap."""
    n, labels, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
    H, W = mask.shape
    x, y, w, h, area = (stats[1:, k].astype(np.int64) for k in range(5))
    keep = ~((area < 0.00015 * speck ** 2 * H * W) | (np.maximum(w, h) < 0.02 * speck * max(H, W)))  # specks
    keep &= ~((w > 5 * h) & (h < 0.05 * H))  # what is left of a line
    sparse = keep & (area < 0.04 * w * h)
    for i in np.flatnonzero(sparse)[:50]:  # a sparse net (grid remnants) has many holes; a thin-pen digit, 0 to 2
        sparse[i] = _holes(labels, stats, i + 1) > 3
    keep &= ~sparse
    if light is not None and not paper_border:  # a long thin mark with the table beside it: the page's edge
        for i in np.flatnonzero(keep & (np.maximum(w, h) >= 3 * np.minimum(w, h)))[:50]:
            keep[i] = not page_edge(light, int(x[i]), int(y[i]), int(w[i]), int(h[i]))
    idx = np.flatnonzero(keep)
    if len(idx) > MAX_CANDIDATES:
        raise TooCluttered(f"is too cluttered to find a digit in ({len(idx):,} separate marks, more than a photo of "
                           f"handwriting has: {MAX_CANDIDATES:,}); crop it to the digits")
    touches = (x <= 1) | (y <= 1) | (x + w >= W - 1) | (y + h >= H - 1)
    frame = touches & (w >= 0.9 * W) & (h >= 0.9 * H)  # around a page or a canvas: never a digit...
    if paper_border:  # ...but in a tight crop a digit may fill the frame: a frame runs along all four
        for i in np.flatnonzero(frame)[:10]:  # sides, and a net (graph paper filling the photo) has many holes
            frame[i] = _along_every_side(labels, stats, i + 1) or _holes(labels, stats, i + 1) > 3
    groups = [_group_of(stats, i + 1, bool(touches[i])) for i in idx if not frame[i]]
    if paper_border:  # the photo's edge is paper: a mark it cuts is the crop's subject, not the table
        return labels, stats, groups
    # else what touches the border is the table, a shadow's edge: only when nothing else is left
    # (a drawing that fills its canvas)
    return labels, stats, [g for g in groups if not g.edge] or groups


def _holes(labels: np.ndarray, stats: np.ndarray, label: int) -> int:
    """How many holes a component encloses (the loops of an 8, the cells of a net)."""
    x, y, w, h = (int(v) for v in stats[label, :4])
    own = (labels[y:y + h, x:x + w] == label).astype(np.uint8)
    _, hierarchy = cv2.findContours(own, cv2.RETR_CCOMP, cv2.CHAIN_APPROX_SIMPLE)
    return 0 if hierarchy is None else int((hierarchy[0][:, 3] >= 0).sum())


def _along_every_side(labels: np.ndarray, stats: np.ndarray, label: int) -> bool:
    """Whether a component runs along each side of its box for most of the side's length, as a
    frame drawn around a canvas does; a digit filling a crop meets its box's sides at a few places."""
    x, y, w, h = (int(v) for v in stats[label, :4])
    own = labels[y:y + h, x:x + w] == label
    b = max(2, min(w, h) // 20)
    return min(own[:b].any(0).mean(), own[-b:].any(0).mean(), own[:, :b].any(1).mean(), own[:, -b:].any(1).mean()) > 0.6


def _group_of(stats: np.ndarray, label: int, edge: bool = False) -> Group:
    x, y, w, h, area = (int(v) for v in stats[label])
    return Group(x, y, x + w, y + h, area, [label], edge)


def group(cands: list[Group]) -> list[Group]:
    """Step 6: strokes of one digit overlap in x (by half the narrower) and sit above one
    another (a gap under half the taller); such sets merge, until no two groups qualify.
    Returned largest first."""
    groups = list(cands)
    while len(groups) > 1:
        pairs = _stacked_pairs(np.array([[g.x0, g.y0, g.x1, g.y1] for g in groups], dtype=np.float32))
        if not len(pairs):
            break
        groups = _merge(groups, pairs)
    return sorted(groups, key=lambda g: -g.area)


def _stacked_pairs(boxes: np.ndarray) -> np.ndarray:
    """Index pairs (i < j) of boxes that the grouping rule joins, compared a chunk of rows at a time."""
    x0, y0, x1, y1 = boxes.T
    w, h = x1 - x0, y1 - y0
    found = []
    for a in range(0, len(boxes), PAIR_CHUNK):
        s = slice(a, a + PAIR_CHUNK)
        overlap = np.minimum(x1[s, None], x1[None]) - np.maximum(x0[s, None], x0[None])
        gap = np.maximum(y0[s, None], y0[None]) - np.minimum(y1[s, None], y1[None])
        near = (overlap >= 0.5 * np.minimum(w[s, None], w[None])) & (gap < 0.5 * np.maximum(h[s, None], h[None]))
        i, j = np.nonzero(near)
        i += a
        found.append(np.stack([i, j], 1)[i < j])
    return np.concatenate(found)


def _merge(groups: list[Group], pairs: np.ndarray) -> list[Group]:
    parent = list(range(len(groups)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i
    for i, j in pairs.tolist():
        ri, rj = root(i), root(j)
        if ri != rj:
            parent[max(ri, rj)] = min(ri, rj)
    merged: dict[int, Group] = {}
    for i, g in enumerate(groups):
        r = root(i)
        if r not in merged:
            merged[r] = Group(g.x0, g.y0, g.x1, g.y1, g.area, list(g.labels), g.edge)
            continue
        m = merged[r]
        m.x0, m.y0, m.x1, m.y1 = min(m.x0, g.x0), min(m.y0, g.y0), max(m.x1, g.x1), max(m.y1, g.y1)
        m.area += g.area
        m.labels += g.labels
        m.edge = m.edge or g.edge
    return list(merged.values())


def mean_darkness(dark: np.ndarray, labels: np.ndarray, n_labels: int) -> tuple[np.ndarray, np.ndarray]:
    """Each component's mean ink darkness, all at once (one pass over the image, not one per group).
    The background (label 0, counted as empty) is left out: no group holds it, and it is most of
    the image (3x faster; each label's pixels are summed in the same order, so the same sums)."""
    flat = labels.ravel()
    ink = np.flatnonzero(flat)
    marks = flat[ink]
    sums = np.bincount(marks, weights=dark.ravel()[ink], minlength=n_labels)
    counts = np.bincount(marks, minlength=n_labels)
    return sums / np.maximum(counts, 1), counts


def group_darkness(g: Group, per_label: tuple[np.ndarray, np.ndarray]) -> float:
    """A group's mean darkness: its components' means weighted by their pixel counts."""
    means, counts = per_label
    c = counts[g.labels]
    return float((means[g.labels] * c).sum() / max(int(c.sum()), 1))


def overlap(a: Group, b: Group) -> bool:
    return a.x0 < b.x1 and b.x0 < a.x1 and a.y0 < b.y1 and b.y0 < a.y1


def fainter(dark: np.ndarray, mask: np.ndarray, labels: np.ndarray, chosen: list[Group], paper_border: bool,
            light: np.ndarray, speck: float = 1.0) -> tuple[np.ndarray, list[Group]]:
    """Digits written more lightly than those ``chosen`` (a thin pen pressed lightly, one digit of
    a number 1 px wide and the next 3): groups of the ink at ``FAINT`` times the threshold
    that do not overlap ``chosen``. The threshold is set by the darkest strokes, so such a digit
    leaves only a few pieces in ``mask``, too small to be one; a group is taken when at least
    ``SEEDED`` of its ink is in ``mask`` (hysteresis, as Canny's edges): faint ruling and graph
    paper, none of whose lines reach the threshold, are not. Returns ``labels`` with the new
    groups' components added, and the new groups."""
    low = ink_mask(dark, crop=paper_border, lower=FAINT)
    low_labels, _, cands = candidates(low, paper_border, light, speck)

    def seeded(g: Group) -> bool:
        own = np.isin(low_labels[g.y0:g.y1, g.x0:g.x1], g.labels)
        return float(np.mean(mask[g.y0:g.y1, g.x0:g.x1][own] > 0)) >= SEEDED
    new = [g for g in group(cands) if not any(overlap(g, c) for c in chosen) and seeded(g)]
    if not new:
        return labels, []
    off = int(labels.max()) + 1
    labels = np.where(np.isin(low_labels, [lb for g in new for lb in g.labels]), low_labels + off, labels)
    return labels, [Group(g.x0, g.y0, g.x1, g.y1, g.area, [lb + off for lb in g.labels], g.edge) for g in new]


def with_flags(chosen: list[Group], stats: np.ndarray) -> list[Group]:
    """Each of the digits ``chosen`` with the flat mark just above its top, if any: a 5's bar
    written apart from its body, to its upper right, where the grouping rule (overlapping
    columns) does not reach, or dropped as what is left of a line (flat and short). At most
    one, as wide as a fifth to nine tenths of the digit's height, at most a third of it thick
    (a felt tip's), starting over the digit or just past it, and clear of the other digits.
    ``stats``: the mask's components, as :func:`candidates` gives them (the flag is seldom one)."""
    if not chosen:
        return chosen
    x, y, w, h, area = (stats[:, k].astype(np.int64) for k in range(5))
    taken = {lb for g in chosen for lb in g.labels}
    out = []
    for g in chosen:
        near = ((w >= 1.5 * h) & (w >= 0.2 * g.h) & (w <= 0.9 * g.h) & (h <= 0.35 * g.h)
                & (y >= g.y0 - 0.3 * g.h) & (y + h <= g.y0 + 0.35 * g.h)
                & (x >= g.x0 - 0.1 * g.h) & (x <= g.x1 + 0.15 * g.h))
        near[0] = False
        best = None
        for i in np.flatnonzero(near):
            box = Group(int(x[i]), int(y[i]), int(x[i] + w[i]), int(y[i] + h[i]), int(area[i]), [int(i)])
            if int(i) in taken or any(overlap(box, o) for o in chosen if o is not g):
                continue
            if best is None or box.area > best.area:
                best = box
        if best is None:
            out.append(g)
            continue
        out.append(Group(min(g.x0, best.x0), min(g.y0, best.y0), max(g.x1, best.x1), max(g.y1, best.y1),
                         g.area + best.area, g.labels + best.labels, g.edge))
    return out
