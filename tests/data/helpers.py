"""Shared by the data tests: a DataConfig that never downloads, the real copies' folder, and the
check that splits are exactly the source-pool rows their indices name."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from cnnlab.config import DataConfig
from cnnlab.data import DataSplits, RawData

SHARED = Path(__file__).resolve().parents[2].parent / "shared" / "data"


def cfg(**kw) -> DataConfig:
    kw.setdefault("download", False)
    return DataConfig(**kw)


def assert_consistent(d: DataSplits, raw: RawData, keep: list[int] | None = None) -> None:
    """Every split's images and labels are exactly the source-pool rows its index names."""
    pool = raw.train_x if raw.test_x is None else np.concatenate([raw.train_x, raw.test_x])
    px = torch.from_numpy(pool).permute(0, 3, 1, 2)
    py = raw.train_y if raw.test_y is None else np.concatenate([raw.train_y, raw.test_y])
    keep = list(range(len(raw.class_names))) if keep is None else keep
    for name, s in d.splits().items():
        assert s.x.dtype == torch.uint8 and s.x.is_contiguous() and s.x.ndim == 4
        assert s.y.dtype == torch.int64 and s.index.dtype == np.int64
        assert len(s.x) == len(s.y) == len(s.index)
        assert torch.equal(s.x, px[s.index]), name
        assert [keep[i] for i in s.y.tolist()] == py[s.index].tolist(), name
    all_idx = np.concatenate(list(d.indices().values()))
    assert len(np.unique(all_idx)) == len(all_idx)  # no image in two splits
