"""The one atomic writer, the one sha256 helper, and what a written file may be named.

Every file digits writes goes through :func:`atomic_write`, so an interrupted run never
leaves a half-written checkpoint, dataset or report behind: bytes go to a temp file in
the same folder, are fsynced, then ``os.replace`` swaps them in (atomic on POSIX).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

def plain_name(value: str, empty: bool = False) -> bool:
    """Whether ``value`` can be (part of) a file name in the folder it is meant for: letters,
    digits, '_', '-' and '.', not only dots (``../x`` would write beside it)."""
    return bool(re.fullmatch(r"[A-Za-z0-9_.-]*", value)) and value.strip(".") == value and (empty or value != "")


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temp path beside ``path``; on success it replaces ``path`` atomically.

    For writers that insist on a filename (torch.export.save, onnx.save, safetensors).
    The temp file sits in a private temp folder under the target's own name: writers that
    check the extension are satisfied, and archives that embed the file's stem
    (torch.jit.save, torch.export.save) come out byte-identical from run to run.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp_dir = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    tmp_path = tmp_dir / path.name
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp_path, path)
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)
    _fsync_dir(path.parent)


def atomic_write(path: str | os.PathLike, data: bytes | str | Callable[[Any], None]) -> Path:
    """Write ``data`` (bytes, text, or a callable taking a binary file) atomically."""
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        if callable(data):
            data(f)
        else:
            f.write(data.encode() if isinstance(data, str) else data)
    return Path(path)


def atomic_write_json(path: str | os.PathLike, obj: Any) -> Path:
    return atomic_write(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def atomic_write_result(stem: Path, payload: Any, markdown: str) -> list[Path]:
    """A result's ``<stem>.json`` and its ``<stem>.md`` rendering, each written atomically."""
    return [atomic_write_json(stem.with_suffix(".json"), payload), atomic_write(stem.with_suffix(".md"), markdown)]


def unwritable(folder: str | os.PathLike) -> str | None:
    """Why nothing can be written into ``folder`` (made if missing), or None when it can: a
    script checks its output folder this way before its work, not after it."""
    try:
        Path(folder).mkdir(parents=True, exist_ok=True)
        tempfile.TemporaryFile(dir=folder).close()
    except OSError as e:
        return e.strerror or str(e)
    return None


def _fsync_dir(folder: Path) -> None:
    # Makes the rename itself durable; not every filesystem allows opening a folder.
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
