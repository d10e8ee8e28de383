"""From raw images to an experiment's splits: subset, sample, split reproducibly, normalize.

``load_data(cfg, seed)`` asks the ``data.dataset`` loader for ``RawData``, then subsets classes,
samples ``per_class``, makes stratified test/validation splits (all seeded), converts to
(N, C, H, W) uint8 tensors, resizes when asked, and computes normalization statistics on the
training part only.

Every split carries ``index``: rows of the *source pool* = concat(official train, official test)
of the raw arrays, before any class subsetting, so a run can record exactly which image went where.
"""

from __future__ import annotations

import warnings
from collections import Counter
from dataclasses import dataclass

import numpy as np
import torch

from ..config import DataConfig
from ..errors import UserError, shown
from ..limits import check_fits, fmt_bytes
from ._registry import DATASETS, RawData, short_list

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class Split:
    """One split as tensors, plus the source-pool rows it was taken from."""

    x: torch.Tensor  # uint8 (N, C, H, W), CPU, contiguous
    y: torch.Tensor  # int64 (N,)
    index: np.ndarray  # int64 (N,): rows of concat(official train, official test)

    def __len__(self) -> int:
        return int(self.y.shape[0])


@dataclass
class DataSplits:
    """The train/val/test splits of one experiment and what a model needs to know about them."""

    train: Split
    val: Split | None  # None when val_fraction == 0
    test: Split
    class_names: list[str]
    mean: tuple[float, ...]  # per channel, for pixels scaled to [0, 1]
    std: tuple[float, ...]
    input_shape: tuple[int, int, int]  # (C, H, W)
    source: str

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def splits(self) -> dict[str, Split]:
        """The present splits by name (val left out when there is none)."""
        out = {"train": self.train, "val": self.val, "test": self.test}
        return {k: v for k, v in out.items() if v is not None}

    def indices(self) -> dict[str, np.ndarray]:
        """Source-pool rows of each present split: ``{"train": ..., "val": ..., "test": ...}``."""
        return {k: v.index for k, v in self.splits().items()}

    def class_counts(self, split: str = "train") -> np.ndarray:
        """Images per class (int64, length num_classes) in ``split``."""
        present = self.splits()
        if split not in present:
            raise UserError(
                f"no {split!r} split in this data: the splits are {', '.join(present)}"
                + (" (val_fraction = 0 makes no validation split)." if split == "val" else ".")
            )
        return np.bincount(present[split].y.numpy(), minlength=self.num_classes).astype(np.int64)



