"""Batch-wise augmentation on the training device: what people's writing does to a digit.

Per image, drawn from one seeded generator on the CPU (so a run reproduces on any device,
and under DDP every rank draws the same numbers for the global batch):

- a small affine warp: rotation +-10 deg, scale 0.9-1.1, shift +-2 px, slant (shear) +-0.2;
- an elastic distortion: a random 4x4 displacement field, upsampled bilinearly, up to 1.5 px;
- stroke thickness: a quarter of the images dilated (a felt tip), a quarter thinned (a fine pen);
- blur: 40% of the images softened by a 3x3 Gaussian (an out-of-focus photo), by a random amount;
- the continental 1 (every default recipe; given the labels): half the 1s gain a flag (a short stroke
  down-left from the top), half of those a base serif too, drawn before the warp so they slant
  with the 1. MNIST's American writers hardly wrote either; people elsewhere write both, and
  the models read such a 1 as a 2 or a 7. The MLP pays for it on MNIST (test 99.06 -> 98.94%:
  without the CNNs' shift tolerance more 9s and 1s are taken for each other) and reads
  people's 1s the better for it (docs/train.md).

All of it is one packed tensor of parameters per image (:func:`draw`), so the CUDA-graph
step (digits.train_step) copies a single static buffer, and :func:`apply` is pure tensor ops.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from digits.data import MEAN, STD

BACKGROUND = -MEAN / STD  # a black pixel after normalization
FIELD = 4  # the elastic field's coarse grid, per side
ELASTIC_PX = 1.5  # its largest displacement
THICK = 6 + 2 * FIELD * FIELD  # packed: theta (6), the field, then one number each:
BLUR, STYLE, FLAG, BASE = THICK + 1, THICK + 2, THICK + 3, THICK + 4  # blur; a 1's style, flag length, base width
PARAMS = BASE + 1


def draw(n: int, gen: torch.Generator, continental: bool = False) -> torch.Tensor:
    """Every random parameter of ``n`` images' augmentation, packed [n, PARAMS]; the 1s'
    style only with ``continental`` (else drawn not at all: the same numbers as before it)."""
    u = torch.rand(n, STYLE - 6, generator=gen) * 2 - 1
    theta = random_theta(n, gen)
    style = torch.rand(n, 3, generator=gen) * 2 - 1 if continental else identity(n)[:, STYLE:]
    return torch.cat([theta, u, style], 1)


def identity(n: int, device: torch.device | str | None = None) -> torch.Tensor:
    """Parameters [n, PARAMS] that change nothing: the identity warp, no field, thickness, blur or style."""
    p = torch.zeros(n, PARAMS, device=device)
    p[:, 0] = p[:, 4] = 1.0
    p[:, BLUR] = p[:, STYLE] = -1.0
    return p


def random_theta(n: int, gen: torch.Generator) -> torch.Tensor:
    """Affine parameters, flattened [n, 6]: rotation +-10 deg, scale 0.9-1.1, shift +-2 px, shear +-0.2."""
    u = torch.rand(n, 5, generator=gen) * 2 - 1
    angle, scale, shear = u[:, 0] * math.radians(10), 1 + 0.1 * u[:, 1], 0.2 * u[:, 4]
    shift = u[:, 2:4] * (2 / 14)  # affine_grid works in [-1, 1]: 14 px per unit
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    # rotation-scale, then a shear along x (the top of the digit leans): R @ [[1, s], [0, 1]]
    return torch.stack([cos, cos * shear - sin, shift[:, 0], sin, sin * shear + cos, shift[:, 1]], 1)


def apply(x: torch.Tensor, params: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
    """``x`` (normalized [n,1,28,28]) augmented by ``params`` from :func:`draw` (same device);
    with the ``labels``, 1s gain the continental style too."""
    n = x.shape[0]
    if labels is not None and x.device.type == "cpu":  # only the 1s change: draw on them alone (5x faster;
        ones = (labels == 1).nonzero()[:, 0]             # a shape that depends on the data: not in a CUDA graph)
        x = x.index_put((ones,), continental_ones(x[ones], params[ones], labels[ones]))
    elif labels is not None:
        x = continental_ones(x, params, labels)
    thick, blur = params[:, THICK], (params[:, BLUR] + 1) / 2
    grid = _warp_grid(params[:, :6].reshape(n, 2, 3), params[:, 6:THICK].reshape(n, 2, FIELD, FIELD), *x.shape[-2:])
    # grid_sample pads with zeros: shift so that padding is the black background
    ink = F.grid_sample(x - BACKGROUND, grid, align_corners=False).clamp_min(0)
    fat, fine, w = thick > 0.5, thick < -0.5, ((blur - 0.6) / 0.4).clamp(0, 1)  # w > 0: 40% of images, each its own amount
    # on the CPU each image gets only what it is given (shapes that depend on the data: not in a CUDA graph)
    return (_styled_subsets if x.device.type == "cpu" else _styled_whole)(ink, fat, fine, w)


def _styled_whole(ink: torch.Tensor, fat: torch.Tensor, fine: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """Stroke width and blur for the whole batch at once, picked per image: fixed shapes, as the CUDA graph needs."""
    w = w[:, None, None, None]
    ink = torch.where(fat[:, None, None, None], _max3(ink), torch.where(fine[:, None, None, None], _thin(ink), ink))
    return ink * (1 - w) + _blur3(ink) * w + BACKGROUND


def _styled_subsets(ink: torch.Tensor, fat: torch.Tensor, fine: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """:func:`_styled_whole`'s numbers, computed on the images given each alone (a quarter dilated,
    a quarter thinned, 40% blurred): less CPU (a batch of 256 on one Zen 3 thread 9.0-9.5 ->
    4.9-7.3 ms; on two, within the noise). Where ``w`` is 0 the whole-batch formula adds
    ``blur * 0``, an exact 0: bit for bit the same."""
    fat, fine, soft = (m.nonzero()[:, 0] for m in (fat, fine, w > 0))
    ink = ink.index_put((fat,), _max3(ink[fat])).index_put((fine,), _thin(ink[fine]))
    out, ink, w = ink + BACKGROUND, ink[soft], w[soft][:, None, None, None]
    return out.index_put((soft,), ink * (1 - w) + _blur3(ink) * w + BACKGROUND)


def _thin(ink: torch.Tensor) -> torch.Tensor:
    """A fine pen's stroke: thinned, not erased (MNIST strokes are ~2 px)."""
    return 0.4 * ink - 0.6 * _max3(-ink)


