"""Export trained checkpoints to TorchScript, ONNX and torch.export, and prove parity.

    digits export all --format all      # every model x format, each reloaded and checked

Each artifact lands in ``<out>/<model>/`` beside an ``exports.json`` manifest entry
(format, file, sha256, bytes, versions, opset, parity figures). Loading an artifact
through :func:`load_artifact` verifies its sha256 against that manifest first.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from digits._io import atomic_write_json, sha256_file
from digits.checkpoint import checkpoint_dir, load_checkpoint, now_iso, versions
from digits.errors import DigitsError
from digits.export import onnx as _onnx_format, pt2, torchscript  # noqa: F401  (importing registers them)
from digits.export._registry import Runner, artifact_name, format_for_path, get_format, list_formats, manifest_key, parse_artifact
from digits.export.onnx import DEFAULT_OPSET
from digits.export.parity import Parity, check_parity

EXPORTS = "exports.json"
__all__ = ["DEFAULT_OPSET", "EXPORTS", "runtime_versions", "export_model", "list_formats", "load_artifact", "verify_path"]


def runtime_versions() -> dict:
    """Library versions recorded with every export and bench run."""
    import onnx
    import onnxruntime

    return {**versions(), "onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__}


def read_exports(folder: Path) -> dict:
    path = folder / EXPORTS
    if not path.is_file():
        return {"formats": {}}
    try:
        return json.loads(path.read_text())
    except ValueError:
        raise DigitsError(f"{path} is not valid JSON; re-run `digits export`.") from None


def _record(model: str, fmt: str, path: Path, entry: dict) -> dict:
    return {"model": model, "format": fmt, "precision": entry.get("precision", "fp32"), "path": str(path),
            **{k: entry[k] for k in ("sha256", "bytes", "max_abs_diff", "argmax_agreement", "accuracy", "passed")},
            "eager_accuracy": entry["eager_accuracy"], "images": entry["images"], "opset": entry.get("opset"),
            "legacy": entry["legacy"], "thresholds": entry.get("thresholds")}


def export_model(model: str, fmt: str, x: torch.Tensor, y: torch.Tensor, *,
                 checkpoint: str | os.PathLike = "artifacts", out: str | os.PathLike = "artifacts",
                 opset: int = DEFAULT_OPSET, precision: str = "fp32", train_x: torch.Tensor | None = None,
                 int8=None) -> dict:
    """Export one checkpoint to one format and precision, reload it from disk, and check parity on (x, y).

    ``train_x`` (training images) calibrates int8; ``int8`` overrides its :class:`Int8Settings`.
    """
    from digits.precision import at_precision

    exporter = get_format(fmt)
    path_name = artifact_name(fmt, precision)  # refuses a precision the format cannot carry
    eager, ckpt = load_checkpoint(checkpoint_dir(checkpoint, model), model)
    folder = checkpoint_dir(out, model)
    path = folder / path_name
    try:
        source = eager if precision in ("fp32", "int8") else at_precision(eager, precision)
        extra = exporter.export(source, path, opset=opset, model_name=model, precision=precision,
                                train_x=train_x, int8=int8, fp32_onnx=_fp32_onnx(folder, ckpt, opset, precision))
    except DigitsError:
        raise
    except Exception as e:  # noqa: BLE001 - exporters raise many types; the user needs the gist
        raise DigitsError(f"Exporting {model} to {fmt} ({precision}) failed: "
                          f"{str(e).strip().splitlines()[0][:300]}") from None
    parity = check_parity(exporter.load(path), eager, x, y, precision=precision)
    entry = {"format": fmt, "file": path_name, "sha256": sha256_file(path), "bytes": path.stat().st_size,
             "legacy": exporter.legacy, **extra, **parity.to_dict(),
             "checkpoint_sha256": ckpt["weights_sha256"], "versions": runtime_versions(), "created": now_iso()}
    manifest = read_exports(folder)
    manifest.update({"model": model})
    manifest["formats"][manifest_key(fmt, precision)] = entry
    atomic_write_json(folder / EXPORTS, manifest)
    return _record(model, fmt, path, entry)


def _fp32_onnx(folder: Path, ckpt: dict, opset: int, precision: str) -> Path | None:
    """For an int8 export: the FP32 ``model.onnx`` beside it, if it was exported from this very
    checkpoint at this opset and still matches its manifest. The exporter is deterministic
    (tests/test_export.py), so quantizing it is quantizing a fresh export, without the ~2 s."""
    if precision != "int8":
        return None
    entry = read_exports(folder)["formats"].get("onnx")
    if not entry or entry.get("checkpoint_sha256") != ckpt["weights_sha256"] or entry.get("opset") != opset:
        return None
    try:
        return checked_path(folder / entry["file"])
    except DigitsError:
        return None


def _entry_for(path: Path) -> dict:
    manifest = read_exports(path.parent)
    for entry in manifest["formats"].values():
        if entry["file"] == path.name:
            return entry
    raise DigitsError(f"{path} has no entry in {path.parent / EXPORTS}; re-create it with `digits export`.")


def load_artifact(path: str | os.PathLike, device: str = "cpu") -> Runner:
    """Reload an artifact after checking its sha256 against the export manifest."""
    path = checked_path(path)
    return format_for_path(path).load(path, device)


def checked_path(path: str | os.PathLike) -> Path:
    """``path`` once its sha256 matches the export manifest; raises otherwise."""
    path = Path(path)
    fmt, precision = parse_artifact(path)
    if not path.is_file():
        raise DigitsError(f"{path} does not exist. Run `digits export --format {fmt.name}"
                          f"{'' if precision == 'fp32' else ' --precision ' + precision}` first.")
    entry = _entry_for(path)
    if (digest := sha256_file(path)) != entry["sha256"]:
        raise DigitsError(f"{path} does not match its export manifest (sha256 {digest[:16]}..., expected "
                          f"{entry['sha256'][:16]}...). It was modified or corrupted; refusing to load it. "
                          f"Re-create it with `digits export --format {fmt.name}`.")
    return path


def verify_path(target: str | os.PathLike, x: torch.Tensor, y: torch.Tensor, *,
                checkpoint: str | os.PathLike | None = None) -> list[dict]:
    """Re-run parity for one artifact file, one model folder, or a whole artifacts folder."""
    target = Path(target)
    if target.is_file():
        files = [target]
    elif (target / EXPORTS).is_file():
        files = [target / e["file"] for e in read_exports(target)["formats"].values()]
    elif target.is_dir():
        files = [p.parent / e["file"] for p in sorted(target.glob(f"*/{EXPORTS}"))
                 for e in read_exports(p.parent)["formats"].values()]
    else:
        raise DigitsError(f"{target} does not exist.")
    if not files:
        raise DigitsError(f"No exported artifacts under {target}. Run `digits export` first.")
    records = []
    for path in files:
        entry = _entry_for(path)
        model = read_exports(path.parent).get("model", path.parent.name)
        run = load_artifact(path)
        ckpt_dir = checkpoint_dir(checkpoint, model) if checkpoint else path.parent
        eager, ckpt = load_checkpoint(ckpt_dir, model)
        if ckpt["weights_sha256"] != entry["checkpoint_sha256"]:
            raise DigitsError(f"{path} was exported from a different checkpoint than {ckpt_dir}; "
                              "re-export it or point --checkpoint at the original.")
        parity: Parity = check_parity(run, eager, x, y, precision=entry.get("precision", "fp32"))
        records.append(_record(model, entry["format"], path, {**entry, **parity.to_dict(), "sha256": entry["sha256"]}))
    return records
