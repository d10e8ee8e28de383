"""Batched augmentation and normalization on the training device.

Whole batches are augmented at once with tensor ops: no PIL and no per-image Python in the
training step. ``random_crop`` gives exactly the image that torchvision's
``RandomCrop(size, padding=p, padding_mode=m)`` gives for the same offsets, in every padding
mode; ``hflip`` exactly the image of ``RandomHorizontalFlip`` for the same coin flips.

``Augmenter`` adds, per image with parameters drawn as (B,) tensors: vertical flips, one affine
warp (rotation, translate, scale, shear: a (B, 2, 3) matrix batch, ``affine_grid`` +
``grid_sample``), colour jitter, grayscale, random erasing, and mixup / cutmix with soft targets;
each setting may differ per class (a (K,) table indexed by the labels). Each kernel gives
torchvision.transforms.v2.functional's image for the same parameters, to float rounding (tests
compare them image by image: tests/data/test_augment.py).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterable, Sequence

import torch
import torch.nn.functional as F

from ..config import AugmentConfig, SampleAugment
from ..errors import UserError, shown
from ._registry import short_list


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


def flip_with_mask(x: torch.Tensor, mask: torch.Tensor, dim: int = 3) -> torch.Tensor:
    """Mirror the images where ``mask`` (B,) bool is True: left-right (``dim`` = 3) or upside down (2)."""
    return torch.where(mask[:, None, None, None], x.flip(dim), x)


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
    """uint8 (B, C, H, W), or float in [0, 255] (what an Augmenter gives) -> float (B, C, H, W):
    (x / 255 - mean) / std fused into one multiply-add."""

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


# ------------------------------------------------------------------------ per-image kernels
# Each takes a float batch (B, C, H, W) of pixel values in [0, PIXEL_MAX] and one parameter per
# image as a (B,) tensor, and gives what torchvision.transforms.v2.functional gives for each image
# with that parameter (tests/data/test_augment.py compares them image by image).
PIXEL_MAX = 255.0  # the scale of the float images: uint8 values as floats, which Normalizer takes
LUMA = (0.2989, 0.587, 0.114)  # R, G, B weights of the gray value (ITU-R 601-2, torchvision's rgb_to_grayscale)


@functools.lru_cache(maxsize=8)
def _luma(device: torch.device) -> torch.Tensor:
    """LUMA as a (3,) float32 tensor, made once per device (not copied to it every batch)."""
    return torch.tensor(LUMA, device=device)


def to_gray(x: torch.Tensor) -> torch.Tensor:
    """The gray value (B, 1, H, W) of each pixel of ``x`` (B, 3, H, W); a 1-channel batch is its own."""
    if x.shape[1] == 1:
        return x
    b, _, h, w = x.shape
    # (3,) @ (B, 3, H*W): one matrix product, 6-8x the speed of three channel views (docs/performance.md)
    return torch.matmul(_luma(x.device), x.flatten(2)).view(b, 1, h, w)


def _blend(x: torch.Tensor, other: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """factor * x + (1 - factor) * other, clipped to the pixel range; ``factor`` (B,). Factor 1 gives
    ``x`` exactly."""
    f = factor.view(-1, 1, 1, 1)
    return torch.addcmul(other * (1 - f), x, f).clamp_(0, PIXEL_MAX)


def adjust_brightness(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """Pixel values times ``factor`` (B,), clipped (torchvision's adjust_brightness)."""
    return (x * factor.view(-1, 1, 1, 1)).clamp_(0, PIXEL_MAX)


def adjust_contrast(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """A blend with each image's mean gray value (torchvision's adjust_contrast)."""
    return _blend(x, to_gray(x).mean(dim=(1, 2, 3), keepdim=True), factor)


def adjust_saturation(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """A blend with each image's gray version (torchvision's adjust_saturation); 1 channel: unchanged."""
    return x if x.shape[1] == 1 else _blend(x, to_gray(x), factor)


def _rgb_to_hsv(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(B, 3, H, W) RGB in [0, 1] -> hue, saturation, value, each (B, H, W) in [0, 1]: torchvision's
    (Pillow's) formula, which takes the hue from the largest channel, R before G before B."""
    r, g, b = x.unbind(1)
    minc, maxc = torch.aminmax(x, dim=1)
    spread = maxc - minc
    gray = spread == 0  # hue and saturation 0 (and no division by 0 below)
    s = spread / torch.where(gray, 1.0, maxc)
    spread = torch.where(gray, 1.0, spread)
    # 6 * hue: (g - b) / spread when R is the largest, 2 + (b - r) / spread for G, 4 + (r - g) / spread for B
    h6 = torch.where(maxc == r, g - b, torch.where(maxc == g, b - r + 2.0 * spread, r - g + 4.0 * spread))
    return torch.remainder(h6 / (6.0 * spread), 1.0), s, maxc


def _hsv_to_rgb(h: torch.Tensor, s: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Hue, saturation, value (B, H, W) in [0, 1] -> RGB (B, 3, H, W) in [0, 1]. The closed form
    channel = v - v * s * clamp(min(k, 4 - k), 0, 1), k = (n + 6 h) mod 6 with n = 5, 3, 1 for R, G,
    B: the same values as torchvision's table of six hue sectors (to float rounding), in elementwise
    ops instead of a gather, about 2x its speed (docs/performance.md)."""
    n = 5.0 - 2.0 * torch.arange(3, device=h.device).view(1, 3, 1, 1)  # (1, 3, 1, 1): 5, 3, 1
    k = torch.remainder(n + 6.0 * h.unsqueeze(1), 6.0)  # (B, 3, H, W)
    ramp = torch.minimum(k, 4.0 - k).clamp_(0.0, 1.0)
    return v.unsqueeze(1) - (v * s).unsqueeze(1) * ramp


def adjust_hue(x: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """Hue turned by ``shift`` (B,) in [-0.5, 0.5] (a full turn is 1; torchvision's adjust_hue). Images
    with shift 0 come back unchanged (the round trip through HSV would move them by float rounding);
    1 channel: unchanged."""
    if x.shape[1] == 1:
        return x
    h, s, v = _rgb_to_hsv(x / PIXEL_MAX)
    turned = _hsv_to_rgb((h + shift.view(-1, 1, 1)).remainder_(1.0), s, v) * PIXEL_MAX
    return torch.where((shift != 0).view(-1, 1, 1, 1), turned, x)


def grayscale(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The images where ``mask`` (B,) is True turned gray, still 3 channels (torchvision's
    rgb_to_grayscale(num_output_channels=3)); 1 channel: unchanged."""
    if x.shape[1] == 1:
        return x
    return torch.where(mask.view(-1, 1, 1, 1), to_gray(x).expand_as(x), x)


def affine_theta(angle: torch.Tensor, translate: torch.Tensor, scale: torch.Tensor, shear: torch.Tensor,
                 size: tuple[int, int]) -> torch.Tensor:
    """The (B, 2, 3) matrices for ``F.affine_grid(align_corners=False)`` of torchvision's
    ``affine(img, angle, translate, scale, shear)`` about the image centre: ``angle`` (B,) degrees,
    ``translate`` (B, 2) pixels (x right, y down), ``scale`` (B,), ``shear`` (B, 2) degrees (x, y);
    ``size`` = (H, W). torchvision's ``_get_inverse_affine_matrix`` maps an output pixel to the input
    pixel it reads, in pixel coordinates centred on the image; the last step rescales that map to
    grid_sample's coordinates, where the image spans [-1, 1] (x / (W / 2), y / (H / 2))."""
    h, w = size
    rot = torch.deg2rad(angle)
    sx, sy = torch.deg2rad(shear).unbind(1)
    # rotation . shear without the scale, as torchvision writes it
    a = torch.cos(rot - sy) / torch.cos(sy)
    b = -(a * torch.tan(sx) + torch.sin(rot))
    c = torch.sin(rot - sy) / torch.cos(sy)
    d = torch.cos(rot) - c * torch.tan(sx)
    # its inverse divided by the scale (det [[a, b], [c, d]] = 1), then the translation undone
    m0, m1, m3, m4 = d / scale, -b / scale, -c / scale, a / scale
    tx, ty = translate.unbind(1)
    m2, m5 = -(m0 * tx + m1 * ty), -(m3 * tx + m4 * ty)  # pixels
    theta = torch.stack((m0, m1 * (h / w), m2 * (2.0 / w), m3 * (w / h), m4, m5 * (2.0 / h)), dim=1)
    return theta.view(-1, 2, 3)


# The affine's fill outside the image for each crop padding_mode: grid_sample's zeros, border and
# reflection. grid_sample (align_corners=False) mirrors about the image's outer edge, which repeats
# the border pixel: that is "symmetric", and the closest it has to "reflect".
GRID_PADDING = {"constant": "zeros", "edge": "border", "reflect": "reflection", "symmetric": "reflection"}


@functools.lru_cache(maxsize=16)
def _base_grid(h: int, w: int, device: torch.device) -> torch.Tensor:
    """(1, H*W, 3): each pixel's centre (x, y, 1) in grid_sample's coordinates (align_corners=False:
    the image spans [-1, 1], pixel i's centre is at (2i + 1) / size - 1), row by row."""
    ys = (2 * torch.arange(h, device=device) + 1) / h - 1
    xs = (2 * torch.arange(w, device=device) + 1) / w - 1
    gy, gx = torch.meshgrid(ys, xs, indexing="ij")  # (H, W) each
    return torch.stack((gx, gy, torch.ones_like(gx)), dim=-1).view(1, h * w, 3)


def affine(x: torch.Tensor, theta: torch.Tensor, padding_mode: str = "constant") -> torch.Tensor:
    """Warp the float batch ``x`` (B, C, H, W) by ``theta`` (B, 2, 3) from :func:`affine_theta`,
    bilinear; outside the image: zeros (constant) or as :data:`GRID_PADDING` says."""
    b, _, h, w = x.shape
    # (B, H, W, 2): where each output pixel reads. F.affine_grid(theta, x.shape, align_corners=False)
    # to float rounding, as one matrix product with a cached base grid: 2-3x its speed (docs/performance.md).
    grid = torch.matmul(_base_grid(h, w, x.device), theta.transpose(1, 2)).view(b, h, w, 2)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode=GRID_PADDING[padding_mode], align_corners=False)


def box_mask(top: torch.Tensor, left: torch.Tensor, height: torch.Tensor, width: torch.Tensor,
             size: tuple[int, int]) -> torch.Tensor:
    """(B, 1, H, W) bool, True inside each image's rectangle: rows [top, top + height), columns
    [left, left + width); all (B,) int64. A rectangle of height or width 0 is empty."""
    rows = torch.arange(size[0], device=top.device)
    cols = torch.arange(size[1], device=top.device)
    in_rows = (rows >= top[:, None]) & (rows < (top + height)[:, None])  # (B, H)
    in_cols = (cols >= left[:, None]) & (cols < (left + width)[:, None])  # (B, W)
    return in_rows[:, None, :, None] & in_cols[:, None, None, :]


def erase(x: torch.Tensor, top: torch.Tensor, left: torch.Tensor, height: torch.Tensor,
          width: torch.Tensor) -> torch.Tensor:
    """Each image's rectangle (see :func:`box_mask`) set to 0 in every channel (torchvision's
    erase(img, i, j, h, w, v=0)); any dtype."""
    return x.masked_fill(box_mask(top, left, height, width, x.shape[-2:]), 0)


def sample_beta(alpha: torch.Tensor, gen: torch.Generator | None) -> torch.Tensor:
    """One Beta(alpha, alpha) draw per entry of ``alpha`` (B,) > 0, from ``gen``: X / (X + Y) of two
    Gamma(alpha) draws (torch.distributions takes no generator; torch._standard_gamma does). For a
    tiny alpha both gammas can underflow to 0; those draws are 0.5."""
    g = torch._standard_gamma(alpha[:, None].expand(-1, 2).contiguous(), generator=gen)  # (B, 2)
    total = g.sum(1)
    return torch.where(total > 0, g[:, 0] / total.clamp_min(torch.finfo(g.dtype).tiny), 0.5)


def cutmix_boxes(lam: torch.Tensor, cy: torch.Tensor, cx: torch.Tensor, size: tuple[int, int]
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """CutMix's boxes (timm's ``rand_bbox``): sides sqrt(1 - lam) times the image's, centred on
    (cy, cx) (B,) int64 pixels, clipped to the image. Returns top, left, height, width (B,) int64;
    the pasted share of the image is height * width / (H * W), which clipping can make smaller
    than 1 - lam (the targets use it, not lam)."""
    h, w = size
    cut = torch.sqrt(1.0 - lam)
    half_h, half_w = (h * cut).long() // 2, (w * cut).long() // 2
    top, bottom = (cy - half_h).clamp(0, h), (cy + half_h).clamp(0, h)
    left, right = (cx - half_w).clamp(0, w), (cx + half_w).clamp(0, w)
    return top, left, bottom - top, right - left


# ------------------------------------------------------------------------------ Augmenter
def resolve_class_names(names: Iterable[str], class_names: Sequence[str],
                        where: str = "data.augment.per_class") -> list[int]:
    """The indices of ``names`` among the data set's ``class_names``; an unknown name is a UserError
    that says where it was given and lists the valid names."""
    index = {name: i for i, name in enumerate(class_names)}
    unknown = [n for n in names if n not in index]
    if unknown:
        raise UserError(f"{where}: the data set has no class {shown(unknown[0])}; its classes are "
                        f"{short_list(list(class_names))}.")
    return [index[n] for n in names]


# Per-image settings that switch an op on, and the value that leaves it off.
OFF = {"rotation": 0.0, "translate": (0.0, 0.0), "scale": (1.0, 1.0), "shear": 0.0, "brightness": 0.0,
       "contrast": 0.0, "saturation": 0.0, "hue": 0.0, "grayscale": 0.0, "vflip": 0.0, "erasing": 0.0}
COLOR_ONLY = ("saturation", "hue", "grayscale")  # no effect on 1-channel images (as in torchvision)
AFFINE_KEYS = ("rotation", "translate", "scale", "shear")
JITTER_KEYS = ("brightness", "contrast", "saturation", "hue")


def factor_range(v: float) -> tuple[float, float]:
    """ColorJitter's range of a brightness, contrast or saturation factor for a strength ``v``."""
    return max(0.0, 1.0 - v), 1.0 + v


# The per-class ranges [low, high] that the uniform draws of each op are scaled to: one row per
# drawn parameter, from a class's settings ``s`` and the image side lengths (H, W).
AFFINE_RANGES = (
    lambda s, h, w: (-s["rotation"], s["rotation"]),  # angle, degrees
    lambda s, h, w: (-s["translate"][0] * w, s["translate"][0] * w),  # x shift, pixels (rounded after the draw)
    lambda s, h, w: (-s["translate"][1] * h, s["translate"][1] * h),  # y shift, pixels
    lambda s, h, w: tuple(s["scale"]),  # zoom factor
    lambda s, h, w: (-s["shear"], s["shear"]),  # x shear, degrees
)
JITTER_RANGES = (
    lambda s, h, w: factor_range(s["brightness"]),
    lambda s, h, w: factor_range(s["contrast"]),
    lambda s, h, w: factor_range(s["saturation"]),
    lambda s, h, w: (-s["hue"], s["hue"]),  # hue shift, turns
)
JITTER_OPS = (adjust_brightness, adjust_contrast, adjust_saturation, adjust_hue)  # in this order: ColorJitter's listing
ERASE_ATTEMPTS = 10  # rectangles tried per image, as torchvision's RandomErasing


class Augmenter:
    """The configured augmentation of training batches, built once per run and called per batch.

    ``Augmenter(cfg, class_names, image_shape, device)(x, y, gen, flip_mask)`` takes a uint8 batch
    ``x`` (B, C, H, W) with its labels ``y`` (B,) int64, both on ``device``, and returns
    ``(images, soft_targets)``:

    - images: (B, C, H, W) uint8 while every op that is on keeps integer pixels (crop, flips,
      erasing, cutmix alone); float32 in [0, 255] once an affine, colour, grayscale or mixup op is
      on (:attr:`float_output`). ``Normalizer`` takes either.
    - soft_targets: (B, K) float32 rows summing to 1 when mixup or cutmix is on
      (:attr:`soft_targets`), else None (use ``y``).

    Order: crop, hflip (exactly :func:`augment_batch`: its draws, its images), vflip, one affine
    (rotation, translate, scale, shear), colour jitter (brightness, contrast, saturation, hue in
    this fixed order; torchvision's ColorJitter shuffles the order per image), grayscale, erasing,
    then mixup / cutmix. Each op that is on draws its parameters for the whole batch from ``gen``
    as tensors, in this order and of a size set by the batch alone, so a run is reproducible from
    the generator's seed; with only the crop and flip on, the generator sees exactly today's draws.
    Per-class settings are (K, ...) tables indexed by the labels: no Python loop over images.
    """

    def __init__(self, cfg: AugmentConfig, class_names: Sequence[str], image_shape: Sequence[int],
                 device: torch.device | str = "cpu"):
        """``image_shape``: (C, H, W) of the training images (a longer shape: its last three)."""
        self.cfg = cfg
        self.num_classes = len(class_names)
        self.channels, self.size = int(image_shape[-3]), (int(image_shape[-2]), int(image_shape[-1]))
        device = torch.device(device)
        h, w = self.size
        rows = self.class_settings(cfg, class_names)  # K dicts: each class's per-image settings

        def on(*keys: str) -> bool:  # is an op on for any class? (colour-only ops never on 1 channel)
            keys = tuple(k for k in keys if not (self.channels == 1 and k in COLOR_ONLY))
            return any(row[k] != OFF[k] for row in rows for k in keys)

        color = [k for k in (*JITTER_KEYS, "grayscale") if on(k)]
        if color and self.channels not in (1, 3):
            raise UserError(f"data.augment.{color[0]} needs images of 1 or 3 channels; these have {self.channels}.")

        def table(fn) -> torch.Tensor:  # the per-class values of fn(row): (K, ...) float32 on the device
            return torch.tensor([fn(row) for row in rows], dtype=torch.float32, device=device)

        self._prob = {k: table(lambda r, k=k: r[k]) for k in ("vflip", "grayscale", "erasing")}  # (K,) each
        self._affine_range = table(lambda r: [f(r, h, w) for f in AFFINE_RANGES])  # (K, 5, 2)
        self._jitter_range = table(lambda r: [f(r, h, w) for f in JITTER_RANGES])  # (K, 4, 2)
        self._jitter_on = [on(k) for k in JITTER_KEYS]
        self._affine_for_all = all(any(row[k] != OFF[k] for k in AFFINE_KEYS) for row in rows)
        self._erase_area = table(lambda r: [a * h * w for a in r["erasing_scale"]])  # (K, 2), pixels
        self._erase_log_ratio = table(lambda r: [math.log(a) for a in r["erasing_ratio"]])  # (K, 2)
        # (name, stage, whether it needs float pixels, whether it is on), in the order they run.
        stages = [("vflip", self._vflip, False, on("vflip")),
                  ("affine", self._affine, True, on(*AFFINE_KEYS)),
                  ("jitter", self._jitter, True, any(self._jitter_on)),
                  ("grayscale", self._grayscale, True, on("grayscale")),
                  ("erasing", self._erase, False, on("erasing"))]
        self._stages = [fn for _, fn, _, active in stages if active]
        self._cut_share = 0.5 if cfg.mixup and cfg.cutmix else float(cfg.cutmix > 0)  # share of mixes by cutmix
        self.soft_targets = bool(cfg.mixup or cfg.cutmix)
        self.float_output = any(f for _, _, f, active in stages if active) or cfg.mixup > 0
        batch_ops = [("crop", cfg.crop_padding), ("hflip", cfg.hflip), *((n, a) for n, _, _, a in stages),
                     ("mixup", cfg.mixup), ("cutmix", cfg.cutmix)]
        self.ops = tuple(name for name, active in batch_ops if active)  # the ops that are on, in order: for logs

    @staticmethod
    def class_settings(cfg: AugmentConfig, class_names: Sequence[str]) -> list[dict]:
        """Each class's per-image settings (the keys of ``SampleAugment``): the global values with the
        class's ``per_class`` entry over them. An unknown class name is a UserError."""
        base = {k: getattr(cfg, k) for k in SampleAugment.model_fields}
        rows = [dict(base) for _ in class_names]
        for name, i in zip(cfg.per_class, resolve_class_names(cfg.per_class, class_names)):
            rows[i].update((k, getattr(cfg.per_class[name], k)) for k in cfg.per_class[name].model_fields_set)
        return rows

    def __call__(self, x: torch.Tensor, y: torch.Tensor, gen: torch.Generator | None,
                 flip_mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Augment the uint8 batch ``x`` (B, C, H, W) of labels ``y`` (B,) int64; ``flip_mask``: the
        (B,) bool flips of hflip = "alternate". Returns (images, soft targets (B, K) or None)."""
        cfg = self.cfg
        x = augment_batch(x, cfg.crop_padding, cfg.hflip, gen, flip_mask, cfg.padding_mode)
        for stage in self._stages:
            x = stage(x, y, gen)
        if not self.soft_targets:
            return x, None
        return self._mix(x, y, gen)

    # Each stage: (B, C, H, W) images, (B,) labels, generator -> (B, C, H, W) images.
    def _uniform(self, ranges: torch.Tensor, y: torch.Tensor, gen: torch.Generator | None) -> torch.Tensor:
        """Per image, one uniform draw in each of its class's ranges ``ranges`` (K, P, 2): (B, P)."""
        lo, hi = ranges[y].unbind(2)  # (B, P) each
        return lo + (hi - lo) * torch.rand(lo.shape, device=lo.device, generator=gen)

    def _coin(self, p: torch.Tensor, y: torch.Tensor, gen: torch.Generator | None) -> torch.Tensor:
        """(B,) bool, True with each image's class probability from ``p`` (K,)."""
        return torch.rand(y.shape, device=y.device, generator=gen) < p[y]

    def _vflip(self, x, y, gen):
        return flip_with_mask(x, self._coin(self._prob["vflip"], y, gen), dim=2)

    def _affine(self, x, y, gen):
        x = x.float()
        p = self._uniform(self._affine_range, y, gen)  # (B, 5): angle, tx, ty, scale, shear
        angle, shift, scale = p[:, 0], p[:, 1:3].round(), p[:, 3]  # whole-pixel shifts, as RandomAffine
        shear = torch.stack((p[:, 4], torch.zeros_like(angle)), dim=1)  # (B, 2): x shear only
        warped = affine(x, affine_theta(angle, shift, scale, shear, self.size), self.cfg.padding_mode)
        if self._affine_for_all:
            return warped
        # Images whose draw is the identity (their class has the affine off) stay exactly as they were.
        still = (angle == 0) & (shift == 0).all(1) & (scale == 1) & (p[:, 4] == 0)
        return torch.where(still[:, None, None, None], x, warped)

    def _jitter(self, x, y, gen):
        x = x.float()
        factors = self._uniform(self._jitter_range, y, gen)  # (B, 4): brightness, contrast, saturation, hue
        for i, (op, active) in enumerate(zip(JITTER_OPS, self._jitter_on)):
            if active:  # a factor of 1 (a hue shift of 0) leaves an image unchanged
                x = op(x, factors[:, i])
        return x

    def _grayscale(self, x, y, gen):
        return grayscale(x.float(), self._coin(self._prob["grayscale"], y, gen))

    def _erase(self, x, y, gen):
        """RandomErasing per image: ERASE_ATTEMPTS rectangles drawn for every image, the first that
        fits is erased (none fits: the image is left alone, as torchvision does)."""
        h, w = self.size
        apply = self._coin(self._prob["erasing"], y, gen)
        u = torch.rand(len(y), 2, ERASE_ATTEMPTS, device=y.device, generator=gen)
        area_lo, area_hi = self._erase_area[y].unbind(1)  # (B,) pixels
        ratio_lo, ratio_hi = self._erase_log_ratio[y].unbind(1)
        area = area_lo[:, None] + (area_hi - area_lo)[:, None] * u[:, 0]  # (B, A) pixels
        ratio = torch.exp(ratio_lo[:, None] + (ratio_hi - ratio_lo)[:, None] * u[:, 1])  # (B, A) height / width
        eh, ew = torch.sqrt(area * ratio).round().long(), torch.sqrt(area / ratio).round().long()  # (B, A)
        fits = (eh < h) & (ew < w)
        first = fits.long().argmax(1, keepdim=True)  # (B, 1): the first rectangle that fits
        eh, ew = eh.gather(1, first).squeeze(1), ew.gather(1, first).squeeze(1)  # (B,)
        at = torch.rand(len(y), 2, device=y.device, generator=gen)
        top = torch.minimum((at[:, 0] * (h - eh + 1)).long(), h - eh)  # uniform in [0, h - eh]
        left = torch.minimum((at[:, 1] * (w - ew + 1)).long(), w - ew)
        keep = ~(apply & fits.any(1))
        return erase(x, top, left, eh.masked_fill(keep, 0), ew.masked_fill(keep, 0))

    def _mix(self, x: torch.Tensor, y: torch.Tensor, gen: torch.Generator | None
             ) -> tuple[torch.Tensor, torch.Tensor]:
        """Mixup and cutmix per image: image b is mixed (probability mix_prob) with image
        partner[b] of a random permutation of the batch; the targets get the same weights."""
        cfg, (h, w), b = self.cfg, self.size, len(y)
        partner = torch.randperm(b, device=y.device, generator=gen)  # (B,)
        u = torch.rand(b, 4, device=y.device, generator=gen)  # mixed?, cutmix?, box centre row, column
        mixed = u[:, 0] < cfg.mix_prob
        cut = mixed & (u[:, 1] < self._cut_share)
        alpha = torch.where(cut, cfg.cutmix, cfg.mixup).clamp_min(1e-6)  # (B,); alpha of the other op for unmixed
        lam = sample_beta(alpha, gen)  # (B,) weight of the image's own content
        top, left, bh, bw = cutmix_boxes(lam, (u[:, 2] * h).long().clamp_(max=h - 1),
                                         (u[:, 3] * w).long().clamp_(max=w - 1), self.size)
        bh, bw = bh * cut, bw * cut  # no box for the images that cutmix does not mix
        lam_mix = torch.where(mixed & ~cut, lam, 1.0)  # (B,)
        own = torch.where(cut, 1.0 - (bh * bw).float() / (h * w), lam_mix)  # (B,) the own image's share
        other = x[partner]
        if cfg.mixup:
            lm = lam_mix.view(-1, 1, 1, 1)
            x = x.float() * lm + other.float() * (1.0 - lm)  # lam 1: the image itself, exactly
        if cfg.cutmix:
            x = torch.where(box_mask(top, left, bh, bw, self.size), other, x)
        targets = torch.zeros(b, self.num_classes, device=y.device)  # (B, K): own share + partner's share
        targets.scatter_add_(1, y[:, None], own[:, None]).scatter_add_(1, y[partner][:, None], (1.0 - own)[:, None])
        return x, targets
