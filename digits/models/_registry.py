"""The model registry: ``@register_model`` on a builder, ``create_model``, ``list_models``.

Metadata travels with the model (as in torchvision.models): input shape, normalization,
parameter count and multiply-accumulates per image. Tests check the declared counts
against the real module, so the numbers stay honest.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch
from torch import nn

from digits.data import INPUT_SHAPE, MEAN, STD
from digits.errors import UsageError


@dataclass(frozen=True)
class ModelInfo:
    name: str
    description: str
    params: int  # declared; tests assert == sum(p.numel())
    macs: int  # multiply-accumulates per image, declared; tests assert == count_macs()
    input_shape: tuple[int, int, int] = INPUT_SHAPE
    mean: float = MEAN
    std: float = STD

    def to_dict(self) -> dict:
        return asdict(self)


_REGISTRY: dict[str, tuple[ModelInfo, Callable[..., nn.Module]]] = {}


def register_model(info: ModelInfo):
    def wrap(builder: Callable[..., nn.Module]):
        _REGISTRY[info.name] = (info, builder)
        return builder
    return wrap


def list_models() -> list[str]:
    """Our models in ``NAMES`` order, whichever file was imported first, then any registered elsewhere."""
    from digits.models import NAMES

    return [n for n in NAMES if n in _REGISTRY] + [n for n in _REGISTRY if n not in NAMES]


def model_info(name: str) -> ModelInfo:
    return _lookup(name)[0]


def create_model(name: str, **kwargs) -> nn.Module:
    return _lookup(name)[1](**kwargs)


def _lookup(name: str):
    if name not in _REGISTRY:
        raise UsageError(f"Unknown model {name!r}. Choose one of: {', '.join(list_models())}.")
    return _REGISTRY[name]


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def count_macs(model: nn.Module, input_shape: tuple[int, ...] = INPUT_SHAPE) -> int:
    """Multiply-accumulates of one forward pass on one image: conv and linear layers only.

    Pooling, activations and bias adds are not MACs and are left out, as is usual.
    """
    total = 0

    def conv(m: nn.Conv2d, _inp, out):
        nonlocal total
        k = m.in_channels // m.groups * m.kernel_size[0] * m.kernel_size[1]
        total += out[0].numel() * k

    def linear(m: nn.Linear, _inp, out):
        nonlocal total
        total += out[0].numel() * m.in_features

    hooks = [m.register_forward_hook(conv if isinstance(m, nn.Conv2d) else linear)
             for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    try:
        was_training = model.training
        model.eval()
        with torch.no_grad():
            model(torch.zeros(1, *input_shape))
        model.train(was_training)
    finally:
        for h in hooks:
            h.remove()
    return total


def predict_proba(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Softmax probabilities for inference; the models themselves return logits."""
    return torch.softmax(model(x), dim=-1)
