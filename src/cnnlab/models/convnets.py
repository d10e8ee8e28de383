"""The convolutional and fully connected models built from lists in config: ``cnn`` (conv blocks +
dense head), ``mlp``, ``resnet18`` (torchvision's, with a CIFAR stem for small images) and the
presets ``seed000_net1`` and ``seed001_cnn`` (the seeds' networks, exactly).
"""

from __future__ import annotations

import functools
import math
from collections import OrderedDict
from typing import Annotated, Any, Callable, Literal

import torch
from pydantic import Field, field_validator, model_validator
from torch import nn

from ..errors import UserError
from ._builder import MODELS, Depth, Kernel, ModelParams, Width
from .layers import (ACTIVATIONS, BLOCK_ORDERS, NORMS, POOLS, ActivationName, BlockOrder, ImageClassifier, NormName,
                     PoolName, dry_run)


class CNNParams(ModelParams):
    """Keys of the ``cnn`` model (and the fixed values of the presets)."""

    channels: list[Width] = Field([32, 64, 128], min_length=1, max_length=Depth, description="output channels of each conv block")
    kernel_size: Kernel | list[Kernel] = Field(3, description="conv kernel size, one for all blocks or one per block")
    padding: Literal["same", "valid"] | Annotated[int, Field(ge=0, le=1_024)] = Field(
        "same", description="conv padding: same = kernel_size // 2, valid = 0, or a number of pixels"
    )
    pool: PoolName = Field("max", description="pooling after each block: max or avg (2x2, stride 2), or none")
    activation: ActivationName = Field("relu", description="activation function of conv blocks and hidden layers")
    norm: NormName = Field(
        "batch", description="normalization in each block: batch (BatchNorm2d), group (GroupNorm, norm_groups groups), "
        "layer (each image over C, H, W), instance (each image and channel over H, W), none"
    )
    norm_groups: Width = Field(32, description="groups of norm = group; must divide every block's channels")
    batchnorm: bool | None = Field(
        None, description="shorthand: true = norm 'batch', false = norm 'none'; folded into norm on load"
    )
    conv_bias: Literal["auto"] | bool = Field("auto", description="conv bias; auto = no bias when the norm directly follows the conv")
    block_order: BlockOrder = Field(
        "conv-bn-act-pool", description="layer order in a block, bn = the chosen norm; conv-pool-act is seed 000's conv -> pool -> act"
    )
    global_pool: bool = Field(False, description="adaptive average pool to 1x1 before the head")
    hidden: list[Width] = Field([128], max_length=Depth, description="sizes of the hidden fully connected layers")
    dropout: float = Field(0.0, ge=0.0, lt=1.0, description="dropout probability before each Linear of the head")
    dropout_on_features: bool = Field(
        True, description="also drop out the flattened features before the first Linear; false = only after hidden layers (seed 001)"
    )

    @field_validator("channels", "hidden", mode="before")
    @classmethod
    def _list_not_str(cls, v: Any) -> Any:
        if isinstance(v, str):
            raise ValueError(f"must be a list of positive integers, for example [32, 64], not the string {v!r}")
        return v

    @model_validator(mode="after")
    def _lengths_match(self) -> CNNParams:
        if isinstance(self.kernel_size, list) and len(self.kernel_size) != len(self.channels):
            raise ValueError(
                f"kernel_size has {len(self.kernel_size)} values but channels has {len(self.channels)} blocks; "
                "give one kernel size per block or a single number"
            )
        return self

    @model_validator(mode="after")
    def _norm_choice(self) -> CNNParams:
        """Fold the ``batchnorm`` shorthand into ``norm`` and unset it, so a saved config holds ``norm``
        alone and an override of ``norm`` later does not contradict it; check group norm's groups."""
        if self.batchnorm is not None:
            implied: NormName = "batch" if self.batchnorm else "none"
            if "norm" in self.model_fields_set and self.norm != implied:
                raise ValueError(
                    f"batchnorm = {str(self.batchnorm).lower()} (shorthand for norm = {implied!r}) contradicts "
                    f"norm = {self.norm!r}; give only norm"
                )
            self.norm, self.batchnorm = implied, None
        if self.norm == "group":
            for i, c in enumerate(self.channels):
                if c % self.norm_groups:
                    common = math.gcd(*self.channels)
                    fits = [g for g in range(1, common + 1) if common % g == 0]
                    raise ValueError(
                        f"norm_groups = {self.norm_groups} does not divide the {c} channels of block {i} (channels[{i}]); "
                        f"group norm splits each block's channels into norm_groups equal groups. Values that divide "
                        f"every block of channels = {list(self.channels)}: {', '.join(map(str, fits))}"
                    )
        return self

    def kernel_sizes(self) -> list[int]:
        """One kernel size per block."""
        ks = self.kernel_size
        return list(ks) if isinstance(ks, list) else [ks] * len(self.channels)


class MLPParams(ModelParams):
    """Keys of the ``mlp`` model."""

    hidden_layers: int = Field(1, ge=0, le=Depth, description="number of hidden layers (0 = a linear classifier)")
    hidden_size: Width = Field(500, description="units per hidden layer")
    activation: ActivationName = Field("relu", description="activation after each hidden layer")
    dropout: float = Field(0.0, ge=0.0, lt=1.0, description="dropout before each Linear except the first")


