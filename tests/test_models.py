"""Tests of cnnlab.models: every registry entry builds, runs forward/backward, splits into
features + head, infers its layer sizes, and the presets equal the seeds' hand-written networks."""

from __future__ import annotations

import importlib.util
import warnings

import pytest
import torch
import torch.nn.functional as F
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

SHAPES = [(1, 8, 8), (3, 32, 32), (1, 28, 28)]
K = 5


def _build(name: str, shape, k: int = K, **keys) -> nn.Module:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return build_model({"name": name, **keys}, shape, k)


def _check_contract(model: nn.Module, shape, k: int) -> None:
    """forward of a batch of 2 gives (2, k), features -> head equals forward, backward works."""
    torch.manual_seed(0)
    x = torch.randn(2, *shape)
    assert isinstance(model.features, nn.Module) and isinstance(model.head, nn.Module)
    model.train()
    out = model(x)
    assert out.shape == (2, k)
    F.cross_entropy(out, torch.tensor([0, k - 1])).backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert grads and all(g is not None for g in grads)
    assert any(g.abs().sum() > 0 for g in grads)
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(model.head(model.features(x)), model(x))


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


def test_unknown_model_name_lists_names():
    with pytest.raises(UserError, match="Valid model names: cnn, mlp"):
        build_model({"name": "lenet"}, (1, 28, 28), 10)


# -------------------------------------------------------------------------------- cnn / mlp
def test_cnn_shape_inference_odd_sizes_and_per_block_kernels():
    model = _build("cnn", (3, 37, 29), channels=[8, 16], kernel_size=[3, 5], hidden=[32])
    assert model.features[0].conv.kernel_size == (3, 3)
    assert model.features[1].conv.kernel_size == (5, 5)
    assert model.features[1].conv.padding == (2, 2)
    # 37x29 -> pool -> 18x14 -> pool -> 9x7; 16 * 9 * 7 = 1008 inputs to the first Linear
    assert model.head.fc0.in_features == 16 * 9 * 7
    _check_contract(model, (3, 37, 29), K)


def test_cnn_global_pool_makes_head_size_independent_of_image_size():
    small = _build("cnn", (3, 16, 16), channels=[8, 16], global_pool=True, hidden=[])
    large = _build("cnn", (3, 40, 24), channels=[8, 16], global_pool=True, hidden=[])
    assert small.head.out.in_features == large.head.out.in_features == 16
    _check_contract(large, (3, 40, 24), K)


def test_cnn_too_small_input_is_a_clear_error():
    with pytest.raises(UserError, match="too small for 4 conv blocks"):
        build_model({"name": "cnn", "channels": [4, 4, 4, 4]}, (1, 8, 8), 2)


def test_cnn_block_order_conv_bias_and_dropout_layout():
    m = _build("cnn", (1, 16, 16), channels=[4, 8], block_order="conv-pool-act", activation="tanh")
    assert [n for n, _ in m.features[0].named_children()] == ["conv", "bn", "pool", "act"]
    assert m.features[0].conv.bias is None  # auto: no bias before batchnorm
    assert isinstance(m.features[0].act, nn.Tanh)
    m = _build("cnn", (1, 16, 16), channels=[4], batchnorm=False, pool="avg", activation="prelu")
    assert [n for n, _ in m.features[0].named_children()] == ["conv", "act", "pool"]
    assert m.features[0].conv.bias is not None and isinstance(m.features[0].pool, nn.AvgPool2d)
    m = _build("cnn", (1, 16, 16), channels=[4], pool="none", hidden=[16, 8], dropout=0.5)
    assert [n for n, _ in m.head.named_children()] == [
        "flatten", "dropout0", "fc0", "act0", "dropout1", "fc1", "act1", "dropout", "out",
    ]
    assert m.head.fc0.in_features == 4 * 16 * 16
    m = _build("cnn", (1, 16, 16), channels=[4], hidden=[16], dropout=0.5, dropout_on_features=False)
    assert [n for n, _ in m.head.named_children()] == ["flatten", "fc0", "act0", "dropout", "out"]


