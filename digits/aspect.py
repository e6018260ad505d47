"""How wide MNIST's digits are for their height, by class: a prior on a reading's shape.

A group wider than tall may be one digit or several written touching. The classifier alone
cannot tell: squashed into 28x28, a "23" looks like a sure "8". But MNIST's 8s are almost
never 1.3 times as wide as tall. So a sure reading shaped as almost no MNIST digit of its
class is, gives way to pieces each read surely and shaped as their class usually is
(digits.preprocess._split_wins: recognition-based segmentation with a shape prior, as OCR's
character models have).
"""

from __future__ import annotations

import numpy as np

QUANTILES = np.array([0.001, 0.01, 0.05, 0.25, 0.5, 0.75, 0.95, 0.99, 0.999])
# width / height of the ink (pixels over 60 of 255) of MNIST's 60,000 training digits, per
# class, at QUANTILES; made by `python scripts/aspect_table.py` and checked against the test
# fixture by tests/test_aspect.py
TABLE = np.array([
    (0.50, 0.55, 0.65, 0.80, 0.90, 1.00, 1.25, 1.43, 1.67),
    (0.10, 0.15, 0.20, 0.30, 0.40, 0.60, 0.80, 1.00, 1.18),
    (0.45, 0.55, 0.65, 0.80, 0.95, 1.05, 1.33, 1.67, 2.00),
    (0.36, 0.45, 0.55, 0.70, 0.80, 0.90, 1.11, 1.25, 1.43),
    (0.40, 0.50, 0.55, 0.70, 0.80, 0.90, 1.11, 1.25, 1.43),
    (0.40, 0.50, 0.60, 0.80, 0.95, 1.11, 1.43, 1.67, 2.00),
    (0.40, 0.40, 0.50, 0.60, 0.70, 0.85, 1.00, 1.11, 1.43),
    (0.40, 0.50, 0.50, 0.70, 0.80, 0.90, 1.05, 1.25, 1.67),
    (0.35, 0.45, 0.50, 0.65, 0.75, 0.90, 1.05, 1.25, 1.43),
    (0.30, 0.40, 0.50, 0.60, 0.70, 0.80, 0.95, 1.05, 1.31),
])
FLOOR = 1e-3  # a shape past every digit of its class seen is unlikely, not impossible


def aspects(images: np.ndarray, threshold: int = 60) -> np.ndarray:
    """Width / height of the ink of uint8 [N, 28, 28] digits (0 where an image is blank)."""
    m = np.asarray(images) > threshold
    rows, cols = m.any(2), m.any(1)
    h = rows.shape[1] - rows[:, ::-1].argmax(1) - rows.argmax(1)
    w = cols.shape[1] - cols[:, ::-1].argmax(1) - cols.argmax(1)
    return np.where(rows.any(1), w / np.maximum(h, 1), 0.0)


def table(images: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """[10, len(QUANTILES)]: each class's aspect at QUANTILES."""
    a = aspects(images)
    return np.stack([np.quantile(a[labels == c], QUANTILES) for c in range(10)])


def fit(aspect: float, cls: int) -> float:
    """The two-sided tail of ``aspect`` among MNIST's digits of class ``cls``: 1 at the median,
    0.1 where only one in 20 is as wide (or as narrow), never under FLOOR."""
    # the CDF interpolated in log-aspect between the quantiles (nudged apart where two are equal:
    # aspects are ratios of small integers)
    lq = np.log(TABLE[cls]) + 1e-6 * np.arange(len(QUANTILES))
    cdf = float(np.interp(np.log(max(aspect, 1e-3)), lq, QUANTILES, left=0.0, right=1.0))
    return max(FLOOR, min(1.0, 2 * min(cdf, 1 - cdf)))
