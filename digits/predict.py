"""Predict digits in users' own images: preprocess like MNIST, run a backend, rank classes.

    digits predict photo.jpg drawings/ --model lenet5 --backend onnxruntime --top-k 3

A directory is processed as one batch. A file that cannot be used (unreadable, not an
image, blank, absurdly large) gets an error entry with the reason, and the rest are
still predicted.
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from digits._io import atomic_write
from digits.checkpoint import checkpoint_dir, read_manifest
from digits.errors import DigitsError, UsageError
from digits.preprocess import ImageError, load_gray, normalize28, preprocess


def collect_inputs(paths: list[str | os.PathLike]) -> list[Path]:
    """Files as given, and each directory's non-hidden files in name order."""
    files: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            files += sorted(f for f in p.iterdir() if f.is_file() and not f.name.startswith("."))
        else:
            files.append(p)
    return files


def ensure_backend(model: str, backend: str, *, checkpoint: Path, artifacts: Path,
                   data_root: Path | None, log: Callable[[str], None] = lambda m: None):
    """Load ``backend`` for ``model``; export the artifact first when only the checkpoint exists."""
    from digits.bench.backends import create_backend
    from digits.export import export_model, get_format

    b = create_backend(backend)
    read_manifest(checkpoint_dir(checkpoint, model), model)  # no checkpoint: "run digits train"
    if b.format and not (checkpoint_dir(artifacts, model) / get_format(b.format).filename).is_file():
        hint = f"Run `digits export {model} --format {b.format}` (or use --backend eager)."
        if data_root is None:
            raise DigitsError(f"No {b.format} export of {model} in {artifacts}. {hint}")
        from digits.data import load_test

        try:
            x, y = load_test(data_root)
        except DigitsError as e:
            raise DigitsError(f"No {b.format} export of {model} in {artifacts}, and it cannot be made and "
                              f"checked here: {e} {hint}") from None
        log(f"exporting {model} to {b.format} first (parity checked on {len(x):,} test images)")
        rec = export_model(model, b.format, x, y, checkpoint=checkpoint, out=artifacts)
        if not rec["passed"]:
            raise DigitsError(f"The fresh {b.format} export of {model} failed its parity check; use --backend eager.")
    return b.load(model, "cpu", checkpoint=checkpoint, artifacts=artifacts)


def predict_files(paths: list[str | os.PathLike], *, model: str = "lenet5", backend: str = "onnxruntime",
                  checkpoint: Path = Path("artifacts"), artifacts: Path = Path("artifacts"),
                  data_root: Path | None = None, save_preprocessed: Path | None = None,
                  log: Callable[[str], None] = lambda m: None) -> list[dict]:
    """One entry per input file, in order: ``{path, prediction, probabilities}`` or ``{path, error}``."""
    files = collect_inputs(paths)
    if not files:
        raise UsageError("No input files: the given directories are empty.")
    results: list[dict] = []
    images: list[np.ndarray] = []
    for f in files:
        try:
            images.append(preprocess(load_gray(f)))
            results.append({"path": str(f)})
        except ImageError as e:
            results.append({"path": str(f), "error": f"{f}: {e}"})
    ok = [r for r in results if "error" not in r]
    if ok:
        runner = ensure_backend(model, backend, checkpoint=checkpoint, artifacts=artifacts, data_root=data_root, log=log)
        batch = torch.from_numpy(np.stack([normalize28(im) for im in images]))
        probs = torch.softmax(runner(batch).float(), dim=1)
        for r, p in zip(ok, probs, strict=True):
            r["prediction"] = int(p.argmax())
            r["probabilities"] = [round(float(v), 6) for v in p]
        if save_preprocessed:
            for r, im in zip(ok, images, strict=True):
                _save_png(save_preprocessed / f"{Path(r['path']).stem}.png", im)
                r["preprocessed"] = str(save_preprocessed / f"{Path(r['path']).stem}.png")
    return results


def _save_png(path: Path, img28: np.ndarray) -> None:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray((np.clip(img28, 0, 1) * 255).round().astype(np.uint8)).save(buf, format="PNG")
    atomic_write(path, buf.getvalue())


def top_k(probabilities: list[float], k: int) -> list[tuple[int, float]]:
    order = sorted(range(len(probabilities)), key=lambda i: -probabilities[i])
    return [(i, probabilities[i]) for i in order[:k]]