def test_cnn_module_names_are_stable_for_checkpoints():
    keys = set(_build("cnn", (3, 32, 32)).state_dict())
    assert {"features.0.conv.weight", "features.0.bn.running_mean", "features.2.conv.weight",
            "head.fc0.weight", "head.out.weight", "head.out.bias"} <= keys
    assert not any("relu" in k for k in keys)


def test_mlp_seed002_baseline_and_linear_classifier():
    m = _build("mlp", (1, 28, 28), k=10)
    assert count_parameters(m) == (784 * 500 + 500 + 500 * 10 + 10,) * 2
    linear = _build("mlp", (1, 28, 28), k=10, hidden_layers=0)
    assert [type(c) for c in linear.features.children()] == [nn.Flatten]
    assert count_parameters(linear)[0] == 784 * 10 + 10
    _check_contract(linear, (1, 28, 28), 10)
    deep = _build("mlp", (1, 8, 8), hidden_layers=3, hidden_size=16, dropout=0.2, activation="gelu")
    assert sum(isinstance(c, nn.Dropout) for c in deep.modules()) == 3
    _check_contract(deep, (1, 8, 8), K)


# ---------------------------------------------------------------------------------- presets
class Network1(nn.Module):
    """Seed 000's network_1, as written there (FLATTEN_SIZE_1 for 32x32 RGB input)."""

    def __init__(self, flatten_size: int = 100 * 4 * 4, num_classes: int = 10):
        super().__init__()
        self.flatten_size = flatten_size
        self.convolutional1 = nn.Conv2d(3, 25, kernel_size=3, stride=1, padding=1)
        self.maxpool1 = nn.MaxPool2d(kernel_size=2, stride=2, padding=0)
        self.relu1 = nn.ReLU()
        self.convolutional2 = nn.Conv2d(25, 50, kernel_size=3, stride=1, padding=1)
        self.maxpool2 = nn.MaxPool2d(kernel_size=2, stride=2, padding=0)
        self.relu2 = nn.ReLU()
        self.convolutional3 = nn.Conv2d(50, 100, kernel_size=3, stride=1, padding=1)
        self.maxpool3 = nn.MaxPool2d(kernel_size=2, stride=2, padding=0)
        self.relu3 = nn.ReLU()
        self.linear1 = nn.Linear(flatten_size, 100)
        self.relu4 = nn.ReLU()
        self.linear2 = nn.Linear(100, num_classes)
        self.softmax1 = nn.Softmax(dim=1)

    def forward(self, x):
        x = self.relu1(self.maxpool1(self.convolutional1(x)))
        x = self.relu2(self.maxpool2(self.convolutional2(x)))
        x = self.relu3(self.maxpool3(self.convolutional3(x)))
        x = x.view(-1, self.flatten_size)
        x = self.relu4(self.linear1(x))
        return self.softmax1(self.linear2(x))


class CustomCNN(nn.Module):
    """Seed 001's CustomCNN, as written there."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 3, padding=1)
        self.conv2 = nn.Conv2d(64, 128, 3, padding=1)
        self.conv3 = nn.Conv2d(128, 256, 3, padding=1)
        self.pool = nn.MaxPool2d(2, 2)
        self.fc1 = nn.Linear(256 * 4 * 4, 1024)
        self.fc2 = nn.Linear(1024, 10)
        self.dropout = nn.Dropout(0.4)
        self.batchnorm1 = nn.BatchNorm2d(64)
        self.batchnorm2 = nn.BatchNorm2d(128)
        self.batchnorm3 = nn.BatchNorm2d(256)

    def forward(self, x):
        x = self.pool(F.relu(self.batchnorm1(self.conv1(x))))
        x = self.pool(F.relu(self.batchnorm2(self.conv2(x))))
        x = self.pool(F.relu(self.batchnorm3(self.conv3(x))))
        x = x.view(-1, 256 * 4 * 4)
        x = self.dropout(F.relu(self.fc1(x)))
        return self.fc2(x)


def _copy_weights(seed_model: nn.Module, ours: nn.Module, mapping: dict[str, str]) -> None:
    """Copy the seed model's state into ours: ``mapping`` maps seed prefixes to our prefixes."""
    src = seed_model.state_dict()
    dst = ours.state_dict()
    moved = {}
    for key, value in src.items():
        prefix, rest = key.split(".", 1)
        target = f"{mapping[prefix]}.{rest}"
        assert dst[target].shape == value.shape, target
        moved[target] = value
    assert set(moved) == set(dst)
    ours.load_state_dict(moved)


