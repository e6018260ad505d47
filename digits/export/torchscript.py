"""TorchScript (``model.ts.pt``): legacy format, kept for older deployments.

``torch.jit.script`` then ``torch.jit.freeze``. torch >= 2.10 deprecates TorchScript in
favour of torch.export; its warnings are kept out of the user's terminal and the manifest
marks the artifact ``legacy``.
"""

from __future__ import annotations

import contextlib
import warnings
from pathlib import Path

import torch
from torch import nn

from digits._io import atomic_path
from digits.data import check_input
from digits.errors import DigitsError
from digits.export._registry import Runner, register_format


@contextlib.contextmanager
def _quiet():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TorchScript's deprecation notices, on every call
        yield


@register_format
class TorchScript:
    name = "torchscript"
    filename = "model.ts.pt"
    legacy = True
    precisions = ("fp32", "bf16", "fp16")

    def export(self, model: nn.Module, path: Path, **_) -> dict:
        with _quiet():
            frozen = torch.jit.freeze(torch.jit.script(model.eval()))
            with atomic_path(path) as tmp:
                torch.jit.save(frozen, str(tmp))
        return {"method": "script+freeze", "legacy": True}

    def open(self, path: Path, device: str = "cpu") -> torch.jit.ScriptModule:
        try:
            with _quiet():
                return torch.jit.load(str(path), map_location=device).eval()
        except Exception as e:  # noqa: BLE001 - torch raises RuntimeError/ValueError/zip errors
            raise DigitsError(f"{path} is not a loadable TorchScript file ({_first_line(e)}). "
                              "Re-create it with `digits export --format torchscript`.") from None

    def load(self, path: Path, device: str = "cpu") -> Runner:
        return torch_runner(self.open(path, device))


def torch_runner(module) -> Runner:
    def run(x: torch.Tensor) -> torch.Tensor:
        check_input(x)
        with torch.inference_mode():
            return module(x)
    return run


def _first_line(e: Exception) -> str:
    text = str(e).strip()
    return text.splitlines()[0][:200] if text else type(e).__name__
