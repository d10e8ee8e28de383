"""Model zoo: every architecture is built from config values, never from hard-coded sizes.

Each registry entry is a builder ``builder(params, input_shape, num_classes) -> ImageClassifier``
(prefix entries also get ``name=`` the part after the prefix). Every model it returns has

* ``model.features``: ``nn.Module``, images ``(N, C, H, W)`` -> feature tensor,
* ``model.head``: ``nn.Module``, features -> logits ``(N, num_classes)``,
* ``model.forward(x) == head(features(x))``, followed by ``softmax(dim=1)`` when
  ``model.softmax_output`` is true (the seeds' output layer; see :func:`build_model`).

Layer sizes after the convolutions are inferred with a dry run on a zero tensor of the input
shape, so any image size works as long as the pooling layers leave at least one pixel.

A model may define ``init_from_data(x, normalize)``: the runner calls it right after building with
the training split's images (uint8 (N, C, H, W)) and the run's Normalizer, for initialisations
computed from data (``airbench``'s whitening layer). It is not called when a checkpoint is loaded.

Entries: ``cnn`` (conv blocks + fully connected head), ``mlp``, ``resnet18`` (CIFAR stem for small
images), ``airbench`` (airbench94's fast CIFAR-10 net), ``torchvision:<name>``, ``timm:<name>`` (optional extra) and the presets
``seed000_net1`` and ``seed001_cnn`` (the seeds' networks, exactly).
"""

from __future__ import annotations

import functools
import json
import types
import warnings
from collections import OrderedDict
from typing import Annotated, Any, Callable, Literal, Mapping, Union, get_args, get_origin

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, PositiveInt, ValidationError, field_validator, model_validator
from torch import nn

from .config import ModelConfig, _validation_message, entry_params
from .errors import UserError
from .registry import Registry

MODELS: Registry[Callable[..., nn.Module]] = Registry("model")

# ------------------------------------------------------------------------------ building blocks
ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "relu": nn.ReLU,
    "leaky_relu": nn.LeakyReLU,
    "prelu": nn.PReLU,
    "elu": nn.ELU,
    "gelu": nn.GELU,
    "sigmoid": nn.Sigmoid,
    "tanh": nn.Tanh,
}
ActivationName = Literal["relu", "leaky_relu", "prelu", "elu", "gelu", "sigmoid", "tanh"]

# 2x2 windows with stride 2: (C, H, W) -> (C, H // 2, W // 2); "none" keeps the size.
POOLS: dict[str, Callable[[], nn.Module] | None] = {
    "max": lambda: nn.MaxPool2d(kernel_size=2, stride=2),
    "avg": lambda: nn.AvgPool2d(kernel_size=2, stride=2),
    "none": None,
}
PoolName = Literal["max", "avg", "none"]

# The order of the layers inside one conv block; "bn" is skipped without batchnorm, "pool" with
# pool = "none". conv-pool-act is seed 000's order (conv -> maxpool -> ReLU).
BLOCK_ORDERS: dict[str, tuple[str, ...]] = {
    "conv-bn-act-pool": ("conv", "bn", "act", "pool"),
    "conv-pool-act": ("conv", "bn", "pool", "act"),
}
BlockOrder = Literal["conv-bn-act-pool", "conv-pool-act"]


def _init_kaiming(m: nn.Module) -> None:
    if isinstance(m, (nn.Conv2d, nn.Linear)):
        nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
        if m.bias is not None:
            nn.init.zeros_(m.bias)


def _init_xavier(m: nn.Module) -> None:
    if isinstance(m, (nn.Conv2d, nn.Linear)):
        nn.init.xavier_uniform_(m.weight)
        if m.bias is not None:
            nn.init.zeros_(m.bias)


# Weight initialisation applied to every Conv2d and Linear (biases zeroed); "default" keeps the
# layers' own initialisation (PyTorch's, or the torchvision/timm model's).
INITS: dict[str, Callable[[nn.Module], None] | None] = {
    "default": None,
    "kaiming": _init_kaiming,
    "xavier": _init_xavier,
}
InitName = Literal["default", "kaiming", "xavier"]

