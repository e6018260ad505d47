"""The export-format registry: one class per format, with ``export`` and ``load``.

``export(model, path, opset=...)`` writes the artifact (atomically) and returns extra
manifest fields; ``open(path, device)`` reloads it from the file alone, in a fresh
runtime (a ScriptModule, an ExportedProgram module, an InferenceSession), never from the
in-memory object; ``load`` wraps that in a callable ``tensor -> logits`` that checks
the input contract.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Protocol

import torch
from torch import nn

from digits.errors import UsageError

Runner = Callable[[torch.Tensor], torch.Tensor]


class Format(Protocol):
    name: str
    filename: str
    legacy: bool

    def export(self, model: nn.Module, path: Path, **opts) -> dict: ...

    def open(self, path: Path, device: str = "cpu"): ...  # the raw runtime object

    def load(self, path: Path, device: str = "cpu") -> Runner: ...  # open() behind a checked call


_FORMATS: dict[str, Format] = {}


def register_format(cls):
    _FORMATS[cls.name] = cls()
    return cls


def list_formats() -> list[str]:
    return list(_FORMATS)


def get_format(name: str) -> Format:
    if name not in _FORMATS:
        raise UsageError(f"Unknown format {name!r}. Choose one of: {', '.join(list_formats())}.")
    return _FORMATS[name]


def format_for_path(path: Path) -> Format:
    for fmt in _FORMATS.values():
        if path.name == fmt.filename:
            return fmt
    names = ", ".join(f.filename for f in _FORMATS.values())
    raise UsageError(f"{path} is not a digits artifact (expected one of: {names}).")


def example_input(batch: int = 2) -> torch.Tensor:
    # A batch of 2, not 1: exporters specialise a size-1 dimension to a constant.
    return torch.randn(batch, 1, 28, 28, generator=torch.Generator().manual_seed(0))
