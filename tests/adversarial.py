"""Images that cost a digit finder the most without any malice (and some with): grids, noise,
printed text, graph paper, a 1-pixel checkerboard, 10,000 tiny dots. Each is PNG bytes."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageDraw


def _png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "PNG", optimize=True)
    return buf.getvalue()


def block_grid() -> bytes:
    """Issue 26's kind of 1 KB PNG: 512x512 white, 9x12 black blocks every 16 px across and 17 px
    down, close enough that each column's blocks group into one: ~870 merges. The old greedy
    grouping restarted after each (O(n^3)): 3.4 s a closing width, 14 s an image, here."""
    img = Image.new("L", (512, 512), 255)
    d = ImageDraw.Draw(img)
    for y in range(4, 508, 17):
        for x in range(4, 508, 16):
            d.rectangle([x, y, x + 8, y + 11], fill=0)
    return _png(img)


def dense_noise(seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    return _png(Image.fromarray((rng.random((800, 800)) > 0.5).astype(np.uint8) * 255))


def printed_page(size: int = 30) -> bytes:
    """A page of printed text: thousands of dark, digit-sized glyphs in rows."""
    from PIL import ImageFont

    img = Image.new("L", (1240, 1754), 250)
    d = ImageDraw.Draw(img)
    font = ImageFont.load_default(size=size)
    line = "The quick brown fox jumps over the lazy dog 0123456789 " * 2
    for y in range(40, 1720, int(size * 1.3)):
        d.text((30, y), line, fill=20, font=font)
    return _png(img)


def graph_paper() -> bytes:
    img = Image.new("RGB", (1200, 900), (250, 250, 245))
    d = ImageDraw.Draw(img)
    for k in range(0, 1200, 12):
        d.line([(k, 0), (k, 899)], fill=(120, 170, 200), width=1 if k % 60 else 2)
    for k in range(0, 900, 12):
        d.line([(0, k), (1199, k)], fill=(120, 170, 200), width=1 if k % 60 else 2)
    return _png(img)


def checkerboard() -> bytes:
    a = (np.indices((1000, 1000)).sum(0) % 2 * 255).astype(np.uint8)
    return _png(Image.fromarray(a))


def tiny_dots(n: int = 10_000, seed: int = 1) -> bytes:
    rng = np.random.default_rng(seed)
    img = Image.new("L", (1000, 1000), 255)
    d = ImageDraw.Draw(img)
    for x, y in rng.integers(2, 997, (n, 2)):
        d.rectangle([int(x), int(y), int(x) + 1, int(y) + 1], fill=0)
    return _png(img)


ADVERSARIAL = {"block_grid": block_grid, "dense_noise": dense_noise, "printed_page": printed_page,
               "graph_paper": graph_paper, "checkerboard": checkerboard, "tiny_dots": tiny_dots}
