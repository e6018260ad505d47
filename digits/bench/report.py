"""Bench reports: files (JSON, CSV, Markdown, PNG plots) and the rich table.

The JSON file holds exactly the object ``digits bench --json`` prints:
``{"environment": {...}, "records": [...]}``. CSV and Markdown hold the same records.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
from pathlib import Path

from rich.table import Table

from digits._io import atomic_path, atomic_write, atomic_write_json

COLUMNS = ["model", "backend", "precision", "device", "batch_size", "params", "macs_per_image", "artifact_bytes",
           "first_call_ms", "mean_ms", "p50_ms", "p90_ms", "p99_ms", "std_ms", "iterations", "throughput",
           "throughput_calls", "throughput_seconds", "accuracy", "parity_passed", "efficiency", "threads", "provider",
           "untrusted", "error", "missing"]


def stem(report: dict) -> str:
    env = report["environment"]
    return f"bench-{env['device']}-{env['date'][:10]}"


def write_report(report: dict, out: Path) -> list[Path]:
    """Write JSON, CSV, Markdown and the two plots; returns the paths written."""
    out.mkdir(parents=True, exist_ok=True)
    base = out / stem(report)
    paths = [atomic_write_json(base.with_suffix(".json"), report),
             atomic_write(base.with_suffix(".csv"), to_csv(report["records"])),
             atomic_write(base.with_suffix(".md"), to_markdown(report))]
    paths += plot(report, out)
    return paths


def write_samples(report: dict, samples: dict[str, list[float]], out: Path) -> Path:
    """Every timed call's latency (ms, in call order, rounds concatenated) as gzipped JSON."""
    path = out / f"{stem(report)}-samples.json.gz"
    payload = {"environment": report["environment"], "samples_ms": samples}
    with atomic_path(path) as tmp, gzip.open(tmp, "wt", encoding="utf-8") as f:
        json.dump(payload, f)
    return path


def to_csv(records: list[dict]) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=COLUMNS, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for r in records:
        w.writerow({**r, "parity_passed": parity_mark(r, "true", "false")})
    return buf.getvalue()


def missed_parity(r: dict) -> bool:
    """Whether a parity check of the cell against eager FP32 on its device failed: its
    backend x precision on the full test set, or its own timed output."""
    return any(p and not p["passed"] for p in (r.get("parity"), r.get("cell_parity")))


def parity_mark(r: dict, yes: str = "pass", no: str = "FAIL") -> str:
    """A cell's parity verdict for a table or file ('' where none was run)."""
    return no if missed_parity(r) else ("" if r.get("untrusted") or not r.get("parity") else yes)


def trusted(r: dict) -> bool:
    """A cell that ran and passed parity: the only kind a verdict may name fastest. Reports
    from before per-cell parity (no ``cell_parity`` key) are judged on the backend's check."""
    checked = r.get("parity") and (r.get("cell_parity") or "cell_parity" not in r)
    return r["error"] is None and not r.get("untrusted") and bool(checked) and not missed_parity(r)


def _fmt(v, spec: str) -> str:
    return "" if v is None else format(v, spec)


def to_markdown(report: dict) -> str:
    env = report["environment"]
    lines = [f"# digits bench: {env['device']} ({env['device_name']}), {env['date']}", "",
             f"- CPU: {env['cpu']}, {env['cores']} cores, {env['threads']} threads",
             f"- torch {env.get('torch', '?')}, onnxruntime {env.get('onnxruntime', '?')}, onnx {env.get('onnx', '?')}"
             f"{', openvino ' + env['openvino'] if env.get('openvino') else ''}, python {env.get('python', '?')}",
             f"- CPU features: {features(env)}; precisions swept: {', '.join(env.get('precisions') or ['fp32'])}"
             + (f"; int8 kernels: {env['int8_path']}" if env.get("int8_path") else ""),
             f"- GEMM probes: {gemm_summary(env)}; timer overhead {env['harness_overhead_ms'] * 1e3:.2f} us",
             f"- round spread (median over cells of slowest/fastest round p50 - 1): {_fmt(env.get('round_spread'), '.1%')}",
             ""]
    if summary := summary_lines(report["records"]):
        lines += ["## Summary", "", *[f"- {s}" for s in summary], ""]
    lines += ["| model | backend | precision | batch | p50 ms | p90 ms | p99 ms | first ms | img/s | accuracy | "
              "parity | efficiency | error |", "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---|---:|---|"]
    for r in report["records"]:
        lines.append(f"| {r['model']} | {r['backend']} | {r.get('precision', 'fp32')} | {r['batch_size']} | "
                     f"{_fmt(r['p50_ms'], '.4f')} | "
                     f"{_fmt(r['p90_ms'], '.4f')} | {_fmt(r['p99_ms'], '.4f')} | {_fmt(r['first_call_ms'], '.3f')} | "
                     f"{_fmt(r['throughput'], ',.0f')} | {_fmt(r['accuracy'], '.2%')} | {parity_mark(r)} | "
                     f"{_fmt(r['efficiency'], '.3f')} | "
                     f"{r['error'] or ''} |")
    return "\n".join(lines) + "\n"


