"""``digits compare``: two bench runs cell by cell with significance, or several merged by machine."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from digits.cli._common import JsonFlag, app
from digits.errors import DigitsError, UsageError
from digits.ui import emit_json, guard, log, out, table


@app.command(help=('Compare two bench runs (ratio of medians, 95% CI, significance), or merge several.\n\n'
              'Exit 0 when no matched cell changed significantly by more than --tolerance, 1 when one did (a '
              'gate for CI), 2 on bad usage. A run compared with itself shows no significant difference. '
              'The samples are repetitions, never calls: per-process p50s when both runs used --processes, '
              "else each run's per-round p50s; the ratio is the ratio of their medians."))
@guard
def compare(
    files: Annotated[list[Path], typer.Argument(help="`digits bench` JSON files: BEFORE AFTER, or several with --merge.")],
    merge: Annotated[bool, typer.Option("--merge", help="Put every run into one Markdown report (and HTML with "
                                        "--html), one table per machine.")] = False,
    out_file: Annotated[Path | None, typer.Option("--out", help="With --merge: the Markdown file to write "
                                                  "(default: bench-merged.md).")] = None,
    html: Annotated[bool, typer.Option("--html", help="With --merge: also write the same report as HTML.")] = False,
    alpha: Annotated[float, typer.Option(help="Significance level of the Mann-Whitney U test.")] = 0.05,
    tolerance: Annotated[float, typer.Option(help="A significant change larger than this (0.05 = 5%) exits 1.")] = 0.05,
    as_json: JsonFlag = False,
):
    """Compare two bench runs (ratio of medians, 95% CI, significance), or merge several.
    """
    from digits.bench.compare import compare_runs, load_run
    from digits.bench.compare import merge as merge_runs
    from digits.report import _html, _markdown
    from digits._io import atomic_write

    if merge:
        if len(files) < 1:
            raise UsageError("--merge needs at least one bench JSON file.")
        blocks = merge_runs([(f.name, load_run(f)) for f in files])
        md = out_file or Path("bench-merged.md")
        written = [atomic_write(md, _markdown(blocks))]
        if html:
            written.append(atomic_write(md.with_suffix(".html"), _html(blocks, md.parent)))
        if as_json:
            return emit_json({"written": [str(p) for p in written]})
        out.print("Wrote " + ", ".join(map(str, written)), highlight=False)
        return
    if len(files) != 2:
        raise UsageError(f"Compare takes exactly two bench JSON files (BEFORE AFTER), got {len(files)}; "
                         "use --merge to put more runs side by side.")
    result = compare_runs(load_run(files[0]), load_run(files[1]), alpha=alpha, tolerance=tolerance)
    if not result["rows"]:
        raise UsageError(f"{files[0]} and {files[1]} share no cell that ran in both.")
    if as_json:
        emit_json(result)
    else:
        _render(result, files)
    if not result["same_machine"]:
        log("Warning: these runs were made on different machines; a difference may be the machine's.")
    if worse := [r for r in result["rows"] if r["matters"]]:
        raise DigitsError(f"{len(worse)} of {len(result['rows'])} cells changed significantly by more than "
                          f"{tolerance:.0%} (see the table).")


def _render(result: dict, files: list[Path]) -> None:
    if result["environment"]:
        env = table("Environment differences", "fact", "before", "after")
        for k, a, b in result["environment"]:
            env.add_row(k, str(a), str(b))
        out.print(env)
    t = table(f"{files[0].name} -> {files[1].name}", "~cell", ">before us", ">after us", ">ratio", ">95% CI", ">p",
              "verdict")
    for r in result["rows"]:
        verdict = ("[bold red]slower[/]" if r["ratio"] > 1 else "[bold green]faster[/]") if r["significant"] else "same"
        p = r["p_value"]
        t.add_row(f"{r['model']} {r['backend']} {r['precision']} b{r['batch_size']}", f"{r['before_p50_ms'] * 1e3:,.1f}",
                  f"{r['after_p50_ms'] * 1e3:,.1f}", f"{r['ratio']:.3f}", f"{r['ci_low']:.2f}-{r['ci_high']:.2f}",
                  f"{p:.0e}" if p < 1e-3 else f"{p:.3f}", verdict)
    sig = sum(r["significant"] for r in result["rows"])
    t.caption = (f"ratio: median of after's repetitions / before's; {sig}/{len(result['rows'])} cells differ significantly "
                 f"(Mann-Whitney U, p < {result['alpha']}, CI excluding 1), from {result['basis']}")
    out.print(t)
