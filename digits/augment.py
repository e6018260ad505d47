"""Batch-wise augmentation on the training device: a small random affine warp per image."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from digits.data import MEAN, STD

BACKGROUND = -MEAN / STD  # a black pixel after normalization


def random_theta(n: int, gen: torch.Generator) -> torch.Tensor:
    """Affine parameters [n, 2, 3] for a small random transform per image (rotation +-10 deg,
    shift +-2 px, scale 0.9-1.1), drawn from ``gen`` on the CPU so runs are reproducible on
    any device."""
    u = torch.rand(n, 4, generator=gen) * 2 - 1
    angle, scale = u[:, 0] * math.radians(10), 1 + 0.1 * u[:, 1]
    shift = u[:, 2:] * (2 / 14)  # affine_grid works in [-1, 1]: 14 px per unit
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    return torch.stack([torch.stack([cos, -sin, shift[:, 0]], 1),
                        torch.stack([sin, cos, shift[:, 1]], 1)], 1)


def affine(x: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """Warp each image by its affine ``theta`` (same device as ``x``)."""
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    # grid_sample pads with zeros; shift so that padding is the black background.
    return F.grid_sample(x - BACKGROUND, grid, align_corners=False) + BACKGROUND


def augment_batch(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """The eager (CPU) step's augmentation; on CUDA, StaticStep copies ``random_theta`` in."""
    return affine(x, random_theta(x.shape[0], gen).to(x.device))
