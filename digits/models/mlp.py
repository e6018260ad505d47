"""``mlp``: the multilayer-perceptron baseline, fully connected layers only.

784 -> 512 -> 512 -> 10 with ReLU and dropout. With dropout and the light affine
augmentation this clears 98.5%; 1024-wide layers cost 2x the time for little gain.
"""

from torch import nn

from digits.models._registry import ModelInfo, register_model


@register_model(ModelInfo(
    name="mlp",
    description="MLP baseline: 784-512-512-10, ReLU, dropout",
    params=669_706,
    macs=668_672,
))
def mlp(hidden: int = 512, dropout: float = 0.2) -> nn.Module:
    return nn.Sequential(
        nn.Flatten(),
        nn.Linear(28 * 28, hidden), nn.ReLU(inplace=True), nn.Dropout(dropout),
        nn.Linear(hidden, hidden), nn.ReLU(inplace=True), nn.Dropout(dropout),
        nn.Linear(hidden, 10),
    )