def gemm_summary(env: dict) -> str:
    """'torch.mm 219 GFLOP/s, onnxruntime MatMul 461 GFLOP/s, ...' (older files: the peak alone).

    A probe that failed is named with its reason, so a missing efficiency is explained."""
    rates = env.get("gemm_gflops") or ({"torch.mm": env["peak_gflops"]} if env.get("peak_gflops") else {})
    parts = [f"{name} {rate:,.0f} G{'OP' if 'Integer' in name or 'int8' in name else 'FLOP'}/s"
             for name, rate in rates.items()]
    parts += [f"{name} failed ({why})" for name, why in (env.get("probe_errors") or {}).items()]
    return ", ".join(parts) or "not measured"


def features(env: dict) -> str:
    on = [f for f, yes in (env.get("cpu_features") or {}).items() if yes]
    return " ".join(on) if on else "none detected"


def fastest(records: list[dict]) -> set[tuple]:
    """(model, batch_size, backend, precision) of the lowest p50 per model and batch size, among trusted cells."""
    best: dict[tuple, dict] = {}
    for r in records:
        if trusted(r):
            key = (r["model"], r["batch_size"])
            if key not in best or r["p50_ms"] < best[key]["p50_ms"]:
                best[key] = r
    return {(m, b, r["backend"], r.get("precision", "fp32")) for (m, b), r in best.items()}


def best_cells(records: list[dict], batch: int = 256) -> list[dict]:
    """Per model: the fastest trusted cell at ``batch`` whatever its precision, the fastest
    FP32 cell, the accuracy cost of the former against the latter (points), and for every
    reduced precision its own fastest cell against FP32's (``by_precision``: a ratio under 1
    means that precision is slower than FP32 on this machine). The bench's verdict."""
    rows = []
    for model in sorted({r["model"] for r in records}):
        ok = [r for r in records if r["model"] == model and r["batch_size"] == batch and trusted(r)]
        fp32 = [r for r in ok if r.get("precision", "fp32") == "fp32"]
        if not ok or not fp32:
            continue
        top, top32 = max(ok, key=lambda r: r["throughput"]), max(fp32, key=lambda r: r["throughput"])
        by_precision = {}
        for precision in sorted({r.get("precision", "fp32") for r in ok} - {"fp32"}):
            best = max((r for r in ok if r.get("precision") == precision), key=lambda r: r["throughput"])
            by_precision[precision] = {"backend": best["backend"], "throughput": best["throughput"],
                                       "vs_fp32": best["throughput"] / top32["throughput"],
                                       "accuracy_cost_points": (top32["accuracy"] - best["accuracy"]) * 100}
        rows.append({"model": model, "batch_size": batch, "backend": top["backend"], "precision": top.get("precision", "fp32"),
                     "throughput": top["throughput"], "accuracy": top["accuracy"], "fp32_backend": top32["backend"],
                     "fp32_throughput": top32["throughput"], "fp32_accuracy": top32["accuracy"],
                     "speedup": top["throughput"] / top32["throughput"],
                     "accuracy_cost_points": (top32["accuracy"] - top["accuracy"]) * 100, "by_precision": by_precision})
    return rows


def summary_lines(records: list[dict], batch: int | None = None) -> list[str]:
    """One plain sentence per model: the fastest trusted cell at ``batch`` (default: the
    largest swept), and how each reduced precision compares with FP32 here, slower ones
    said to be slower."""
    if batch is None:
        batch = max((r["batch_size"] for r in records), default=256)
    lines = []
    for v in best_cells(records, batch):
        text = (f"{v['model']} at batch {batch}: fastest is {v['backend']} {v['precision']}, {v['throughput']:,.0f} img/s"
                + ("" if v["precision"] == "fp32" else
                   f", {v['speedup']:.2f}x the best FP32 cell ({v['fp32_backend']}, {v['fp32_throughput']:,.0f} img/s) "
                   f"at {v['accuracy_cost_points']:+.2f} accuracy points"))
        others = [f"{p} {b['vs_fp32']:.2f}x FP32 ({b['backend']}" + (", slower than FP32 here)" if b["vs_fp32"] < 1 else ")")
                  for p, b in v["by_precision"].items()]
        lines.append(text + (f"; best of each precision: {', '.join(others)}" if others else "") + ".")
    return lines


