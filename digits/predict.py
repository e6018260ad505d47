"""Predict digits in users' own images: preprocess like MNIST, run a backend, rank classes.

    digits predict photo.jpg drawings/ --model lenet5 --backend onnxruntime --top-k 3

A directory is processed as one batch. A file that cannot be used (unreadable, not an
image, blank, absurdly large) gets an error entry with the reason, and the rest are
still predicted.
"""

from __future__ import annotations

import io
import os
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from digits._io import atomic_write
from digits.calibrate import UNSURE_BELOW, read_digits, temperature_of
from digits.checkpoint import checkpoint_dir, read_manifest
from digits.errors import DigitsError, UsageError
from digits.decode import TIME_BUDGET_S, ImageError, decode
from digits.preprocess import Found, found_in, normalize28, preprocess_all


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
                  data_root: Path | None = None, save_preprocessed: Path | None = None, single: bool = False,
                  unsure_below: float = UNSURE_BELOW, time_budget_s: float = TIME_BUDGET_S,
                  log: Callable[[str], None] = lambda m: None) -> list[dict]:
    """One entry per input file, in order: ``{path, number, unsure, digits: [{box, prediction,
    probabilities, unsure}]}`` (plus ``prediction`` and ``probabilities`` when one digit was
    read), or ``{path, error}``.

    Each file is read as a number written left to right; ``single`` reads one digit only.
    Probabilities are calibrated by the checkpoint's temperature (digits.calibrate); a digit
    whose top probability is under ``unsure_below`` is unsure, and shows as "?" in ``number``.
    Reading one file may take ``time_budget_s``; a file that needs longer is an error for it."""
    files = collect_inputs(paths)
    if not files:
        raise UsageError("No input files: the given directories are empty.")
    results: list[dict] = []
    found: list[tuple[dict, Found, object, np.ndarray]] = []  # (result, what to read, localisation, gray)
    for f in files:
        try:
            deadline = time.monotonic() + time_budget_s
            image = decode(f)
            digits, located = preprocess_all(image.gray, image.rgb, single=single, deadline=deadline)
            results.append({"path": str(f)})
            found.append((results[-1], found_in(digits, located, image.to_original), located, image.gray))
        except ImageError as e:
            results.append({"path": str(f), "error": f"{f}: {e}"})
    if found:
        runner = ensure_backend(model, backend, checkpoint=checkpoint, artifacts=artifacts, data_root=data_root, log=log)
        crops = [img for _, what, _, _ in found for img in what.images()]
        temperature = temperature_of(read_manifest(checkpoint_dir(checkpoint, model), model))
        logits = runner(torch.from_numpy(np.stack([normalize28(im) for im in crops]))).float().numpy()
        i = 0
        for r, what, located, gray in found:
            n = len(what.images())
            boxes, chosen, imgs = what.read(logits[i:i + n], temperature)
            r.update(read_digits(boxes, chosen, temperature, unsure_below))
            i += n
            if save_preprocessed:
                path = save_preprocessed / f"{Path(r['path']).stem}.png"
                _save_png(path, mosaic(gray, located, imgs))
                r["preprocessed"] = str(path)
    return results


def mosaic(gray: np.ndarray, located, crops: list[np.ndarray], tile: int = 160) -> np.ndarray:
    """What preprocessing did, side by side: the image, flattened, ink mask, chosen boxes, and
    each 28x28 the model saw (uint8 RGB)."""
    import cv2

    def fit(img: np.ndarray) -> np.ndarray:
        img = img if img.ndim == 3 else cv2.cvtColor(img, cv2.COLOR_GRAY2RGB)
        h, w = img.shape[:2]
        f = tile / max(h, w)
        small = cv2.resize(img, (max(1, round(w * f)), max(1, round(h * f))), interpolation=cv2.INTER_AREA)
        out = np.full((tile, tile, 3), 255, np.uint8)
        out[:small.shape[0], :small.shape[1]] = small
        return out

    steps = [(np.clip(gray, 0, 1) * 255).astype(np.uint8), located.steps["flattened"], located.steps["mask"],
             cv2.cvtColor(located.steps["chosen"], cv2.COLOR_BGR2RGB)]
    steps += [cv2.resize((np.clip(c, 0, 1) * 255).astype(np.uint8), (tile, tile), interpolation=cv2.INTER_NEAREST)
              for c in crops]
    return np.hstack([fit(s) for s in steps])


def _save_png(path: Path, img: np.ndarray) -> None:
    from PIL import Image

    buf = io.BytesIO()
    arr = img if img.dtype == np.uint8 else (np.clip(img, 0, 1) * 255).round().astype(np.uint8)
    Image.fromarray(arr).save(buf, format="PNG")
    atomic_write(path, buf.getvalue())


def top_k(probabilities: list[float], k: int) -> list[tuple[int, float]]:
    order = sorted(range(len(probabilities)), key=lambda i: -probabilities[i])
    return [(i, probabilities[i]) for i in order[:k]]
