"""``lenet5``: LeNet-5 (LeCun et al. 1998), 61,706 parameters.

Two 5x5 convolutions (6 and 16 channels) each followed by 2x2 subsampling, then fully
connected 120 and 84 and a 10-way output. The 28x28 input is zero-padded to the paper's
32x32 by the first convolution's padding. Modern choices, as in most re-implementations:
ReLU instead of scaled tanh, max instead of trainable average subsampling, full C3
connectivity instead of the paper's sparse table, and a linear output instead of RBF
units. Pooling comes before the ReLU: the two commute, and it is cheaper.
"""

from torch import nn

from digits.models._registry import ModelInfo, register_model


@register_model(ModelInfo(
    name="lenet5",
    description="LeNet-5: conv5x5x6, pool, conv5x5x16, pool, fc 120, 84, 10",
    params=61_706,
    macs=416_520,
))
def lenet5() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 6, 5, padding=2), nn.MaxPool2d(2), nn.ReLU(inplace=True),  # 28 -> 14
        nn.Conv2d(6, 16, 5), nn.MaxPool2d(2), nn.ReLU(inplace=True),  # 10 -> 5
        nn.Flatten(),
        nn.Linear(16 * 5 * 5, 120), nn.ReLU(inplace=True),
        nn.Linear(120, 84), nn.ReLU(inplace=True),
        nn.Linear(84, 10),
    )
