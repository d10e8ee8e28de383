"""Data sets: load raw images, subset and split them reproducibly, and describe what went where.

A loader (registered in ``DATASETS``) turns a ``DataConfig`` into ``RawData``: uint8 images
(N, H, W, C) plus int64 labels for the official train split and, when the source has one, the
official test split. ``load_data(cfg, seed)`` then subsets classes, samples ``per_class``, makes
stratified test/validation splits (all seeded), converts to (N, C, H, W) uint8 tensors, resizes
when asked, and computes normalization statistics on the training part only.

Every split carries ``index``: rows of the *source pool* = concat(official train, official test)
of the raw arrays, before any class subsetting, so a run can record exactly which image went where.

Sources:
  - ``digits``: scikit-learn's bundled 8x8 digits (no download, no test split);
  - ``mnist`` / ``fashion_mnist``: torchvision's raw IDX files under ``<root>/MNIST/raw/``;
  - ``cifar10`` / ``cifar100``: the official python pickles under ``<root>``;
  - ``imagefolder``: a directory or .tar/.tar.gz/.tgz/.zip of ``class/image`` folders, optionally
    under ``train/`` and ``test/``. Named data sets read such a source too when ``data.path`` is set.
Decoded image folders are cached as uint8 arrays (``$CNNLAB_CACHE``, default ``~/.cache/cnnlab``),
one file per source and options; a changed source's new file replaces its old one.
"""

from __future__ import annotations

import glob
import gzip
import hashlib
import io
import json
import multiprocessing as mp
import os
import pickle
import re
import socket
import sys
import tarfile
import tempfile
import warnings
import zipfile
import zlib
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass
from itertools import chain, islice
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import numpy as np
import torch

from .config import DataConfig
from .errors import UserError
from .registry import Registry

DATASETS: Registry[Callable[[DataConfig], "RawData"]] = Registry("data set")

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm")
ARCHIVE_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tar.xz", ".zip")
SPLIT_FOLDERS = ("train", "test")
CACHE_FORMAT_VERSION = 1
_DECODE_CHUNK = 1000  # images per work item for the decode pool; small sets decode inline

MNIST_CLASSES = [str(i) for i in range(10)]
FASHION_MNIST_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                         "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]  # torchvision's names
CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
# CIFAR-100 fine labels in label order (alphabetical); used when the meta file is absent and to
# check image folders that claim to be CIFAR-100.
CIFAR100_CLASSES = (
    "apple aquarium_fish baby bear beaver bed bee beetle bicycle bottle bowl boy bridge bus butterfly "
    "camel can castle caterpillar cattle chair chimpanzee clock cloud cockroach couch crab crocodile cup "
    "dinosaur dolphin elephant flatfish forest fox girl hamster house kangaroo keyboard lamp lawn_mower "
    "leopard lion lizard lobster man maple_tree motorcycle mountain mouse mushroom oak_tree orange orchid "
    "otter palm_tree pear pickup_truck pine_tree plain plate poppy porcupine possum rabbit raccoon ray road "
    "rocket rose sea seal shark shrew skunk skyscraper snail snake spider squirrel streetcar sunflower "
    "sweet_pepper table tank telephone television tiger tractor train trout tulip turtle wardrobe whale "
    "willow_tree wolf woman worm"
).split()

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


# ------------------------------------------------------------------------------ data classes
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


# --------------------------------------------------------------------------------- load_data
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
    dupes = sorted({str(c) for c in classes if classes.count(c) > 1})
    if dupes:
        raise UserError(f"data.classes lists {', '.join(dupes)} more than once; each class may appear once.")
    if all(isinstance(c, int) for c in classes):
        bad = [c for c in classes if not 0 <= c < len(names)]
        if bad:
            raise UserError(
                f"data.classes: class index {', '.join(map(str, bad))} out of range for data set {dataset!r}, "
                f"which has {len(names)} classes: valid indices are 0..{len(names) - 1} ({_short_list(names)})."
            )
        idx = list(classes)
    else:
        lookup = {n: i for i, n in enumerate(names)}
        bad = [c for c in classes if c not in lookup]
        if bad:
            raise UserError(
                f"data.classes: unknown class name {', '.join(repr(b) for b in bad)} for data set {dataset!r}. "
                f"Valid names: {_short_list(names, 120)}."
            )
        idx = [lookup[c] for c in classes]
    return np.asarray(idx, dtype=np.int64), [names[i] for i in idx]