class ResNetParams(ModelParams):
    """Keys of the ``resnet18`` model."""

    dropout: float = Field(0.0, ge=0.0, lt=1.0, description="dropout before the final Linear")
    cifar_stem: Literal["auto"] | bool = Field(
        "auto", description="3x3 stride-1 first conv and no max pool; auto = when height and width <= 64"
    )


class PresetParams(ModelParams):
    """Keys of the fixed-architecture presets (only the output and the init can change)."""



def _cnn_block(params: CNNParams, in_ch: int, out_ch: int, k: int) -> nn.Sequential:
    """(in_ch, H, W) -> (out_ch, H', W'): conv, norm, act and pool in ``block_order`` (norm and pool
    left out when "none"); the norm is named by its ``Norm.child`` ("bn" for batch norm)."""
    padding = {"same": k // 2, "valid": 0}.get(params.padding, params.padding)  # type: ignore[arg-type]
    norm = NORMS[params.norm]
    makers: dict[str, Callable[[], nn.Module] | None] = {
        "norm": functools.partial(norm.make, out_ch, params.norm_groups) if norm is not None else None,
        "act": ACTIVATIONS[params.activation],
        "pool": POOLS[params.pool],
    }
    order = [t for t in BLOCK_ORDERS[params.block_order] if t == "conv" or makers[t] is not None]
    # auto: no conv bias when the norm comes right after the conv; its per-channel shift takes the
    # bias's place (batch and instance norm subtract each channel's mean, which cancels a bias exactly).
    norm_follows = order[order.index("conv") + 1:order.index("conv") + 2] == ["norm"]
    bias = not norm_follows if params.conv_bias == "auto" else bool(params.conv_bias)
    makers["conv"] = functools.partial(nn.Conv2d, in_ch, out_ch, kernel_size=k, padding=padding, bias=bias)
    names = {"norm": norm.child} if norm is not None else {}
    return nn.Sequential(OrderedDict((names.get(t, t), make()) for t in order if (make := makers[t]) is not None))


def _dense_head(
    in_features: int, hidden: list[int], num_classes: int, activation: str, dropout: float, dropout_first: bool
) -> nn.Sequential:
    """(N, ...) -> flatten -> [dropout] Linear act ... [dropout] Linear ``out`` -> (N, num_classes)."""
    layers: OrderedDict[str, nn.Module] = OrderedDict(flatten=nn.Flatten())
    width = in_features
    for i, size in enumerate(hidden):
        if dropout > 0 and (i > 0 or dropout_first):
            layers[f"dropout{i}"] = nn.Dropout(dropout)
        layers[f"fc{i}"] = nn.Linear(width, size)
        layers[f"act{i}"] = ACTIVATIONS[activation]()
        width = size
    if dropout > 0 and (hidden or dropout_first):
        layers["dropout"] = nn.Dropout(dropout)
    layers["out"] = nn.Linear(width, num_classes)
    return nn.Sequential(layers)


@MODELS.register("cnn", params=CNNParams, summary="conv blocks (conv, norm, activation, pool) + fully connected head")
def build_cnn(params: CNNParams, input_shape: tuple[int, int, int], num_classes: int) -> ImageClassifier:
    """Conv blocks from ``params.channels``; the head's input size comes from a dry run.

    features: (N, C, H, W) -> (N, channels[-1], H', W') (H' = W' = 1 with global_pool);
    head: flatten -> hidden Linear layers -> ``head.out`` Linear -> (N, num_classes).
    """
    blocks: OrderedDict[str, nn.Module] = OrderedDict()
    in_ch = input_shape[0]
    for i, (out_ch, k) in enumerate(zip(params.channels, params.kernel_sizes())):
        blocks[str(i)] = _cnn_block(params, in_ch, out_ch, k)
        in_ch = out_ch
    if params.global_pool:
        blocks["global_pool"] = nn.AdaptiveAvgPool2d(1)  # (C, H', W') -> (C, 1, 1)
    features = nn.Sequential(blocks)
    try:
        feat_shape = dry_run(features, input_shape)
    except RuntimeError as e:
        raise UserError(
            f"model 'cnn': input of shape {tuple(input_shape)} is too small for {len(params.channels)} conv blocks "
            f"(kernel sizes {params.kernel_sizes()}, padding {params.padding!r}, pool {params.pool!r}): "
            f"{str(e).splitlines()[0]}. Use fewer channels entries, padding = 'same', pool = 'none' "
            "or larger images (data.image_size)."
        ) from None
    if min(feat_shape) < 1:
        raise UserError(f"model 'cnn': the conv blocks shrink input {tuple(input_shape)} to {tuple(feat_shape)}.")
    head = _dense_head(
        int(torch.Size(feat_shape).numel()), list(params.hidden), num_classes,
        params.activation, params.dropout, params.dropout_on_features,
    )
    return ImageClassifier(features, head)


@MODELS.register("mlp", params=MLPParams, summary="flatten + fully connected hidden layers (seed 002: 784-500-10)")
def build_mlp(params: MLPParams, input_shape: tuple[int, int, int], num_classes: int) -> ImageClassifier:
    """features: (N, C, H, W) -> flatten (N, C*H*W) -> hidden layers -> (N, hidden_size);
    head: [dropout] -> ``head.out`` Linear -> (N, num_classes)."""
    layers: OrderedDict[str, nn.Module] = OrderedDict(flatten=nn.Flatten())
    width = int(torch.Size(input_shape).numel())
    for i in range(params.hidden_layers):
        if params.dropout > 0 and i > 0:
            layers[f"dropout{i}"] = nn.Dropout(params.dropout)
        layers[f"fc{i}"] = nn.Linear(width, params.hidden_size)
        layers[f"act{i}"] = ACTIVATIONS[params.activation]()
        width = params.hidden_size
    head: OrderedDict[str, nn.Module] = OrderedDict()
    if params.dropout > 0 and params.hidden_layers > 0:
        head["dropout"] = nn.Dropout(params.dropout)
    head["out"] = nn.Linear(width, num_classes)
    return ImageClassifier(nn.Sequential(layers), nn.Sequential(head))


@MODELS.register("resnet18", params=ResNetParams, summary="torchvision ResNet-18, CIFAR stem for images up to 64x64")
def build_resnet18(params: ResNetParams, input_shape: tuple[int, int, int], num_classes: int) -> ImageClassifier:
    """ResNet-18 without pretrained weights (seed 001's CIFAR variant for small images).

    features: conv1, bn1, relu, maxpool, layer1..layer4, avgpool, flatten: (N, C, H, W) -> (N, 512);
    head: [dropout] -> ``head.out`` Linear(512, num_classes).
    """
    import torchvision

    c, h, w = input_shape
    net = torchvision.models.resnet18(weights=None, num_classes=num_classes)
    cifar = (h <= 64 and w <= 64) if params.cifar_stem == "auto" else bool(params.cifar_stem)
    if cifar:  # (C, 32, 32) -> (64, 32, 32): keep the resolution of small images
        net.conv1 = nn.Conv2d(c, 64, kernel_size=3, stride=1, padding=1, bias=False)
        net.maxpool = nn.Identity()
    elif c != 3:  # ImageNet stem for other channel counts: (C, H, W) -> (64, H/2, W/2)
        net.conv1 = nn.Conv2d(c, 64, kernel_size=7, stride=2, padding=3, bias=False)
    nn.init.kaiming_normal_(net.conv1.weight, mode="fan_out", nonlinearity="relu")  # torchvision's conv init
    names = ["conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4", "avgpool"]
    features = nn.Sequential(OrderedDict([(n, getattr(net, n)) for n in names] + [("flatten", nn.Flatten())]))
    head: OrderedDict[str, nn.Module] = OrderedDict()
    if params.dropout > 0:
        head["dropout"] = nn.Dropout(params.dropout)
    head["out"] = net.fc
    return ImageClassifier(features, nn.Sequential(head))


PRESETS: dict[str, tuple[CNNParams, str]] = {
    # seed 000, network_1: conv 3x3 pad 1 (25, 50, 100 maps), each conv -> maxpool 2x2 -> ReLU,
    # FC 100 + ReLU, Linear K; no batchnorm, no dropout. 3x32x32 -> 100x4x4 = 1600 -> 100 -> K.
    "seed000_net1": (
        CNNParams(
            channels=[25, 50, 100], kernel_size=3, padding="same", pool="max", activation="relu",
            norm="none", conv_bias=True, block_order="conv-pool-act", hidden=[100], dropout=0.0,
        ),
        "seed 000's network_1: conv 25/50/100 -> maxpool -> ReLU, FC 100, no batchnorm",
    ),
    # seed 001, CustomCNN: conv 3x3 pad 1 (64, 128, 256; bias kept) + BatchNorm + ReLU + maxpool 2x2,
    # FC 1024 + ReLU + Dropout(0.4), Linear K. 3x32x32 -> 256x4x4 = 4096 -> 1024 -> K.
    "seed001_cnn": (
        CNNParams(
            channels=[64, 128, 256], kernel_size=3, padding="same", pool="max", activation="relu",
            norm="batch", conv_bias=True, block_order="conv-bn-act-pool", hidden=[1024], dropout=0.4,
            dropout_on_features=False,
        ),
        "seed 001's CustomCNN: conv 64/128/256 + batchnorm + ReLU + maxpool, FC 1024, dropout 0.4",
    ),
}


def _build_preset(preset: str, params: PresetParams, input_shape: tuple[int, int, int], num_classes: int) -> ImageClassifier:
    """The ``cnn`` builder with the preset's fixed CNNParams (softmax_output and init from config)."""
    fixed = PRESETS[preset][0].model_copy(update={"softmax_output": params.softmax_output, "init": params.init})
    return build_cnn(fixed, input_shape, num_classes)


for _name, (_, _summary) in PRESETS.items():
    MODELS.add(_name, functools.partial(_build_preset, _name), params=PresetParams, summary=_summary)

