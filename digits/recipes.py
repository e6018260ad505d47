"""Training settings: ``TrainConfig``, the per-model recipes, and how explicit options override them.

A recipe fixes the **global** batch size and the OneCycle schedule; under data-parallel
training (digits.distributed) each of W processes takes B/W of every batch, so a recipe
means the same run on any world size.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace

import torch

from digits.errors import DigitsError, UsageError
from digits.models import list_models


@dataclass
class TrainConfig:
    model: str
    recipe: str = "default"
    epochs: int = 10
    batch_size: int = 256
    lr: float = 3e-3  # OneCycle peak learning rate
    weight_decay: float = 1e-4
    label_smoothing: float = 0.0
    augment: bool = True  # random affine: rotation, shift, scale, applied per batch
    continental: bool = False  # with augment: 1s gain a flag and a base serif (digits.augment.continental_ones)
    seed: int = 0
    device: str = "cpu"
    threads: int | None = None  # None: all cores
    cuda_graph: bool = True  # on CUDA, the step is a replayed CUDA graph (digits.train_step)


RECIPES: dict[str, dict[str, dict]] = {
    "mlp": {
        "default": dict(epochs=15, batch_size=256, lr=2e-3, augment=True, continental=True, label_smoothing=0.1),
        "fast": dict(epochs=2, batch_size=256, lr=2e-3, augment=False),
    },
    "cnn": {
        "default": dict(epochs=10, batch_size=256, lr=3e-3, augment=True, continental=True, label_smoothing=0.1),
        "fast": dict(epochs=2, batch_size=256, lr=3e-3, augment=False),
    },
    "lenet5": {
        "default": dict(epochs=10, batch_size=256, lr=4e-3, augment=True, continental=True, label_smoothing=0.1),
        "fast": dict(epochs=2, batch_size=256, lr=2e-2, augment=False, label_smoothing=0.1),
    },
}
RECIPE_NAMES = ("default", "fast")


def resolve_config(model: str, recipe: str = "default", **overrides) -> TrainConfig:
    """Recipe values, then any explicit override that is not None."""
    if model not in RECIPES:
        raise UsageError(f"Unknown model {model!r}. Choose one of: {', '.join(list_models())}.")
    if recipe not in RECIPE_NAMES:
        raise UsageError(f"Unknown recipe {recipe!r}. Choose one of: {', '.join(RECIPE_NAMES)}.")
    cfg = replace(TrainConfig(model=model, recipe=recipe), **RECIPES[model][recipe])
    known = {f.name for f in fields(TrainConfig)}
    cfg = replace(cfg, **{k: v for k, v in overrides.items() if v is not None and k in known})
    for name in ("epochs", "batch_size"):
        if getattr(cfg, name) < 1:
            raise UsageError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(cfg, name)}.")
    if not cfg.lr > 0:
        raise UsageError(f"--lr must be positive, got {cfg.lr}.")
    return cfg


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise DigitsError("--device cuda was asked for, but CUDA is not available here "
                          f"(torch {torch.__version__}, no usable GPU). Use --device cpu.")
    if device not in ("cpu", "cuda"):
        raise UsageError(f"Unknown device {device!r}. Choose auto, cpu or cuda.")
    return torch.device(device)