def _short_list(names: list[str], limit: int = 30) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f", ... ({len(names)} in all)" if len(names) > limit else "")


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


def _make_split(raw: RawData, idx: np.ndarray, new_y: np.ndarray, size: int | None) -> Split:
    x = torch.from_numpy(_take(raw, idx)).permute(0, 3, 1, 2).contiguous()  # (N, C, H, W) uint8
    if size is not None and tuple(x.shape[2:]) != (size, size):
        x = resize_uint8(x, (size, size))
    return Split(x=x, y=torch.from_numpy(new_y[idx].astype(np.int64)), index=idx.astype(np.int64))


def resize_uint8(x: torch.Tensor, size: tuple[int, int], chunk: int = 2048) -> torch.Tensor:
    """Bilinear (antialiased) resize of uint8 (N, C, H, W) images to ``size`` = (H, W), in chunks
    so a large set never needs a full float copy."""
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


# ------------------------------------------------------------------------------ read_image_files
def read_image_files(paths: list[str], channels: int, size: tuple[int, int]) -> torch.Tensor:
    """Decode image files for prediction: uint8 (N, C, H, W), converted to ``channels`` (1 or 3)
    and resized (bilinear) to ``size`` = (H, W). A missing or unreadable file raises UserError."""
    from PIL import Image

    if channels not in (1, 3):
        raise UserError(f"images can be read with 1 or 3 channels, not {channels}.")
    if not paths:
        raise UserError("no image files given to predict on.")
    h, w = int(size[0]), int(size[1])
    out = torch.empty((len(paths), channels, h, w), dtype=torch.uint8)
    for i, p in enumerate(paths):
        path = Path(p).expanduser()
        if not path.is_file():
            raise UserError(f"image file {str(p)!r} does not exist" + (" (it is a directory)." if path.is_dir() else "."))
        try:
            with Image.open(path) as im:
                im = im.convert("L" if channels == 1 else "RGB")
                if im.size != (w, h):
                    im = im.resize((w, h), Image.Resampling.BILINEAR)
                arr = np.asarray(im, dtype=np.uint8)
        except Exception as e:  # PIL raises many types for bad files
            raise UserError(
                f"cannot read image file {str(p)!r}: {e}. Supported formats: {', '.join(IMAGE_EXTENSIONS)}."
            ) from None
        out[i] = torch.from_numpy(arr.reshape(h, w, channels).copy()).permute(2, 0, 1)
    return out


# ------------------------------------------------------------------------------------- digits
@DATASETS.register("digits", summary="scikit-learn's bundled 8x8 handwritten digits (1,797 images, no download)")
def load_digits(cfg: DataConfig) -> RawData:
    """scikit-learn's 8x8 digits, 1 channel, pixel values 0..16 scaled to 0..255."""
    from sklearn.datasets import load_digits as sk_digits

    d = sk_digits()
    x = np.rint(d.images * (255.0 / 16.0)).clip(0, 255).astype(np.uint8)[..., None]  # (1797, 8, 8, 1)
    return RawData(x, d.target.astype(np.int64), None, None, list(MNIST_CLASSES), "scikit-learn load_digits (bundled)")


# -------------------------------------------------------------------------------------- MNIST
MNIST_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


def read_idx(path: Path, expect_ndim: int) -> np.ndarray:
    """Read an IDX file (plain or gzipped) of unsigned bytes into an array; UserError if malformed.

    Layout: 2 zero bytes, type code 0x08 (ubyte), number of dims, big-endian int32 dims, data.
    """
    try:
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError, gzip.BadGzipFile) as e:
        raise UserError(f"cannot read IDX file {path}: {e}. Replace it with an intact copy.") from None
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08 or data[3] != expect_ndim:
        raise UserError(
            f"{path} is not an IDX file of unsigned bytes with {expect_ndim} dimension(s) "
            f"(magic number {data[:4].hex() if len(data) >= 4 else 'missing'}, expected 000008{expect_ndim:02x})."
        )
    header = 4 + 4 * expect_ndim
    dims: tuple[int, ...] = ()
    if len(data) >= header:
        dims = tuple(int(d) for d in np.frombuffer(data, dtype=">i4", count=expect_ndim, offset=4))
    if len(dims) != expect_ndim or len(data) - header != int(np.prod(dims)):
        raise UserError(f"IDX file {path} is truncated or has extra bytes (dims {dims}, {len(data)} bytes).")
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(dims)


