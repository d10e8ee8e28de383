"""Models: every architecture is built from config values, never from hard-coded sizes.

- ``_builder``: ``MODELS`` (the names users give as ``model.name``), ``build_model``,
  ``ModelParams`` (the keys every model takes) and ``describe_models`` (``cnnlab models``);
- ``layers``: the ``ImageClassifier`` contract (``features`` -> ``head``, two optional hooks),
  activations, pooling, norms, block orders, inits, ``NORM_TYPES`` and ``has_running_stats`` (how
  the training code recognises norm layers), ``dry_run`` and the output-layer helpers;
- ``convnets``: ``cnn``, ``mlp``, ``resnet18`` and the presets ``seed000_net1``, ``seed001_cnn``;
- ``airbench``: airbench94's fast CIFAR-10 net;
- ``external``: ``torchvision:<name>`` and ``timm:<name>``.

Importing the package registers every model (each builder's module registers its own).
"""

from ._builder import MODELS, SOFTMAX_WARNING, ModelParams, ModelSize, build_model, describe_models, model_size

# The order of these imports is the order of `cnnlab models` (registration order): own models first.
from .convnets import PRESETS, CNNParams, MLPParams, ResNetParams, build_cnn, build_mlp, build_resnet18  # isort: skip
from .airbench import AirbenchNet, AirbenchParams, build_airbench, patch_second_moment  # isort: skip
from .external import TimmParams, TorchvisionParams, build_timm, build_torchvision
from .layers import (ACTIVATIONS, BLOCK_ORDERS, INITS, NORM_TYPES, NORMS, POOLS, Backbone, ImageClassifier, RepeatChannels,
                     count_parameters, dry_run, has_running_stats, output_layer, replace_output_layer)

__all__ = [
    "MODELS", "build_model", "describe_models", "ModelParams", "ModelSize", "model_size", "SOFTMAX_WARNING", "ImageClassifier", "Backbone",
    "RepeatChannels", "count_parameters", "dry_run", "output_layer", "replace_output_layer", "ACTIVATIONS", "POOLS",
    "BLOCK_ORDERS", "INITS", "NORMS", "NORM_TYPES", "has_running_stats", "CNNParams", "MLPParams", "ResNetParams", "PRESETS", "build_cnn", "build_mlp",
    "build_resnet18", "AirbenchNet", "AirbenchParams", "build_airbench", "patch_second_moment", "TorchvisionParams",
    "TimmParams", "build_torchvision", "build_timm",
]
