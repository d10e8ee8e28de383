"""The data set registry and what its loaders return.

A loader (registered in ``DATASETS`` under the name users give as ``data.dataset``) turns a
``DataConfig`` into ``RawData``: uint8 images (N, H, W, C) plus int64 labels for the official
train split and, when the source has one, the official test split. ``DATASETS`` itself, with each
name's summary, is declared in ``cnnlab.dataset_names``, which imports neither numpy nor torch
(``cnnlab datasets`` lists it from there); the loader modules bind their loaders to those names.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..dataset_names import DATASETS
from ..errors import printable

__all__ = ["DATASETS", "RawData", "short_list"]


@dataclass
class RawData:
    """What a loader returns, before subsetting and splitting."""

    train_x: np.ndarray  # uint8 (N, H, W, C), C = 1 or 3
    train_y: np.ndarray  # int64 (N,)
    test_x: np.ndarray | None  # official test split, or None when the source has none
    test_y: np.ndarray | None
    class_names: list[str]
    source: str  # human-readable description of where the data came from

    @property
    def n_train(self) -> int:
        return int(len(self.train_y))

    @property
    def n_test(self) -> int:
        return 0 if self.test_y is None else int(len(self.test_y))


def short_list(names: list[str], limit: int = 30) -> str:
    """The first ``limit`` names comma-separated, with the total when there are more (a message
    about a 10,000-class folder must not list them all). Names are shown escaped."""
    shown = ", ".join(printable(n)[:100] for n in names[:limit])
    return shown + (f", ... ({len(names):,} in all)" if len(names) > limit else "")
