"""Read the committed photo set (tests/data/photos, made by scripts/make_photos.py) with every
trained model: single digits right, whole numbers right, and how many digits were found.

    python scripts/photos_eval.py --out results        # -> results/photos-cpu-<date>.{json,md}

Uses the checkpoints in artifacts/ (`digits train all`) through `digits predict`'s own path.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
from pathlib import Path

from digits._io import atomic_write, atomic_write_json
from digits.bench.environment import cpu_name
from digits.export import runtime_versions
from digits.models import list_models
from digits.predict import predict_files

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--photos", type=Path, default=ROOT / "tests/data/photos")
    ap.add_argument("--artifacts", type=Path, default=ROOT / "artifacts")
    ap.add_argument("--out", type=Path, default=ROOT / "results")
    args = ap.parse_args()
    index = json.loads((args.photos / "photos.json").read_text())["photos"]
    singles = [p for p in index if len(p["label"]) == 1]
    numbers = [p for p in index if len(p["label"]) > 1]
    rows = []
    for model in list_models():
        row = {"model": model}
        for name, subset, single in (("single", singles, True), ("number", numbers, False)):
            # unsure_below=0: every digit answered, so "right" is the argmax's accuracy; "unsure" counts
            # the digits `digits predict` would have called unsure at its default (0.6)
            res = predict_files([args.photos / p["file"] for p in subset], model=model, backend="eager",
                                checkpoint=args.artifacts, artifacts=args.artifacts, single=single, unsure_below=0.0)
            right = sum(r.get("number") == p["label"] for r, p in zip(res, subset, strict=True))
            row[f"{name}_unsure_digits"] = sum(max(d["probabilities"]) < 0.6 for r in res for d in r.get("digits", []))
            found = sum(len(r.get("digits", [])) == len(p["label"]) for r, p in zip(res, subset, strict=True))
            row[f"{name}_right"], row[f"{name}_found"], row[f"{name}_total"] = right, found, len(subset)
        rows.append(row)
        print(row)
    env = {"date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), "cpu": cpu_name(), **runtime_versions()}
    stem = args.out / f"photos-cpu-{env['date'][:10]}"
    atomic_write_json(stem.with_suffix(".json"), {"command": "python scripts/photos_eval.py", "environment": env,
                                                  "photos": str(args.photos.relative_to(ROOT)), "rows": rows})
    md = ["| model | single digits right | whole numbers right | numbers with every digit found | digits unsure (< 0.6) |",
          "|---|---:|---:|---:|---:|"]
    md += [f"| `{r['model']}` | {r['single_right']}/{r['single_total']} | {r['number_right']}/{r['number_total']} | "
           f"{r['number_found']}/{r['number_total']} | {r['single_unsure_digits'] + r['number_unsure_digits']} |"
           for r in rows]
    atomic_write(stem.with_suffix(".md"), f"# Photo set, {env['date'][:10]}, {env['cpu']}\n\n" + "\n".join(md) + "\n")


if __name__ == "__main__":
    main()