def test_seed000_net1_equals_seed_network_1():
    torch.manual_seed(1)
    seed = Network1().eval()
    with pytest.warns(UserWarning, match="softmax"):
        ours = build_model({"name": "seed000_net1", "softmax_output": True}, (3, 32, 32), 10).eval()
    assert count_parameters(ours) == count_parameters(seed)
    assert count_parameters(ours)[0] == (3 * 25 * 9 + 25) + (25 * 50 * 9 + 50) + (50 * 100 * 9 + 100) + (1600 * 100 + 100) + (100 * 10 + 10)
    _copy_weights(seed, ours, {
        "convolutional1": "features.0.conv", "convolutional2": "features.1.conv",
        "convolutional3": "features.2.conv", "linear1": "head.fc0", "linear2": "head.out",
    })
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), seed(x))
    assert [n for n, _ in ours.features[0].named_children()] == ["conv", "pool", "act"]


def test_seed001_cnn_equals_seed_custom_cnn():
    torch.manual_seed(2)
    seed = CustomCNN()
    ours = build_model({"name": "seed001_cnn"}, (3, 32, 32), 10)
    assert count_parameters(ours) == count_parameters(seed) == (4_577_290, 4_577_290)
    # make the batch-norm running statistics non-trivial before comparing in eval mode
    seed.train()
    with torch.no_grad():
        seed(torch.randn(8, 3, 32, 32))
    seed.eval()
    ours.eval()
    _copy_weights(seed, ours, {
        "conv1": "features.0.conv", "conv2": "features.1.conv", "conv3": "features.2.conv",
        "batchnorm1": "features.0.bn", "batchnorm2": "features.1.bn", "batchnorm3": "features.2.bn",
        "fc1": "head.fc0", "fc2": "head.out",
    })
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), seed(x))
    assert isinstance(ours.head.dropout, nn.Dropout) and ours.head.dropout.p == 0.4


def test_presets_take_only_output_and_init_keys():
    with pytest.raises(UserError, match="unknown key 'model.channels'"):
        build_model({"name": "seed001_cnn", "channels": [8]}, (3, 32, 32), 10)


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


# -------------------------------------------------------------------------------- resnet18
def test_resnet18_stems():
    small = _build("resnet18", (3, 32, 32), k=10)
    assert small.features.conv1.kernel_size == (3, 3) and small.features.conv1.stride == (1, 1)
    assert small.features.conv1.bias is None
    assert isinstance(small.features.maxpool, nn.Identity)
    large = _build("resnet18", (3, 96, 96), k=10)
    assert large.features.conv1.kernel_size == (7, 7) and large.features.conv1.stride == (2, 2)
    assert isinstance(large.features.maxpool, nn.MaxPool2d)
    forced = _build("resnet18", (3, 96, 96), k=10, cifar_stem=True)
    assert forced.features.conv1.kernel_size == (3, 3)
    gray = _build("resnet18", (1, 28, 28), k=10)
    assert gray.features.conv1.in_channels == 1
    # seed 001's CIFAR ResNet-18: 11,173,962 with a 3x3 stem; 10-class fc 512*10+10
    assert count_parameters(small)[0] == 11_173_962
    with torch.no_grad():
        assert small.eval().features(torch.zeros(1, 3, 32, 32)).shape == (1, 512)
    dropped = _build("resnet18", (3, 32, 32), dropout=0.3)
    assert isinstance(dropped.head.dropout, nn.Dropout) and isinstance(dropped.head.out, nn.Linear)


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