def _find_file(folder: Path, name: str) -> Path | None:
    # The plain file (what torchvision extracts) first, else the gzip as distributed.
    for cand in (folder / name, folder / f"{name}.gz"):
        if cand.is_file():
            return cand
    return None


@contextmanager
def _network_timeout(seconds: float = 30.0) -> Iterator[None]:
    # torchvision's download uses urllib without a timeout; an offline machine may otherwise hang.
    old = socket.getdefaulttimeout()
    socket.setdefaulttimeout(seconds)
    try:
        yield
    finally:
        socket.setdefaulttimeout(old)


def _download_note(allowed: bool, reason: str | None) -> str:
    if reason:
        return f" The download failed ({reason})."
    return "" if allowed else " Downloading is off (data.download = false)."


def _try_download(fetch: Callable[[], Any]) -> str | None:
    """Run a torchvision download; return None on success or a short reason on failure."""
    try:
        with _network_timeout():
            fetch()
        return None
    except Exception as e:  # network errors, checksum errors, permission errors: all reported
        return " ".join(f"{type(e).__name__}: {e}".split())  # one line: torchvision's errors span several


def _idx_dataset(cfg: DataConfig, folder_name: str, tv_name: str, class_names: list[str], label: str) -> RawData:
    """MNIST-style loader: four IDX files in ``<root>/<folder_name>/raw``."""
    if cfg.path is not None:
        return _named_from_folder(cfg, class_names, label)
    root = Path(cfg.root).expanduser()
    raw_dir = root / folder_name / "raw"
    found = {n: _find_file(raw_dir, n) for n in MNIST_FILES}
    reason = None
    if not all(found.values()) and cfg.download:
        import torchvision.datasets as tvd

        reason = _try_download(lambda: getattr(tvd, tv_name)(str(root), train=True, download=True))
        found = {n: _find_file(raw_dir, n) for n in MNIST_FILES}
    missing = [n for n, p in found.items() if p is None]
    if missing:
        why = _download_note(cfg.download, reason)
        raise UserError(
            f"{label} files not found in {raw_dir.resolve()}: expected {', '.join(MNIST_FILES)} "
            f"(each plain or .gz); missing {', '.join(missing)}.{why} Put the four files in that folder, "
            f"set data.root to the folder that contains {folder_name}/raw/, or set data.path to an image folder."
        )
    arrays = {n: read_idx(p, 3 if "images" in n else 1) for n, p in found.items() if p is not None}
    parts = []
    for prefix in ("train", "t10k"):
        x, y = arrays[f"{prefix}-images-idx3-ubyte"], arrays[f"{prefix}-labels-idx1-ubyte"]
        if len(x) != len(y):
            raise UserError(f"{label} in {raw_dir}: {prefix} has {len(x)} images but {len(y)} labels.")
        if len(y) and y.max() >= len(class_names):
            raise UserError(f"{label} in {raw_dir}: {prefix} labels go up to {y.max()}, expected 0..{len(class_names) - 1}.")
        parts.append((x[..., None], y.astype(np.int64)))  # (N, 28, 28, 1)
    (trx, try_), (tex, tey) = parts
    return RawData(trx, try_, tex, tey, list(class_names), f"{label} IDX files in {raw_dir}")


@DATASETS.register("mnist", summary="MNIST digits, 60,000 + 10,000 28x28 gray (IDX files in data.root/MNIST/raw)")
def load_mnist(cfg: DataConfig) -> RawData:
    """MNIST from torchvision's raw IDX files (downloaded when missing and allowed)."""
    return _idx_dataset(cfg, "MNIST", "MNIST", MNIST_CLASSES, "MNIST")


@DATASETS.register("fashion_mnist", summary="Fashion-MNIST, 60,000 + 10,000 28x28 gray (data.root/FashionMNIST/raw)")
def load_fashion_mnist(cfg: DataConfig) -> RawData:
    """Fashion-MNIST from torchvision's raw IDX files (downloaded when missing and allowed)."""
    return _idx_dataset(cfg, "FashionMNIST", "FashionMNIST", FASHION_MNIST_CLASSES, "Fashion-MNIST")


# -------------------------------------------------------------------------------------- CIFAR
@dataclass(frozen=True)
class _CifarLayout:
    label: str
    folder: str
    train_files: tuple[str, ...]
    test_file: str
    meta_file: str
    label_key: bytes
    names_key: bytes
    default_names: tuple[str, ...]
    tv_name: str


