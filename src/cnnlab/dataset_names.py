"""The data set registry, ``DATASETS``: every name users give as ``data.dataset``, declared here
with its one-line summary and the module of its loader.

The loaders need numpy and torch; the names do not. ``cnnlab datasets`` lists this registry and an
experiment's ``data.dataset`` is checked against it without importing a loader. Each loader
module registers its loader under a declared name when it is imported, and importing
``cnnlab.data`` imports them all, so whoever loads data (``cnnlab.data.load_data``) finds every
loader bound. A new data set is declared here first: registering an undeclared name raises, so this
list is always the whole registry.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable

from .registry import Registry

if TYPE_CHECKING:
    from .config import DataConfig
    from .data import RawData

__all__ = ["DATASETS"]

DATASETS: Registry[Callable[[DataConfig], RawData]] = Registry("data set", require_declared=True)

_SOURCES = "cnnlab.data.sources"
_IMAGEFOLDER = "cnnlab.data.imagefolder"

# The order here is the order of `cnnlab datasets`: the named data sets first.
DATASETS.declare("digits", home=_SOURCES,
                 summary="scikit-learn's bundled 8x8 handwritten digits (1,797 images, no download)")
DATASETS.declare("mnist", home=_SOURCES,
                 summary="MNIST digits, 60,000 + 10,000 28x28 gray (IDX files in data.root/MNIST/raw)")
DATASETS.declare("fashion_mnist", home=_SOURCES,
                 summary="Fashion-MNIST, 60,000 + 10,000 28x28 gray (data.root/FashionMNIST/raw)")
DATASETS.declare("cifar10", home=_SOURCES,
                 summary="CIFAR-10, 50,000 + 10,000 32x32 color (pickles in data.root, or data.path)")
DATASETS.declare("cifar100", home=_SOURCES,
                 summary="CIFAR-100 (100 fine labels), 50,000 + 10,000 32x32 color (pickles, or data.path)")
DATASETS.declare("imagefolder", home=_IMAGEFOLDER,
                 summary="class-per-folder images in a directory or .tar/.tar.gz/.zip at data.path")
