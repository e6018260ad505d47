"""How much `digits predict`'s preprocessing costs a digit that is MNIST's already: MNIST test digits written large, read back.

    python scripts/skew_eval.py                  # -> results/skew-cpu-<date>.{json,md}
    python scripts/skew_eval.py --source tests/data --out /tmp/skew   # the 1,000-digit fixture

Each MNIST test digit is enlarged ``--scales`` times (bicubic, as a digit photographed large
is drawn with more pixels) and put through digits.preprocess.to_mnist, the steps every digit
found in a photo or drawing takes (stroke width, the 20-px box, the centre of mass); each
model reads the results beside the originals. A 28x28 that is MNIST's already should come
back as itself: the errors a scale adds are preprocessing's alone, the skew between what the
models were trained on and what the pipeline hands them. The same is measured with the
settings before 2026-12-01 (centre of mass at 13.5 px, every stroke width reshaped).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
from pathlib import Path
from unittest.mock import patch

import cv2
import numpy as np
import torch

import digits.preprocess
from digits._io import atomic_write_result, unwritable
from digits.bench.environment import command_line, cpu_name, runtime_versions
from digits.checkpoint import load_checkpoint, missing_checkpoint
from digits.data import normalize, raw_dir, read_arrays
from digits.errors import DigitsError
from digits.models import list_models
from digits.preprocess import normalize28, to_mnist

ROOT = Path(__file__).resolve().parent.parent
SETTINGS = {"as committed": {}, "before 2026-12-01": {"CENTRE": 13.5, "STROKE_SLACK": 0.0}}  # patched into digits.preprocess


def written_large(images: np.ndarray, scale: int) -> np.ndarray:
    """Each float 0..1 image through to_mnist after enlarging it ``scale`` times (1: as it is)."""
    def one(a: np.ndarray) -> np.ndarray:
        big = a if scale == 1 else np.clip(cv2.resize(a, (28 * scale, 28 * scale), interpolation=cv2.INTER_CUBIC), 0, 1)
        return to_mnist(big)
    return np.stack([one(a) for a in images])


def centre_of_mass(images: np.ndarray) -> tuple[float, float]:
    yy, xx = np.mgrid[0:28, 0:28]
    mass = images.sum((1, 2))
    return float(((images * yy).sum((1, 2)) / mass).mean()), float(((images * xx).sum((1, 2)) / mass).mean())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--source", type=Path, default=ROOT / "data", help="MNIST root (`digits data` fetches it)")
    ap.add_argument("--artifacts", type=Path, default=ROOT / "artifacts")
    ap.add_argument("--models", nargs="+", default=list_models(), choices=list_models())
    ap.add_argument("--scales", nargs="+", type=int, default=[1, 3, 5])
    ap.add_argument("--out", type=Path, default=ROOT / "results")
    args = ap.parse_args()
    if any(s < 1 or s > 20 for s in args.scales):
        ap.error("--scales must be whole numbers from 1 to 20")
    if why := unwritable(args.out):  # before half a minute of work, not after it
        ap.error(f"--out {args.out}: cannot write there ({why})")
    try:
        arrays = read_arrays(raw_dir(args.source))
    except DigitsError as e:  # no MNIST there: say so, and how to get it (this script's option is --source)
        ap.error(f"--source {args.source}: {e}")
    if why := missing_checkpoint(args.artifacts, args.models):
        ap.error(f"--artifacts {args.artifacts}: {why}")
    originals, labels = arrays.test_images, arrays.test_labels
    nets = {m: load_checkpoint(args.artifacts / m, m)[0].eval() for m in args.models}

    def errors(x: torch.Tensor) -> dict[str, int]:
        with torch.inference_mode():
            return {m: int((net(x).argmax(1).numpy() != labels).sum()) for m, net in nets.items()}
    rows = [{"settings": "MNIST's own 28x28s", "scale": None, "errors": errors(normalize(originals)),
             "centre_of_mass": centre_of_mass(originals / 255.0)}]
    for name, changes in SETTINGS.items():
        with patch.multiple(digits.preprocess, **changes) if changes else contextlib.nullcontext():
            for scale in args.scales:
                made = written_large(originals.astype(np.float32) / 255, scale)
                x = torch.from_numpy(np.stack([normalize28(a) for a in made]))
                rows.append({"settings": name, "scale": scale, "errors": errors(x), "centre_of_mass": centre_of_mass(made)})
                print(rows[-1], flush=True)
    env = {"date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), "cpu": cpu_name(),
           "source": str(args.source), "digits": len(labels), **runtime_versions()}
    command = command_line()
    md = [f"# Preprocessing skew, {env['date'][:10]}, {env['cpu']}", "",
          f"`{command}`: the {len(labels):,} MNIST test digits of `{args.source.name}`, enlarged and put through "
          "`digits.preprocess.to_mnist` as a digit found in a photo is; errors of each model (of "
          f"{len(labels):,}). The originals' errors are the classifier's; what a scale adds is preprocessing's.", "",
          "| settings | enlarged | " + " | ".join(f"`{m}` errors" for m in args.models) + " | centre of mass (row, col) |",
          "|---|---:|" + "---:|" * len(args.models) + "---|"]
    md += [f"| {r['settings']} | {'' if r['scale'] is None else str(r['scale']) + 'x'} | "
           + " | ".join(str(r["errors"][m]) for m in args.models)
           + " | {:.2f}, {:.2f} |".format(*r["centre_of_mass"]) for r in rows]
    md += ["", "Before 2026-12-01: the centre of mass placed at 13.5 px (`CENTRE` = 13.5) and every stroke "
           "reshaped to `TARGET_STROKE` (`STROKE_SLACK` = 0)."]
    atomic_write_result(args.out / f"skew-cpu-{env['date'][:10]}", {"command": command, "environment": env, "rows": rows},
                        "\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
