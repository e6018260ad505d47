"""Generated images of each kind people upload that digits once misread (issue 26), with labels.

Real people's photos and drawings are the measure and stay outside the project; these
generators make each *kind* of difficulty they showed, so that a change can be measured
per kind here (scripts/photos_eval.py and scripts/canvas_eval.py report each):

photos (MNIST test digits as ink on paper, digits.synth):
    thin_pen_large   1-3 px pen strokes on a 1600x1200 photo
    marker_blurred   thick marker strokes, heavily blurred
    pencil_guides    faint pencil lines ruled across the written line
    cut_by_edge      a tight crop: the digit touches or crosses the frame
    long_row         8-12 spaced digits across a wide photo, under a hand's shadow
    exif_rotated     a photo stored as a phone stores a portrait one (EXIF orientation 6, 8, 3)
    scan_16bit       a flat 16-bit greyscale scan of a digit on white paper
    small_on_page    a number written small (2-5% of the frame's height) on a page photographed whole, 8 MP
drawings (pen strokes, digits.strokes):
    page_style       the page's canvas: 280x280, a 10-25 px pen
    thin_mouse       a 1-2 px mouse line on a 1280x1280 canvas
    continental_1    a 1 with its flag and base serif
    open_4           a 4 whose top is left open
    open_6           a 6 whose loop is left open
    tiny_two_digit   a two-digit number drawn on a 28x28 canvas, the digits almost touching

Every generator takes a seeded ``numpy`` Generator (photo kinds first a :class:`Source` of MNIST
digits) and returns ``(file bytes, label)``.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Callable

import cv2
import numpy as np
from PIL import Image

from digits.strokes import render
from digits.synth import _ink_alpha, make_photo

Made = tuple[bytes, str]


class Source:
    """MNIST digits to write with (``images`` float 0..1, ``labels``). ``last`` names the images
    of the last photo made, so that a model's reading of the same digits as clean 28x28s can be
    counted (:func:`originals_by_kind`); None when only their labels were used."""

    def __init__(self, images: np.ndarray, labels: np.ndarray) -> None:
        self.images, self.labels, self.last = images, labels, None

    def pick(self, rng: np.random.Generator, n: int, *, drawn: bool = True) -> tuple[list, list]:
        idx = rng.integers(0, len(self.images), n)
        self.last = [int(i) for i in idx] if drawn else None
        return [self.images[i] for i in idx], [int(self.labels[i]) for i in idx]


def _stroke_alpha(labels: list[int], width: tuple[int, int]) -> Callable:
    """A pen-stroke mask of each label, ``height`` px tall, drawn with a ``width`` px pen."""
    def alpha(i: int, height: int, rng: np.random.Generator) -> np.ndarray:
        mask, _ = render(labels[i], rng, size=max(32, int(height / 0.65)), width_px=width)
        ys, xs = np.nonzero(mask > 0)
        ink = mask[ys.min():ys.max() + 1, xs.min():xs.max() + 1]
        f = height / ink.shape[0]  # every digit of a line written about as tall as the others
        return (cv2.resize(ink, (max(1, round(ink.shape[1] * f)), height), interpolation=cv2.INTER_LINEAR) / 255.0
                ).astype(np.float32)
    return alpha


def thin_pen_large(src: Source, rng) -> Made:
    ds, ls = src.pick(rng, int(rng.integers(1, 4)), drawn=False)  # pen strokes of these labels, not the images
    p = make_photo(ds, ls, rng, size=(1600, 1200), ink_alpha=_stroke_alpha(ls, (1, 4)), blur=(0.3, 0.7))
    return p.jpeg, p.label


def marker_blurred(src: Source, rng) -> Made:
    ds, ls = src.pick(rng, int(rng.integers(1, 3)))

    def marker(i, height, rng):
        a = _ink_alpha(ds[i], height, rng)
        k = max(3, int(height * rng.uniform(0.05, 0.09)))  # a felt tip: 3-4 times a pen's width
        return np.pad(cv2.dilate(a, np.ones((k, k), np.uint8)), k)
    p = make_photo(ds, ls, rng, ink_alpha=marker, blur=(1.8, 3.2), gap=(0.3, 0.5))
    return p.jpeg, p.label


def pencil_guides(src: Source, rng) -> Made:
    ds, ls = src.pick(rng, int(rng.integers(1, 4)))
    p = make_photo(ds, ls, rng, guides=int(rng.integers(1, 3)), paper="plain")
    return p.jpeg, p.label


def cut_by_edge(src: Source, rng) -> Made:
    ds, ls = src.pick(rng, 1)
    p = make_photo(ds, ls, rng)
    img = Image.open(io.BytesIO(p.jpeg))
    x0, y0, x1, y1 = p.boxes[0]
    w, h = x1 - x0, y1 - y0
    # a tight crop: a small margin on three sides, the fourth cuts into the digit's edge (or just touches it)
    m = [int(rng.uniform(0.02, 0.15) * s) for s in (w, h, w, h)]
    side, cut = int(rng.integers(4)), int(rng.uniform(0.0, 0.08) * (w if rng.integers(2) else h))
    box = [x0 - m[0], y0 - m[1], x1 + m[2], y1 + m[3]]
    box[side] = (x0, y0, x1, y1)[side] + (cut if side < 2 else -cut)
    box = [max(0, box[0]), max(0, box[1]), min(img.width, box[2]), min(img.height, box[3])]
    buf = io.BytesIO()
    img.crop(box).save(buf, "JPEG", quality=90)
    return buf.getvalue(), p.label


def long_row(src: Source, rng) -> Made:
    ds, ls = src.pick(rng, int(rng.integers(8, 13)))
    p = make_photo(ds, ls, rng, size=(1600, 700), gap=(0.15, 0.45), shadow=1.0, paper="plain")
    return p.jpeg, p.label


def small_on_page(src: Source, rng) -> Made:
    ds, ls = src.pick(rng, int(rng.integers(1, 4)))
    p = make_photo(ds, ls, rng, size=(3264, 2448), height=(0.02, 0.05))  # an 8 MP phone photo
    return p.jpeg, p.label


def exif_rotated(src: Source, rng) -> Made:
    ds, ls = src.pick(rng, int(rng.integers(1, 4)))
    p = make_photo(ds, ls, rng)
    orientation = int(rng.choice([6, 8, 3]))
    turn = {6: Image.Transpose.ROTATE_90, 8: Image.Transpose.ROTATE_270, 3: Image.Transpose.ROTATE_180}[orientation]
    exif = Image.Exif()
    exif[0x0112] = orientation
    buf = io.BytesIO()
    Image.open(io.BytesIO(p.jpeg)).transpose(turn).save(buf, "JPEG", quality=92, exif=exif.tobytes())
    return buf.getvalue(), p.label


def scan_16bit(src: Source, rng) -> Made:
    ds, ls = src.pick(rng, 1)
    h = int(rng.integers(80, 260))
    a = _ink_alpha(ds[0], h, rng)
    page = np.full((int(h * rng.uniform(1.6, 3)), int(h * rng.uniform(1.6, 3))), rng.uniform(0.85, 0.97))
    y, x = int(rng.integers(0, page.shape[0] - a.shape[0])), int(rng.integers(0, page.shape[1] - a.shape[1]))
    page[y:y + a.shape[0], x:x + a.shape[1]] *= 1 - 0.9 * a
    page = cv2.GaussianBlur(page, (0, 0), 0.8) + rng.normal(0, 0.01, page.shape)
    buf = io.BytesIO()
    Image.fromarray((np.clip(page, 0, 1) * 65535).astype(np.uint16)).save(buf, "PNG")
    return buf.getvalue(), str(ls[0])


def _drawing(digit: int, rng, *, shape=None, size=280, width=(10, 26)) -> bytes:
    mask, _ = render(digit, rng, size, shape=shape, width_px=width)
    buf = io.BytesIO()
    Image.fromarray(mask).save(buf, "PNG")
    return buf.getvalue()


def page_style(rng) -> Made:
    d = int(rng.integers(10))
    return _drawing(d, rng), str(d)


def thin_mouse(rng) -> Made:
    d = int(rng.integers(10))
    return _drawing(d, rng, size=1280, width=(1, 3)), str(d)


def continental_1(rng) -> Made:
    return _drawing(1, rng, shape=2), "1"


def open_4(rng) -> Made:
    return _drawing(4, rng, shape=1), "4"


def open_6(rng) -> Made:
    return _drawing(6, rng, shape=1), "6"


def tiny_two_digit(rng) -> Made:
    a, b = (int(v) for v in rng.integers(0, 10, 2))
    inks = []
    for d in (a, b):  # drawn at 4x, then stored at 28x28 as such a canvas does
        mask, _ = render(d, rng, 100, width_px=(6, 10))
        ys, xs = np.nonzero(mask)
        inks.append(mask[ys.min():ys.max() + 1, xs.min():xs.max() + 1])
    gap = int(rng.integers(0, 9))  # the second digit starts 0-8 px (at 4x) after the first one's ink ends
    h, w = max(i.shape[0] for i in inks), inks[0].shape[1] + gap + inks[1].shape[1]
    row = np.zeros((h, w), np.uint8)
    for ink, x in zip(inks, (0, inks[0].shape[1] + gap), strict=True):
        y = (h - ink.shape[0]) // 2
        row[y:y + ink.shape[0], x:x + ink.shape[1]] = np.maximum(row[y:y + ink.shape[0], x:x + ink.shape[1]], ink)
    # both digits on the canvas, as a person draws them: 4-11 px from its left edge, and
    # written smaller when they would not fit (a digit cut by the edge is no longer legible)
    x = int(rng.integers(4, 12))
    f = min(1.0, (108 - x) / w, 96 / h)
    if f < 1:
        row = cv2.resize(row, (max(1, int(w * f)), max(1, int(h * f))), interpolation=cv2.INTER_AREA)
    canvas = np.zeros((112, 112), np.uint8)
    y = (112 - row.shape[0]) // 2
    canvas[y:y + row.shape[0], x:x + row.shape[1]] = row
    buf = io.BytesIO()
    Image.fromarray(canvas).resize((28, 28), Image.Resampling.BOX).save(buf, "PNG")
    return buf.getvalue(), f"{a}{b}"


PHOTO_KINDS: dict[str, Callable] = {"thin_pen_large": thin_pen_large, "marker_blurred": marker_blurred,
                                    "pencil_guides": pencil_guides, "cut_by_edge": cut_by_edge, "long_row": long_row,
                                    "exif_rotated": exif_rotated, "scan_16bit": scan_16bit, "small_on_page": small_on_page}
DRAWING_KINDS: dict[str, Callable] = {"page_style": page_style, "thin_mouse": thin_mouse, "continental_1": continental_1,
                                      "open_4": open_4, "open_6": open_6, "tiny_two_digit": tiny_two_digit}


def make_set(kinds: dict[str, Callable], per_kind: int, seed: int, folder, images=None, labels=None) -> list[dict]:
    """``per_kind`` files of each kind written into ``folder``: ``[{path, label, kind, mnist}]``.
    Photo kinds need MNIST ``images`` (float 0..1) and ``labels`` to write with; ``mnist`` lists
    the indices of the images written (None for drawings and pen strokes). Each kind draws
    from a generator seeded by ``seed`` and its place in its registry, so a kind made alone
    is the same files as in the whole set."""
    made = []
    for name, make in kinds.items():
        rng = np.random.default_rng([seed, list(PHOTO_KINDS if name in PHOTO_KINDS else DRAWING_KINDS).index(name)])
        for i in range(per_kind):
            src = Source(images, labels)
            body, label = make(src, rng) if name in PHOTO_KINDS else make(rng)
            ext = {b"\x89P": "png", b"\xff\xd8": "jpg"}[body[:2]]
            path = Path(folder) / f"{name}-{i:03d}.{ext}"
            path.write_bytes(body)
            made.append({"path": path, "label": label, "kind": name, "mnist": src.last})
    return made


def digits_right(read: str | None, label: str) -> int:
    """The label's digits read right: its length less the edit distance from what was read (a
    digit dropped, added or misread costs one), so a 10-digit row read with one digit missing
    counts 9, not 0."""
    read = read or ""
    prev = list(range(len(read) + 1))
    for i, want in enumerate(label, 1):
        cur = [i]
        for j, got in enumerate(read, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (want != got)))
        prev = cur
    return max(0, len(label) - prev[-1])


def read_by_kind(made: list[dict], model: str, artifacts, *, single_digit_kinds=()) -> dict[str, list[int]]:
    """``{kind: [right, total, digits right, digits]}``: each file read by `digits predict`'s own
    path with ``model``'s checkpoint (as a number; one digit for the ``single_digit_kinds``),
    right when the whole label is read; digit by digit as :func:`digits_right` counts."""
    from digits.predict import predict_files

    out: dict[str, list[int]] = {}
    for single in (True, False):
        part = [m for m in made if (m["kind"] in single_digit_kinds) is single]
        if not part:
            continue
        res = predict_files([m["path"] for m in part], model=model, backend="eager", checkpoint=artifacts,
                            artifacts=artifacts, single=single, unsure_below=0.0)
        for r, m in zip(res, part, strict=True):
            got = str(r.get("prediction")) if single else r.get("number")
            row = out.setdefault(m["kind"], [0, 0, 0, 0])
            row[0] += got == m["label"]
            row[1] += 1
            row[2] += digits_right(got, m["label"])
            row[3] += len(m["label"])
    return out


def originals_by_kind(made: list[dict], model: str, artifacts, images_uint8: np.ndarray) -> dict[str, int]:
    """``{kind: right}`` for the kinds written with MNIST images: the photos all of whose digits
    ``model`` reads right as the clean 28x28 originals (``images_uint8``, the set the photos were
    made from): what the classifier alone allows, to tell its misses from preprocessing's. Not
    a strict bound: a digit redrawn through a photo can come out easier to read than its original."""
    import torch

    from digits.checkpoint import load_checkpoint
    from digits.data import normalize

    net, _ = load_checkpoint(Path(artifacts) / model, model)
    with torch.inference_mode():
        guess = net.eval()(normalize(images_uint8)).argmax(1).numpy()
    out: dict[str, int] = {}
    for m in made:
        if m.get("mnist") is not None:
            out[m["kind"]] = out.get(m["kind"], 0) + all(str(guess[i]) == d for i, d in zip(m["mnist"], m["label"], strict=True))
    return out