assert set(get_args(ActivationName)) == set(ACTIVATIONS)
assert set(get_args(PoolName)) == set(POOLS)
assert set(get_args(BlockOrder)) == set(BLOCK_ORDERS)
assert set(get_args(InitName)) == set(INITS)

SOFTMAX_WARNING = (
    "model.softmax_output = true: the output layer applies softmax, so the cross-entropy loss "
    "(which applies log-softmax itself) sees probabilities instead of logits. This reproduces "
    "seeds 000/002 but squashes the gradients and usually trains slower and worse; metrics use "
    "the model's output directly as class probabilities. Set softmax_output = false for logits."
)


class ImageClassifier(nn.Module):
    """``forward(x) = head(features(x))``, then softmax over classes if ``softmax_output``."""

    def __init__(self, features: nn.Module, head: nn.Module, softmax_output: bool = False) -> None:
        super().__init__()
        self.features = features
        self.head = head
        self.softmax_output = softmax_output

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.head(self.features(x))  # (N, K) logits
        return out.softmax(dim=1) if self.softmax_output else out


class RepeatChannels(nn.Module):
    """(N, 1, H, W) -> (N, channels, H, W) by repeating the single channel (grayscale -> RGB)."""

    def __init__(self, channels: int = 3) -> None:
        super().__init__()
        self.channels = channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.expand(-1, self.channels, -1, -1) if x.shape[1] == 1 else x

    def extra_repr(self) -> str:
        return f"channels={self.channels}"


class Backbone(nn.Module):
    """A library model used as ``features``: optional channel repeat, then ``body``."""

    def __init__(self, body: nn.Module, repeat_to: int | None = None) -> None:
        super().__init__()
        self.repeat = RepeatChannels(repeat_to) if repeat_to else nn.Identity()
        self.body = body

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(self.repeat(x))


# ------------------------------------------------------------------------------------- helpers
def _dry_run(module: nn.Module, input_shape: tuple[int, ...]) -> torch.Size:
    """Output shape (without the batch dimension) of ``module`` on one zero image, in eval mode
    so batch-norm statistics are left untouched."""
    was_training = module.training
    module.eval()
    try:
        with torch.no_grad():
            out = module(torch.zeros(1, *input_shape))
    finally:
        module.train(was_training)
    return out.shape[1:]


def _check_input_shape(input_shape: Any) -> tuple[int, int, int]:
    shape = tuple(int(s) for s in input_shape)
    if len(shape) != 3 or min(shape) < 1:
        raise UserError(f"input_shape must be (channels, height, width) of positive sizes, got {input_shape!r}.")
    return shape  # type: ignore[return-value]


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """``(total, trainable)`` numbers of parameters (shared parameters counted once)."""
    params = list(model.parameters())
    return sum(p.numel() for p in params), sum(p.numel() for p in params if p.requires_grad)


def output_layer(model: nn.Module) -> nn.Module:
    """The last ``nn.Linear`` (or, for squeezenet-like heads, ``nn.Conv2d``) of ``model.head``:
    the layer that produces the class scores."""
    last = None
    for m in model.head.modules():
        if isinstance(m, (nn.Linear, nn.Conv2d)):
            last = m
    if last is None:
        raise UserError(f"{type(model).__name__}: no Linear output layer found in model.head.")
    return last


def replace_output_layer(model: nn.Module, num_classes: int) -> nn.Module:
    """Replace the head's output layer with a fresh one for ``num_classes`` classes (transfer
    learning). Returns the new layer."""
    old = output_layer(model)
    for parent in [model.head, *model.head.modules()]:
        for name, child in parent.named_children():
            if child is old:
                if isinstance(old, nn.Linear):
                    new: nn.Module = nn.Linear(old.in_features, num_classes, bias=old.bias is not None)
                else:
                    new = nn.Conv2d(old.in_channels, num_classes, old.kernel_size, old.stride, old.padding,
                                    bias=old.bias is not None)
                setattr(parent, name, new)
                return new
    if model.head is old:
        new = nn.Linear(old.in_features, num_classes, bias=old.bias is not None)  # type: ignore[union-attr]
        model.head = new
        return new
    raise UserError("could not locate the output layer's parent module in model.head.")


