import pytest
import torch
import torchvision.transforms.functional as TF

from cnnlab.data.augment import (
    Normalizer,
    crop_with_offsets,
    flip_with_mask,
    random_crop,
    random_hflip,
)


def test_batched_crop_equals_per_image_crop_with_same_offsets():
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (16, 3, 32, 32), dtype=torch.uint8, generator=g)
    pad = 4
    dy = torch.randint(0, 2 * pad + 1, (16,), generator=g)
    dx = torch.randint(0, 2 * pad + 1, (16,), generator=g)
    out = crop_with_offsets(x, pad, dy, dx)
    for i in range(16):
        # torchvision's RandomCrop(32, padding=4): zero pad, then crop at (top, left)
        ref = TF.crop(TF.pad(x[i], [pad]), int(dy[i]), int(dx[i]), 32, 32)
        assert torch.equal(out[i], ref)
    assert out.dtype == torch.uint8


@pytest.mark.parametrize("mode", ["constant", "edge", "reflect", "symmetric"])
def test_batched_crop_equals_torchvision_in_every_padding_mode(mode):
    g = torch.Generator().manual_seed(1)
    x = torch.randint(0, 256, (12, 3, 9, 7), dtype=torch.uint8, generator=g)
    pad = 3
    dy = torch.randint(0, 2 * pad + 1, (12,), generator=g)
    dx = torch.randint(0, 2 * pad + 1, (12,), generator=g)
    dy[:2], dx[:2] = 0, 2 * pad  # the two extreme corners
    out = crop_with_offsets(x, pad, dy, dx, mode)
    for i in range(12):
        # torchvision's RandomCrop((9, 7), padding=3, padding_mode=mode) at (top, left) = (dy, dx)
        ref = TF.crop(TF.pad(x[i], [pad], padding_mode=mode), int(dy[i]), int(dx[i]), 9, 7)
        assert torch.equal(out[i], ref), (mode, i)
    assert out.dtype == torch.uint8 and out.shape == x.shape


def test_crop_covers_all_offsets_and_keeps_shape():
    x = torch.arange(2 * 5 * 7, dtype=torch.float32).view(2, 1, 5, 7)
    out = random_crop(x, 2, torch.Generator().manual_seed(1))
    assert out.shape == x.shape
    assert torch.equal(random_crop(x, 0), x)


def test_batched_flip_equals_per_image_flip():
    x = torch.randint(0, 256, (8, 3, 6, 6), dtype=torch.uint8)
    mask = torch.tensor([True, False] * 4)
    out = flip_with_mask(x, mask)
    for i in range(8):
        assert torch.equal(out[i], TF.hflip(x[i]) if mask[i] else x[i])
    flipped = random_hflip(x, torch.Generator().manual_seed(0))
    assert sum(not torch.equal(flipped[i], x[i]) for i in range(8)) > 0


def test_normalizer_matches_torchvision():
    x = torch.randint(0, 256, (4, 3, 5, 5), dtype=torch.uint8)
    mean, std = (0.4, 0.5, 0.6), (0.2, 0.25, 0.3)
    out = Normalizer(mean, std, torch.device("cpu"))(x)
    ref = TF.normalize(x.float() / 255, mean, std)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)


def test_alternating_flip_batched_equals_per_image_flips():
    from cnnlab.data.augment import alternating_flip_mask, augment_batch

    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (10, 3, 6, 6), dtype=torch.uint8, generator=g)
    base = torch.rand(10, generator=g) < 0.5
    idx = torch.tensor([3, 7, 1, 0])
    for epoch in range(3):
        mask = alternating_flip_mask(base, idx, epoch)
        out = augment_batch(x[idx], 0, "alternate", None, mask)
        for j, i in enumerate(idx.tolist()):
            flipped = bool(base[i]) != (epoch % 2 == 1)
            assert torch.equal(out[j], TF.hflip(x[i]) if flipped else x[i])
    assert torch.equal(augment_batch(x, 0, False, None), x)
