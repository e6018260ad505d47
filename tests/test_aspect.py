"""The shape prior of digits.aspect: its table describes real MNIST digits, and it tells a
usual digit from one too wide for its class."""

import numpy as np

from digits.aspect import QUANTILES, TABLE, aspects, fit, table
from digits.data import raw_dir, read_arrays


def test_aspects_measure_the_ink_box():
    img = np.zeros((2, 28, 28), np.uint8)
    img[0, 4:24, 10:20] = 255  # 10 wide, 20 tall
    img[1, 10:12, 3:25] = 200  # 22 wide, 2 tall
    assert np.allclose(aspects(img), [0.5, 11.0])
    assert aspects(np.zeros((1, 28, 28), np.uint8))[0] == 0.0  # blank: no box


def test_table_matches_the_real_mnist_fixture(fixture_root):
    """The committed table (from 60,000 training digits) describes the 1,000 fixture test
    digits too: each class's median within 0.15 (3 px of 20), and about one in ten outside its 5-95% band."""
    a = read_arrays(raw_dir(fixture_root))
    t = table(a.test_images, a.test_labels)
    mid = list(QUANTILES).index(0.5)
    assert np.abs(t[:, mid] - TABLE[:, mid]).max() < 0.15
    r = aspects(a.test_images)
    outside = np.mean([fit(x, int(c)) < 0.1 for x, c in zip(r, a.test_labels, strict=True)])
    assert 0.04 < outside < 0.2, outside


def test_fit_is_one_at_the_median_and_small_in_the_tails():
    assert fit(TABLE[8, 4], 8) > 0.99
    assert fit(1.3, 8) < 0.02  # an "8" a third wider than tall: two digits touching, more likely
    assert fit(0.25, 0) < 0.01 and fit(0.25, 1) > 0.2  # as narrow as a 1 suits a 1, not a 0
    assert fit(50.0, 3) == fit(0.001, 3) > 0  # past every digit seen: unlikely, never impossible