_CIFAR10 = _CifarLayout(
    "CIFAR-10", "cifar-10-batches-py", tuple(f"data_batch_{i}" for i in range(1, 6)), "test_batch",
    "batches.meta", b"labels", b"label_names", tuple(CIFAR10_CLASSES), "CIFAR10",
)
_CIFAR100 = _CifarLayout(
    "CIFAR-100", "cifar-100-python", ("train",), "test", "meta", b"fine_labels", b"fine_label_names",
    tuple(CIFAR100_CLASSES), "CIFAR100",
)


def _read_pickle(path: Path) -> Any:
    # These are the official CIFAR python-pickle files (trusted data files); they are validated by
    # structure below, not by checksum, so users' re-packed copies work too.
    try:
        with open(path, "rb") as f:
            return pickle.load(f, encoding="bytes")
    except Exception as e:
        raise UserError(f"cannot read CIFAR file {path}: {type(e).__name__}: {e}. Replace it with an intact copy.") from None


def _cifar_batch(path: Path, label_key: bytes, n_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """One CIFAR pickle -> uint8 (N, 32, 32, 3) images and int64 labels, checked by structure."""
    d = _read_pickle(path)
    if not isinstance(d, dict) or b"data" not in d or label_key not in d:
        found = (
            sorted(k.decode(errors="replace") if isinstance(k, bytes) else str(k) for k in d)
            if isinstance(d, dict) else f"a {type(d).__name__}"
        )
        raise UserError(
            f"{path} is not a CIFAR batch: expected a dict with keys 'data' and {label_key.decode()!r}, found {found}."
        )
    data, labels = np.asarray(d[b"data"]), np.asarray(d[label_key])
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        raise UserError(f"{path}: 'data' is {data.dtype} {data.shape}; expected uint8 (N, 3072) (32x32x3 per row).")
    if labels.ndim != 1 or len(labels) != len(data):
        raise UserError(f"{path}: {len(labels)} labels for {len(data)} images.")
    if len(labels) and (labels.min() < 0 or labels.max() >= n_classes):
        raise UserError(f"{path}: labels outside 0..{n_classes - 1}.")
    x = data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)  # rows are R plane, G plane, B plane
    return np.ascontiguousarray(x), labels.astype(np.int64)


def _cifar_dataset(cfg: DataConfig, lay: _CifarLayout) -> RawData:
    if cfg.path is not None:
        return _named_from_folder(cfg, list(lay.default_names), lay.label)
    root = Path(cfg.root).expanduser()
    folder = root / lay.folder
    needed = [*lay.train_files, lay.test_file]

    def missing() -> list[str]:
        return [n for n in needed if not (folder / n).is_file()]

    reason = None
    if missing() and cfg.download:
        import torchvision.datasets as tvd

        reason = _try_download(lambda: getattr(tvd, lay.tv_name)(str(root), train=True, download=True))
    if missing():
        why = _download_note(cfg.download, reason)
        raise UserError(
            f"{lay.label} files not found in {folder.resolve()}: expected {', '.join(needed)} and {lay.meta_file} "
            f"(the official python version); missing {', '.join(missing())}.{why} Extract the official "
            f"archive so that {lay.folder}/ is inside data.root, or set data.path to an image folder/archive."
        )
    names = list(lay.default_names)
    meta = folder / lay.meta_file
    if meta.is_file():
        m = _read_pickle(meta)
        got = m.get(lay.names_key) if isinstance(m, dict) else None
        if not isinstance(got, list) or len(got) != len(names):
            raise UserError(f"{meta}: expected {len(names)} class names under {lay.names_key.decode()!r}.")
        names = [n.decode() if isinstance(n, bytes) else str(n) for n in got]
    parts = [_cifar_batch(folder / f, lay.label_key, len(names)) for f in lay.train_files]
    trx = np.concatenate([p[0] for p in parts]) if len(parts) > 1 else parts[0][0]
    try_ = np.concatenate([p[1] for p in parts])
    tex, tey = _cifar_batch(folder / lay.test_file, lay.label_key, len(names))
    return RawData(trx, try_, tex, tey, names, f"{lay.label} python pickles in {folder}")


@DATASETS.register("cifar10", summary="CIFAR-10, 50,000 + 10,000 32x32 color (pickles in data.root, or data.path)")
def load_cifar10(cfg: DataConfig) -> RawData:
    """CIFAR-10 from the official python pickles, or from an image folder/archive at data.path."""
    return _cifar_dataset(cfg, _CIFAR10)