# ------------------------------------------------------------------------------------ airbench
def _correlated_images(n=64, c=3, size=16, seed=0):
    """Smooth random images: neighbouring pixels and channels strongly correlated, like photos."""
    g = torch.Generator().manual_seed(seed)
    base = torch.rand(n, 1, size // 4, size // 4, generator=g)
    x = F.interpolate(base, size=(size, size), mode="bilinear", align_corners=False)
    x = x.repeat(1, c, 1, 1) + 0.05 * torch.randn(n, c, size, size, generator=g)
    return (x - x.mean()) / x.std()


def test_airbench_whitening_init_decorrelates_patches():
    from cnnlab.models import patch_second_moment

    model = _build("airbench", (3, 16, 16), 10, widths=[8, 8])
    x = _correlated_images()
    raw = patch_second_moment(x, 2)  # (12, 12)
    off = raw - torch.diag(torch.diag(raw))
    assert off.abs().max() > 0.5 * torch.diag(raw).min()  # the input really is correlated
    model.init_from_data(x)
    w = model.whiten.weight  # (24, 3, 2, 2): 12 filters and their negatives
    assert w.shape == (24, 3, 2, 2) and not w.requires_grad
    torch.testing.assert_close(w[12:], -w[:12])
    with torch.no_grad():
        out = F.conv2d(x, w[:12])  # (N, 12, 15, 15): the whitened patches (bias left out)
    flat = out.permute(0, 2, 3, 1).reshape(-1, 12).double()
    cov = flat.T @ flat / len(flat)
    eig = torch.linalg.eigvalsh(raw)
    # Output covariance = diag(l / (l + eps)): identity in the directions with variance >> eps,
    # and nothing off the diagonal.
    diag = torch.diag(cov)
    torch.testing.assert_close(torch.sort(diag).values, torch.sort(eig / (eig + 5e-4)).values, rtol=1e-4, atol=1e-6)
    assert (cov - torch.diag(diag)).abs().max() < 1e-6


def test_airbench_whitening_samples_every_part_of_a_class_ordered_split(monkeypatch):
    """whiten_samples images spread over the whole split: in a split ordered by class (an image
    folder), the first ones would all be one class (CIFAR-10's first 5,000: airplanes)."""
    import cnnlab.models as models

    seen = []
    real = models.patch_second_moment
    monkeypatch.setattr(models, "patch_second_moment", lambda x, k: seen.append(x.clone()) or real(x, k))
    model = _build("airbench", (3, 8, 8), 2, widths=[4], whiten_samples=10)
    x = torch.cat([torch.zeros(50, 3, 8, 8), torch.ones(50, 3, 8, 8)])  # class 0 dark, then class 1 bright
    model.init_from_data(x)
    (used,) = seen
    assert len(used) == 10 and used[:, 0, 0, 0].tolist() == [0.0] * 5 + [1.0] * 5


def test_airbench_init_from_uint8_with_normalizer_equals_float_path():
    from cnnlab.augment import Normalizer

    g = torch.Generator().manual_seed(1)
    x = torch.randint(0, 256, (20, 3, 8, 8), dtype=torch.uint8, generator=g)
    norm = Normalizer((0.5, 0.4, 0.3), (0.2, 0.25, 0.3), torch.device("cpu"))
    a, b = _build("airbench", (3, 8, 8), 4), _build("airbench", (3, 8, 8), 4)
    a.init_from_data(x, norm)
    b.init_from_data(norm(x))
    torch.testing.assert_close(a.whiten.weight, b.whiten.weight)
    with pytest.raises(UserError, match="normalizer"):
        a.init_from_data(x)


def test_airbench_layout_matches_airbench94():
    model = _build("airbench", (3, 32, 32), 10)
    names = [n for n, _ in model.features.named_children()]
    assert names == ["whiten", "act", "group1", "group2", "group3", "pool", "flatten"]
    assert [n for n, _ in model.features.group1.named_children()] == [
        "conv1", "pool", "norm1", "act1", "conv2", "norm2", "act2"]
    bn = model.features.group1.norm1
    assert bn.momentum == pytest.approx(0.4) and bn.eps == 1e-12 and not bn.weight.requires_grad and bn.bias.requires_grad
    assert model.head.out.bias is None and model.head.scale.factor == pytest.approx(1 / 9)
    x = torch.randn(2, 3, 32, 32)
    # 32 -> whiten 31 -> 15 -> 7 -> 3 -> global max (airbench's MaxPool2d(3)) -> 256
    assert model.features[:5](x).shape == (2, 256, 3, 3)
    assert output_layer(model) is model.head.out
    total, trainable = count_parameters(model)
    assert total - trainable == 24 * 3 * 2 * 2 + 64 + 64 + 4 * 256  # frozen whitening and BatchNorm weights
