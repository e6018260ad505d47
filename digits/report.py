"""``digits report``: results/REPORT.md (and a self-contained REPORT.html) from what the
other commands wrote: checkpoint and export manifests, the newest bench JSON, and an
evaluation of each checkpoint on the test set.

The report is a list of blocks rendered twice, to Markdown and to HTML, so the two
never disagree. Figures are PNGs beside the report; the HTML embeds them.
"""

from __future__ import annotations

import base64
import html
import json
from pathlib import Path

import numpy as np
import torch

from digits._io import atomic_path, atomic_write
from digits.bench.report import best_cells, cell_label, features, fixed_margins, gemm_summary, trusted
from digits.checkpoint import checkpoint_dir, load_checkpoint
from digits.errors import DigitsError
from digits.evaluate import Evaluation, evaluate_model
from digits.export import read_exports
from digits.models import list_models


def latest_bench(results: Path) -> dict | None:
    files = sorted(results.glob("bench-*.json"), key=lambda p: json.loads(p.read_text())["environment"]["date"])
    return json.loads(files[-1].read_text()) | {"_file": files[-1].name} if files else None


def best(records: list[dict], model: str, batch: int) -> dict | None:
    ok = [r for r in records if r["model"] == model and r["batch_size"] == batch and trusted(r)]
    return min(ok, key=lambda r: r["p50_ms"]) if ok else None


