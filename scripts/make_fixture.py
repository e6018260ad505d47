"""Regenerate the small real-MNIST test fixture in tests/data/ from the full dataset.

    python scripts/make_fixture.py [--data-dir DIR] [--n 1000]

Takes the first N training and first N test images (MNIST's own order), writes them as
gzipped IDX files under tests/data/MNIST/raw/ with a digits manifest. Deterministic:
the same full MNIST gives byte-identical files (gzip mtime is fixed at 0).
"""

from __future__ import annotations

import argparse
import gzip
import io
from pathlib import Path

from digits._io import atomic_write
from digits.data import (
    FILES,
    MnistArrays,
    default_root,
    encode_idx,
    raw_dir,
    read_arrays,
    verify_manifest,
    write_manifest,
)

DEST = Path(__file__).resolve().parent.parent / "tests" / "data" / "MNIST" / "raw"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", type=Path, default=None)
    ap.add_argument("--n", type=int, default=1000)
    args = ap.parse_args()
    src = raw_dir(args.data_dir or default_root())
    verify_manifest(src)
    a = read_arrays(src)
    small = MnistArrays(a.train_images[: args.n], a.train_labels[: args.n], a.test_images[: args.n], a.test_labels[: args.n])
    for key, name in FILES.items():
        buf = io.BytesIO()
        with gzip.GzipFile(fileobj=buf, mode="wb", mtime=0, filename="") as gz:
            gz.write(encode_idx(getattr(small, key)))
        atomic_write(DEST / f"{name}.gz", buf.getvalue())
    write_manifest(DEST, f"fixture: first {args.n} train and test images of MNIST")
    print(f"wrote {DEST}")


if __name__ == "__main__":
    main()
