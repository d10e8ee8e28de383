"""Batched augmentation and normalization on the training device.

Whole batches are cropped and flipped at once with tensor indexing: no PIL and no per-image
Python in the training step. ``random_crop`` gives exactly the image that torchvision's
``RandomCrop(size, padding=p, padding_mode=m)`` gives for the same offsets, in every padding
mode; ``hflip`` exactly the image of ``RandomHorizontalFlip`` for the same coin flips (tests
check both).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _source_index(i: torch.Tensor, size: int, mode: str) -> torch.Tensor:
    """Positions ``i`` (any shape, int64, in [-pad, size + pad)) of a padded row or column mapped to
    the source pixel that torchvision's ``pad(padding_mode=mode)`` puts there (edge, reflect, symmetric)."""
    if mode == "edge":
        return i.clamp(0, size - 1)
    if mode == "reflect":  # ... 2 1 | 0 1 2 ... n-1 | n-2 n-3 ...  (the border pixel is not repeated)
        return torch.where(i < 0, -i, torch.where(i >= size, 2 * (size - 1) - i, i))
    # symmetric: ... 1 0 | 0 1 2 ... n-1 | n-1 n-2 ...  (the border pixel is repeated)
    return torch.where(i < 0, -i - 1, torch.where(i >= size, 2 * size - 1 - i, i))


PADDING_MODES = ("constant", "edge", "reflect", "symmetric")


def max_crop_padding(mode: str, size: int) -> int | None:
    """The widest padding ``mode`` can fill on an image side of ``size`` pixels (torchvision's own
    limit): a mirrored border cannot be wider than the image it mirrors, less the border pixel
    that reflect does not repeat. None: no limit (constant and edge fill any width)."""
    return {"reflect": size - 1, "symmetric": size}.get(mode)


def crop_with_offsets(x: torch.Tensor, pad: int, dy: torch.Tensor, dx: torch.Tensor,
                      mode: str = "constant") -> torch.Tensor:
    """Pad ``x`` (B, C, H, W) by ``pad`` pixels (``mode``: constant = zeros, or edge / reflect /
    symmetric as torchvision's ``pad``) and cut the (H, W) window whose top-left corner is
    (dy[b], dx[b]) in the padded image, 0 <= dy, dx <= 2*pad. Returns (B, C, H, W), same dtype."""
    b, c, h, w = x.shape
    rows = (dy[:, None] + torch.arange(h, device=x.device))[:, None, :, None]  # (B, 1, H, 1), padded coords
    cols = (dx[:, None] + torch.arange(w, device=x.device))[:, None, None, :]  # (B, 1, 1, W)
    bi = torch.arange(b, device=x.device)[:, None, None, None]
    ci = torch.arange(c, device=x.device)[None, :, None, None]
    if mode == "constant":
        padded = F.pad(x, (pad, pad, pad, pad))  # (B, C, H+2p, W+2p), zero fill like RandomCrop
        return padded[bi, ci, rows, cols]
    if mode not in PADDING_MODES:
        raise ValueError(f"padding mode {mode!r}: use one of {', '.join(PADDING_MODES)}")
    # The other modes read every output pixel straight from the source image (no padded copy):
    # padded coordinate r maps to source row _source_index(r - pad).
    return x[bi, ci, _source_index(rows - pad, h, mode), _source_index(cols - pad, w, mode)]


def random_crop(x: torch.Tensor, pad: int, gen: torch.Generator | None = None, mode: str = "constant") -> torch.Tensor:
    """Random crop after padding (``mode`` as :func:`crop_with_offsets`), one offset pair per image,
    drawn from ``gen``."""
    if pad <= 0:
        return x
    off = torch.randint(0, 2 * pad + 1, (2, x.shape[0]), device=x.device, generator=gen)
    return crop_with_offsets(x, pad, off[0], off[1], mode)


def flip_with_mask(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mirror the images where ``mask`` (B,) bool is True."""
    return torch.where(mask[:, None, None, None], x.flip(3), x)


def alternating_flip_mask(base: torch.Tensor, idx: torch.Tensor, epoch: int) -> torch.Tensor:
    """airbench's alternating flip: ``base`` (N,) bool is each training image's flip in epoch 0 (a fair
    coin per image, drawn once); in epoch e the image is flipped iff ``base XOR (e odd)``, so every
    image is seen mirrored in exactly one of any two consecutive epochs. Returns the (B,) mask of the
    batch ``idx`` (B,) int64. Pure function of (base, epoch): a resumed run gets the same flips."""
    return base[idx] ^ bool(epoch % 2)


def random_hflip(x: torch.Tensor, gen: torch.Generator | None = None) -> torch.Tensor:
    """Horizontal flip with probability 0.5 per image."""
    mask = torch.rand(x.shape[0], device=x.device, generator=gen) < 0.5
    return flip_with_mask(x, mask)


class Normalizer:
    """uint8 (B, C, H, W) -> float (B, C, H, W): (x / 255 - mean) / std fused into one multiply-add."""

    def __init__(self, mean, std, device: torch.device, dtype: torch.dtype = torch.float32):
        m = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
        s = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
        self.scale = (1.0 / (255.0 * s)).to(device)
        self.shift = (-m / s).to(device)
        self.mean, self.std = tuple(float(v) for v in mean), tuple(float(v) for v in std)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return torch.addcmul(self.shift, x.float(), self.scale)


def augment_batch(x: torch.Tensor, crop_padding: int, hflip: bool | str, gen: torch.Generator | None,
                  flip_mask: torch.Tensor | None = None, padding_mode: str = "constant") -> torch.Tensor:
    """The configured augmentation for one uint8 training batch on its device. ``hflip``: True =
    random flips from ``gen``; "alternate" = the given ``flip_mask`` (B,) bool (see
    :func:`alternating_flip_mask`); False = none. ``padding_mode``: the crop's border fill."""
    if crop_padding:
        x = random_crop(x, crop_padding, gen, padding_mode)
    if hflip == "alternate":
        if flip_mask is None:
            raise ValueError("hflip = 'alternate' needs the batch's flip_mask")
        x = flip_with_mask(x, flip_mask)
    elif hflip is True:
        x = random_hflip(x, gen)
    return x
