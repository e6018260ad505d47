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
    filename: str  # the FP32 artifact; a reduced precision inserts itself: model.int8.onnx
    legacy: bool
    precisions: tuple[str, ...]  # what this format can carry (digits.precision)

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


def artifact_name(fmt: str, precision: str = "fp32") -> str:
    """``model.onnx`` for FP32, ``model.int8.onnx``, ``model.bf16.pt2``... for the others."""
    f = get_format(fmt)
    if precision not in f.precisions:
        carriers = [n for n, g in _FORMATS.items() if precision in g.precisions]
        raise UsageError(f"The {fmt} format cannot carry {precision}: it holds {', '.join(f.precisions)}. "
                         f"{precision} is exported as: {', '.join(carriers) or 'no format'}.")
    return f.filename if precision == "fp32" else f.filename.replace("model.", f"model.{precision}.", 1)


def parse_artifact(path: Path) -> tuple[Format, str]:
    """The format and precision that an artifact's file name says it holds."""
    for fmt in _FORMATS.values():
        for precision in fmt.precisions:
            if path.name == artifact_name(fmt.name, precision):
                return fmt, precision
    names = ", ".join(artifact_name(f.name, p) for f in _FORMATS.values() for p in f.precisions)
    raise UsageError(f"{path} is not a digits artifact (expected one of: {names}).")


def format_for_path(path: Path) -> Format:
    return parse_artifact(path)[0]


def manifest_key(fmt: str, precision: str = "fp32") -> str:
    """The artifact's key in exports.json: the format for FP32 (as before precisions), else format-precision."""
    return fmt if precision == "fp32" else f"{fmt}-{precision}"


def example_input(batch: int = 2) -> torch.Tensor:
    # A batch of 2, not 1: exporters specialise a size-1 dimension to a constant.
    return torch.randn(batch, 1, 28, 28, generator=torch.Generator().manual_seed(0))
