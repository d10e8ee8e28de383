"""Building blocks of the models: the ``ImageClassifier`` contract (``features`` -> ``head``),
activations, pooling, normalization layers, block orders and weight inits by config name, the
norm-layer types the training code recognises, the dry run that infers layer sizes, and the
helpers that find and replace a model's output layer.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Literal, get_args

import torch
from torch import nn

from ..errors import UserError

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


@dataclass(frozen=True)
class Norm:
    """One normalization of conv feature maps (N, C, H, W): ``make(channels, groups)`` builds the
    layer (``groups`` is ``norm_groups``, read by group norm only); ``child`` is its name inside a
    block, so its state_dict keys are ``features.<i>.<child>.weight``."""

    child: str
    make: Callable[[int, int], nn.Module]


# Every layer here has a learned per-channel scale and shift (affine weight and bias).
# - batch: named "bn", the name it had before the other norms existed, so checkpoints still load.
# - layer: GroupNorm(1, C) normalizes each sample over all of (C, H, W) like LayerNorm, but with
#   a per-channel affine; nn.LayerNorm would need normalized_shape = (C, H, W) fixed when the model
#   is built (one image size only, and a C*H*W affine), and LayerNorm(C) on (N, C, H, W) would
#   normalize over W instead.
# - instance: GroupNorm(C, C) computes what InstanceNorm2d(C, affine=True) does (each sample and
#   channel over H, W). Chosen so that group, layer and instance are one layer type with one
#   behaviour: no running-statistics buffers, the same in train and eval mode, while InstanceNorm2d
#   is a subclass of BatchNorm's base class whose track_running_stats flag would change that.
#   On a 1x1 map it outputs its shift (InstanceNorm2d raises there).
NORMS: dict[str, Norm | None] = {
    "batch": Norm("bn", lambda channels, groups: nn.BatchNorm2d(channels)),
    "group": Norm("norm", lambda channels, groups: nn.GroupNorm(groups, channels)),
    "layer": Norm("norm", lambda channels, groups: nn.GroupNorm(1, channels)),
    "instance": Norm("norm", lambda channels, groups: nn.GroupNorm(channels, channels)),
    "none": None,
}
NormName = Literal["batch", "group", "layer", "instance", "none"]

# The order of the layers inside one conv block; "norm" (written "bn" in the names, from when
# batch norm was the only one) is the chosen norm, skipped with norm = "none", and "pool" is skipped
# with pool = "none". conv-pool-act is seed 000's order (conv -> maxpool -> ReLU).
BLOCK_ORDERS: dict[str, tuple[str, ...]] = {
    "conv-bn-act-pool": ("conv", "norm", "act", "pool"),
    "conv-act-bn-pool": ("conv", "act", "norm", "pool"),
    "conv-pool-act": ("conv", "norm", "pool", "act"),
}
BlockOrder = Literal["conv-bn-act-pool", "conv-act-bn-pool", "conv-pool-act"]

# Every normalization layer type, whoever built the model (timm's norm layers subclass these):
# their weights and biases form the optimizer's norm groups (train.bn_bias_lr_scale,
# train.bn_weight_decay). _NormBase is the base of BatchNorm*, SyncBatchNorm and InstanceNorm*.
NORM_TYPES: tuple[type[nn.Module], ...] = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm, nn.RMSNorm)


def has_running_stats(m: nn.Module) -> bool:
    """Whether ``m`` is a norm layer with running statistics (BatchNorm, or InstanceNorm with
    ``track_running_stats``): the only norm layers whose train/eval mode changes what they compute
    and what they store, so the only ones a frozen model part must keep in eval mode. GroupNorm,
    LayerNorm and RMSNorm normalize each sample on its own in both modes."""
    return isinstance(m, nn.modules.batchnorm._NormBase) and m.track_running_stats


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
assert set(get_args(NormName)) == set(NORMS)
assert set(get_args(BlockOrder)) == set(BLOCK_ORDERS)
assert set(get_args(InitName)) == set(INITS)


class ImageClassifier(nn.Module):
    """``forward(x) = head(features(x))``, then softmax over classes if ``softmax_output``.

    Every model cnnlab builds is one. Its two optional hooks are declared here with no-op
    defaults; a model that needs them overrides them (``AirbenchNet`` does both)."""

    def __init__(self, features: nn.Module, head: nn.Module, softmax_output: bool = False) -> None:
        super().__init__()
        self.features = features
        self.head = head
        # True: the output layer applies softmax (seeds 000/002), so outputs are probabilities.
        self.softmax_output = softmax_output

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.head(self.features(x))  # (N, K) logits
        return out.softmax(dim=1) if self.softmax_output else out

    def init_from_data(self, x: torch.Tensor, normalize: Callable[[torch.Tensor], torch.Tensor] | None = None) -> None:
        """Data-dependent initialisation, called once right after building a new run's model with
        the training split's images ``x`` (uint8 (N, C, H, W)) and the run's normalizer; not called
        when a checkpoint is loaded. Default: nothing."""

    def on_epoch_start(self, epoch: int) -> None:
        """Called by the trainer before each epoch (``epoch`` = completed epochs) for a schedule of
        the model's own; it must be a pure function of ``epoch``, so a resumed run sets the same
        state. Default: nothing."""


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


def dry_run(module: nn.Module, input_shape: tuple[int, ...]) -> torch.Size:
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

