import math

import pytest
import torch
import torchvision.transforms.functional as TF
import torchvision.transforms.v2.functional as TF2
from torchvision.transforms import InterpolationMode

from cnnlab.config import AugmentConfig
from cnnlab.data import Augmenter, augment_batch, resolve_class_names
from cnnlab.data.augment import (
    Normalizer,
    adjust_brightness,
    adjust_contrast,
    adjust_hue,
    adjust_saturation,
    affine,
    affine_theta,
    crop_with_offsets,
    cutmix_boxes,
    erase,
    flip_with_mask,
    grayscale,
    random_crop,
    random_hflip,
)
from cnnlab.errors import UserError


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


# ------------------------------------------------------------------ Augmenter and its kernels

# Float tolerance of the batched kernels against torchvision, in pixel units of the 0..255 scale:
# the colour ops agree to about 5e-5 and the affine to about 1e-3 (its matrix is rescaled to
# grid_sample's coordinates before the grid is made, torchvision's after).
COLOR_ATOL = 1e-3
AFFINE_ATOL = 5e-3


def _images(seed, shape=(8, 3, 13, 17)):
    """Float images in [0, 255] (B, C, H, W) and a generator for their parameters."""
    g = torch.Generator().manual_seed(seed)
    return torch.rand(shape, generator=g) * 255, g


def _augmenter(classes=("a", "b", "c"), shape=(3, 16, 16), **settings):
    return Augmenter(AugmentConfig.model_validate(settings), list(classes), shape)


@pytest.mark.parametrize("ours, theirs, lo, hi", [
    (adjust_brightness, TF2.adjust_brightness, 0.0, 2.0),
    (adjust_contrast, TF2.adjust_contrast, 0.0, 2.0),
    (adjust_saturation, TF2.adjust_saturation, 0.0, 2.0),
    (adjust_hue, TF2.adjust_hue, -0.5, 0.5),
])
@pytest.mark.parametrize("channels", [3, 1])
def test_color_kernels_equal_torchvision_per_image(ours, theirs, lo, hi, channels):
    x, g = _images(0, (10, channels, 9, 11))
    factor = lo + (hi - lo) * torch.rand(10, generator=g)
    factor[0] = (lo + hi) / 2  # the identity (factor 1, hue shift 0)
    out = ours(x, factor)
    for i in range(10):
        # torchvision on the same image as floats in [0, 1], back to the 0..255 scale
        ref = theirs(x[i] / 255, float(factor[i])) * 255
        torch.testing.assert_close(out[i], ref, rtol=0, atol=COLOR_ATOL)
    assert out.shape == x.shape and out.dtype == torch.float32
    torch.testing.assert_close(out[0], x[0], rtol=0, atol=COLOR_ATOL)


def test_grayscale_and_vertical_flip_equal_torchvision():
    x, _ = _images(1)
    mask = torch.tensor([True, False] * 4)
    out = grayscale(x, mask)
    flipped = flip_with_mask(x, mask, dim=2)
    for i in range(8):
        ref = TF2.rgb_to_grayscale(x[i], num_output_channels=3) if mask[i] else x[i]
        torch.testing.assert_close(out[i], ref, rtol=0, atol=COLOR_ATOL)
        assert torch.equal(flipped[i], TF2.vertical_flip(x[i]) if mask[i] else x[i])
    assert torch.equal(grayscale(x[:, :1], mask), x[:, :1])  # 1 channel: already gray


@pytest.mark.parametrize("size", [(13, 17), (16, 16), (9, 6)])
def test_batched_affine_equals_torchvision_affine(size):
    x, g = _images(2, (12, 3, *size))
    angle = torch.rand(12, generator=g) * 90 - 45
    shift = torch.randint(-4, 5, (12, 2), generator=g).float()
    scale = torch.rand(12, generator=g) * 0.8 + 0.6
    shear = torch.rand(12, 2, generator=g) * 40 - 20
    angle[0], shift[0], scale[0], shear[0] = 0.0, 0.0, 1.0, 0.0  # the identity
    angle[1], shift[1], scale[1], shear[1] = 90.0, 0.0, 1.0, 0.0  # a quarter turn
    out = affine(x, affine_theta(angle, shift, scale, shear, size))
    for i in range(12):
        # fill=None: torchvision's grid_sample with zeros outside, like ours, so the borders compare too
        ref = TF2.affine(x[i], angle=float(angle[i]), translate=[float(shift[i, 0]), float(shift[i, 1])],
                         scale=float(scale[i]), shear=[float(shear[i, 0]), float(shear[i, 1])],
                         interpolation=InterpolationMode.BILINEAR)
        torch.testing.assert_close(out[i], ref, rtol=0, atol=AFFINE_ATOL)
    torch.testing.assert_close(out[0], x[0], rtol=0, atol=AFFINE_ATOL)
    # the grid is F.affine_grid's, made as one matrix product with a cached base grid
    theta = affine_theta(angle, shift, scale, shear, size)
    ref = torch.nn.functional.grid_sample(x, torch.nn.functional.affine_grid(theta, list(x.shape), align_corners=False),
                                          align_corners=False)
    torch.testing.assert_close(out, ref, rtol=0, atol=AFFINE_ATOL)


