"""pytest-benchmark suite: eager inference and one training step per model.

`make bench` times these (--benchmark-enable, JSON saved to results/); the default
`make test` runs each once with --benchmark-disable so they cannot rot. Performance
figures for the README come from `digits bench` / `make bench-train`, not from here.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from digits.models import create_model, list_models


@pytest.mark.benchmark(group="eager-inference")
@pytest.mark.parametrize("batch", [1, 256])
@pytest.mark.parametrize("name", list_models())
def test_eager_inference(benchmark, name, batch):
    model = create_model(name).eval()
    x = torch.randn(batch, 1, 28, 28)
    with torch.inference_mode():
        out = benchmark(model, x)
    assert out.shape == (batch, 10)


@pytest.mark.benchmark(group="train-step")
@pytest.mark.parametrize("name", list_models())
def test_train_step(benchmark, name):
    model = create_model(name).to(memory_format=torch.channels_last).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, fused=True)
    x, y = torch.randn(256, 1, 28, 28), torch.randint(0, 10, (256,))

    def step():
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss.item()

    assert benchmark(step) > 0