@DATASETS.register("cifar100", summary="CIFAR-100 (100 fine labels), 50,000 + 10,000 32x32 color (pickles, or data.path)")
def load_cifar100(cfg: DataConfig) -> RawData:
    """CIFAR-100 (100 fine labels) from the official python pickles, or an image folder at data.path."""
    return _cifar_dataset(cfg, _CIFAR100)


def _norm_name(name: str) -> str:
    # Folder names cannot hold "/" ("T-shirt/top"), and copies vary in "_" vs " ": compare loosely.
    return re.sub(r"[^0-9a-z]", "", name.lower())


def _named_from_folder(cfg: DataConfig, official: list[str], label: str) -> RawData:
    """A named data set read from an image folder at cfg.path: class folders must be its classes;
    labels are mapped to the data set's own label order."""
    raw = load_imagefolder(cfg)
    want = {_norm_name(n): i for i, n in enumerate(official)}
    have = [_norm_name(n) for n in raw.class_names]
    unknown = [n for n, k in zip(raw.class_names, have) if k not in want]
    absent = sorted(set(want) - set(have), key=want.get)
    if unknown or absent or len(set(have)) != len(have):
        raise UserError(
            f"data.path {cfg.path!r} is used as {label}, but its class folders do not match {label}'s classes"
            + (f"; unexpected folders: {_short_list(unknown, 10)}" if unknown else "")
            + (f"; missing classes: {_short_list([official[want[a]] for a in absent], 10)}" if absent else "")
            + f". Expected one folder per class: {_short_list(official, 20)} (case, spaces and punctuation are ignored), "
            "or use dataset = \"imagefolder\" for other classes."
        )
    perm = np.array([want[k] for k in have], dtype=np.int64)  # folder label -> official label
    return RawData(
        raw.train_x, perm[raw.train_y], raw.test_x, None if raw.test_y is None else perm[raw.test_y],
        list(official), f"{label} from {raw.source}",
    )


# -------------------------------------------------------------------------------- imagefolder
@DATASETS.register("imagefolder", summary="class-per-folder images in a directory or .tar/.tar.gz/.zip at data.path")
def load_imagefolder(cfg: DataConfig) -> RawData:
    """Images in ``class/`` folders (optionally under ``train/`` and ``test/``) at data.path,
    decoded once and cached as uint8 arrays."""
    if cfg.path is None:
        raise UserError(
            f"data set {cfg.dataset!r} needs data.path: a directory or .tar/.tar.gz/.tgz/.zip archive of "
            "class folders (class/image.jpg, optionally under train/ and test/)."
        )
    path = Path(cfg.path).expanduser()
    if not path.exists():
        raise UserError(f"data.path {cfg.path!r} does not exist (resolved to {path.resolve()}).")
    if path.is_file() and not _is_archive(path):
        raise UserError(
            f"data.path {cfg.path!r} is a file but not an archive; expected a directory or one of "
            f"{', '.join(ARCHIVE_SUFFIXES)}."
        )
    if not cfg.cache:
        return _read_imagefolder(path, cfg.image_size, cfg.on_bad_image)
    return _cached("imagefolder", path.resolve(), _source_stamp(path), [cfg.image_size, cfg.on_bad_image],
                   lambda: _read_imagefolder(path, cfg.image_size, cfg.on_bad_image))


def _is_archive(path: Path) -> bool:
    return path.name.lower().endswith(ARCHIVE_SUFFIXES)


def _hidden(name: str) -> bool:
    # macOS resource forks (__MACOSX/, ._x.jpg) and dot folders are not images of any class.
    return any(p.startswith(".") or p == "__MACOSX" for p in name.split("/"))


def _is_image_name(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS) and not _hidden(name)


def _iter_source(path: Path) -> Iterator[tuple[str, bytes]]:
    """(relative posix name, file bytes) of every image file in a directory or archive, streamed."""
    if path.is_dir():
        for dirpath, dirnames, filenames in os.walk(path):
            dirnames.sort()
            rel = Path(dirpath).relative_to(path).as_posix()
            for fn in sorted(filenames):
                name = fn if rel == "." else f"{rel}/{fn}"
                if _is_image_name(name):
                    with open(Path(dirpath) / fn, "rb") as f:
                        yield name, f.read()
        return
    try:
        if path.name.lower().endswith(".zip"):
            with zipfile.ZipFile(path) as zf:
                for info in zf.infolist():
                    if not info.is_dir() and _is_image_name(info.filename):
                        yield info.filename.removeprefix("./"), zf.read(info)
        else:
            with tarfile.open(path, "r:*") as tf:
                for m in tf:  # streamed: a .tar.gz is read once, front to back
                    name = m.name[2:] if m.name.startswith("./") else m.name
                    if m.isfile() and _is_image_name(name):
                        f = tf.extractfile(m)
                        if f is not None:
                            yield name, f.read()
    except (tarfile.TarError, zipfile.BadZipFile, EOFError, OSError, zlib.error) as e:
        raise UserError(f"cannot read archive {path}: {type(e).__name__}: {e}. Check that the file is complete.") from None


