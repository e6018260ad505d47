"""Write the committed test set of realistic digit photos (digits.synth): 100 single digits and
50 numbers of 2-6 digits, from the MNIST test fixture, with their labels and digit boxes.

    python scripts/make_photos.py                 # -> tests/data/photos/ (seed 0, 480x360)
    python scripts/make_photos.py --source ~/.cache/digits --out /tmp/photos --singles 500

Deterministic for a seed. The fixture's test digits are never seen in training by the
models the test suite trains (those train on the fixture's training digits).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from digits._io import atomic_write, atomic_write_json
from digits.data import raw_dir, read_arrays
from digits.synth import make_photo

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--source", type=Path, default=ROOT / "tests/data", help="an MNIST root (default: the fixture)")
    ap.add_argument("--out", type=Path, default=ROOT / "tests/data/photos")
    ap.add_argument("--singles", type=int, default=100)
    ap.add_argument("--numbers", type=int, default=50)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--size", type=int, nargs=2, default=(480, 360), metavar=("W", "H"))
    args = ap.parse_args()
    arrays = read_arrays(raw_dir(args.source))
    images, labels = arrays.test_images.astype(np.float32) / 255, arrays.test_labels
    rng = np.random.default_rng(args.seed)
    index = []
    for i in range(args.singles + args.numbers):
        n = 1 if i < args.singles else int(rng.integers(2, 7))
        pick = rng.integers(0, len(images), n)
        photo = make_photo([images[j] for j in pick], [int(labels[j]) for j in pick], rng, size=tuple(args.size))
        name = f"{'single' if n == 1 else 'number'}-{i:03d}.jpg"
        atomic_write(args.out / name, photo.jpeg)
        index.append({"file": name, "label": photo.label, "boxes": photo.boxes, **photo.settings})
    atomic_write_json(args.out / "photos.json", {"seed": args.seed, "source": "MNIST test fixture", "photos": index})
    print(f"wrote {len(index)} photos to {args.out}")


if __name__ == "__main__":
    main()