def load_data(cfg: DataConfig, seed: int) -> DataSplits:
    """Load ``cfg.dataset``, subset, sample and split it reproducibly from ``seed``.

    Steps: loader -> optional train+test pooling -> class subset (relabelled 0..k-1 in the given
    order) -> ``per_class`` sample of the part being split -> test split (the official one when the
    source has it, it is not pooled and ``test_fraction`` is None; else stratified with
    ``test_fraction`` or 0.2 from the part being split) -> stratified ``val_fraction`` of the rest ->
    (N, C, H, W) uint8 tensors, resized to ``image_size`` -> normalization statistics from the
    training part. When ``test_fraction`` is set and the source has an official test split that is
    not pooled, the official test split is not used. Bad input raises ``UserError``.
    """
    loader = DATASETS.get(cfg.dataset, "data.dataset")
    raw = loader(cfg)
    _check_raw(raw, cfg.dataset)
    rng = np.random.default_rng(seed & (2**64 - 1))  # negative seeds are valid config values

    n_train, n_test = raw.n_train, raw.n_test
    pool_y = raw.train_y if raw.test_y is None else np.concatenate([raw.train_y, raw.test_y])

    # Class subset: old label -> new label, -1 for classes left out.
    keep, class_names = _class_subset(cfg.classes, raw.class_names, cfg.dataset)
    if len(class_names) < 2:
        raise UserError(f"data set {cfg.dataset!r} ({raw.source}) has {len(class_names)} class"
                        f"{'' if len(class_names) == 1 else 'es'} ({', '.join(class_names) or 'none'}): a classifier "
                        f"needs at least two (with one, every prediction is right and accuracy 1.0 means nothing). "
                        f"Add class folders, or select two or more classes with data.classes.")
    relabel = np.full(len(raw.class_names), -1, dtype=np.int64)
    relabel[keep] = np.arange(len(keep))
    new_y = relabel[pool_y]  # (N_pool,)

    use_official_test = n_test > 0 and not cfg.pool_splits and cfg.test_fraction is None
    split_part = np.arange(n_train + n_test if cfg.pool_splits else n_train, dtype=np.int64)
    split_part = split_part[new_y[split_part] >= 0]
    if n_test == 0:
        what = "the data set"
    else:
        what = "the pooled train+test images" if cfg.pool_splits else "the official training split"

    if cfg.per_class is not None:
        hint = n_test > 0 and not cfg.pool_splits  # pooling would give more images per class
        split_part = _sample_per_class(split_part, new_y, cfg.per_class, class_names, rng, what, hint)
    _warn_empty_classes(new_y[split_part], class_names, what, cfg.dataset)

    if use_official_test:
        test_idx = np.arange(n_train, n_train + n_test, dtype=np.int64)
        test_idx = test_idx[new_y[test_idx] >= 0]
        if len(test_idx) == 0:
            raise UserError(
                f"data set {cfg.dataset!r}: the official test split has no images of the selected classes; "
                "set data.test_fraction to split a test set from the training images."
            )
        train_idx = split_part
    else:
        frac = 0.2 if cfg.test_fraction is None else cfg.test_fraction
        train_idx, test_idx = _stratified_split(split_part, new_y, frac, rng, "data.test_fraction", what)

    val_idx = None
    if cfg.val_fraction > 0:
        train_idx, val_idx = _stratified_split(
            train_idx, new_y, cfg.val_fraction, rng, "data.val_fraction", "the training part"
        )

    size = cfg.image_size
    n_images = len(train_idx) + len(test_idx) + (len(val_idx) if val_idx is not None else 0)
    h, w, c = raw.train_x.shape[1:]
    if size is not None:
        check_fits(n_images * c * size * size, f"{n_images:,} images resized to {size}x{size}",
                   "lower data.image_size, or use fewer images (data.per_class, data.classes)")
    # The splits are built while the loaded images are still held: both at once, at the peak.
    held = raw.train_x.nbytes + (raw.test_x.nbytes if raw.test_x is not None else 0)
    check_fits(held + n_images * c * (size * size if size is not None else h * w),
               f"the {fmt_bytes(held)} of loaded images with their train/val/test splits",
               "set data.image_size to a smaller size, or use fewer images (data.per_class, data.classes)")
    train = _make_split(raw, train_idx, new_y, size)
    val = _make_split(raw, val_idx, new_y, size) if val_idx is not None else None
    test = _make_split(raw, test_idx, new_y, size)
    c, h, w = train.x.shape[1:]
    mean, std = _normalization(cfg.normalize, train.x)
    return DataSplits(
        train=train, val=val, test=test, class_names=class_names, mean=mean, std=std,
        input_shape=(int(c), int(h), int(w)), source=raw.source,
    )


def _check_raw(raw: RawData, name: str) -> None:
    # Loader contract checks: a bug here is a loader bug, but data files can also be odd.
    for x, y, part in ((raw.train_x, raw.train_y, "train"), (raw.test_x, raw.test_y, "test")):
        if x is None:
            continue
        if x.dtype != np.uint8 or x.ndim != 4 or x.shape[-1] not in (1, 3) or len(x) != len(y):
            raise UserError(f"data set {name!r} ({raw.source}): malformed {part} images {x.shape} {x.dtype}.")
        if len(y) and (y.min() < 0 or y.max() >= len(raw.class_names)):
            raise UserError(
                f"data set {name!r} ({raw.source}): {part} labels outside 0..{len(raw.class_names) - 1}."
            )
    if raw.test_x is not None and raw.test_x.shape[1:] != raw.train_x.shape[1:]:
        raise UserError(
            f"data set {name!r} ({raw.source}): train images are {raw.train_x.shape[1:]} (H, W, C) but "
            f"test images are {raw.test_x.shape[1:]}; set data.image_size to resize both."
        )


