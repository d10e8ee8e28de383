"""The model registry and build_model (cnnlab.models._builder): every entry builds and keeps the
contract; keys, softmax output and init; the layer helpers."""

from __future__ import annotations

import warnings

import pytest
import torch
from pydantic import ValidationError
from torch import nn

from cnnlab.config import ModelConfig
from cnnlab.errors import UserError
from cnnlab.models import (
    MODELS,
    CNNParams,
    ImageClassifier,
    MLPParams,
    ResNetParams,
    build_model,
    count_parameters,
    describe_models,
    output_layer,
    replace_output_layer,
)

from .helpers import SHAPES, K, _build, _check_contract

# --------------------------------------------------------------------------- whole registry
REGISTRY_NAMES = [e.name for e in MODELS if not e.prefix]


CASES = [
    (name, shape)
    for name in REGISTRY_NAMES
    for shape in SHAPES
    # ResNet-18 keeps full resolution with the CIFAR stem: 28x28 adds nothing over 32x32 but seconds
    if not (name == "resnet18" and shape == (1, 28, 28))
]


@pytest.mark.parametrize("name, shape", CASES, ids=[f"{n}-{'x'.join(map(str, s))}" for n, s in CASES])
def test_every_registered_model_builds_and_runs(name, shape):
    model = _build(name, shape)
    assert isinstance(model, ImageClassifier)
    assert model.softmax_output is False
    _check_contract(model, shape, K)


def test_registry_has_the_documented_entries():
    assert set(MODELS.names()) >= {
        "cnn", "mlp", "resnet18", "torchvision:<name>", "timm:<name>", "seed000_net1", "seed001_cnn",
    }


def test_unknown_model_name_lists_names():
    with pytest.raises(UserError, match="Valid model names: cnn, mlp"):
        build_model({"name": "lenet"}, (1, 28, 28), 10)


# -------------------------------------------------------------------- softmax, init, params
def test_softmax_output_warns_and_rows_sum_to_one():
    with pytest.warns(UserWarning, match="applies softmax.*cross-entropy.*probabilities"):
        model = build_model({"name": "cnn", "channels": [4], "softmax_output": True}, (1, 8, 8), 3)
    assert model.softmax_output is True
    out = model(torch.randn(5, 1, 8, 8))
    torch.testing.assert_close(out.sum(dim=1), torch.ones(5))
    assert (out >= 0).all()


def test_no_warning_without_softmax_output():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        build_model({"name": "cnn", "channels": [4]}, (1, 8, 8), 3)


def test_init_changes_weight_std():
    stds = {}
    for init in ("default", "kaiming", "xavier"):
        torch.manual_seed(0)
        m = _build("cnn", (3, 16, 16), channels=[64], hidden=[256], init=init)
        stds[init] = (m.features[0].conv.weight.std().item(), m.head.fc0.weight.std().item())
        if init != "default":
            assert torch.count_nonzero(m.head.fc0.bias) == 0
    fan_in_conv, fan_in_fc = 3 * 9, 64 * 8 * 8
    assert stds["kaiming"][0] == pytest.approx((2 / fan_in_conv) ** 0.5, rel=0.15)
    assert stds["kaiming"][1] == pytest.approx((2 / fan_in_fc) ** 0.5, rel=0.05)
    assert stds["xavier"][1] == pytest.approx((2 / (fan_in_fc + 256)) ** 0.5, rel=0.05)
    for a, b in (("default", "kaiming"), ("default", "xavier"), ("kaiming", "xavier")):
        assert abs(stds[a][0] - stds[b][0]) / stds[a][0] > 0.2, (a, b, stds)
    assert abs(stds["default"][1] - stds["kaiming"][1]) / stds["default"][1] > 0.2


@pytest.mark.parametrize("keys, match", [
    ({"channels": "abc"}, "list of positive integers"),
    ({"channels": [8, 8, 8], "kernel_size": [3, 3]}, "kernel_size has 2 values but channels has 3"),
    ({"activation": "swish"}, "'relu', 'leaky_relu', 'prelu', 'elu', 'gelu', 'sigmoid' or 'tanh'"),
    ({"pool": "min"}, "'max', 'avg' or 'none'"),
    ({"dropout": 1.5}, "less than 1"),
    ({"channels": [8, 0]}, "greater than 0"),
    ({"channels": []}, "at least 1"),
    ({"relu1": True}, "Extra inputs are not permitted"),
])
def test_cnn_params_validation(keys, match):
    with pytest.raises(ValidationError, match=match):
        CNNParams.model_validate(keys)


def test_invalid_keys_through_build_model_are_user_errors_listing_keys():
    with pytest.raises(UserError, match=r"model\.activation: .*'relu'.*Keys of model 'cnn': name, .*channels"):
        build_model({"name": "cnn", "activation": "swish"}, (1, 8, 8), 2)
    with pytest.raises(UserError, match="unknown key 'model.hidden'"):
        build_model({"name": "mlp", "hidden": [3]}, (1, 8, 8), 2)
    with pytest.raises(ValidationError):
        MLPParams(hidden_layers=-1)
    with pytest.raises(ValidationError):
        ResNetParams(cifar_stem="maybe")


def test_build_model_accepts_model_config():
    cfg = ModelConfig.model_validate({"name": "cnn", "channels": [4, 8], "hidden": []})
    model = build_model(cfg, (1, 8, 8), 2)
    assert model.head.out.in_features == 8 * 2 * 2


# ------------------------------------------------------------------------- helpers and CLI
def test_count_parameters_trainable():
    model = _build("mlp", (1, 8, 8), hidden_size=10)
    total, trainable = count_parameters(model)
    assert total == trainable == 64 * 10 + 10 + 10 * K + K
    for p in model.features.parameters():
        p.requires_grad_(False)
    assert count_parameters(model) == (total, 10 * K + K)


def test_replace_output_layer():
    model = _build("torchvision:squeezenet1_1", (3, 32, 32), k=10)  # a conv output layer
    assert isinstance(output_layer(model), nn.Conv2d)
    new = replace_output_layer(model, 4)
    assert output_layer(model) is new and new.out_channels == 4
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 4)
    cnn = _build("cnn", (1, 8, 8), channels=[4])
    replace_output_layer(cnn, 7)
    assert cnn.head.out.out_features == 7


def test_describe_models():
    rows = {name: (summary, keys) for name, summary, keys in describe_models()}
    assert set(rows) == set(MODELS.names())
    summary, keys = rows["cnn"]
    assert summary
    assert keys["channels"] == ("list[int]", [32, 64, 128])
    assert keys["pool"] == ('"max" | "avg" | "none"', "max")
    assert keys["kernel_size"] == ("int | list[int]", 3)
    assert set(rows["seed001_cnn"][1]) == {"softmax_output", "init"}
    assert "options" in rows["torchvision:<name>"][1]