def _decode_chunk(items: list[tuple[str, bytes]], size: int | None) -> list[tuple[str, np.ndarray | None, str | None]]:
    """Decode (name, bytes) items with PIL: (name, array, None) or (name, None, error message).

    Arrays are (H, W) for grayscale images and (H, W, 3) for everything else, resized to
    (size, size) with bilinear filtering when ``size`` is given. Runs in worker processes.
    """
    from PIL import Image

    out = []
    for name, data in items:
        try:
            with Image.open(io.BytesIO(data)) as im:
                if size is not None:
                    im.draft(im.mode if im.mode in ("L", "RGB") else None, (size, size))  # JPEG: decode at reduced scale
                im = im.convert("L" if im.mode in ("L", "1", "LA", "I;16", "I") else "RGB")
                if size is not None and im.size != (size, size):
                    im = im.resize((size, size), Image.Resampling.BILINEAR)
                out.append((name, np.asarray(im, dtype=np.uint8), None))
        except Exception as e:  # PIL raises many kinds of error for bad files
            out.append((name, None, f"{type(e).__name__}: {e}"))
    return out


def _decode_worker(args: tuple[list[tuple[str, bytes]], int | None]) -> tuple[list[str], Any, list[str | None]]:
    """Pool side of ``_decode_chunk``: names, the arrays stacked into one (n, H, W[, 3]) array when
    they all have one shape (one pickle instead of a thousand), and the error messages."""
    res = _decode_chunk(*args)
    arrays = [a for _, a, _ in res]
    shapes = {a.shape for a in arrays if a is not None}
    if len(shapes) == 1 and all(a is not None for a in arrays):
        arrays = np.stack(arrays)  # type: ignore[assignment]
    return [n for n, _, _ in res], arrays, [e for _, _, e in res]


def _workers() -> int:
    try:
        n = len(os.sched_getaffinity(0))
    except AttributeError:
        n = os.cpu_count() or 1
    return max(1, min(n, 8))


def _decode_all(items: Iterable[tuple[str, bytes]], size: int | None) -> list[tuple[str, np.ndarray | None, str | None]]:
    """Decode a stream of images: inline for small sets, else in a process pool while the main
    process keeps reading the archive (reading and decoding overlap)."""
    it = iter(items)
    chunks = iter(lambda: list(islice(it, _DECODE_CHUNK)), [])
    first = next(chunks, [])
    second = next(chunks, None)
    n_proc = _workers()
    # Daemonic processes (e.g. a worker of a sweep pool) may not start children: decode inline.
    if second is None or n_proc < 2 or mp.current_process().daemon:
        return [r for c in chain([first], [second] if second else [], chunks) for r in _decode_chunk(c, size)]
    # fork is cheap and needs no re-import on Linux; other platforms use their default method.
    ctx = mp.get_context("fork") if sys.platform.startswith("linux") else mp.get_context()
    results: list[tuple[str, np.ndarray | None, str | None]] = []
    with ctx.Pool(n_proc) as pool:
        work = ((c, size) for c in chain([first, second], chunks))
        for names, arrays, errors in pool.imap(_decode_worker, work):
            results.extend(zip(names, arrays, errors))  # rows of a stacked array are views
    return results