@pytest.mark.parametrize("mode", ["edge", "reflect", "symmetric"])
def test_affine_border_modes_differ_only_outside_the_image(mode):
    x, g = _images(3, (6, 3, 12, 12))
    theta = affine_theta(torch.rand(6, generator=g) * 60 - 30, torch.zeros(6, 2), torch.full((6,), 0.8),
                         torch.zeros(6, 2), (12, 12))
    inside = affine(torch.ones(6, 1, 12, 12), theta) == 1  # pixels that read only from inside the image
    zeros, other = affine(x, theta), affine(x, theta, mode)
    assert inside.sum() > 100 and (~inside).sum() > 0
    # equal up to grid_sample's float rounding of the reflected coordinates
    torch.testing.assert_close(zeros.masked_select(inside), other.masked_select(inside), rtol=0, atol=1e-3)
    assert not torch.equal(zeros, other)


def test_batched_erase_equals_torchvision_erase():
    x, g = _images(4)
    top, left = torch.randint(0, 8, (8,), generator=g), torch.randint(0, 10, (8,), generator=g)
    height, width = torch.randint(0, 6, (8,), generator=g), torch.randint(0, 8, (8,), generator=g)
    out = erase(x, top, left, height, width)
    for i in range(8):
        ref = TF2.erase(x[i], int(top[i]), int(left[i]), int(height[i]), int(width[i]), torch.tensor(0.0))
        assert torch.equal(out[i], ref)
    u8 = erase(x.to(torch.uint8), top, left, height, width)
    assert u8.dtype == torch.uint8 and torch.equal(u8, out.to(torch.uint8))


def test_defaults_are_todays_path_and_draws():
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (16, 3, 10, 10), dtype=torch.uint8, generator=g)
    y = torch.randint(0, 3, (16,), generator=g)
    plain = _augmenter(shape=x.shape)
    out, targets = plain(x, y, torch.Generator().manual_seed(5))
    assert torch.equal(out, x) and targets is None and plain.ops == () and not plain.float_output
    for settings in ({"crop_padding": 2, "hflip": True}, {"crop_padding": 3, "padding_mode": "reflect"}):
        ga, gb = torch.Generator().manual_seed(7), torch.Generator().manual_seed(7)
        out, targets = _augmenter(shape=x.shape, **settings)(x, y, ga)
        ref = augment_batch(x, settings["crop_padding"], settings.get("hflip", False), gb,
                            padding_mode=settings.get("padding_mode", "constant"))
        assert out.dtype == torch.uint8 and torch.equal(out, ref) and targets is None
        assert torch.equal(ga.get_state(), gb.get_state())  # the same draws, nothing more
    mask = torch.rand(16, generator=g) < 0.5
    out, _ = _augmenter(shape=x.shape, hflip="alternate")(x, y, None, mask)
    assert torch.equal(out, augment_batch(x, 0, "alternate", None, mask))


ALL_ON = {"crop_padding": 2, "hflip": True, "vflip": 0.3, "rotation": 15, "translate": 0.1, "scale": [0.9, 1.1],
          "shear": 5, "brightness": 0.2, "contrast": 0.2, "saturation": 0.2, "hue": 0.05, "grayscale": 0.2,
          "erasing": 0.5, "mixup": 0.4, "cutmix": 1.0, "per_class": {"b": {"rotation": 30, "hue": 0.2}}}


