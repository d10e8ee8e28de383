"""The data set registry's declarations (cnnlab.dataset_names): torch-free, and the whole registry
once the loaders are imported."""

from __future__ import annotations

from cnnlab.data import DATASETS, sources
from cnnlab.dataset_names import DATASETS as DECLARED


def test_every_declared_data_set_is_bound_by_the_module_it_names():
    assert DATASETS is DECLARED  # one registry, whether reached through cnnlab.data or not
    assert DATASETS.names()[:5] == ["digits", "mnist", "fashion_mnist", "cifar10", "cifar100"]  # `cnnlab datasets` order
    for e in DATASETS:
        assert e.summary and e.obj is not None, f"data set {e.name!r} is declared but has no loader"
        assert e.obj.__module__ == e.home
    assert DATASETS.get("digits") is sources.load_digits
