"""pytest-benchmark suite: model x backend x batch size, plus one training step per model.

`make bench` times these (--benchmark-enable, JSON saved to results/); the default
`make test` runs each once with --benchmark-disable so they cannot rot. The figures in
the README come from `digits bench` and `make bench-train`, not from here.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from digits.checkpoint import load_checkpoint
from digits.bench.backends import create_backend, list_backends
from digits.models import create_model, list_models

BACKENDS = [b for b in list_backends() if create_backend(b).default and create_backend(b).available() is None
            and "cpu" in create_backend(b).devices]


@pytest.mark.benchmark(group="inference")
@pytest.mark.parametrize("batch", [1, 256])
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("model", list_models())
def test_inference(benchmark, exported, trained, test_set, model, backend, batch):
    b = create_backend(backend).load(model, "cpu", checkpoint=trained, artifacts=trained)
    x = test_set[0][:batch]
    prepared = b.prepare(x)
    out = b.logits(benchmark(b.run, prepared))
    eager, _ = load_checkpoint(trained / model)  # what the timed call must compute
    with torch.inference_mode():
        assert torch.allclose(out, eager(x), atol=1e-4)


@pytest.mark.benchmark(group="train-step")
@pytest.mark.parametrize("model", list_models())
def test_train_step(benchmark, model):
    net = create_model(model).to(memory_format=torch.channels_last).train()
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3, fused=True)
    x, y = torch.randn(256, 1, 28, 28), torch.randint(0, 10, (256,))

    def step():
        loss = F.cross_entropy(net(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss.item()

    with torch.no_grad():
        before = F.cross_entropy(net(x), y).item()
    benchmark(step)
    with torch.no_grad():  # a real step on this batch lowers its loss
        assert F.cross_entropy(net(x), y).item() < before


@pytest.mark.benchmark(group="augment")
def test_augmentation(benchmark):
    """One training batch's augmentation on the CPU (digits.augment.apply, the 1s' style included):
    in every default recipe's step, and over half as long as the MLP's forward and backward before 2026-12-01."""
    from digits import augment

    x = torch.rand(256, 1, 28, 28) * 2.8 - 0.42
    labels = torch.arange(256) % 10
    params = augment.draw(256, torch.Generator().manual_seed(0), continental=True)
    out = benchmark(augment.apply, x, params, labels)
    assert out.shape == x.shape and (out - x).abs().mean() > 0.05  # every image warped, not copied