def test_everything_on_is_reproducible_from_the_generator():
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (32, 3, 16, 16), dtype=torch.uint8, generator=g)
    y = torch.randint(0, 3, (32,), generator=g)
    aug = _augmenter(**ALL_ON)
    assert aug.ops == ("crop", "hflip", "vflip", "affine", "jitter", "grayscale", "erasing", "mixup", "cutmix")
    assert aug.float_output and aug.soft_targets
    a, ta = aug(x, y, torch.Generator().manual_seed(1))
    b, tb = aug(x, y, torch.Generator().manual_seed(1))
    c, _ = aug(x, y, torch.Generator().manual_seed(2))
    assert torch.equal(a, b) and torch.equal(ta, tb) and not torch.equal(a, c)
    assert a.shape == x.shape and a.dtype == torch.float32 and 0 <= a.min() and a.max() <= 255
    assert ta.shape == (32, 3) and ta.dtype == torch.float32
    # The number of draws depends on the batch size alone, not on the labels.
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    aug(x, y, g1)
    aug(x, torch.zeros_like(y), g2)
    assert torch.equal(g1.get_state(), g2.get_state())


def test_per_class_settings_reach_only_that_class():
    g = torch.Generator().manual_seed(0)
    x = torch.randint(20, 200, (60, 3, 12, 12), dtype=torch.uint8, generator=g)
    y = torch.arange(60) % 3
    # global rotation, switched off for "a"; brightness for "c" only
    aug = _augmenter(shape=x.shape, rotation=20, per_class={"a": {"rotation": 0}, "c": {"brightness": 0.5}})
    out, _ = aug(x, y, torch.Generator().manual_seed(1))
    xf = x.float()
    changed = (out != xf).flatten(1).any(1)
    assert not changed[y == 0].any()  # "a": nothing on
    assert changed[y == 1].all() and changed[y == 2].all()
    # "c" was also brightened: its mean changed by a per-image factor in [0.5, 1.5] on top of the rotation
    rot_only, _ = _augmenter(shape=x.shape, rotation=20)(x, y, torch.Generator().manual_seed(1))
    ratio = (out[y == 2] / rot_only[y == 2].clamp_min(1)).flatten(1)
    assert not torch.equal(out[y == 2], rot_only[y == 2]) and torch.equal(out[y == 1], rot_only[y == 1])
    assert 0.5 - 1e-4 <= ratio.median(1).values.min() and ratio.median(1).values.max() <= 1.5 + 1e-4


def test_per_class_names_are_checked_against_the_data_set():
    assert resolve_class_names(["ship", "cat"], ["cat", "dog", "ship"]) == [2, 0]
    with pytest.raises(UserError, match=r"data.augment.per_class: .*'shipp'.* cat, dog, ship"):
        resolve_class_names(["shipp"], ["cat", "dog", "ship"])
    with pytest.raises(UserError, match="no class 'z'"):
        _augmenter(per_class={"z": {"rotation": 10}})


def test_mixup_and_cutmix_targets_match_the_mixed_images():
    # One image per class, each one constant: a pixel's value says which image it came from, and an
    # image's mean is its targets' weighted mean of the constants, exactly when the targets are right.
    b = 40
    values = torch.arange(b, dtype=torch.float32) * 6 + 3  # (B,) class k's value
    x = values.to(torch.uint8).view(b, 1, 1, 1).expand(b, 3, 10, 12).contiguous()
    y = torch.arange(b)
    for settings in ({"mixup": 0.4}, {"cutmix": 1.0}, {"mixup": 1.0, "cutmix": 1.0, "mix_prob": 0.5}):
        aug = _augmenter(classes=[str(k) for k in range(b)], shape=x.shape, **settings)
        out, targets = aug(x, y, torch.Generator().manual_seed(0))
        torch.testing.assert_close(targets.sum(1), torch.ones(b))
        assert (targets >= 0).all() and (targets.count_nonzero(1) <= 2).all()
        torch.testing.assert_close(out.float().mean((1, 2, 3)), targets @ values, rtol=0, atol=1e-3)
        assert (targets.max(1).values < 1).sum() > b // 4  # many images were mixed
        assert out.dtype == (torch.float32 if "mixup" in settings else torch.uint8)
        if "mix_prob" in settings:  # the unmixed images are left alone
            alone = targets.max(1).values == 1
            assert 0 < alone.sum() < b and torch.equal(out[alone].float(), x[alone].float())


