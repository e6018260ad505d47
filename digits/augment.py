"""Batch-wise augmentation on the training device: what people's writing does to a digit.

Per image, drawn from one seeded generator on the CPU (so a run reproduces on any device,
and under DDP every rank draws the same numbers for the global batch):

- a small affine warp: rotation +-10 deg, scale 0.9-1.1, shift +-2 px, slant (shear) +-0.2;
- an elastic distortion: a random 4x4 displacement field, upsampled bilinearly, up to 1.5 px;
- stroke thickness: a quarter of the images dilated (a felt tip), a quarter thinned (a fine pen);
- blur: 40% of the images softened by a 3x3 Gaussian (an out-of-focus photo), by a random amount.

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
PARAMS = 6 + 2 * FIELD * FIELD + 2  # theta, the field, thickness, blur
_GAUSS = torch.tensor([[1.0, 2.0, 1.0], [2.0, 4.0, 2.0], [1.0, 2.0, 1.0]]) / 16


def draw(n: int, gen: torch.Generator) -> torch.Tensor:
    """Every random parameter of ``n`` images' augmentation, packed [n, PARAMS]."""
    u = torch.rand(n, PARAMS - 6, generator=gen) * 2 - 1
    return torch.cat([random_theta(n, gen), u], 1)


def random_theta(n: int, gen: torch.Generator) -> torch.Tensor:
    """Affine parameters, flattened [n, 6]: rotation +-10 deg, scale 0.9-1.1, shift +-2 px, shear +-0.2."""
    u = torch.rand(n, 5, generator=gen) * 2 - 1
    angle, scale, shear = u[:, 0] * math.radians(10), 1 + 0.1 * u[:, 1], 0.2 * u[:, 4]
    shift = u[:, 2:4] * (2 / 14)  # affine_grid works in [-1, 1]: 14 px per unit
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    # rotation-scale, then a shear along x (the top of the digit leans): R @ [[1, s], [0, 1]]
    return torch.stack([cos, cos * shear - sin, shift[:, 0], sin, sin * shear + cos, shift[:, 1]], 1)


def apply(x: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
    """``x`` (normalized [n,1,28,28]) augmented by ``params`` from :func:`draw` (same device)."""
    n = x.shape[0]
    theta = params[:, :6].reshape(n, 2, 3)
    field = params[:, 6:6 + 2 * FIELD * FIELD].reshape(n, 2, FIELD, FIELD)
    thick, blur = params[:, -2], (params[:, -1] + 1) / 2
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    smooth = F.interpolate(field, size=x.shape[-2:], mode="bilinear", align_corners=True)
    grid = grid + smooth.permute(0, 2, 3, 1) * (ELASTIC_PX / 14)
    # grid_sample pads with zeros: shift so that padding is the black background
    ink = F.grid_sample(x - BACKGROUND, grid, align_corners=False).clamp_min(0)
    fat = _max3(ink)
    fine = 0.4 * ink - 0.6 * _max3(-ink)  # thinned, not erased: MNIST strokes are ~2 px
    ink = torch.where((thick > 0.5)[:, None, None, None], fat, torch.where((thick < -0.5)[:, None, None, None], fine, ink))
    soft = F.conv2d(ink, _GAUSS.to(x)[None, None], padding=1)
    w = ((blur - 0.6) / 0.4).clamp(0, 1)[:, None, None, None]  # 40% of images, each by its own amount
    return ink * (1 - w) + soft * w + BACKGROUND


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