def build_report(x: torch.Tensor, y: torch.Tensor, *, checkpoint: Path, artifacts: Path, results: Path,
                 html_too: bool = False, models: list[str] | None = None) -> dict:
    """Write REPORT.md (and REPORT.html) into ``results``; returns paths and per-model figures.
    ``models``: those to report (default: every registered model with a checkpoint)."""
    names, models, blocks = models or list_models(), [], []
    for name in names:
        folder = checkpoint_dir(checkpoint, name)
        if (folder / "manifest.json").is_file():
            net, manifest = load_checkpoint(folder, name)
            models.append((name, manifest, read_exports(checkpoint_dir(artifacts, name)), evaluate_model(net, x, y)))
    if not models:
        raise DigitsError(f"No checkpoints in {checkpoint}. Run `digits train all` (or `digits run`) first.")
    bench = latest_bench(results)
    records = bench["records"] if bench else []
    figures = []

    blocks.append(("h1", "digits report"))
    blocks.append(("p", "Three MNIST models trained, exported and benchmarked by digits. Accuracy is on the "
                        f"{len(x):,}-image MNIST test set, which was not used for model selection."))
    rows = []
    for name, man, exp, ev in models:
        onnx_acc = exp["formats"].get("onnx", {}).get("accuracy")
        b1, b256 = best(records, name, 1), best(records, name, 256)
        sizes = ", ".join(f"{f} {e['bytes'] / 1024:,.0f} KiB" for f, e in exp["formats"].items()) or "not exported"
        rows.append([name, f"{man['params']:,}", f"{man['macs']:,}", f"{ev.accuracy:.2%}",
                     f"{onnx_acc:.2%}" if onnx_acc is not None else "-",
                     f"{b1['p50_ms'] * 1e3:,.1f} us ({cell_label(b1)})" if b1 else "-",
                     f"{b256['throughput']:,.0f}/s ({cell_label(b256)})" if b256 else "-", sizes])
    blocks += [("h2", "Summary"), ("table", ["model", "params", "MACs/image", "test acc", "ONNX acc",
                                             "best batch-1 p50", "best batch-256 throughput", "artifact sizes"], rows)]

    blocks.append(("h2", "Training"))
    blocks.append(("table", ["model", "recipe", "epochs", "best epoch", "val acc", "train s", "seed"],
                   [[n, m["recipe"], str(m["config"]["epochs"]), str(m["best_epoch"]), f"{m['val_accuracy']:.2%}",
                     f"{m['train_seconds']:.1f}", str(m["seed"])] for n, m, _, _ in models]))
    for name, man, _, _ in models:
        figures.append(_save(_training_figure(name, man["history"]), results / f"report-training-{name}.png"))
        blocks.append(("img", figures[-1].name, f"{name}: loss and validation accuracy per epoch"))

    blocks.append(("h2", "Per-class accuracy"))
    blocks.append(("table", ["model", *map(str, range(10))],
                   [[n, *(f"{a:.1%}" for a in ev.per_class)] for n, _, _, ev in models]))
    for name, _, _, ev in models:
        blocks.append(("h3", f"{name}: confusion matrix and mistakes"))
        figures.append(_save(_confusion_figure(name, ev), results / f"report-confusion-{name}.png"))
        blocks.append(("img", figures[-1].name, f"{name} confusion matrix"))
        figures.append(_save(_mistakes_figure(name, ev, x), results / f"report-mistakes-{name}.png"))
        blocks.append(("img", figures[-1].name, f"{name}: misclassified test digits, true -> predicted (confidence)"))
        blocks.append(("p", f"{len(ev.mistakes)} of {len(x):,} test digits misclassified; the grid shows the "
                            "most confident mistakes first."))

    blocks.append(("h2", "Speed"))
    if verdicts := best_cells(records):
        blocks.append(("table", ["model", "fastest at batch 256", "img/s", "best FP32", "FP32 img/s", "speed-up",
                                 "accuracy cost (points)"],
                       [[v["model"], cell_label(v), f"{v['throughput']:,.0f}", v["fp32_backend"],
                         f"{v['fp32_throughput']:,.0f}", f"{v['speedup']:.2f}x", f"{v['accuracy_cost_points']:+.2f}"]
                        for v in verdicts]))
    if bench:
        stem = bench["_file"].removesuffix(".json")
        for suffix, alt in (("-latency.png", "p50 latency against batch size"),
                            ("-accuracy.png", "accuracy against batch-1 latency")):
            if (results / f"{stem}{suffix}").is_file():
                blocks.append(("img", f"{stem}{suffix}", alt))
        env = bench["environment"]
        blocks.append(("p", f"From {bench['_file']}. Fields are defined in results/README.md."))
        blocks += [("h2", "Environment"), ("table", ["item", "value"], [
            ["CPU", f"{env['cpu']} ({env['cores']} cores)"], ["threads", str(env["threads"])],
            ["device", f"{env['device']} ({env['device_name']})"], ["GEMM probes", gemm_summary(env)],
            ["CPU features", features(env)], ["precisions", ", ".join(env.get("precisions") or ["fp32"])],
            ["versions", f"torch {env['torch']}, onnxruntime {env['onnxruntime']}, onnx {env['onnx']}, "
                         f"python {env['python']}, digits {env['digits']}"], ["bench date", env["date"]]])]
    else:
        blocks.append(("p", "No bench results yet: run `digits bench` and then `digits report` again."))

    md = atomic_write(results / "REPORT.md", _markdown(blocks))
    paths = {"markdown": str(md), "figures": [str(f) for f in figures]}
    if html_too:
        paths["html"] = str(atomic_write(results / "REPORT.html", _html(blocks, results)))
    return paths


# --------------------------------------------------------------------------- rendering
def _markdown(blocks: list[tuple]) -> str:
    out = []
    for kind, *rest in blocks:
        if kind in ("h1", "h2", "h3"):
            out.append("#" * int(kind[1]) + " " + rest[0])
        elif kind == "p":
            out.append(rest[0])
        elif kind == "img":
            out.append(f"![{rest[1]}]({rest[0]})")
        elif kind == "table":
            head, rows = rest
            out += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)] + ["| " + " | ".join(r) + " |" for r in rows]
        out.append("")
    return "\n".join(out)