def _class_subset(classes: list[int] | list[str] | None, names: list[str], dataset: str) -> tuple[np.ndarray, list[str]]:
    """Old label indices to keep (in the requested order) and the new class names."""
    if classes is None:
        return np.arange(len(names), dtype=np.int64), list(names)
    if len(classes) == 0:
        raise UserError(f"data.classes is empty; list class indices (0..{len(names) - 1}) or names, or leave it out.")
    dupes = sorted(str(c) for c, n in Counter(classes).items() if n > 1)
    if dupes:
        raise UserError(f"data.classes lists {short_list(dupes, 10)} more than once; each class may appear once.")
    if all(isinstance(c, int) for c in classes):
        bad = [str(c) for c in classes if not 0 <= c < len(names)]
        if bad:
            raise UserError(
                f"data.classes: class index {short_list(bad, 10)} out of range for data set {dataset!r}, "
                f"which has {len(names)} classes: valid indices are 0..{len(names) - 1} ({short_list(names)})."
            )
        idx = list(classes)
    else:
        lookup = {n: i for i, n in enumerate(names)}
        bad = [shown(c) for c in classes if c not in lookup]
        if bad:
            raise UserError(
                f"data.classes: unknown class name {short_list(bad, 10)} for data set {dataset!r}. "
                f"Valid names: {short_list(names, 120)}."
            )
        idx = [lookup[c] for c in classes]
    return np.asarray(idx, dtype=np.int64), [names[i] for i in idx]


def _sample_per_class(part: np.ndarray, y: np.ndarray, per_class: int, names: list[str],
                      rng: np.random.Generator, what: str, pool_hint: bool) -> np.ndarray:
    """A seeded sample of ``per_class`` rows of each class from ``part`` (sorted)."""
    labels = y[part]
    chosen = []
    for c, name in enumerate(names):
        members = part[labels == c]
        if len(members) < per_class:
            raise UserError(
                f"data.per_class = {per_class}, but class {name!r} has only {len(members)} images in {what}; "
                f"lower data.per_class to at most {len(members)}"
                + (" or set data.pool_splits = true to sample from train and test together." if pool_hint else ".")
            )
        chosen.append(rng.choice(members, size=per_class, replace=False))
    return np.sort(np.concatenate(chosen)).astype(np.int64)


def _warn_empty_classes(labels: np.ndarray, names: list[str], what: str, dataset: str) -> None:
    counts = np.bincount(labels, minlength=len(names))
    empty = [names[i] for i in np.flatnonzero(counts == 0)]
    if empty:
        warnings.warn(
            f"data set {dataset!r}: no images of class {', '.join(empty)} in {what}; "
            "the model will never see them in training.",
            stacklevel=3,
        )


def _stratified_split(idx: np.ndarray, y: np.ndarray, frac: float, rng: np.random.Generator,
                      key: str, what: str) -> tuple[np.ndarray, np.ndarray]:
    """Split rows ``idx`` into (kept, held out) with ``frac`` of them held out, per class.

    The held-out total is round(frac * n) (at least 1, at most n - 1); it is shared out to classes
    in proportion to their sizes (largest remainder, ties broken by the seeded ``rng``), preferring
    classes that keep at least one image. Both outputs are sorted int64.
    """
    n = len(idx)
    if n < 2:
        raise UserError(
            f"{key} = {frac}: cannot split {n} image(s) of {what} into two parts; "
            "use more images (data.per_class, data.classes) or set the fraction differently."
        )
    n_held = min(max(int(round(frac * n)), 1), n - 1)
    labels = y[idx]
    classes, counts = np.unique(labels, return_counts=True)
    quota = counts * (n_held / n)
    k = np.floor(quota).astype(np.int64)
    rest = n_held - int(k.sum())
    if rest > 0:
        eligible = (counts - k) > 1  # giving one more still leaves this class a kept image
        order = np.lexsort((rng.random(len(k)), -(quota - k), ~eligible))
        k[order[:rest]] += 1
    kept, held = [], []
    for c, kc in zip(classes, k):
        members = rng.permutation(idx[labels == c])
        held.append(members[:kc])
        kept.append(members[kc:])
    return np.sort(np.concatenate(kept)).astype(np.int64), np.sort(np.concatenate(held)).astype(np.int64)


