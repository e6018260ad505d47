"""Compare two `digits bench` JSON files cell by cell on p50 (the repeatability target).

    digits bench --out /tmp/run1 --json > /dev/null
    digits bench --out /tmp/run2 --json > /dev/null
    python scripts/compare_bench.py /tmp/run1/bench-cpu-*.json /tmp/run2/bench-cpu-*.json

Prints every cell's p50 before and after, its change, and how many cells agree within
the tolerance (default 10%). Exits 1 when any cell is outside it, so it can gate a script.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

from rich.console import Console

from digits.bench.report import compare
from digits.ui import table


def main() -> int:
    ap = argparse.ArgumentParser(description="p50 change per cell between two bench reports.")
    ap.add_argument("before", type=Path)
    ap.add_argument("after", type=Path)
    ap.add_argument("--tolerance", type=float, default=0.10, help="allowed |change| (default 0.10)")
    args = ap.parse_args()
    try:
        before, after = (json.loads(p.read_text()) for p in (args.before, args.after))
        rows = compare(before, after, args.tolerance)
        envs = before["environment"], after["environment"]
        peaks = " -> ".join(f"{e['peak_gflops']:.0f}" if e["peak_gflops"] else "not measured" for e in envs)
    except (OSError, ValueError, KeyError, TypeError) as e:
        print(f"Error: cannot compare {args.before} and {args.after}: {e!r}. Both must be JSON files "
              "written by `digits bench`.", file=sys.stderr)
        return 2
    if not rows:
        print("Error: the two reports share no successful cell.", file=sys.stderr)
        return 2
    t = table(f"p50 change, {args.before.name} -> {args.after.name}", "model", "backend", ">batch",
              ">before us", ">after us", ">change")
    for r in rows:
        style = None if r["within"] else "bold red"
        t.add_row(r["model"], r["backend"], str(r["batch_size"]), f"{r['before_p50_ms'] * 1e3:,.1f}",
                  f"{r['after_p50_ms'] * 1e3:,.1f}", f"{r['change']:+.1%}", style=style)
    ok = sum(r["within"] for r in rows)
    median = statistics.median(abs(r["change"]) for r in rows)
    spreads = " -> ".join("n/a" if e.get("round_spread") is None else f"{e['round_spread']:.1%}" for e in envs)
    t.caption = (f"{ok}/{len(rows)} cells within {args.tolerance:.0%}; median |change| {median:.1%}; "
                 f"peak {peaks} GFLOP/s; round spread {spreads}")
    Console().print(t)
    return 0 if ok == len(rows) else 1


if __name__ == "__main__":
    sys.exit(main())