# ------------------------------------------------------------------------------- param models
class _Params(BaseModel):
    model_config = ConfigDict(extra="forbid")

    softmax_output: bool = Field(
        False, description="apply softmax in the output layer (seeds 000/002); cross-entropy then sees probabilities"
    )
    init: InitName = Field("default", description="weight init of Conv2d/Linear layers: default, kaiming or xavier")


class CNNParams(_Params):
    """Keys of the ``cnn`` model (and the fixed values of the presets)."""

    channels: list[PositiveInt] = Field([32, 64, 128], min_length=1, description="output channels of each conv block")
    kernel_size: PositiveInt | list[PositiveInt] = Field(3, description="conv kernel size, one for all blocks or one per block")
    padding: Literal["same", "valid"] | Annotated[int, Field(ge=0)] = Field(
        "same", description="conv padding: same = kernel_size // 2, valid = 0, or a number of pixels"
    )
    pool: PoolName = Field("max", description="pooling after each block: max or avg (2x2, stride 2), or none")
    activation: ActivationName = Field("relu", description="activation function of conv blocks and hidden layers")
    batchnorm: bool = Field(True, description="BatchNorm2d right after each conv")
    conv_bias: Literal["auto"] | bool = Field("auto", description="conv bias; auto = no bias when batchnorm follows")
    block_order: BlockOrder = Field(
        "conv-bn-act-pool", description="layer order in a block; conv-pool-act is seed 000's conv -> pool -> act"
    )
    global_pool: bool = Field(False, description="adaptive average pool to 1x1 before the head")
    hidden: list[PositiveInt] = Field([128], description="sizes of the hidden fully connected layers")
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

    def kernel_sizes(self) -> list[int]:
        """One kernel size per block."""
        ks = self.kernel_size
        return list(ks) if isinstance(ks, list) else [ks] * len(self.channels)


class MLPParams(_Params):
    """Keys of the ``mlp`` model."""

    hidden_layers: int = Field(1, ge=0, description="number of hidden layers (0 = a linear classifier)")
    hidden_size: PositiveInt = Field(500, description="units per hidden layer")
    activation: ActivationName = Field("relu", description="activation after each hidden layer")
    dropout: float = Field(0.0, ge=0.0, lt=1.0, description="dropout before each Linear except the first")


class ResNetParams(_Params):
    """Keys of the ``resnet18`` model."""

    dropout: float = Field(0.0, ge=0.0, lt=1.0, description="dropout before the final Linear")
    cifar_stem: Literal["auto"] | bool = Field(
        "auto", description="3x3 stride-1 first conv and no max pool; auto = when height and width <= 64"
    )


class TorchvisionParams(_Params):
    """Keys of ``torchvision:<name>`` models."""

    options: dict[str, Any] = Field(
        {}, description="extra keyword arguments of torchvision.models.get_model, e.g. {dropout = 0.3}"
    )


class TimmParams(_Params):
    """Keys of ``timm:<name>`` models."""

    options: dict[str, Any] = Field({}, description="extra keyword arguments of timm.create_model, e.g. {drop_rate = 0.2}")


class PresetParams(_Params):
    """Keys of the fixed-architecture presets (only the output and the init can change)."""


