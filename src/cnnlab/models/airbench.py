"""``airbench``: the network of airbench94 (KellerJordan/cifar10-airbench), the fastest CIFAR-10
training script: a frozen whitening conv initialised from the data's patch covariance, conv groups
with BatchNorm and GELU, a bias-free scaled output layer.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any, Callable

import torch
import torch.nn.functional as F
from pydantic import Field, PositiveInt, field_validator
from torch import nn

from ..errors import UserError
from ._builder import MODELS, Depth, Kernel, ModelParams, Width
from .layers import ImageClassifier

class AirbenchParams(ModelParams):
    """Keys of the ``airbench`` model (KellerJordan/cifar10-airbench, airbench94)."""

    widths: list[Width] = Field([64, 256, 256], min_length=1, max_length=Depth, description="output channels of each conv group")
    whiten_kernel: Kernel = Field(2, description="kernel of the whitening conv (no padding); it has 2*C*k*k outputs")
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
        """Called by the trainer before each epoch (``epoch`` = completed epochs): from epoch
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
