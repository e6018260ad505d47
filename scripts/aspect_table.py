"""Print digits.aspect.TABLE from MNIST's training digits: each class's ink width / height at
digits.aspect.QUANTILES, to paste over the table there.

    python scripts/aspect_table.py [--source data]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from digits.aspect import QUANTILES, table
from digits.data import default_root, raw_dir, read_arrays
from digits.errors import DigitsError


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--source", type=Path, default=None, help="MNIST root (default: the cache `digits train` uses)")
    args = ap.parse_args()
    try:
        a = read_arrays(raw_dir(args.source or default_root()))
    except DigitsError as e:  # no MNIST there: a usage error, not a traceback
        ap.error(f"--source {args.source or default_root()}: {e}")
    t = table(a.train_images, a.train_labels)
    print(f"# {len(a.train_labels):,} training digits, quantiles {', '.join(f'{q:g}' for q in QUANTILES)}")
    print("TABLE = np.array([")
    for row in np.round(t, 2):
        print("    (" + ", ".join(f"{v:.2f}" for v in row) + "),")
    print("])")


if __name__ == "__main__":
    main()
