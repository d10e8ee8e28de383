"""Small data files in the real formats (IDX, CIFAR python pickles, image folders and archives),
written by the tests themselves."""

from __future__ import annotations

import gzip
import pickle
import tarfile
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image

from cnnlab.data import CIFAR10_CLASSES, CIFAR100_CLASSES


def write_idx(path: Path, arr: np.ndarray, gz: bool) -> None:
    arr = np.asarray(arr, dtype=np.uint8)
    header = bytes([0, 0, 8, arr.ndim]) + np.asarray(arr.shape, dtype=">i4").tobytes()
    payload = header + arr.tobytes()
    if gz:
        with gzip.open(str(path) + ".gz", "wb") as f:
            f.write(payload)
    else:
        path.write_bytes(payload)


def make_mnist(root: Path, folder: str = "MNIST", n_train: int = 60, n_test: int = 20, gz_train: bool = False,
               gz_test: bool = True) -> Path:
    raw = root / folder / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(1)
    for prefix, n, gz in (("train", n_train, gz_train), ("t10k", n_test, gz_test)):
        write_idx(raw / f"{prefix}-images-idx3-ubyte", rng.integers(0, 256, (n, 28, 28)), gz)
        write_idx(raw / f"{prefix}-labels-idx1-ubyte", np.arange(n) % 10, gz)
    return raw


def cifar_pixels(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, 3072), dtype=np.uint8)


def dump(path: Path, obj, protocol: int | None = None) -> None:
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=protocol)


def make_cifar10(root: Path, per_batch: int = 10, n_test: int = 20) -> Path:
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    for i in range(1, 6):
        labels = [j % 10 for j in range(per_batch)]
        dump(folder / f"data_batch_{i}", {b"data": cifar_pixels(per_batch, i), b"labels": labels})
    dump(folder / "test_batch", {b"data": cifar_pixels(n_test, 9), b"labels": [j % 10 for j in range(n_test)]})
    dump(folder / "batches.meta", {b"label_names": [n.encode() for n in CIFAR10_CLASSES]})
    return folder


def make_cifar100(root: Path, meta: bool = True) -> Path:
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    dump(folder / "train", {b"data": cifar_pixels(200, 1), b"fine_labels": [j % 100 for j in range(200)],
                            b"coarse_labels": [j % 20 for j in range(200)]})
    dump(folder / "test", {b"data": cifar_pixels(100, 2), b"fine_labels": list(range(100)),
                           b"coarse_labels": [j % 20 for j in range(100)]})
    if meta:
        dump(folder / "meta", {b"fine_label_names": [n.encode() for n in CIFAR100_CLASSES]})
    return folder


def write_image(path: Path, size=(12, 12), mode: str = "RGB", seed: int = 0, fmt: str | None = None) -> np.ndarray:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    shape = (size[1], size[0]) + ((3,) if mode == "RGB" else ())
    arr = rng.integers(0, 256, shape, dtype=np.uint8)
    Image.fromarray(arr, mode).save(path, format=fmt)
    return arr


def make_folder(root: Path, classes=("cat", "dog", "emu"), n: int = 6, mode: str = "RGB", ext: str = "png",
                size=(12, 12)) -> Path:
    for ci, c in enumerate(classes):
        for i in range(n):
            write_image(root / c / f"{i:03d}.{ext}", size=size, mode=mode, seed=100 * ci + i)
    return root


def make_split_folder(root: Path, classes=("cat", "dog", "emu"), n_train: int = 6, n_test: int = 2) -> Path:
    make_folder(root / "train", classes, n_train)
    make_folder(root / "test", classes, n_test)
    return root


def tar_dir(src: Path, out: Path, top: str | None = None, mode: str = "w:gz") -> Path:
    with tarfile.open(out, mode) as tf:
        tf.add(src, arcname=top or ".")
    return out


def zip_dir(src: Path, out: Path, top: str | None = None) -> Path:
    with zipfile.ZipFile(out, "w") as zf:
        for p in sorted(src.rglob("*")):
            if p.is_file():
                rel = p.relative_to(src).as_posix()
                zf.write(p, f"{top}/{rel}" if top else rel)
    return out
