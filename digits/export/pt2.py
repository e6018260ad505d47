"""torch.export (``model.pt2``): an ExportedProgram with a dynamic batch dimension.

The successor to TorchScript. Saved with ``torch.export.save``, reloaded with
``torch.export.load(...).module()``.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch
from torch import nn
from torch.export.passes import move_to_device_pass

from digits._io import atomic_path
from digits.errors import DigitsError
from digits.export._registry import Runner, example_input, register_format
from digits.export.torchscript import _first_line, torch_runner


def export_program(model: nn.Module) -> torch.export.ExportedProgram:
    batch = torch.export.Dim("batch", min=1, max=1 << 20)
    return torch.export.export(model.eval(), (example_input(),), dynamic_shapes=({0: batch},))


@register_format
class Pt2:
    name = "pt2"
    filename = "model.pt2"
    legacy = False
    precisions = ("fp32", "bf16", "fp16")

    def export(self, model: nn.Module, path: Path, **_) -> dict:
        program = export_program(model)
        with atomic_path(path) as tmp, warnings.catch_warnings():
            # bf16/fp16 programs keep channels-last conv weights (oneDNN's fast layout). torch.export's
            # saver calls a tensor "complete" only if it is contiguous, so for each such weight it warns
            # "No complete tensor found in the group!" and saves the weight's whole storage range:
            # the same bytes. Harmless (parity is checked on the reloaded file), so exactly that is hushed.
            warnings.filterwarnings("ignore", message="No complete tensor found in the group", category=UserWarning)
            torch.export.save(program, str(tmp))
        return {"dynamic_batch": True}

    def open(self, path: Path, device: str = "cpu") -> nn.Module:
        try:
            with warnings.catch_warnings():  # torch 2.14 warns about reduced-precision weight groups it then loads fine
                warnings.simplefilter("ignore")
                program = torch.export.load(str(path))
                if torch.device(device).type != "cpu":
                    # A program exported on the CPU asserts that its input is on the CPU wherever it
                    # casts (x.to(dtype) records the device): re-target those, not only the weights.
                    program = move_to_device_pass(program, device)
                return program.module().to(device)
        except Exception as e:  # noqa: BLE001
            raise DigitsError(f"{path} is not a loadable torch.export (.pt2) file ({_first_line(e)}). "
                              "Re-create it with `digits export --format pt2`.") from None

    def load(self, path: Path, device: str = "cpu") -> Runner:
        return torch_runner(self.open(path, device))
