"""Checkpoints: ``<out>/<model>/model.safetensors`` plus ``manifest.json``.

Weights are safetensors (no pickle). The manifest records how they were made and their
sha256, and loading refuses weights whose digest does not match. The resumable state
written on Ctrl-C is a ``torch.save`` file read back with ``weights_only=True``.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

import digits
from digits._io import atomic_path, atomic_write_json, sha256_file
from digits.errors import DigitsError
from digits.models import create_model

WEIGHTS, MANIFEST, RESUME = "model.safetensors", "manifest.json", "resume.pt"


def versions() -> dict:
    import numpy

    return {"digits": digits.__version__, "torch": torch.__version__, "numpy": numpy.__version__,
            "python": platform.python_version()}


def now_iso() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def save_checkpoint(folder: Path, state_dict: dict, manifest: dict) -> dict:
    """Write weights then manifest, both atomically; the manifest names the weights' digest."""
    folder.mkdir(parents=True, exist_ok=True)
    with atomic_path(folder / WEIGHTS) as tmp:
        save_file({k: v.detach().cpu().contiguous() for k, v in state_dict.items()}, str(tmp))
    manifest = {**manifest, "weights": WEIGHTS, "weights_sha256": sha256_file(folder / WEIGHTS),
                "versions": versions(), "created": now_iso()}
    atomic_write_json(folder / MANIFEST, manifest)
    return manifest


def read_manifest(folder: Path, model: str | None = None) -> dict:
    path = folder / MANIFEST
    if not path.is_file():
        hint = f"run `digits train {model}` first" if model else "run `digits train` first"
        raise DigitsError(f"No checkpoint in {folder} ({MANIFEST} is missing): {hint}.")
    try:
        return json.loads(path.read_text())
    except ValueError:
        raise DigitsError(f"{path} is not valid JSON. Re-run `digits train {model or ''}`.".strip()) from None


def load_checkpoint(folder: str | os.PathLike, model: str | None = None) -> tuple[nn.Module, dict]:
    """Rebuild the model from a checkpoint folder, refusing weights whose sha256 differs."""
    folder = Path(folder)
    manifest = read_manifest(folder, model)
    weights = folder / manifest.get("weights", WEIGHTS)
    if not weights.is_file():
        raise DigitsError(f"{weights} is missing. Run `digits train {manifest.get('model', '')}` again.")
    if (digest := sha256_file(weights)) != manifest.get("weights_sha256"):
        raise DigitsError(
            f"{weights} does not match its manifest (sha256 {digest[:16]}..., expected "
            f"{str(manifest.get('weights_sha256'))[:16]}...). The file was changed or corrupted; "
            f"retrain with `digits train {manifest.get('model', '')}`."
        )
    net = create_model(manifest["model"], **manifest.get("model_kwargs", {}))
    try:
        net.load_state_dict(load_file(str(weights)))
    except Exception as e:  # noqa: BLE001 - safetensors/torch raise several types for bad files
        raise DigitsError(f"{weights} could not be loaded: {e}") from None
    return net.eval(), manifest


def checkpoint_dir(out: str | os.PathLike, model: str) -> Path:
    return Path(out) / model


def missing_checkpoint(artifacts: str | os.PathLike, models: list[str]) -> str | None:
    """Why one of ``models`` has no checkpoint under ``artifacts`` (the first), or None: what an
    evaluation script checks before its minutes of work, not after them."""
    for model in models:
        try:
            read_manifest(checkpoint_dir(artifacts, model), model)
        except DigitsError as e:
            return str(e)
    return None


def save_resume(folder: Path, state: dict) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    with atomic_path(folder / RESUME) as tmp:
        torch.save(state, tmp)
    return folder / RESUME


def load_resume(folder: Path) -> dict:
    path = folder / RESUME
    if not path.is_file():
        raise DigitsError(f"Nothing to resume: {path} does not exist. Start training without --resume.")
    try:
        return torch.load(path, weights_only=True, map_location="cpu")
    except Exception as e:  # noqa: BLE001
        raise DigitsError(f"{path} is not a valid resume state ({e}). Delete it and train from scratch.") from None
