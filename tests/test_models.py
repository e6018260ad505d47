"""Every registered model: shapes, and declared metadata equal to the real module."""

from __future__ import annotations

import pytest
import torch

from digits.errors import UsageError
from digits.models import (
    count_macs,
    count_params,
    create_model,
    list_models,
    model_info,
    predict_proba,
)


def test_registry_has_the_three_models():
    assert set(list_models()) >= {"mlp", "cnn", "lenet5"}


@pytest.mark.parametrize("name", list_models())
@pytest.mark.parametrize("batch", [1, 7])
def test_output_is_logits_of_shape_n_by_10(name, batch):
    model = create_model(name).eval()
    assert model(torch.randn(batch, *model_info(name).input_shape)).shape == (batch, 10)


@pytest.mark.parametrize("name", list_models())
def test_declared_params_equal_module(name):
    assert model_info(name).params == count_params(create_model(name))


@pytest.mark.parametrize("name", list_models())
def test_declared_macs_equal_module(name):
    assert model_info(name).macs == count_macs(create_model(name))


def test_lenet5_matches_the_paper_size():
    assert count_params(create_model("lenet5")) == 61_706  # ~61.7k as in LeCun et al. 1998


def test_mac_counter_counts_a_known_layer():
    layer = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(784, 10))
    assert count_macs(layer) == 7840


@pytest.mark.parametrize("name", list_models())
def test_predict_proba_is_a_distribution(name):
    p = predict_proba(create_model(name).eval(), torch.randn(3, 1, 28, 28))
    assert torch.allclose(p.sum(1), torch.ones(3)) and (p >= 0).all()


def test_unknown_model_lists_choices():
    with pytest.raises(UsageError, match="mlp, cnn, lenet5"):
        create_model("resnet")
