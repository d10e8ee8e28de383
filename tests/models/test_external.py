"""torchvision:<name> and timm:<name> (cnnlab.models.external)."""

from __future__ import annotations

import importlib.util

import pytest
from torch import nn

from cnnlab.errors import UserError
from cnnlab.models import (
    build_model,
    output_layer,
)

from .helpers import _build, _check_contract


@pytest.mark.parametrize("tv_name, shape", [("resnet18", (1, 28, 28)), ("mobilenet_v3_small", (3, 32, 32))])
def test_torchvision_prefix(tv_name, shape):
    model = _build(f"torchvision:{tv_name}", shape, k=3)
    assert isinstance(output_layer(model), nn.Linear)
    assert output_layer(model).out_features == 3
    _check_contract(model, shape, 3)


def test_torchvision_unknown_name_lists_valid_names():
    with pytest.raises(UserError, match="unknown torchvision model 'resnet_18'.*resnet18"):
        build_model({"name": "torchvision:resnet_18"}, (3, 32, 32), 10)


def test_torchvision_input_too_small_is_a_user_error():
    with pytest.raises(UserError, match="cannot process images"):
        build_model({"name": "torchvision:vit_b_32"}, (3, 32, 32), 10)


def test_timm_prefix():
    if importlib.util.find_spec("timm") is None:
        with pytest.raises(UserError, match=r"pip install 'cnnlab\[timm\]'"):
            build_model({"name": "timm:resnet18"}, (3, 32, 32), 4)
    else:
        model = _build("timm:resnet18", (3, 32, 32), k=4)
        _check_contract(model, (3, 32, 32), 4)
