"""What the model tests share: building without warnings, and the contract every model keeps."""

from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F
from torch import nn

from cnnlab.models import (
    build_model,
)

SHAPES = [(1, 8, 8), (3, 32, 32), (1, 28, 28)]
K = 5


def _build(name: str, shape, k: int = K, **keys) -> nn.Module:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return build_model({"name": name, **keys}, shape, k)


def _check_contract(model: nn.Module, shape, k: int) -> None:
    """forward of a batch of 2 gives (2, k), features -> head equals forward, backward works."""
    torch.manual_seed(0)
    x = torch.randn(2, *shape)
    assert isinstance(model.features, nn.Module) and isinstance(model.head, nn.Module)
    model.train()
    out = model(x)
    assert out.shape == (2, k)
    F.cross_entropy(out, torch.tensor([0, k - 1])).backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert grads and all(g is not None for g in grads)
    assert any(g.abs().sum() > 0 for g in grads)
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(model.head(model.features(x)), model(x))
