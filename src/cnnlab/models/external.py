"""Models from libraries: ``torchvision:<name>`` (any torchvision.models classifier) and
``timm:<name>`` (the optional extra), split into ``features`` and ``head``; random init
(pretrained weights come through ``[transfer]``).
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

import torch
from pydantic import Field
from torch import nn

from ..errors import UserError
from ._builder import MODELS, ModelParams
from .layers import Backbone, ImageClassifier, dry_run

class TorchvisionParams(ModelParams):
    """Keys of ``torchvision:<name>`` models."""

    options: dict[str, Any] = Field(
        {}, description="extra keyword arguments of torchvision.models.get_model, e.g. {dropout = 0.3}"
    )


class TimmParams(ModelParams):
    """Keys of ``timm:<name>`` models."""

    options: dict[str, Any] = Field({}, description="extra keyword arguments of timm.create_model, e.g. {drop_rate = 0.2}")



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
        feat_shape = dry_run(features, input_shape)
        out_shape = dry_run(head, tuple(feat_shape))
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
    except (TypeError, ValueError, AssertionError, IndexError, KeyError) as e:  # the library checks its own options
        raise UserError(f"model 'torchvision:{name}': bad options {params.options!r}: {_line(e)}.") from None
    c = input_shape[0]
    if c not in (1, 3):
        raise UserError(f"model 'torchvision:{name}' takes 1- or 3-channel images, got {c} channels.")
    body, clf = _split_classifier(net, f"torchvision:{name}")
    features = Backbone(body, repeat_to=3 if c == 1 else None)  # (N, C, H, W) -> (N, D) pooled features
    return _finish_library_model(features, clf, input_shape, f"torchvision:{name}")


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
    try:
        net = timm.create_model(name, pretrained=False, num_classes=num_classes, in_chans=input_shape[0], **params.options)
    except (TypeError, ValueError, AssertionError, IndexError, KeyError) as e:
        raise UserError(f"model 'timm:{name}': bad options {params.options!r}: {_line(e)}.") from None
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


def _line(e: BaseException) -> str:
    """A library's error as one line of at most 200 characters."""
    return (" ".join(str(e).split()) or type(e).__name__)[:200]