def _read_imagefolder(path: Path, size: int | None, on_bad_image: str) -> RawData:
    """Decode an image folder/archive at ``path`` into RawData (no caching)."""
    where = f"archive {path}" if path.is_file() else f"folder {path}"
    decoded = _decode_all(_iter_source(path), size)
    bad = [(n, err) for n, a, err in decoded if a is None]
    if bad and on_bad_image == "error":
        name, err = bad[0]
        more = f" ({len(bad) - 1} more unreadable images)" if len(bad) > 1 else ""
        raise UserError(
            f"cannot decode image {name!r} in {where}: {err}{more}. Fix or remove the file, or set "
            'data.on_bad_image = "skip" to skip unreadable images.'
        )
    if bad:
        warnings.warn(
            f"skipped {len(bad)} unreadable image(s) in {where}: {', '.join(n for n, _ in bad[:5])}"
            + (", ..." if len(bad) > 5 else ""),
            stacklevel=2,
        )
    good = sorted(((n, a) for n, a, _ in decoded if a is not None), key=lambda t: t[0])
    if not good:
        raise UserError(
            f"no {'readable ' if bad else ''}images found in {where}: expected class folders such as "
            f"<class>/<image>.jpg, optionally under train/ and test/, with extensions {', '.join(IMAGE_EXTENSIONS)}."
        )
    names = [n for n, _ in good]
    split_of, class_of, ignored = _layout(names, where)
    if ignored:
        warnings.warn(f"ignored {ignored} image(s) outside class folders in {where}.", stacklevel=2)
    classes = sorted({class_of[i] for i in range(len(names)) if class_of[i] is not None and split_of[i] == "train"})
    test_only = sorted({c for s, c in zip(split_of, class_of) if s == "test" and c is not None} - set(classes))
    if test_only:
        raise UserError(
            f"{where}: class folder(s) {', '.join(test_only)} exist under test/ but not under train/; "
            "every test class needs training images."
        )
    if not classes:
        raise UserError(
            f"no images inside class folders in {where}: expected <class>/<image> (optionally under train/ and test/)."
        )
    label = {c: i for i, c in enumerate(classes)}
    arrays = _uniform([a for _, a in good], size, where)  # (N, H, W, C) uint8
    keep_train = np.array([s == "train" and c is not None for s, c in zip(split_of, class_of)])
    keep_test = np.array([s == "test" and c is not None for s, c in zip(split_of, class_of)])
    y = np.array([label.get(c, -1) if c is not None else -1 for c in class_of], dtype=np.int64)
    has_test = bool(keep_test.any())
    layout = "train/ and test/ folders" if has_test else "class folders"
    return RawData(
        arrays[keep_train], y[keep_train],
        arrays[keep_test] if has_test else None, y[keep_test] if has_test else None,
        classes, f"image {where} ({layout})",
    )


def _layout(names: list[str], where: str) -> tuple[list[str], list[str | None], int]:
    """Per image: its split ("train" or "test") and class folder (None when outside any class
    folder), plus how many were outside. Strips one or more common top folders (e.g. cifar10/)."""
    parts = [n.split("/") for n in names]
    while True:
        firsts = {p[0] for p in parts}
        if len(firsts) == 1 and all(len(p) >= 3 for p in parts) and next(iter(firsts)).lower() not in SPLIT_FOLDERS:
            parts = [p[1:] for p in parts]
        else:
            break
    firsts = {p[0].lower() for p in parts if len(p) >= 2}
    split_layout = bool(firsts) and firsts <= set(SPLIT_FOLDERS) and "train" in firsts
    if firsts == {"test"}:
        raise UserError(f"{where} has a test/ folder but no train/ folder; add train/<class>/ images.")
    splits: list[str] = []
    classes: list[str | None] = []
    ignored = 0
    for p in parts:
        if split_layout:
            s, rest = p[0].lower(), p[1:]
        else:
            s, rest = "train", p
        if len(rest) >= 2:
            splits.append(s)
            classes.append(rest[0])
        else:
            splits.append(s)
            classes.append(None)
            ignored += 1
    return splits, classes, ignored


def _uniform(arrays: list[np.ndarray], size: int | None, where: str) -> np.ndarray:
    """Stack decoded images into (N, H, W, C): 1 channel if all are gray, else RGB; images whose
    size differs from the most common one are resized to it (bilinear)."""
    from PIL import Image

    rgb = any(a.ndim == 3 for a in arrays)
    sizes = Counter(a.shape[:2] for a in arrays)
    (h, w), _ = sizes.most_common(1)[0]
    if len(sizes) > 1:
        warnings.warn(
            f"images in {where} have {len(sizes)} different sizes; resizing to the most common, {h}x{w} "
            "(set data.image_size to choose the size).",
            stacklevel=3,
        )
    out = np.empty((len(arrays), h, w, 3 if rgb else 1), dtype=np.uint8)
    for i, a in enumerate(arrays):
        if a.shape[:2] != (h, w):
            a = np.asarray(Image.fromarray(a).resize((w, h), Image.Resampling.BILINEAR))
        out[i] = a[..., None] if a.ndim == 2 else a  # a gray (H, W) broadcasts to 3 channels
    return out