def table(report: dict) -> Table:
    env = report["environment"]
    t = Table(title=f"digits bench on {env['device_name']} ({env['device']}, {env['threads']} threads; "
                    f"{gemm_summary(env)})", title_style="bold", pad_edge=False)
    for c in ("model", ">batch", "backend", "prec", ">p50 us", ">p99 us", ">img/s", ">eff", ">acc"):
        t.add_column(c.lstrip(">"), justify="right" if c.startswith(">") else "left", no_wrap=True)
    best = fastest(report["records"])
    last_model = None
    for r in sorted(report["records"], key=lambda r: (r["model"], r["batch_size"], r["backend"], r.get("precision", ""))):
        if last_model not in (None, r["model"]):
            t.add_section()
        last_model = r["model"]
        if r["error"]:
            t.add_row(r["model"], str(r["batch_size"]), r["backend"], r.get("precision", "fp32"), "[red]failed[/]",
                      "", "", "", "")
            continue
        prec = r.get("precision", "fp32")
        style = "bold green" if (r["model"], r["batch_size"], r["backend"], prec) in best else None
        acc = f"{r['accuracy']:.2%}" + (" [red]parity FAIL[/]" if missed_parity(r) else
                                          " [yellow]untrusted[/]" if not trusted(r) else "")
        t.add_row(r["model"], str(r["batch_size"]), r["backend"], prec, f"{r['p50_ms'] * 1e3:,.1f}",
                  f"{r['p99_ms'] * 1e3:,.1f}", f"{r['throughput']:,.0f}", _fmt(r["efficiency"], ".2f") or "-",
                  acc, style=style)
    t.caption = ("bold green: fastest backend+precision for that model and batch size (lowest p50); "
                 "p50/p99: one call + device sync; img/s: back-to-back calls over wall time; "
                 "eff: img/s x 2 x MACs / the fastest GEMM probe of the cell's precision")
    if any(r["error"] for r in report["records"]):
        t.caption += "; red: the cell failed, its reason is in the record's error field and on stderr"
    if any(missed_parity(r) for r in report["records"]):
        t.caption += ("; parity FAIL: its logits miss the precision's parity thresholds against eager FP32 "
                      "on this device, so it is never named fastest")
    if any(r["error"] is None and not missed_parity(r) and not trusted(r) for r in report["records"]):
        t.caption += "; untrusted: no parity verdict (the record's untrusted field says why), never named fastest"
    return t


def plot(report: dict, out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = [r for r in report["records"] if r["error"] is None]
    if not ok:
        return []
    models = sorted({r["model"] for r in ok})
    backends = sorted({cell_label(r) for r in ok})
    env = report["environment"]
    # colour = backend, line style = precision: one legend entry each, readable at any count
    colours = {b: f"C{i}" for i, b in enumerate(sorted({r["backend"] for r in ok}))}
    styles = {"fp32": "-", "bf16": "--", "fp16": "-.", "int8": ":"}
    fig, axes = plt.subplots(1, len(models), figsize=(4.5 * len(models), 4.6), squeeze=False)
    for ax, model in zip(axes[0], models, strict=True):
        for be in backends:
            pts = sorted((r["batch_size"], r["p50_ms"]) for r in ok if r["model"] == model and cell_label(r) == be)
            if pts:
                backend, precision = be.split(" ")
                ax.plot(*zip(*pts, strict=True), marker="o", markersize=3, color=colours[backend],
                        linestyle=styles.get(precision, "-"), label=be)
        ax.set(xscale="log", yscale="log", title=model, xlabel="batch size", ylabel="p50 latency (ms)")
        ax.grid(True, which="both", alpha=0.3)
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=min(6, len(labels)), fontsize=8, frameon=False)
    fig.suptitle(f"Latency vs batch size, {env['device_name']} ({env['device']}), {env['date'][:10]}")
    fixed_margins(fig, top=0.65, bottom=0.9 + 0.2 * ((len(labels) - 1) // 6), wspace=0.3)
    paths = [_save(fig, out / f"{stem(report)}-latency.png")]
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(7, 4.5))
    markers = dict(zip(backends, "osD^vP*Xphd<>8H", strict=False))  # marker = backend+precision, colour = model
    for i, model in enumerate(models):
        for be in backends:
            pts = [r for r in ok if r["model"] == model and cell_label(r) == be and r["batch_size"] == 1]
            if pts:
                ax.scatter(pts[0]["p50_ms"] * 1e3, pts[0]["accuracy"] * 100, s=50, color=f"C{i}",
                           marker=markers.get(be, "o"), label=f"{model} / {be}")
    if ax.get_legend_handles_labels()[0]:  # no batch-1 cell swept: an empty plot, no empty legend
        ax.legend(fontsize=7, ncol=len(models), loc="best")
    ax.set(xscale="log", xlabel="batch-1 p50 latency (us, log)", ylabel="test accuracy (%)",
           title=f"Accuracy vs batch-1 latency, {env['device']}, {env['date'][:10]}")
    ax.grid(True, alpha=0.3)
    fixed_margins(fig)
    paths.append(_save(fig, out / f"{stem(report)}-accuracy.png"))
    plt.close(fig)
    return paths


def cell_label(r: dict) -> str:
    """'onnxruntime int8': a record's backend and precision (files before precisions: fp32)."""
    return f"{r['backend']} {r.get('precision', 'fp32')}"


def fixed_margins(fig, left: float = 0.75, right: float = 0.2, top: float = 0.45, bottom: float = 0.6,
             wspace: float = 0.2) -> None:
    """Fixed margins in inches: what tight_layout would find for these figures, without the
    ~0.4 s it spends measuring every tick label (every bench and test pays for the plots)."""
    w, h = fig.get_size_inches()
    fig.subplots_adjust(left=left / w, right=1 - right / w, top=1 - top / h, bottom=bottom / h, wspace=wspace)


def _save(fig, path: Path) -> Path:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120, format="png")
    return path

