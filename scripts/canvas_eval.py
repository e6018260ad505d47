"""Read pen-stroke drawings (digits.strokes, as the page's canvas draws them) with every trained model.

    python scripts/canvas_eval.py --out results            # -> results/canvas-cpu-<date>.{json,md}
    python scripts/canvas_eval.py --artifacts /tmp/other   # another set of checkpoints

Draws ``--per-digit`` drawings of each digit from a fixed seed, reads them through
`digits predict`'s own path (one digit each) with each model's checkpoint in ``--artifacts``,
and reports accuracy overall, per digit, and on the two cases users saw the MLP miss
(1s slanted by more than 0.2, 6s whose loop is left open), and 1s with and without the
flag continental writers give them.
"""

from __future__ import annotations

import argparse
import datetime as dt
import tempfile
from pathlib import Path

import numpy as np

from digits._io import atomic_write_result, plain_name, unwritable
from digits.bench.environment import command_line, cpu_name
from digits.checkpoint import missing_checkpoint
from digits.kinds import DRAWING_KINDS, make_set, read_by_kind
from digits.models import list_models
from digits.predict import predict_files
from digits.strokes import draw

ROOT = Path(__file__).resolve().parent.parent


def drawings(per_digit: int, seed: int, folder: Path) -> list[dict]:
    rng = np.random.default_rng(seed)
    made = []
    for i in range(per_digit):
        for digit in range(10):
            png, settings = draw(digit, rng)
            path = folder / f"{digit}-{i:03d}.png"
            path.write_bytes(png)
            made.append({"path": path, "label": digit, **settings})
    return made


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--artifacts", type=Path, default=ROOT / "artifacts")
    ap.add_argument("--per-digit", type=int, default=50)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--models", nargs="+", default=list_models(), choices=list_models())
    ap.add_argument("--out", type=Path, default=ROOT / "results")
    ap.add_argument("--name", default="canvas-cpu", help="file stem before the date")
    ap.add_argument("--per-kind", type=int, default=50, help="drawings of each kind of digits.kinds")
    args = ap.parse_args()
    if not plain_name(args.name):
        ap.error(f"--name {args.name!r} must be letters, digits, '_', '-' or '.' (it becomes a file name)")
    if args.per_digit < 1 or args.per_kind < 1:
        ap.error(f"--per-digit {args.per_digit}, --per-kind {args.per_kind}: drawings to make, at least 1 each")
    if why := unwritable(args.out):  # before minutes of work, not after them
        ap.error(f"--out {args.out}: cannot write there ({why})")
    if why := missing_checkpoint(args.artifacts, args.models):
        ap.error(f"--artifacts {args.artifacts}: {why}")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        made = drawings(args.per_digit, args.seed, Path(tmp))
        (Path(tmp) / "kinds").mkdir()
        kind_set = make_set(DRAWING_KINDS, args.per_kind, args.seed, Path(tmp) / "kinds")
        cases = {"all": made, "slanted 1 (> 0.2)": [m for m in made if m["label"] == 1 and m["slant"] > 0.2],
                 "open 6": [m for m in made if m["label"] == 6 and m["shape"] == 1],
                 "1 with a flag": [m for m in made if m["label"] == 1 and m["shape"] == 1],
                 "1 without": [m for m in made if m["label"] == 1 and m["shape"] != 1]}
        for model in args.models:
            kinds = read_by_kind(kind_set, model, args.artifacts, single_digit_kinds=set(DRAWING_KINDS) - {"tiny_two_digit"})
            res = predict_files([m["path"] for m in made], model=model, backend="eager", checkpoint=args.artifacts,
                                artifacts=args.artifacts, single=True, unsure_below=0.0)
            right = {str(m["path"]): r.get("prediction") == m["label"] for r, m in zip(res, made, strict=True)}
            row = {"model": model, **{c: [sum(right[str(m["path"])] for m in ms), len(ms)] for c, ms in cases.items()},
                   "per_digit": [sum(right[str(m["path"])] for m in made if m["label"] == d) for d in range(10)],
                   "kinds": kinds}
            rows.append(row)
            print(row, flush=True)
    env = {"date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), "cpu": cpu_name(),
           "artifacts": str(args.artifacts), "per_digit": args.per_digit, "seed": args.seed}
    command = command_line()
    md = [f"# Canvas drawings (digits.strokes), {env['date'][:10]}, {env['cpu']}", "",
          f"`{command}`: {args.per_digit * 10} pen-stroke drawings (seed {args.seed}) read through `digits predict` "
          "(one digit each).", "",
          "| model | " + " | ".join(cases) + " | right per digit 0-9 |", "|---|" + "---:|" * len(cases) + "---|"]
    md += [f"| `{r['model']}` | " + " | ".join(f"{r[c][0]}/{r[c][1]}" for c in cases)
           + f" | {' '.join(map(str, r['per_digit']))} |" for r in rows]
    md += ["", f"Kinds (digits.kinds, {args.per_kind} drawings each, seed {args.seed}):", "",
           "| model | " + " | ".join(DRAWING_KINDS) + " |", "|---|" + "---:|" * len(DRAWING_KINDS)]
    md += [f"| `{r['model']}` | " + " | ".join(f"{r['kinds'][k][0]}/{r['kinds'][k][1]}" for k in DRAWING_KINDS) + " |"
           for r in rows]
    stem = args.out / f"{args.name}-{env['date'][:10]}"
    atomic_write_result(stem, {"command": command, "environment": env, "rows": rows},
                        "\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