# ------------------------------------------------------------------------------------ caching
def cache_dir() -> Path:
    """Where decoded arrays are cached: ``$CNNLAB_CACHE``, else ``~/.cache/cnnlab``."""
    return Path(os.environ.get("CNNLAB_CACHE") or Path.home() / ".cache" / "cnnlab").expanduser()


def _source_stamp(path: Path) -> Any:
    """Changes whenever the source changes: size+mtime of an archive; for a directory, the names,
    sizes and mtimes of all files (a directory's own mtime misses edits inside class folders)."""
    if path.is_file():
        st = path.stat()
        return [st.st_size, st.st_mtime_ns]
    h = hashlib.sha256()
    for dirpath, dirnames, filenames in os.walk(path):
        dirnames.sort()
        for fn in sorted(filenames):
            p = Path(dirpath) / fn
            try:
                st = p.stat()
            except OSError:
                continue
            h.update(f"{p.relative_to(path).as_posix()}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def _cached(kind: str, source: Path, stamp: Any, options: list[Any], build: Callable[[], RawData]) -> RawData:
    """Load RawData from the cache file of (kind, source, stamp, options), or build it and write it.

    One uncompressed .npz per key, written to a temp file and renamed into place, so readers never
    see a partial file; an unreadable cache file is ignored and rebuilt. The name is
    ``<kind>-<source name>-<slot>-<version>.npz``: the slot hashes the source's path and the
    options, the version also the source's stamp. A rebuild after the source changed removes the
    older versions of its slot (each a whole decoded data set: 185 MB for CIFAR-10), while other
    options of the same source keep their own files."""
    stem = re.sub(r"[^A-Za-z0-9_.-]", "_", source.name)[:40]

    def digest(*parts: Any) -> str:
        return hashlib.sha256(json.dumps([CACHE_FORMAT_VERSION, *parts], default=str).encode()).hexdigest()

    slot = f"{kind}-{stem}-{digest(kind, str(source), options)[:12]}"
    target = cache_dir() / f"{slot}-{digest(kind, str(source), stamp, options)[:12]}.npz"
    if target.is_file():
        raw = _read_cache(target)
        if raw is not None:
            return raw
    raw = build()
    if _write_cache(target, raw):
        for old in cache_dir().glob(f"{glob.escape(slot)}-*.npz"):
            if old != target:
                old.unlink(missing_ok=True)
    return raw


def _read_cache(path: Path) -> RawData | None:
    try:
        with np.load(path, allow_pickle=False) as z:
            meta = json.loads(str(z["meta"]))
            train_x, train_y = z["train_x"], z["train_y"]
            test_x = z["test_x"] if "test_x" in z.files else None
            test_y = z["test_y"] if "test_y" in z.files else None
        ok = (
            meta.get("version") == CACHE_FORMAT_VERSION
            and train_x.dtype == np.uint8 and train_x.ndim == 4 and len(train_x) == len(train_y)
            and (test_x is None) == (test_y is None)
            and (test_x is None or (test_x.shape[1:] == train_x.shape[1:] and len(test_x) == len(test_y)))
        )
        if not ok:
            return None
        return RawData(train_x, train_y.astype(np.int64), test_x, None if test_y is None else test_y.astype(np.int64),
                       list(meta["class_names"]), meta["source"])
    except Exception:  # truncated, corrupt or foreign file: rebuild it
        return None


def _write_cache(path: Path, raw: RawData) -> bool:
    """Write the cache file atomically; False (with a warning) where the folder is not writable."""
    arrays: dict[str, Any] = {"train_x": raw.train_x, "train_y": raw.train_y}
    if raw.test_x is not None:
        arrays.update(test_x=raw.test_x, test_y=raw.test_y)
    meta = {"version": CACHE_FORMAT_VERSION, "class_names": raw.class_names, "source": raw.source}
    arrays["meta"] = np.array(json.dumps(meta))  # a str array: loads without pickle
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path.parent, prefix=path.name + ".", suffix=".tmp", delete=False) as f:
            tmp = f.name
            np.savez(f, **arrays)
        os.chmod(tmp, 0o644)  # temp files are private (0600); the cache is an ordinary file
        os.replace(tmp, path)
        return True
    except OSError as e:  # a read-only or full disk only costs speed
        warnings.warn(f"could not write the data cache {path}: {e}; set CNNLAB_CACHE to a writable folder.", stacklevel=3)
        if tmp is not None:
            try:
                os.unlink(tmp)
            except OSError:
                pass
        return False