def _warp_grid(theta: torch.Tensor, field: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """The sampling grid [n, h, w, 2] of the affine ``theta`` [n, 2, 3] plus the elastic ``field``
    [n, 2, FIELD, FIELD] upsampled bilinearly (align_corners): what ``F.affine_grid`` and
    ``F.interpolate`` give (to float rounding), as broadcast sums and two small matmuls,
    4x faster on the CPU, where the augmentation took over half as long as an MLP's training step."""
    ys = torch.linspace(-1 + 1 / h, 1 - 1 / h, h, device=theta.device, dtype=theta.dtype)  # pixel centres
    xs = torch.linspace(-1 + 1 / w, 1 - 1 / w, w, device=theta.device, dtype=theta.dtype)
    smooth = _upsampling(h, theta) @ field @ _upsampling(w, theta).T * (ELASTIC_PX / 14)  # [n, 2, h, w]
    t = theta[:, :, :, None, None]
    return (t[:, :, 0] * xs[None, None, None] + t[:, :, 1] * ys[None, None, :, None] + t[:, :, 2] + smooth).permute(0, 2, 3, 1)


def _upsampling(size: int, like: torch.Tensor) -> torch.Tensor:
    """[size, FIELD]: bilinear weights, align_corners, from FIELD points to ``size``."""
    src = torch.arange(size, device=like.device, dtype=like.dtype) * ((FIELD - 1) / (size - 1))
    lo = src.floor().clamp(max=FIELD - 2)
    frac = (src - lo)[:, None]
    cols = torch.arange(FIELD, device=like.device, dtype=like.dtype)[None]
    return (cols == lo[:, None]) * (1 - frac) + (cols == lo[:, None] + 1) * frac


def continental_ones(x: torch.Tensor, params: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The 1s among ``x`` with a flag (``params[:, STYLE] >= 0``: half of them) from the top of
    the stroke down to the left, 4-8 px long at 30-50 degrees, and (``STYLE >= 0.5``: a
    quarter) a base serif across the stroke's foot, 6-12 px wide; drawn as anti-aliased
    strokes as wide as the digit's. Pure tensor ops, no host sync (it runs in the CUDA graph)."""
    ink = x - BACKGROUND
    peak = ink.amax((2, 3), keepdim=True)
    on = (ink > 0.5 * peak).float()[:, 0]  # [n, 28, 28]
    rows = on.sum(2)  # ink per row
    r = torch.arange(28, device=x.device, dtype=x.dtype)
    has = rows > 0
    top = torch.where(has, r, torch.full_like(r, 99)).amin(1)  # first and last rows with ink
    bottom = torch.where(has, r, torch.full_like(r, -1)).amax(1)

    def centre(row: torch.Tensor) -> torch.Tensor:  # the stroke's column near that row (3 rows)
        band = ((r[None] - row[:, None]).abs() <= 1).float()[:, :, None] * on
        w = band.sum(1)
        return (w * r).sum(1) / w.sum(1).clamp_min(1)
    xt, xb = centre(top), centre(bottom)
    style, flag, base = params[:, STYLE], (params[:, FLAG] + 1) / 2, (params[:, BASE] + 1) / 2
    length, angle = 4 + 4 * flag, torch.deg2rad(30 + 20 * flag)
    half = 3 + 3 * base
    width = (on.sum((1, 2)) / (bottom - top + 1).clamp_min(1)).clamp(1.5, 3.5)  # the stroke's width in px
    yy, xx = r[None, :, None], r[None, None, :]
    flag_d = _segment_distance(yy, xx, top, xt, top + length * torch.sin(angle), xt - length * torch.cos(angle))
    base_d = _segment_distance(yy, xx, bottom, xb - half, bottom, xb + half)
    is_one = (labels == 1) & (top <= bottom)
    pen = width[:, None, None] / 2 + 0.5
    draw = torch.maximum((pen - flag_d).clamp(0, 1) * (is_one & (style >= 0))[:, None, None],
                         (pen - base_d).clamp(0, 1) * (is_one & (style >= 0.5))[:, None, None])
    return torch.maximum(ink, draw[:, None] * peak) + BACKGROUND


def _segment_distance(yy, xx, y0, x0, y1, x1) -> torch.Tensor:
    """Each pixel's distance [n, 28, 28] to each image's segment (y0, x0)-(y1, x1) ([n] each)."""
    y0, x0, y1, x1 = (t[:, None, None] for t in (y0, x0, y1, x1))
    dy, dx = y1 - y0, x1 - x0
    t = (((yy - y0) * dy + (xx - x0) * dx) / (dy * dy + dx * dx).clamp_min(1e-6)).clamp(0, 1)
    return torch.hypot(yy - (y0 + t * dy), xx - (x0 + t * dx))


def _blur3(x: torch.Tensor) -> torch.Tensor:
    """The 3x3 Gaussian [1 2 1]/4 x [1 2 1]/4, zero-padded, as shifted sums: no constant
    kernel tensor, whose copy to the GPU inside a CUDA graph's capture is an error."""
    p = F.pad(x, (1, 1, 1, 1))
    rows = (p[..., :-2] + 2 * p[..., 1:-1] + p[..., 2:]) / 4
    return (rows[..., :-2, :] + 2 * rows[..., 1:-1, :] + rows[..., 2:, :]) / 4


def _max3(x: torch.Tensor) -> torch.Tensor:
    """A 3x3 max filter as two separable passes of shifted maxima: 10x faster than
    ``max_pool2d(x, 3, 1, 1)`` on the CPU, which was most of a training step's augmentation."""
    p = F.pad(x, (1, 1, 1, 1), value=float("-inf"))
    rows = torch.maximum(torch.maximum(p[..., :-2], p[..., 1:-1]), p[..., 2:])
    return torch.maximum(torch.maximum(rows[..., :-2, :], rows[..., 1:-1, :]), rows[..., 2:, :])


def affine(x: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """Warp each image by its affine ``theta`` [n, 2, 3] alone (same device as ``x``)."""
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x - BACKGROUND, grid, align_corners=False) + BACKGROUND


def augment_batch(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """The eager (CPU) step's augmentation; on CUDA, StaticStep copies :func:`draw`'s parameters in."""
    return apply(x, draw(x.shape[0], gen).to(x.device))