# ------------------------------------------------------------------------------------------ cnn
def _cnn_block(params: CNNParams, in_ch: int, out_ch: int, k: int) -> nn.Sequential:
    """(in_ch, H, W) -> (out_ch, H', W'): conv [-> bn] -> act/pool in ``block_order``."""
    padding = {"same": k // 2, "valid": 0}.get(params.padding, params.padding)  # type: ignore[arg-type]
    bias = (not params.batchnorm) if params.conv_bias == "auto" else bool(params.conv_bias)
    pool = POOLS[params.pool]
    makers: dict[str, Callable[[], nn.Module] | None] = {
        "conv": lambda: nn.Conv2d(in_ch, out_ch, kernel_size=k, padding=padding, bias=bias),
        "bn": (lambda: nn.BatchNorm2d(out_ch)) if params.batchnorm else None,
        "act": ACTIVATIONS[params.activation],
        "pool": pool,
    }
    return nn.Sequential(
        OrderedDict((name, make()) for name in BLOCK_ORDERS[params.block_order] if (make := makers[name]) is not None)
    )


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


@MODELS.register("cnn", params=CNNParams, summary="conv blocks (conv, batchnorm, activation, pool) + fully connected head")
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
        feat_shape = _dry_run(features, input_shape)
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


# ------------------------------------------------------------------------------------------ mlp
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


# ------------------------------------------------------------------------------------- resnet18
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


# ------------------------------------------------------------------------------------- airbench
class AirbenchParams(_Params):
    """Keys of the ``airbench`` model (KellerJordan/cifar10-airbench, airbench94)."""

    widths: list[PositiveInt] = Field([64, 256, 256], min_length=1, description="output channels of each conv group")
    whiten_kernel: PositiveInt = Field(2, description="kernel of the whitening conv (no padding); it has 2*C*k*k outputs")
    whiten_eps: float = Field(5e-4, gt=0, description="added to the patch covariance's eigenvalues before the inverse square root")
    whiten_samples: PositiveInt = Field(5000, description="training images whose patches init_from_data uses")
    bn_momentum: float = Field(0.6, gt=0, lt=1, description="BatchNorm running-stat decay, airbench's convention (PyTorch momentum = 1 - this)")
    bn_eps: float = Field(1e-12, gt=0, description="BatchNorm epsilon")
    bn_weight: bool = Field(False, description="train the BatchNorm weights (airbench keeps them at 1; biases are trained)")
    scale: float = Field(1 / 9, gt=0, description="multiplier of the bias-free output layer's logits")
    whiten_bias_epochs: int | None = Field(3, ge=0, description="epochs the whitening conv's bias trains before it is "
                                           "frozen (airbench: 3); none = it trains for the whole run")

    @field_validator("widths", mode="before")
    @classmethod
    def _list_not_str(cls, v: Any) -> Any:
        if isinstance(v, str):
            raise ValueError(f"must be a list of positive integers, for example [64, 256, 256], not the string {v!r}")
        return v


class _DiracConv(nn.Conv2d):
    """3x3 'same' conv without bias whose first in_channels filters start as the identity (dirac),
    the others with PyTorch's default init (airbench's Conv)."""

    def reset_parameters(self) -> None:
        super().reset_parameters()
        w = self.weight.data  # (out, in, k, k)
        nn.init.dirac_(w[:min(w.size(0), w.size(1))])


class Scale(nn.Module):
    """x -> x * factor (airbench's Mul: the 1/9 on the logits)."""

    def __init__(self, factor: float) -> None:
        super().__init__()
        self.factor = factor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.factor

    def extra_repr(self) -> str:
        return f"factor={self.factor:.4g}"


def _airbench_bn(width: int, p: AirbenchParams) -> nn.BatchNorm2d:
    bn = nn.BatchNorm2d(width, eps=p.bn_eps, momentum=1 - p.bn_momentum)
    bn.weight.requires_grad_(p.bn_weight)
    return bn


def _airbench_group(c_in: int, c_out: int, pool: bool, p: AirbenchParams) -> nn.Sequential:
    """(c_in, H, W) -> (c_out, H/2, W/2): conv-pool-bn-gelu + conv-bn-gelu (no 2x2 pool where the
    map is already 1 pixel, so the model also builds for tiny images)."""
    layers: OrderedDict[str, nn.Module] = OrderedDict(conv1=_DiracConv(c_in, c_out, 3, padding="same", bias=False))
    if pool:
        layers["pool"] = nn.MaxPool2d(2)
    layers.update(norm1=_airbench_bn(c_out, p), act1=nn.GELU(),
                  conv2=_DiracConv(c_out, c_out, 3, padding="same", bias=False),
                  norm2=_airbench_bn(c_out, p), act2=nn.GELU())
    return nn.Sequential(layers)


def patch_second_moment(x: torch.Tensor, k: int, chunk: int = 256) -> torch.Tensor:
    """E[p p^T] over every k x k patch p (stride 1, flattened to C*k*k) of the images x (N, C, H, W)
    float: the (uncentered) patch covariance of airbench's whitening init, (C*k*k, C*k*k) float64,
    accumulated over chunks of images so memory stays small."""
    d = x.shape[1] * k * k
    acc, n = torch.zeros(d, d, dtype=torch.float64, device=x.device), 0
    for i in range(0, len(x), chunk):
        patches = F.unfold(x[i:i + chunk].double(), k).transpose(1, 2).reshape(-1, d)  # (B*L, C*k*k)
        acc += patches.T @ patches
        n += patches.shape[0]
    return acc / max(n, 1)


class AirbenchNet(ImageClassifier):
    """airbench94's network: ``features`` = whiten (k x k conv, no padding, 2*C*k*k outputs, frozen) ->
    GELU -> conv groups -> global max pool -> flatten; ``head`` = bias-free Linear ``out`` -> Scale."""

    def __init__(self, features: nn.Module, head: nn.Module, params: AirbenchParams) -> None:
        super().__init__(features, head)
        self.params = params

    @property
    def whiten(self) -> nn.Conv2d:
        return self.features.whiten

    def on_epoch_start(self, epoch: int) -> None:
        """Called by the engine before each epoch (``epoch`` = completed epochs): from epoch
        ``whiten_bias_epochs`` on, the whitening bias stops training (airbench). Only ever freezes,
        so a bias that transfer learning froze stays frozen."""
        n = self.params.whiten_bias_epochs
        if n is not None and epoch >= n:
            self.whiten.bias.requires_grad_(False)

    @torch.no_grad()
    def init_from_data(self, x: torch.Tensor, normalize: Callable[[torch.Tensor], torch.Tensor] | None = None) -> None:
        """Whitening init (the runner calls this right after building, with the training split):
        from ``whiten_samples`` images spread evenly over x (N, C, H, W) (uint8 passed through ``normalize``,
        or float already normalized), the k x k patch covariance's eigenvectors v_i and eigenvalues
        l_i give the filters v_i / sqrt(l_i + eps) and their negatives (so GELU keeps both signs).
        The layer's outputs on patches then have (nearly) identity covariance: decorrelated."""
        w = self.whiten.weight  # (2*C*k*k, C, k, k)
        # whiten_samples images spread evenly over the split, not its first ones: a split can be
        # ordered by class (an image folder is: CIFAR-10's first 5,000 are all airplanes), while
        # airbench's first 5,000 of the official shuffled order hold every class.
        n = len(x)
        x = x[torch.linspace(0, n - 1, min(n, self.params.whiten_samples)).round().long()] if n else x
        if not x.is_floating_point():
            if normalize is None:
                raise UserError("airbench.init_from_data: uint8 images need the normalizer of the training data.")
            x = torch.cat([normalize(x[i:i + 256]) for i in range(0, len(x), 256)])
        x = x.to(w.device)
        cov = patch_second_moment(x, w.shape[-1])
        eigenvalues, eigenvectors = torch.linalg.eigh(cov)  # ascending; columns are eigenvectors
        filters = (eigenvectors.T / torch.sqrt(eigenvalues.clamp(min=0) + self.params.whiten_eps)[:, None]).flip(0)
        filters = filters.reshape(-1, *w.shape[1:]).to(w.dtype)  # (C*k*k, C, k, k), largest eigenvalue first
        w.copy_(torch.cat([filters, -filters]))


@MODELS.register("airbench", params=AirbenchParams,
                 summary="airbench94 (CIFAR-10 speedrun net): frozen whitening conv (init_from_data) + conv groups with BatchNorm/GELU")
def build_airbench(params: AirbenchParams, input_shape: tuple[int, int, int], num_classes: int) -> AirbenchNet:
    """features: (N, C, H, W) -> whiten (2*C*k*k, H-k+1, W-k+1) -> GELU -> groups (widths[i], halving
    the size while it is >= 2) -> adaptive max pool (1x1; airbench's MaxPool2d(3) on 32x32) -> (N, widths[-1]);
    head: Linear(widths[-1], K, bias=False) -> x scale."""
    c, h, w = input_shape
    k = params.whiten_kernel
    if h < k or w < k:
        raise UserError(f"model 'airbench': images {tuple(input_shape)} are smaller than whiten_kernel = {k}.")
    whiten = nn.Conv2d(c, 2 * c * k * k, k, padding=0, bias=True)
    nn.init.zeros_(whiten.bias)
    whiten.weight.requires_grad_(False)  # set by init_from_data, never trained (airbench)
    layers: OrderedDict[str, nn.Module] = OrderedDict(whiten=whiten, act=nn.GELU())
    size, c_in = min(h, w) - k + 1, 2 * c * k * k
    for i, width in enumerate(params.widths):
        layers[f"group{i + 1}"] = _airbench_group(c_in, width, size >= 2, params)
        size, c_in = (size // 2 if size >= 2 else size), width
    layers.update(pool=nn.AdaptiveMaxPool2d(1), flatten=nn.Flatten())
    head = nn.Sequential(OrderedDict(out=nn.Linear(c_in, num_classes, bias=False), scale=Scale(params.scale)))
    return AirbenchNet(nn.Sequential(layers), head, params)


# ---------------------------------------------------------------------------------- torchvision
CLASSIFIER_ATTRS = ("fc", "classifier", "head", "heads")

# get_model keyword defaults that make a model return plain logits in training mode too.
TORCHVISION_DEFAULT_OPTIONS: dict[str, dict[str, Any]] = {
    "googlenet": {"aux_logits": False, "init_weights": True},
    "inception_v3": {"aux_logits": False, "init_weights": True},
}


def _split_classifier(net: nn.Module, model_name: str) -> tuple[nn.Module, nn.Module]:
    """Detach the classifier attribute (the last of ``fc``/``classifier``/``head``/``heads`` that
    holds a Linear, else the last present) from ``net``: returns (net with Identity there, classifier)."""
    present = [a for a in CLASSIFIER_ATTRS if isinstance(getattr(net, a, None), nn.Module)]
    with_linear = [a for a in present if any(isinstance(m, nn.Linear) for m in getattr(net, a).modules())]
    chosen = (with_linear or present or [None])[-1]
    if chosen is None:
        raise UserError(f"model {model_name!r}: no classifier attribute ({', '.join(CLASSIFIER_ATTRS)}) to split off.")
    clf = getattr(net, chosen)
    if chosen not in with_linear and isinstance(getattr(net, "features", None), nn.Module):
        # A convolutional classifier (squeezenet): the model flattens after it, so its body is
        # net.features (N, C, H, W) -> (N, 512, h, w) and the head flattens (N, K, 1, 1) -> (N, K).
        return net.features, nn.Sequential(OrderedDict(classifier=clf, flatten=nn.Flatten()))
    setattr(net, chosen, nn.Identity())
    return net, clf


def _finish_library_model(
    features: nn.Module, head: nn.Module, input_shape: tuple[int, int, int], model_name: str
) -> ImageClassifier:
    """Dry-run features and head so a bad input size fails now with a clear message."""
    try:
        feat_shape = _dry_run(features, input_shape)
        out_shape = _dry_run(head, tuple(feat_shape))
    except (RuntimeError, AssertionError, ValueError) as e:
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise UserError(f"model {model_name!r} cannot process images of shape {tuple(input_shape)}: {msg}.") from None
    if len(out_shape) != 1:
        raise UserError(f"model {model_name!r}: its head returns shape {tuple(out_shape)}, expected (num_classes,).")
    return ImageClassifier(features, head)


@MODELS.register(
    "torchvision:", prefix=True, params=TorchvisionParams,
    summary="any torchvision.models classification model, random init (e.g. torchvision:mobilenet_v3_small)",
)
def build_torchvision(
    params: TorchvisionParams, input_shape: tuple[int, int, int], num_classes: int, *, name: str
) -> ImageClassifier:
    """``torchvision.models.get_model(name, weights=None, num_classes=K)`` split into features
    (the model with its classifier replaced by Identity; 1-channel images repeated to 3) and head."""
    import torchvision

    valid = torchvision.models.list_models(module=torchvision.models)
    if name not in valid:
        close = [v for v in valid if v.split("_")[0] in name or name.split("_")[0] in v][:12]
        shown = close or valid[:20]
        raise UserError(
            f"unknown torchvision model {name!r}. Some valid names: {', '.join(shown)} "
            f"({len(valid)} in all; see torchvision.models.list_models())."
        )
    options = {**TORCHVISION_DEFAULT_OPTIONS.get(name, {}), **params.options}
    try:
        net = torchvision.models.get_model(name, weights=None, num_classes=num_classes, **options)
    except TypeError as e:
        raise UserError(f"model 'torchvision:{name}': bad options {params.options!r}: {e}.") from None
    c = input_shape[0]
    if c not in (1, 3):
        raise UserError(f"model 'torchvision:{name}' takes 1- or 3-channel images, got {c} channels.")
    body, clf = _split_classifier(net, f"torchvision:{name}")
    features = Backbone(body, repeat_to=3 if c == 1 else None)  # (N, C, H, W) -> (N, D) pooled features
    return _finish_library_model(features, clf, input_shape, f"torchvision:{name}")


# ----------------------------------------------------------------------------------------- timm
TIMM_MISSING = "timm models need the optional extra: pip install 'cnnlab[timm]'"


@MODELS.register(
    "timm:", prefix=True, params=TimmParams,
    summary="any timm model, random init (needs the optional extra cnnlab[timm])",
)
def build_timm(params: TimmParams, input_shape: tuple[int, int, int], num_classes: int, *, name: str) -> ImageClassifier:
    """``timm.create_model(name, pretrained=False, num_classes=K, in_chans=C)``: features = the
    model with its classifier reset (forward_features + pooling, pre-logits), head = the classifier."""
    try:
        import timm
    except ImportError:
        raise UserError(TIMM_MISSING + f" (needed by model 'timm:{name}').") from None
    if not timm.is_model(name):
        close = timm.list_models(f"*{name.split('_')[0]}*")[:12] or timm.list_models()[:20]
        raise UserError(f"unknown timm model {name!r}. Some valid names: {', '.join(close)} (see timm.list_models()).")
    net = timm.create_model(name, pretrained=False, num_classes=num_classes, in_chans=input_shape[0], **params.options)
    clf = net.get_classifier()
    net.reset_classifier(0)  # the model now returns pooled pre-logit features (N, D)
    features = _TimmFeatures(net)
    return _finish_library_model(features, clf, input_shape, f"timm:{name}")


class _TimmFeatures(nn.Module):
    """(N, C, H, W) -> forward_features -> forward_head(pre_logits=True) -> (N, D)."""

    def __init__(self, body: nn.Module) -> None:
        super().__init__()
        self.body = body

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body.forward_head(self.body.forward_features(x), pre_logits=True)


# -------------------------------------------------------------------------------------- presets
PRESETS: dict[str, tuple[CNNParams, str]] = {
    # seed 000, network_1: conv 3x3 pad 1 (25, 50, 100 maps), each conv -> maxpool 2x2 -> ReLU,
    # FC 100 + ReLU, Linear K; no batchnorm, no dropout. 3x32x32 -> 100x4x4 = 1600 -> 100 -> K.
    "seed000_net1": (
        CNNParams(
            channels=[25, 50, 100], kernel_size=3, padding="same", pool="max", activation="relu",
            batchnorm=False, conv_bias=True, block_order="conv-pool-act", hidden=[100], dropout=0.0,
        ),
        "seed 000's network_1: conv 25/50/100 -> maxpool -> ReLU, FC 100, no batchnorm",
    ),
    # seed 001, CustomCNN: conv 3x3 pad 1 (64, 128, 256; bias kept) + BatchNorm + ReLU + maxpool 2x2,
    # FC 1024 + ReLU + Dropout(0.4), Linear K. 3x32x32 -> 256x4x4 = 4096 -> 1024 -> K.
    "seed001_cnn": (
        CNNParams(
            channels=[64, 128, 256], kernel_size=3, padding="same", pool="max", activation="relu",
            batchnorm=True, conv_bias=True, block_order="conv-bn-act-pool", hidden=[1024], dropout=0.4,
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


# ------------------------------------------------------------------------------------ public API
def build_model(
    cfg_model: ModelConfig | Mapping[str, Any], input_shape: tuple[int, int, int], num_classes: int
) -> nn.Module:
    """Build the model named by ``cfg_model.name`` for images of ``input_shape`` = (C, H, W).

    ``cfg_model`` is a :class:`~cnnlab.config.ModelConfig` (or a dict like ``{"name": "cnn",
    "channels": [32, 64]}``). Its extra keys are validated against the entry's parameter model
    (bad keys raise ``UserError``). Applies ``init`` and sets ``model.softmax_output``; when that
    is true a ``UserWarning`` explains that the output layer applies softmax before cross-entropy.
    Returns an :class:`ImageClassifier` with ``features`` and ``head``.
    """
    if not isinstance(cfg_model, ModelConfig):
        try:
            cfg_model = ModelConfig.model_validate(dict(cfg_model))
        except ValidationError as e:
            raise UserError(_validation_message(e, "model config", "model")) from None
    input_shape = _check_input_shape(input_shape)
    if int(num_classes) < 1:
        raise UserError(f"num_classes must be at least 1, got {num_classes}.")
    entry = MODELS.entry(cfg_model.name, "model.name")
    try:
        params = entry_params(cfg_model, MODELS)
    except ValidationError as e:
        keys = ", ".join(entry.params.model_fields) if entry.params is not None else ""
        raise UserError(
            _validation_message(e, "model config", "model")[:-1] + f". Keys of model {cfg_model.name!r}: name, {keys}."
        ) from None
    kwargs = {"name": cfg_model.name[len(entry.name):]} if entry.prefix else {}
    model = entry.obj(params, input_shape, int(num_classes), **kwargs)
    init = INITS[getattr(params, "init", "default")]
    if init is not None:
        model.apply(init)
    model.softmax_output = bool(getattr(params, "softmax_output", False))
    if model.softmax_output:
        warnings.warn(SOFTMAX_WARNING, UserWarning, stacklevel=2)
    return model


def _type_str(ann: Any) -> str:
    """A short, TOML-flavoured type name: ``list[int]``, ``"max" | "avg"``, ``bool``."""
    origin, args = get_origin(ann), get_args(ann)
    if origin is Annotated:
        return _type_str(args[0])
    if origin is Literal:
        return " | ".join(json.dumps(a) for a in args)
    if origin in (Union, types.UnionType):
        return " | ".join(_type_str(a) for a in args)
    if origin in (list, dict):
        return f"{origin.__name__}[{', '.join(_type_str(a) for a in args)}]"
    return getattr(ann, "__name__", str(ann))


def describe_models() -> list[tuple[str, str, dict[str, tuple[str, Any]]]]:
    """For ``cnnlab models``: ``(name, summary, {key: (type, default)})`` per registry entry;
    prefix entries are named like ``torchvision:<name>``."""
    rows = []
    for entry in MODELS:
        name = entry.name + "<name>" if entry.prefix else entry.name
        keys: dict[str, tuple[str, Any]] = {}
        if entry.params is not None:
            for key, field in entry.params.model_fields.items():
                default = field.default_factory() if field.default_factory is not None else field.default  # type: ignore[call-arg]
                keys[key] = (_type_str(field.annotation), default)
        rows.append((name, entry.summary, keys))
    return rows
