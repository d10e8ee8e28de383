"""airbench (cnnlab.models.airbench): whitening init and layout."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from cnnlab.data.augment import Normalizer
from cnnlab.errors import UserError
from cnnlab.models import (
    airbench,
    count_parameters,
    output_layer,
    patch_second_moment,
)

from .helpers import _build


# ------------------------------------------------------------------------------------ airbench
def _correlated_images(n=64, c=3, size=16, seed=0):
    """Smooth random images: neighbouring pixels and channels strongly correlated, like photos."""
    g = torch.Generator().manual_seed(seed)
    base = torch.rand(n, 1, size // 4, size // 4, generator=g)
    x = F.interpolate(base, size=(size, size), mode="bilinear", align_corners=False)
    x = x.repeat(1, c, 1, 1) + 0.05 * torch.randn(n, c, size, size, generator=g)
    return (x - x.mean()) / x.std()


def test_airbench_whitening_init_decorrelates_patches():
    model = _build("airbench", (3, 16, 16), 10, widths=[8, 8])
    x = _correlated_images()
    raw = patch_second_moment(x, 2)  # (12, 12)
    off = raw - torch.diag(torch.diag(raw))
    assert off.abs().max() > 0.5 * torch.diag(raw).min()  # the input really is correlated
    model.init_from_data(x)
    w = model.whiten.weight  # (24, 3, 2, 2): 12 filters and their negatives
    assert w.shape == (24, 3, 2, 2) and not w.requires_grad
    torch.testing.assert_close(w[12:], -w[:12])
    with torch.no_grad():
        out = F.conv2d(x, w[:12])  # (N, 12, 15, 15): the whitened patches (bias left out)
    flat = out.permute(0, 2, 3, 1).reshape(-1, 12).double()
    cov = flat.T @ flat / len(flat)
    eig = torch.linalg.eigvalsh(raw)
    # Output covariance = diag(l / (l + eps)): identity in the directions with variance >> eps,
    # and nothing off the diagonal.
    diag = torch.diag(cov)
    torch.testing.assert_close(torch.sort(diag).values, torch.sort(eig / (eig + 5e-4)).values, rtol=1e-4, atol=1e-6)
    assert (cov - torch.diag(diag)).abs().max() < 1e-6


def test_airbench_whitening_samples_every_part_of_a_class_ordered_split(monkeypatch):
    """whiten_samples images spread over the whole split: in a split ordered by class (an image
    folder), the first ones would all be one class (CIFAR-10's first 5,000: airplanes)."""
    seen = []
    real = airbench.patch_second_moment
    monkeypatch.setattr(airbench, "patch_second_moment", lambda x, k: seen.append(x.clone()) or real(x, k))
    model = _build("airbench", (3, 8, 8), 2, widths=[4], whiten_samples=10)
    x = torch.cat([torch.zeros(50, 3, 8, 8), torch.ones(50, 3, 8, 8)])  # class 0 dark, then class 1 bright
    model.init_from_data(x)
    (used,) = seen
    assert len(used) == 10 and used[:, 0, 0, 0].tolist() == [0.0] * 5 + [1.0] * 5


def test_airbench_init_from_uint8_with_normalizer_equals_float_path():
    g = torch.Generator().manual_seed(1)
    x = torch.randint(0, 256, (20, 3, 8, 8), dtype=torch.uint8, generator=g)
    norm = Normalizer((0.5, 0.4, 0.3), (0.2, 0.25, 0.3), torch.device("cpu"))
    a, b = _build("airbench", (3, 8, 8), 4), _build("airbench", (3, 8, 8), 4)
    a.init_from_data(x, norm)
    b.init_from_data(norm(x))
    torch.testing.assert_close(a.whiten.weight, b.whiten.weight)
    with pytest.raises(UserError, match="normalizer"):
        a.init_from_data(x)


def test_airbench_layout_matches_airbench94():
    model = _build("airbench", (3, 32, 32), 10)
    names = [n for n, _ in model.features.named_children()]
    assert names == ["whiten", "act", "group1", "group2", "group3", "pool", "flatten"]
    assert [n for n, _ in model.features.group1.named_children()] == [
        "conv1", "pool", "norm1", "act1", "conv2", "norm2", "act2"]
    bn = model.features.group1.norm1
    assert bn.momentum == pytest.approx(0.4) and bn.eps == 1e-12 and not bn.weight.requires_grad and bn.bias.requires_grad
    assert model.head.out.bias is None and model.head.scale.factor == pytest.approx(1 / 9)
    x = torch.randn(2, 3, 32, 32)
    # 32 -> whiten 31 -> 15 -> 7 -> 3 -> global max (airbench's MaxPool2d(3)) -> 256
    assert model.features[:5](x).shape == (2, 256, 3, 3)
    assert output_layer(model) is model.head.out
    total, trainable = count_parameters(model)
    assert total - trainable == 24 * 3 * 2 * 2 + 64 + 64 + 4 * 256  # frozen whitening and BatchNorm weights