def _take(raw: RawData, idx: np.ndarray) -> np.ndarray:
    """Rows ``idx`` of concat(train_x, test_x) without concatenating the full arrays. (N, H, W, C)"""
    n_train = raw.n_train
    if raw.test_x is None or len(idx) == 0 or idx.max() < n_train:
        return raw.train_x[idx]
    out = np.empty((len(idx),) + raw.train_x.shape[1:], dtype=np.uint8)
    in_train = idx < n_train
    out[in_train] = raw.train_x[idx[in_train]]
    out[~in_train] = raw.test_x[idx[~in_train] - n_train]
    return out


# Images gathered (and resized) at once when a split is built: the split is written chunk by chunk
# into its final (N, C, H, W) tensor, so building it costs its own size plus one chunk, not two or
# three full copies (gathered rows, channels-first copy, resize input).
GATHER_CHUNK_BYTES = 64 * 2**20


def _make_split(raw: RawData, idx: np.ndarray, new_y: np.ndarray, size: int | None) -> Split:
    h, w, c = raw.train_x.shape[1:]
    out_hw = (size, size) if size is not None else (h, w)
    x = torch.empty((len(idx), c, *out_hw), dtype=torch.uint8)  # (N, C, H, W) uint8
    step = max(1, GATHER_CHUNK_BYTES // max(1, h * w * c))
    for s in range(0, len(idx), step):
        part = torch.from_numpy(_take(raw, idx[s:s + step])).permute(0, 3, 1, 2)  # (n, C, H, W) view
        x[s:s + step] = resize_uint8(part, out_hw) if out_hw != (h, w) else part
    return Split(x=x, y=torch.from_numpy(new_y[idx].astype(np.int64)), index=idx.astype(np.int64))


# Bytes of float32 images one resize chunk may hold (input and output): small enough for any
# machine, large enough that a chunk is thousands of small images.
RESIZE_CHUNK_BYTES = 256 * 2**20


def resize_uint8(x: torch.Tensor, size: tuple[int, int], chunk: int | None = None) -> torch.Tensor:
    """Bilinear (antialiased) resize of uint8 (N, C, H, W) images to ``size`` = (H, W), in chunks
    (default: as many images as fit RESIZE_CHUNK_BYTES of float32) so a large set never needs a
    full float copy."""
    per_image = 4 * x.shape[1] * (size[0] * size[1] + x.shape[2] * x.shape[3])  # float in + float out
    chunk = chunk or max(1, RESIZE_CHUNK_BYTES // per_image)
    out = torch.empty((x.shape[0], x.shape[1], *size), dtype=torch.uint8)
    for s in range(0, x.shape[0], chunk):
        part = x[s : s + chunk].float()
        part = torch.nn.functional.interpolate(part, size=size, mode="bilinear", antialias=True, align_corners=False)
        out[s : s + chunk] = part.round_().clamp_(0, 255).to(torch.uint8)
    return out


def _normalization(mode: str, x: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel (mean, std) for pixels in [0, 1]; "dataset" measures the training images ``x``."""
    channels = int(x.shape[1])
    fixed = {
        "half": ((0.5,) * 3, (0.5,) * 3),
        "imagenet": (IMAGENET_MEAN, IMAGENET_STD),
        "none": ((0.0,) * 3, (1.0,) * 3),
    }
    if mode in fixed:
        mean, std = fixed[mode]
        if channels == 1:  # a gray image is the average of the three channels
            return (float(np.mean(mean)),), (float(np.mean(std)),)
        return tuple(float(m) for m in mean[:channels]), tuple(float(s) for s in std[:channels])
    # "dataset": exact statistics from a 256-bin histogram per channel: no float copy of the
    # images, and torch.bincount counts uint8 directly (numpy would first widen to int64).
    mean_l, std_l = [], []
    values = np.arange(256, dtype=np.float64) / 255.0
    for c in range(channels):
        hist = torch.bincount(x[:, c].reshape(-1), minlength=256).numpy().astype(np.float64)
        total = hist.sum()
        m = float((hist * values).sum() / total) if total else 0.0
        var = float((hist * (values - m) ** 2).sum() / total) if total else 0.0
        sd = var**0.5
        mean_l.append(m)
        std_l.append(sd if sd > 1e-8 else 1.0)  # a constant channel: avoid dividing by zero
    return tuple(mean_l), tuple(std_l)
