"""Data: load raw images, subset and split them reproducibly, augment them in batches on the device.

- ``_registry``: ``DATASETS`` (the names users give as ``data.dataset``, declared with their
  summaries in ``cnnlab.dataset_names``) and ``RawData``, what a loader returns: uint8
  (N, H, W, C) images and int64 labels, official train and test splits;
- ``sources``: ``digits`` (scikit-learn, bundled), ``mnist`` / ``fashion_mnist`` (IDX files),
  ``cifar10`` / ``cifar100`` (the official python pickles, read by a restricted unpickler);
- ``imagefolder``: class-per-folder images in a directory or archive, decoded in a process pool,
  and ``read_image_files`` for prediction;
- ``cache``: decoded image folders kept as uint8 arrays (``$CNNLAB_CACHE``);
- ``splits``: ``load_data`` -> ``DataSplits`` (class subset, per-class sample, stratified
  splits, resize, normalization statistics from the training part);
- ``augment``: batched crops and flips on uint8 tensors, ``Normalizer``, and ``Augmenter``: the whole
  configured augmentation (affine, colour, erasing, mixup / cutmix, per-class settings) of a batch
  and its labels, with ``resolve_class_names`` for the per-class table's names.

Importing the package binds every data set's loader to its declared name. The names, their
summaries and their order (that of ``cnnlab datasets``) are in ``cnnlab.dataset_names``, which needs
no torch.
"""

from ._registry import DATASETS, RawData
from .sources import (CIFAR10_CLASSES, CIFAR100_CLASSES, FASHION_MNIST_CLASSES, MNIST_CLASSES,  # isort: skip
                      read_cifar_pickle, read_idx)
from .imagefolder import ARCHIVE_SUFFIXES, IMAGE_EXTENSIONS, read_image_files, read_imagefolder  # isort: skip
from .augment import Augmenter, Normalizer, alternating_flip_mask, augment_batch, max_crop_padding, resolve_class_names
from .cache import cache_dir
from .splits import IMAGENET_MEAN, IMAGENET_STD, DataSplits, Split, load_data, resize_uint8

__all__ = [
    "DATASETS", "RawData", "DataSplits", "Split", "load_data", "resize_uint8", "read_image_files", "read_imagefolder",
    "read_idx", "read_cifar_pickle", "cache_dir", "IMAGE_EXTENSIONS", "ARCHIVE_SUFFIXES", "MNIST_CLASSES",
    "FASHION_MNIST_CLASSES", "CIFAR10_CLASSES", "CIFAR100_CLASSES", "IMAGENET_MEAN", "IMAGENET_STD", "Normalizer",
    "augment_batch", "alternating_flip_mask", "max_crop_padding", "Augmenter", "resolve_class_names",
]
