"""cnn, mlp, resnet18 and the seed presets (cnnlab.models.convnets), checked against the seeds' own code."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from cnnlab.errors import UserError
from cnnlab.models import (
    NORM_TYPES,
    PRESETS,
    CNNParams,
    build_model,
    count_parameters,
    describe_models,
    has_running_stats,
)

from .helpers import K, _build, _check_contract


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


# --------------------------------------------------------------------------- cnn norms (issue 17)
# norm -> (layer type, child name in a block, GroupNorm groups for channels [4, 8] with norm_groups = 2)
NORM_LAYOUT = {
    "batch": (nn.BatchNorm2d, "bn", None),
    "group": (nn.GroupNorm, "norm", [2, 2]),
    "layer": (nn.GroupNorm, "norm", [1, 1]),
    "instance": (nn.GroupNorm, "norm", [4, 8]),
}
# block_order -> children of a block (N = the norm's child name), and whether auto keeps the conv bias
ORDER_LAYOUT = {
    "conv-bn-act-pool": (["conv", "N", "act", "pool"], False),
    "conv-act-bn-pool": (["conv", "act", "N", "pool"], True),
    "conv-pool-act": (["conv", "N", "pool", "act"], False),
}


@pytest.mark.parametrize("shape", [(3, 16, 16), (1, 8, 8)])
@pytest.mark.parametrize("norm", [*NORM_LAYOUT, "none"])
def test_cnn_every_norm_builds_and_trains(norm, shape):
    m = _build("cnn", shape, channels=[4, 8], hidden=[16], norm=norm, norm_groups=2)
    _check_contract(m, shape, K)
    norms = [c for c in m.features.modules() if isinstance(c, NORM_TYPES)]
    assert len(norms) == (0 if norm == "none" else 2)


@pytest.mark.parametrize("order", list(ORDER_LAYOUT))
@pytest.mark.parametrize("norm", list(NORM_LAYOUT))
def test_cnn_norm_type_and_place_in_a_block_follow_the_config(norm, order):
    layer_type, child, groups = NORM_LAYOUT[norm]
    names, conv_bias = ORDER_LAYOUT[order]
    m = _build("cnn", (3, 16, 16), channels=[4, 8], norm=norm, norm_groups=2, block_order=order)
    for i, block in enumerate(m.features):
        assert [n for n, _ in block.named_children()] == [child if n == "N" else n for n in names]
        layer = getattr(block, child)
        assert type(layer) is layer_type and layer.weight.shape == layer.bias.shape == (block.conv.out_channels,)
        if groups is not None:
            assert layer.num_groups == groups[i]
        assert (block.conv.bias is not None) == conv_bias  # auto: no bias when the norm directly follows the conv
        assert has_running_stats(layer) == (norm == "batch")
    _check_contract(m, (3, 16, 16), K)
    # An explicit conv_bias wins over auto.
    assert _build("cnn", (3, 16, 16), channels=[4], norm=norm, block_order=order, conv_bias=True,
                  norm_groups=2).features[0].conv.bias is not None


def test_cnn_without_norm_leaves_it_out_of_every_order():
    for order in ORDER_LAYOUT:
        m = _build("cnn", (1, 8, 8), channels=[4], norm="none", block_order=order)
        assert [n for n, _ in m.features[0].named_children()] == [n for n in ORDER_LAYOUT[order][0] if n != "N"]
        assert m.features[0].conv.bias is not None


def test_instance_norm_computes_what_instancenorm2d_does():
    torch.manual_seed(0)
    m = _build("cnn", (3, 16, 16), channels=[4], norm="instance")
    ours = m.features[0].norm
    with torch.no_grad():
        ours.weight.uniform_(0.5, 2.0)
        ours.bias.uniform_(-1.0, 1.0)
    ref = nn.InstanceNorm2d(4, affine=True)
    ref.load_state_dict(ours.state_dict())
    x = torch.randn(2, 4, 8, 8)
    for mode in (True, False):  # the same in train and eval mode: no running statistics
        ours.train(mode), ref.train(mode)
        torch.testing.assert_close(ours(x), ref(x))


def test_layer_norm_normalizes_each_image_over_channels_and_pixels():
    m = _build("cnn", (3, 16, 16), channels=[4], norm="layer", block_order="conv-bn-act-pool")
    x = torch.randn(2, 4, 8, 8) * 3 + 1
    y = m.features[0].norm(x)  # weight 1, bias 0 at init
    torch.testing.assert_close(y, F.layer_norm(x, (4, 8, 8)))


def test_group_norm_groups_must_divide_every_block():
    with pytest.raises(UserError, match=r"norm_groups = 8 does not divide the 12 channels of block 1 \(channels\[1\]\)") as e:
        build_model({"name": "cnn", "channels": [8, 12], "norm": "group", "norm_groups": 8}, (3, 16, 16), 2)
    assert "channels = [8, 12]: 1, 2, 4" in str(e.value)  # the values that would fit
    # The default (32 groups, Wu & He) against seed 000's channels.
    with pytest.raises(UserError, match="norm_groups = 32 does not divide the 25 channels of block 0.*: 1, 5, 25"):
        build_model({"name": "cnn", "channels": [25, 50, 100], "norm": "group"}, (3, 32, 32), 2)
    # Only group norm reads norm_groups.
    _build("cnn", (3, 16, 16), channels=[8, 12], norm="layer", norm_groups=8)


def test_batchnorm_is_shorthand_for_norm():
    def layout(**keys):
        m = _build("cnn", (3, 16, 16), channels=[4, 8], **keys)
        return [(n, type(c), tuple(c.state_dict())) for n, c in m.named_modules()]

    assert layout(batchnorm=True) == layout(norm="batch") == layout() == layout(batchnorm=True, norm="batch")
    assert layout(batchnorm=False) == layout(norm="none") == layout(batchnorm=False, norm="none")
    assert layout(batchnorm=False) != layout()
    for bn, norm in ((False, "group"), (True, "none"), (True, "layer"), (False, "batch")):
        with pytest.raises(UserError, match=f"batchnorm = {str(bn).lower()} .*contradicts norm = '{norm}'"):
            build_model({"name": "cnn", "batchnorm": bn, "norm": norm}, (3, 16, 16), 2)
    # Folded into norm on load: the resolved keys hold norm alone and validate again as the same model.
    p = CNNParams(batchnorm=False)
    assert (p.norm, p.batchnorm) == ("none", None)
    resolved = {k: v for k, v in p.model_dump().items() if v is not None}
    assert "batchnorm" not in resolved and CNNParams.model_validate(resolved) == p
    assert CNNParams.model_validate({**resolved, "norm": "layer"}).norm == "layer"


def test_cnn_default_state_dict_keys_are_those_of_the_batchnorm_only_cnn():
    """The keys (and their order) a default cnn had before norm existed: old checkpoints load."""
    m = _build("cnn", (3, 16, 16), k=3, channels=[4, 8], hidden=[6])
    assert list(m.state_dict()) == [
        "features.0.conv.weight", "features.0.bn.weight", "features.0.bn.bias", "features.0.bn.running_mean",
        "features.0.bn.running_var", "features.0.bn.num_batches_tracked",
        "features.1.conv.weight", "features.1.bn.weight", "features.1.bn.bias", "features.1.bn.running_mean",
        "features.1.bn.running_var", "features.1.bn.num_batches_tracked",
        "head.fc0.weight", "head.fc0.bias", "head.out.weight", "head.out.bias",
    ]
    assert all(type(b.bn) is nn.BatchNorm2d and b.conv.bias is None for b in m.features)
    # seed 000's order without a norm keeps its conv bias; with one the bias goes (as before).
    m = _build("cnn", (3, 16, 16), k=3, channels=[4], hidden=[6], batchnorm=False, block_order="conv-pool-act")
    assert list(m.state_dict()) == ["features.0.conv.weight", "features.0.conv.bias", "head.fc0.weight",
                                    "head.fc0.bias", "head.out.weight", "head.out.bias"]
    assert PRESETS["seed000_net1"][0].norm == "none" and PRESETS["seed001_cnn"][0].norm == "batch"


def test_cnnlab_models_lists_the_norm_keys_with_their_values():
    keys = next(k for name, _, k in describe_models() if name == "cnn")
    assert keys["norm"] == ('"batch" | "group" | "layer" | "instance" | "none"', "batch")
    assert keys["norm_groups"] == ("int", 32)
    assert keys["block_order"] == ('"conv-bn-act-pool" | "conv-act-bn-pool" | "conv-pool-act"', "conv-bn-act-pool")
    assert "batchnorm" in keys