def test_cutmix_weight_is_the_pasted_area_after_clipping():
    lam = torch.tensor([0.75, 0.75, 0.0])
    top, left, h, w = cutmix_boxes(lam, torch.tensor([4, 0, 7]), torch.tensor([4, 0, 7]), (8, 8))
    # a 4 x 4 box (1 - lam = 1/4); the same clipped in the corner to 2 x 2; an 8 x 8 box (lam 0)
    # centred on (7, 7) keeps rows and columns 3..7
    assert (h * w).tolist() == [16, 4, 25] and top.tolist() == [2, 0, 3] and left.tolist() == [2, 0, 3]
    x = torch.zeros(64, 1, 8, 8, dtype=torch.uint8)
    x[32:] = 1
    aug = _augmenter(classes=["0", "1"], shape=x.shape, cutmix=0.3)
    y = (torch.arange(64) >= 32).long()
    out, targets = aug(x, y, torch.Generator().manual_seed(0))
    pasted = (out != x).flatten(1).float().mean(1)  # share of pixels from the other class
    other = targets[torch.arange(64), 1 - y]
    torch.testing.assert_close(pasted[pasted > 0], other[pasted > 0])


def test_erasing_cuts_one_black_rectangle_in_range():
    x = torch.full((50, 3, 20, 20), 7, dtype=torch.uint8)
    aug = _augmenter(shape=x.shape, erasing=1.0, erasing_scale=[0.05, 0.2], erasing_ratio=[0.5, 2.0])
    out, _ = aug(x, torch.zeros(50, dtype=torch.long), torch.Generator().manual_seed(0))
    assert out.dtype == torch.uint8 and aug.ops == ("erasing",)
    zero = out[:, 0] == 0  # (B, H, W)
    rows, cols = zero.any(2), zero.any(1)
    assert torch.equal(zero, rows[:, :, None] & cols[:, None, :])  # a rectangle, in every channel
    assert torch.equal(out == 0, zero[:, None].expand_as(out))
    area = zero.flatten(1).float().mean(1)
    assert (area > 0).all() and (area >= 0.03).all() and (area <= 0.25).all()  # 0.05 .. 0.2, rounded sides


def test_one_channel_colour_ops_are_no_ops_and_other_channel_counts_refused():
    x = torch.randint(0, 256, (8, 1, 10, 10), dtype=torch.uint8)
    aug = _augmenter(shape=x.shape, saturation=0.5, hue=0.2, grayscale=1.0)
    out, _ = aug(x, torch.zeros(8, dtype=torch.long), torch.Generator().manual_seed(0))
    assert aug.ops == () and torch.equal(out, x)
    assert _augmenter(shape=x.shape, contrast=0.5).ops == ("jitter",)  # contrast works on gray images
    with pytest.raises(UserError, match="data.augment.brightness needs images of 1 or 3 channels; these have 4"):
        _augmenter(shape=(4, 10, 10), brightness=0.2)


def test_augmented_floats_normalize_like_uint8():
    x = torch.randint(0, 256, (4, 3, 6, 6), dtype=torch.uint8)
    norm = Normalizer((0.5, 0.4, 0.3), (0.2, 0.2, 0.2), torch.device("cpu"))
    out, _ = _augmenter(shape=x.shape, brightness=0.0001)(x, torch.zeros(4, dtype=torch.long), None)
    assert out.dtype == torch.float32
    torch.testing.assert_close(norm(out), norm(x), rtol=0, atol=0.01)


def test_affine_parameters_follow_the_class_ranges():
    # The drawn shifts: a one-pixel dot at the centre of a 21 x 21 image moves by the translation
    # only (a rotation about the centre leaves it in place).
    x = torch.zeros(200, 1, 21, 21, dtype=torch.uint8)
    x[:, :, 10, 10] = 255
    aug = _augmenter(classes=["a", "b"], shape=x.shape, translate=[0.2, 0.0], rotation=30,
                     per_class={"b": {"translate": 0}})
    y = torch.arange(200) % 2
    out, _ = aug(x, y, torch.Generator().manual_seed(0))
    col = (out.sum((1, 2)) * torch.arange(21.0)).sum(1) / out.sum((1, 2, 3)) - 10  # dot's x shift, pixels
    assert col[y == 1].abs().max() < 1e-3
    shifts = col[y == 0]
    assert shifts.abs().max() <= 4.2 + 1e-3 and shifts.min() < -2 and shifts.max() > 2  # in [-0.2 * 21, 0.2 * 21]
    assert math.isclose(shifts.round().sub(shifts).abs().max().item(), 0, abs_tol=1e-3)  # whole pixels
