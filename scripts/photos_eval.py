"""Read the committed photo set (tests/data/photos, made by scripts/make_photos.py) with every
trained model: single digits right, whole numbers right, and how many digits were found.

    python scripts/photos_eval.py --out results        # -> results/photos-cpu-<date>.{json,md}
    python scripts/photos_eval.py --per-kind 200 --kinds-seed 4 --tag heldout-seed4   # a seed no rule was tuned on
    python scripts/photos_eval.py --models mlp --artifacts /tmp/other --out /tmp/x    # one model, other checkpoints
    python scripts/photos_eval.py --per-kind 100 --touching 0 --photos /my/set     # kinds only; a set of your own
    python scripts/photos_eval.py --kinds thin_pen_large --per-kind 150 --kinds-seed 7 --touching 0   # one kind

Uses the checkpoints in artifacts/ (`digits train all`) through `digits predict`'s own path.
Then ``--per-kind`` photos of each kind in digits.kinds (thin pens on large photos, blurred
marker, pencil guide lines, tight crops, long rows, EXIF-rotated, 16-bit scans, small digits
on a page photographed whole: also without the two steps for them) are made
and read, right when the whole number is, beside the classifier's own share: the photos whose
every digit the model reads right as the clean MNIST original it was written from. Then ``--touching`` numbers (seed
``--touching-seed``) are made on the fly the same way but
written touching or overlapping (digits.synth's ``gap`` below zero), and read twice: as
`digits predict` reads them, and with the touching-digit readings switched off
(``digits.locate.SPLIT_ASPECT`` set to infinity), to show what step 8 of digits.locate adds.
``--photos`` may name a set of one's own: a folder with the images and a ``photos.json``
listing ``{"photos": [{"file", "label"}, ...]}``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import tempfile
from pathlib import Path
from unittest.mock import patch

import numpy as np

import digits.locate

from digits._io import atomic_write, atomic_write_json, plain_name, unwritable
from digits.bench.environment import command_line, cpu_name
from digits.checkpoint import missing_checkpoint
from digits.data import raw_dir, read_arrays
from digits.errors import DigitsError
from digits.export import runtime_versions
from digits.kinds import PHOTO_KINDS, originals_by_kind, make_set, read_by_kind
from digits.models import list_models
from digits.predict import predict_files
from digits.synth import make_photo

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--photos", type=Path, default=ROOT / "tests/data/photos")
    ap.add_argument("--artifacts", type=Path, default=ROOT / "artifacts")
    ap.add_argument("--out", type=Path, default=ROOT / "results")
    ap.add_argument("--touching", type=int, default=60, help="numbers written touching, made on the fly")
    ap.add_argument("--touching-seed", type=int, default=2)
    ap.add_argument("--source", type=Path, default=ROOT / "tests/data",
                    help="MNIST root the kinds and touching numbers are written from: tests/data, the 1,000 test digits "
                         "of the fixture (repeated in 200 long rows), or data, all 10,000 (`digits data`)")
    ap.add_argument("--per-kind", type=int, default=40, help="photos of each kind of digits.kinds, made on the fly")
    ap.add_argument("--kinds-seed", type=int, default=3)
    ap.add_argument("--kinds", nargs="+", default=list(PHOTO_KINDS), choices=list(PHOTO_KINDS),
                    help="the kinds to make (each the same photos as in the whole set of its seed)")
    ap.add_argument("--models", nargs="+", default=list_models(), choices=list_models())
    ap.add_argument("--tag", default="", help="appended to the files' name: a second run of the day, e.g. a held-out seed")
    args = ap.parse_args()
    if not plain_name(args.tag, empty=True):
        ap.error(f"--tag {args.tag!r} must be letters, digits, '_', '-' or '.' (it becomes part of a file name)")
    if not (args.photos / "photos.json").is_file():
        ap.error(f"--photos {args.photos}: no photos.json there (the index of a photo set, as tests/data/photos has)")
    if args.touching < 0 or args.per_kind < 1:
        ap.error(f"--per-kind {args.per_kind}, --touching {args.touching}: photos to make, at least 1 a kind and 0 touching")
    if why := unwritable(args.out):  # before minutes of work, not after them
        ap.error(f"--out {args.out}: cannot write there ({why})")
    try:
        arrays = read_arrays(raw_dir(args.source))
    except DigitsError as e:
        ap.error(f"--source {args.source}: {e}")
    if why := missing_checkpoint(args.artifacts, args.models):
        ap.error(f"--artifacts {args.artifacts}: {why}")
    tmp = tempfile.TemporaryDirectory()
    source, photos = (p.resolve().relative_to(ROOT) if p.resolve().is_relative_to(ROOT) else p
                      for p in (args.source, args.photos))
    touching = touching_numbers(arrays, args.touching, args.touching_seed, Path(tmp.name))
    kinds_dir = Path(tmp.name) / "kinds"
    kinds_dir.mkdir()
    kinds = {k: PHOTO_KINDS[k] for k in PHOTO_KINDS if k in args.kinds}
    kind_set = make_set(kinds, args.per_kind, args.kinds_seed, kinds_dir, arrays.test_images.astype(np.float32) / 255,
                        arrays.test_labels)
    index = json.loads((args.photos / "photos.json").read_text())["photos"]
    singles = [p for p in index if len(p["label"]) == 1]
    numbers = [p for p in index if len(p["label"]) > 1]
    rows = []
    for model in args.models:
        row = {"model": model}
        for name, subset, single in (("single", singles, True), ("number", numbers, False)):
            if not subset:  # a photo set of singles only, or of numbers only
                row[f"{name}_right"] = row[f"{name}_found"] = row[f"{name}_total"] = row[f"{name}_unsure_digits"] = 0
                continue
            # unsure_below=0: every digit answered, so "right" is the argmax's accuracy; "unsure" counts
            # the digits `digits predict` would have called unsure at its default (0.6)
            res = predict_files([args.photos / p["file"] for p in subset], model=model, backend="eager",
                                checkpoint=args.artifacts, artifacts=args.artifacts, single=single, unsure_below=0.0)
            right = sum(r.get("number") == p["label"] for r, p in zip(res, subset, strict=True))
            row[f"{name}_unsure_digits"] = sum(max(d["probabilities"]) < 0.6 for r in res for d in r.get("digits", []))
            found = sum(len(r.get("digits", [])) == len(p["label"]) for r, p in zip(res, subset, strict=True))
            row[f"{name}_right"], row[f"{name}_found"], row[f"{name}_total"] = right, found, len(subset)
        for name, aspect in (("touching", digits.locate.SPLIT_ASPECT), ("touching_unsplit", math.inf)):
            if not touching:  # --touching 0: nothing to read (predict_files refuses an empty list)
                row[f"{name}_right"] = row[f"{name}_found"] = row[f"{name}_total"] = 0
                continue
            with patch.object(digits.locate, "SPLIT_ASPECT", aspect):
                res = predict_files([p["file"] for p in touching], model=model, backend="eager",
                                    checkpoint=args.artifacts, artifacts=args.artifacts, unsure_below=0.0)
            row[f"{name}_right"] = sum(r.get("number") == p["label"] for r, p in zip(res, touching, strict=True))
            row[f"{name}_found"] = sum(len(r.get("digits", [])) == len(p["label"]) for r, p in zip(res, touching, strict=True))
            row[f"{name}_total"] = len(touching)
        row["kinds"] = read_by_kind(kind_set, model, args.artifacts)
        # small digits in a large photo as before their two steps: no search under the speck limit, no
        # second look at full size (digits.locate: SMALL_SPECK, _refined)
        if "small_on_page" in kinds:
            with patch.multiple(digits.locate, FINE_BELOW=0, SMALL_SPECK=1.0):
                row["small_on_page_unrefined"] = read_by_kind([m for m in kind_set if m["kind"] == "small_on_page"],
                                                              model, args.artifacts)["small_on_page"]
        row["kinds_originals"] = originals_by_kind(kind_set, model, args.artifacts, arrays.test_images)
        rows.append(row)
        print(row)
    env = {"date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), "cpu": cpu_name(), **runtime_versions()}
    stem = args.out / f"photos-cpu-{env['date'][:10]}{'-' + args.tag if args.tag else ''}"
    command = command_line()
    atomic_write_json(stem.with_suffix(".json"), {"command": command, "environment": env,
                                                  "photos": str(photos), "rows": rows})
    md = ["| model | single digits right | whole numbers right | numbers with every digit found | digits unsure (< 0.6) |"
          " touching numbers right (found) | the same without step 8 |",
          "|---|---:|---:|---:|---:|---:|---:|"]
    md += [f"| `{r['model']}` | {r['single_right']}/{r['single_total']} | {r['number_right']}/{r['number_total']} | "
           f"{r['number_found']}/{r['number_total']} | {r['single_unsure_digits'] + r['number_unsure_digits']} | "
           f"{r['touching_right']}/{r['touching_total']} ({r['touching_found']}) | "
           f"{r['touching_unsplit_right']}/{r['touching_total']} ({r['touching_unsplit_found']}) |" for r in rows]
    pool = f"{len(arrays.test_labels):,} in `{source}`"
    md += ["", f"Touching numbers: {args.touching} numbers of 2-4 MNIST test digits ({pool}), seed "
           f"{args.touching_seed}, written {0.02:g}-{0.12:g} digit heights into each other (`--touching`)."]
    md += ["", f"Kinds (digits.kinds, {args.per_kind} photos each, seed {args.kinds_seed}, written with the "
           f"{len(arrays.test_labels):,} MNIST test digits in `{source}`; the whole number right):", "",
           "| model | " + " | ".join(kinds) + " |", "|---|" + "---:|" * len(kinds)]
    md += [f"| `{r['model']}` | " + " | ".join(f"{r['kinds'][k][0]}/{r['kinds'][k][1]}" for k in kinds) + " |"
           for r in rows]
    md += ["", "The same, digit by digit (the label's digits less the edit distance from what was read: a digit dropped, "
           "added or misread costs one):", "", "| model | " + " | ".join(kinds) + " |",
           "|---|" + "---:|" * len(kinds)]
    md += [f"| `{r['model']}` | " + " | ".join(f"{r['kinds'][k][2]}/{r['kinds'][k][3]}" for k in kinds) + " |"
           for r in rows]
    if "small_on_page" in kinds:
        md += ["", "small_on_page without its two steps (`digits.locate.SMALL_SPECK` = 1, `FINE_BELOW` = 0): " +
               ", ".join(f"{r['model']} {r['small_on_page_unrefined'][0]}/{r['small_on_page_unrefined'][1]}" for r in rows)
               + "."]
    md += ["", "The classifier's own share: photos all of whose digits the model reads right as the clean 28x28 MNIST "
           "originals they were written from (misses beyond it are preprocessing's; a digit redrawn through a photo can "
           "also come out easier than its original; pen-stroke kinds have no such original):", "",
           "| model | " + " | ".join(kinds) + " |", "|---|" + "---:|" * len(kinds)]
    for r in rows:
        own = r["kinds_originals"]
        cells = [f"{own[k]}/{r['kinds'][k][1]}" if k in own else "n/a" for k in kinds]
        md.append(f"| `{r['model']}` | " + " | ".join(cells) + " |")
    atomic_write(stem.with_suffix(".md"), f"# Photo set, {env['date'][:10]}, {env['cpu']}\n\n" + "\n".join(md) + "\n")


def touching_numbers(arrays, n: int, seed: int, folder: Path) -> list[dict]:
    images, labels = arrays.test_images.astype(np.float32) / 255, arrays.test_labels
    rng = np.random.default_rng(seed)
    made = []
    for i in range(n):
        pick = rng.integers(0, len(images), int(rng.integers(2, 5)))
        photo = make_photo([images[j] for j in pick], [int(labels[j]) for j in pick], rng, size=(480, 360),
                           gap=(-0.12, -0.02))
        (folder / f"touching-{i:03d}.jpg").write_bytes(photo.jpeg)
        made.append({"file": folder / f"touching-{i:03d}.jpg", "label": photo.label})
    return made


if __name__ == "__main__":
    main()