def _html(blocks: list[tuple], folder: Path) -> str:
    body = []
    for kind, *rest in blocks:
        if kind in ("h1", "h2", "h3", "p"):
            body.append(f"<{kind}>{html.escape(rest[0])}</{kind}>")
        elif kind == "img":
            data = base64.b64encode((folder / rest[0]).read_bytes()).decode()
            body.append(f'<figure><img src="data:image/png;base64,{data}" alt="{html.escape(rest[1])}">'
                        f"<figcaption>{html.escape(rest[1])}</figcaption></figure>")
        elif kind == "table":
            head, rows = rest
            body.append("<table><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in head) + "</tr>"
                        + "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in rows)
                        + "</table>")
    style = ("body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em}"
             "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}"
             "td:first-child,th:first-child{text-align:left}img{max-width:100%}figcaption{color:#555;font-size:90%}")
    return f"<!doctype html><meta charset=utf-8><title>digits report</title><style>{style}</style>\n" + "\n".join(body) + "\n"


# --------------------------------------------------------------------------- figures
def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> Path:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    _plt().close(fig)
    return path


def _training_figure(name: str, history: list[dict]):
    plt = _plt()
    ep = [h["epoch"] for h in history]
    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.4))
    a.plot(ep, [h["train_loss"] for h in history], marker="o", label="train loss (label-smoothed, augmented)")
    a.plot(ep, [h["val_loss"] for h in history], marker="o", label="validation loss")
    a.set(xlabel="epoch", ylabel="cross-entropy", title=f"{name}: loss")
    a.legend()
    b.plot(ep, [100 * h["val_accuracy"] for h in history], marker="o", color="C2")
    b.set(xlabel="epoch", ylabel="validation accuracy (%)", title=f"{name}: validation accuracy")
    for ax in (a, b):
        ax.grid(alpha=0.3)
    fixed_margins(fig, left=0.6, bottom=0.5, top=0.35, wspace=0.25)
    return fig


def _confusion_figure(name: str, ev: Evaluation):
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5.2, 4.6))
    # Log colour scale: the diagonal (~1,000) would otherwise hide every mistake.
    ax.imshow(np.log1p(ev.confusion), cmap="Blues")
    for i in range(10):
        for j in range(10):
            if ev.confusion[i, j]:
                ax.text(j, i, str(ev.confusion[i, j]), ha="center", va="center", fontsize=7,
                        color="white" if i == j else "black")
    ax.set(xticks=range(10), yticks=range(10), xlabel="predicted", ylabel="true",
           title=f"{name}: confusion matrix (accuracy {ev.accuracy:.2%})")
    fixed_margins(fig, left=0.6, bottom=0.5, top=0.35)
    return fig


def _mistakes_figure(name: str, ev: Evaluation, x: torch.Tensor, n: int = 24):
    """The ``n`` most confident mistakes as one mosaic in one axes: 24 small axes each cost
    matplotlib a layout pass, and this figure took ~0.8 s that way."""
    plt = _plt()
    shown = ev.mistakes[:n]
    cols, rows = 8, max(1, -(-len(shown) // 8))
    w, h, top = 32, 42, 12  # a cell: 28x28 digit with a 2 px margin, under a 12 px caption band
    mosaic = np.ones((rows * h, cols * w), np.float32)  # white between digits
    for k, m in enumerate(shown):
        r, c = divmod(k, cols)
        img = x[m["index"], 0].numpy()
        mosaic[r * h + top:r * h + top + 28, c * w + 2:c * w + 30] = (img - img.min()) / max(np.ptp(img), 1e-6)
    fig, ax = plt.subplots(figsize=(cols * 1.2, rows * 1.45 + 0.4))
    ax.imshow(mosaic, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    for k, m in enumerate(shown):
        r, c = divmod(k, cols)
        ax.text(c * w + 16, r * h + top - 1, f"{m['true']}→{m['pred']} ({m['confidence']:.0%})", ha="center",
                va="bottom", fontsize=8)
    ax.axis("off")
    ax.set_title(f"{name}: most confident mistakes (true→predicted)", fontsize=10)
    fixed_margins(fig, left=0.1, right=0.1, bottom=0.1, top=0.35)
    return fig
