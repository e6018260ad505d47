"""The backend interface and its registry: a backend is a class registered by name."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from digits.checkpoint import WEIGHTS, checkpoint_dir, load_checkpoint
from digits.data import check_input
from digits.errors import DigitsError, RuntimeMissing, UsageError
from digits.export import artifact_name, checked_path
from digits.precision import at_precision, check_precision

_BACKENDS: dict[str, type[Backend]] = {}


# What a backend that runs the checkpoint itself can run: tf32 only there (digits.precision.at_precision),
# since an export loaded from its file has no switch for it.
CHECKPOINT_PRECISIONS = ("fp32", "tf32", "bf16", "fp16")


def register_backend(cls):
    _BACKENDS[cls.name] = cls
    return cls


def list_backends() -> list[str]:
    return list(_BACKENDS)


def create_backend(name: str) -> Backend:
    if name not in _BACKENDS:
        raise UsageError(f"Unknown backend {name!r}. Choose from: {', '.join(list_backends())}.")
    return _BACKENDS[name]()


class Backend:
    name = ""
    format: str | None = None  # the export format it runs, None for the checkpoint itself
    default = True  # part of the default sweep
    devices: tuple[str, ...] = ("cpu", "cuda")
    precisions: tuple[str, ...] = ("fp32", "bf16", "fp16")  # what it can run (digits.precision)
    artifact_precisions: tuple[str, ...] | None = None  # precisions that have their own artifact file

    def __init__(self):
        self.device = "cpu"
        self.precision = "fp32"
        self.artifact: Path | None = None
        self.settings: dict = {}

    @classmethod
    def available(cls) -> str | None:
        """None if it can run here, else what to install."""
        return None

    # -- loading
    def load(self, model: str, device: str = "cpu", *, checkpoint: Path = Path("artifacts"),
             artifacts: Path = Path("artifacts"), threads: int | None = None, precision: str = "fp32") -> Backend:
        self.device, self.precision = device, check_precision(precision)
        if precision not in self.precisions:
            raise DigitsError(f"{self.name} does not run {precision} (it runs {', '.join(self.precisions)}).")
        if device not in self.devices:
            raise DigitsError(f"{self.name} runs on {', '.join(self.devices)} only: use --device {self.devices[0]}.")
        if (missing := self.available()) is not None:
            raise RuntimeMissing(missing)
        if self.format is None:
            self.artifact = checkpoint_dir(checkpoint, model) / WEIGHTS
        else:
            own = self.artifact_precisions is None or precision in self.artifact_precisions
            name = artifact_name(self.format, precision if own else "fp32")
            path = checkpoint_dir(artifacts, model) / name
            if not path.is_file():
                flag = f" --precision {precision}" if own and precision != "fp32" else ""
                raise DigitsError(f"No {name} for {model} at {path}. "
                                  f"Run `digits export {model} --format {self.format}{flag}` first.")
            self.artifact = checked_path(path)
        self._open(model, device, checkpoint=checkpoint, threads=threads)
        return self

    def _open(self, model: str, device: str, *, checkpoint: Path, threads: int | None) -> None:
        raise NotImplementedError

    def _checkpoint_module(self, checkpoint: Path, model: str):
        """The checkpoint as an eval-mode module on this device, at this precision."""
        eager = load_checkpoint(checkpoint_dir(checkpoint, model), model)[0].to(self.device).eval()
        return at_precision(eager, self.precision)  # bf16/fp16: weights cast, channels-last

    def keep_shapes(self, batch_sizes) -> None:
        """Free what was built for batch sizes other than ``batch_sizes`` (the parity runs at
        1,000-image chunks leave compiled models and buffers of that size behind)."""

    @property
    def provider(self) -> str:
        return f"torch-{self.device}"

    # -- calling
    def prepare(self, x: torch.Tensor) -> Any:
        check_input(x)
        return x.to(self.device)

    def run(self, prepared: Any) -> Any:
        with torch.inference_mode():
            return self.module(prepared)

    def logits(self, out: Any) -> torch.Tensor:
        return out.float().cpu()

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits(self.run(self.prepare(x)))

    def numpy_call(self, x: np.ndarray) -> np.ndarray:
        """Logits of a float32 [N,1,28,28] numpy batch, as numpy: what `digits serve` calls.
        A backend may answer it more directly than through the timed prepare/run/logits."""
        return self(torch.from_numpy(x)).numpy()
