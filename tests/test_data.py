"""Tests for cnnlab.data on small files the tests write in the real formats (IDX, CIFAR pickles,
image folders and archives), on scikit-learn's digits, and on the shared real copies when present."""

from __future__ import annotations

import gzip
import pickle
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import cnnlab.data as data
from cnnlab.config import DataConfig
from cnnlab.data import DATASETS, DataSplits, RawData, load_data, read_image_files
from cnnlab.errors import UserError

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(autouse=True)
def _cache_in_tmp(tmp_path, monkeypatch):
    monkeypatch.setenv("CNNLAB_CACHE", str(tmp_path / "cache"))


def cfg(**kw) -> DataConfig:
    kw.setdefault("download", False)
    return DataConfig(**kw)


def pool_x(raw: RawData) -> np.ndarray:
    return raw.train_x if raw.test_x is None else np.concatenate([raw.train_x, raw.test_x])


def assert_consistent(d: DataSplits, raw: RawData, keep: list[int] | None = None) -> None:
    """Every split's images and labels are exactly the source-pool rows its index names."""
    px = torch.from_numpy(pool_x(raw)).permute(0, 3, 1, 2)
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


# ------------------------------------------------------------------------------ file writers
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


def dump(path: Path, obj) -> None:
    with open(path, "wb") as f:
        pickle.dump(obj, f)


def make_cifar10(root: Path, per_batch: int = 10, n_test: int = 20) -> Path:
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    for i in range(1, 6):
        labels = [j % 10 for j in range(per_batch)]
        dump(folder / f"data_batch_{i}", {b"data": cifar_pixels(per_batch, i), b"labels": labels})
    dump(folder / "test_batch", {b"data": cifar_pixels(n_test, 9), b"labels": [j % 10 for j in range(n_test)]})
    dump(folder / "batches.meta", {b"label_names": [n.encode() for n in data.CIFAR10_CLASSES]})
    return folder


def make_cifar100(root: Path, meta: bool = True) -> Path:
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    dump(folder / "train", {b"data": cifar_pixels(200, 1), b"fine_labels": [j % 100 for j in range(200)],
                            b"coarse_labels": [j % 20 for j in range(200)]})
    dump(folder / "test", {b"data": cifar_pixels(100, 2), b"fine_labels": list(range(100)),
                           b"coarse_labels": [j % 20 for j in range(100)]})
    if meta:
        dump(folder / "meta", {b"fine_label_names": [n.encode() for n in data.CIFAR100_CLASSES]})
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


def tar_dir(src: Path, out: Path, top: str | None = None) -> Path:
    with tarfile.open(out, "w:gz") as tf:
        tf.add(src, arcname=top or ".")
    return out


def zip_dir(src: Path, out: Path, top: str | None = None) -> Path:
    with zipfile.ZipFile(out, "w") as zf:
        for p in sorted(src.rglob("*")):
            if p.is_file():
                rel = p.relative_to(src).as_posix()
                zf.write(p, f"{top}/{rel}" if top else rel)
    return out


# --------------------------------------------------------------------------------- registry
def test_registry_has_all_data_sets():
    assert {"digits", "mnist", "fashion_mnist", "cifar10", "cifar100", "imagefolder"} <= set(DATASETS.names())
    assert all(e.summary for e in DATASETS)


def test_unknown_data_set_lists_valid_names():
    with pytest.raises(UserError, match=r"unknown data set 'imagenet'.*data\.dataset.*digits.*mnist.*imagefolder"):
        load_data(cfg(dataset="imagenet"), 0)


def test_cifar100_names_are_in_label_order():
    assert len(data.CIFAR100_CLASSES) == 100 == len(set(data.CIFAR100_CLASSES))
    assert data.CIFAR100_CLASSES == sorted(data.CIFAR100_CLASSES)


# ----------------------------------------------------------------------------------- digits
def test_digits_shapes_and_fractions():
    d = load_data(cfg(dataset="digits"), 0)
    assert d.input_shape == (1, 8, 8) and d.class_names == [str(i) for i in range(10)]
    assert len(d.test) == round(0.2 * 1797) and len(d.val) == round(0.1 * (1797 - 359))
    assert len(d.train) + len(d.val) + len(d.test) == 1797
    assert d.train.x.dtype == torch.uint8 and int(d.train.x.max()) == 255
    assert d.source and "digits" in d.source
    raw = data.load_digits(cfg())
    assert raw.train_x.shape == (1797, 8, 8, 1) and raw.test_x is None
    assert_consistent(d, raw)
    # stratified: every class's share of the test split is within one image of 20%
    total = np.bincount(raw.train_y, minlength=10)
    assert np.all(np.abs(d.class_counts("test") - 0.2 * total) <= 1)


def test_digits_pixel_scaling_matches_sklearn():
    from sklearn.datasets import load_digits

    raw = data.load_digits(cfg())
    assert np.array_equal(raw.train_x[..., 0], np.rint(load_digits().images * 255 / 16).astype(np.uint8))


def test_seed_reproducibility():
    a, b = load_data(cfg(dataset="digits", per_class=30), 7), load_data(cfg(dataset="digits", per_class=30), 7)
    c = load_data(cfg(dataset="digits", per_class=30), 8)
    for k in ("train", "val", "test"):
        assert np.array_equal(a.indices()[k], b.indices()[k])
        assert torch.equal(a.splits()[k].x, b.splits()[k].x)
    assert not np.array_equal(a.indices()["train"], c.indices()["train"])
    assert load_data(cfg(dataset="digits"), -3).indices()["test"].size == 359  # negative seeds work


def test_class_subset_by_index_relabels_in_given_order():
    d = load_data(cfg(dataset="digits", classes=[3, 1]), 0)
    assert d.class_names == ["3", "1"]
    raw = data.load_digits(cfg())
    assert_consistent(d, raw, keep=[3, 1])
    assert set(d.train.y.tolist()) == {0, 1}


def test_class_subset_by_name():
    d = load_data(cfg(dataset="digits", classes=["9", "0", "5"]), 0)
    assert d.class_names == ["9", "0", "5"]
    assert_consistent(d, data.load_digits(cfg()), keep=[9, 0, 5])
    assert d.class_counts().shape == (3,)


@pytest.mark.parametrize(
    "classes, pattern",
    [
        ([3, 10], r"class index 10 out of range.*valid indices are 0\.\.9"),
        ([-1], r"class index -1 out of range"),
        (["3", "ten"], r"unknown class name 'ten'.*Valid names: 0, 1, 2"),
        ([1, 1], r"more than once"),
        ([], r"data\.classes is empty"),
    ],
)
def test_class_subset_errors(classes, pattern):
    with pytest.raises(UserError, match=pattern):
        load_data(cfg(dataset="digits", classes=classes), 0)


def test_per_class_counts():
    d = load_data(cfg(dataset="digits", per_class=20, test_fraction=0.25, val_fraction=0.2), 0)
    counts = d.class_counts("train") + d.class_counts("val") + d.class_counts("test")
    assert counts.tolist() == [20] * 10
    assert len(d.test) == 50 and len(d.val) == 30 and len(d.train) == 120
    assert d.class_counts("test").tolist() == [5] * 10


def test_per_class_too_many_names_class_and_count():
    with pytest.raises(UserError, match=r"per_class = 500.*class '0' has only 178 images"):
        load_data(cfg(dataset="digits", per_class=500), 0)


def test_val_fraction_zero_means_no_val():
    d = load_data(cfg(dataset="digits", val_fraction=0.0), 0)
    assert d.val is None and set(d.indices()) == {"train", "test"}
    with pytest.raises(UserError, match="val_fraction = 0"):
        d.class_counts("val")


def test_tiny_split_errors_clearly():
    with pytest.raises(UserError, match="cannot split"):
        load_data(cfg(dataset="digits", classes=[0], per_class=1), 0)


def test_normalize_modes():
    d = load_data(cfg(dataset="digits"), 0)
    x = d.train.x.double() / 255
    assert d.mean[0] == pytest.approx(x.mean().item(), abs=1e-9)
    assert d.std[0] == pytest.approx(x.std(unbiased=False).item(), abs=1e-9)
    assert load_data(cfg(dataset="digits", normalize="half"), 0).mean == (0.5,)
    im = load_data(cfg(dataset="digits", normalize="imagenet"), 0)
    assert im.mean == pytest.approx((0.449,)) and im.std == pytest.approx((0.226,))
    none = load_data(cfg(dataset="digits", normalize="none"), 0)
    assert (none.mean, none.std) == ((0.0,), (1.0,))


def test_image_size_resizes_named_data_set():
    d = load_data(cfg(dataset="digits", image_size=16, classes=[0, 1]), 0)
    assert d.input_shape == (1, 16, 16) and d.test.x.shape[1:] == (1, 16, 16)


# ------------------------------------------------------------------------------------ MNIST
def test_mnist_idx_plain_and_gz(tmp_path):
    make_mnist(tmp_path, gz_train=False, gz_test=True)
    d = load_data(cfg(dataset="mnist", root=str(tmp_path), val_fraction=0.1), 0)
    assert d.input_shape == (1, 28, 28)
    assert len(d.test) == 20 and d.test.index.min() == 60  # the official test split, offset by len(train)
    assert len(d.train) + len(d.val) == 60
    raw = data.load_mnist(cfg(root=str(tmp_path)))
    assert raw.train_x.shape == (60, 28, 28, 1) and raw.test_y.tolist() == [i % 10 for i in range(20)]
    assert_consistent(d, raw)


def test_mnist_plain_file_preferred_over_gz(tmp_path):
    raw_dir = make_mnist(tmp_path, gz_train=True)
    # a broken .gz beside a good plain file must not matter
    write_idx(raw_dir / "train-labels-idx1-ubyte", np.arange(60) % 10, gz=False)
    (raw_dir / "train-labels-idx1-ubyte.gz").write_bytes(b"broken")
    assert len(data.load_mnist(cfg(root=str(tmp_path))).train_y) == 60


def test_mnist_missing_names_expected_files(tmp_path):
    with pytest.raises(UserError) as e:
        load_data(cfg(dataset="mnist", root=str(tmp_path)), 0)
    msg = str(e.value)
    for f in data.MNIST_FILES:
        assert f in msg
    assert str((tmp_path / "MNIST" / "raw").resolve()) in msg


def test_mnist_failed_download_is_a_user_error(tmp_path, monkeypatch):
    import torchvision.datasets as tvd

    def offline(*a, **k):
        raise OSError("network is unreachable")

    monkeypatch.setattr(tvd, "MNIST", offline)
    with pytest.raises(UserError, match=r"download failed \(OSError: network is unreachable\)"):
        load_data(cfg(dataset="mnist", root=str(tmp_path), download=True), 0)


def test_mnist_bad_magic_and_truncation(tmp_path):
    raw_dir = make_mnist(tmp_path, gz_test=False)
    f = raw_dir / "t10k-images-idx3-ubyte"
    good = f.read_bytes()
    f.write_bytes(b"\x00\x00\x08\x01" + good[4:])
    with pytest.raises(UserError, match=r"t10k-images-idx3-ubyte is not an IDX file"):
        load_data(cfg(dataset="mnist", root=str(tmp_path)), 0)
    f.write_bytes(good[:-5])
    with pytest.raises(UserError, match=r"t10k-images-idx3-ubyte is truncated"):
        load_data(cfg(dataset="mnist", root=str(tmp_path)), 0)


def test_fashion_mnist_names(tmp_path):
    make_mnist(tmp_path, folder="FashionMNIST")
    d = load_data(cfg(dataset="fashion_mnist", root=str(tmp_path), classes=["Bag", "T-shirt/top"]), 0)
    assert d.class_names == ["Bag", "T-shirt/top"]
    assert len(d.test) == 4


def test_pool_splits(tmp_path):
    make_mnist(tmp_path)
    d = load_data(cfg(dataset="mnist", root=str(tmp_path), pool_splits=True, test_fraction=0.25, val_fraction=0), 0)
    assert len(d.train) + len(d.test) == 80 and len(d.test) == 20
    all_idx = np.concatenate([d.train.index, d.test.index])
    assert sorted(all_idx.tolist()) == list(range(80))
    assert (d.test.index < 60).any()  # the test split now draws from the official training images


def test_per_class_keeps_official_test_whole(tmp_path):
    make_mnist(tmp_path)
    d = load_data(cfg(dataset="mnist", root=str(tmp_path), per_class=4, val_fraction=0.25), 0)
    assert len(d.test) == 20 and (len(d.train) + len(d.val)) == 40
    with pytest.raises(UserError, match=r"class '0' has only 6 images in the official training split.*pool_splits"):
        load_data(cfg(dataset="mnist", root=str(tmp_path), per_class=7), 0)
    pooled = load_data(cfg(dataset="mnist", root=str(tmp_path), per_class=7, pool_splits=True), 0)
    assert sum(len(s) for s in pooled.splits().values()) == 70


def test_test_fraction_overrides_official_test(tmp_path):
    make_mnist(tmp_path)
    d = load_data(cfg(dataset="mnist", root=str(tmp_path), test_fraction=0.5, val_fraction=0), 0)
    assert len(d.test) == 30 and d.test.index.max() < 60


# ------------------------------------------------------------------------------------ CIFAR
def test_cifar10_pickles(tmp_path):
    folder = make_cifar10(tmp_path)
    d = load_data(cfg(dataset="cifar10", root=str(tmp_path), val_fraction=0.2), 0)
    assert d.input_shape == (3, 32, 32) and d.class_names == data.CIFAR10_CLASSES
    assert len(d.test) == 20 and len(d.train) == 40 and len(d.val) == 10
    raw = data.load_cifar10(cfg(root=str(tmp_path)))
    assert_consistent(d, raw)
    # a row is the red plane, then green, then blue, each row-major 32x32
    with open(folder / "data_batch_2", "rb") as f:
        row = pickle.load(f, encoding="bytes")[b"data"][3]
    assert np.array_equal(raw.train_x[13].transpose(2, 0, 1).reshape(-1), row)


def test_cifar100_fine_labels(tmp_path):
    make_cifar100(tmp_path)
    d = load_data(cfg(dataset="cifar100", root=str(tmp_path), classes=["apple", "worm"], val_fraction=0), 0)
    assert d.class_names == ["apple", "worm"]
    assert d.class_counts("test").tolist() == [1, 1]
    raw = data.load_cifar100(cfg(root=str(tmp_path)))
    assert len(raw.class_names) == 100 and raw.train_y.max() == 99


def test_cifar100_without_meta_uses_known_names(tmp_path):
    make_cifar100(tmp_path, meta=False)
    assert data.load_cifar100(cfg(root=str(tmp_path))).class_names == data.CIFAR100_CLASSES


def test_cifar_missing_names_expected_files(tmp_path):
    with pytest.raises(UserError, match=r"CIFAR-10 files not found in .*cifar-10-batches-py.*data_batch_1.*test_batch"):
        load_data(cfg(dataset="cifar10", root=str(tmp_path)), 0)
    with pytest.raises(UserError, match=r"cifar-100-python.*train, test"):
        load_data(cfg(dataset="cifar100", root=str(tmp_path)), 0)


@pytest.mark.parametrize(
    "content, pattern",
    [
        (b"not a pickle", r"cannot read CIFAR file .*data_batch_3"),
        ({b"labels": [0]}, r"data_batch_3 is not a CIFAR batch.*'data'"),
        ({b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]}, r"data_batch_3: 'data' is uint8 \(2, 100\)"),
        ({b"data": cifar_pixels(2, 0), b"labels": [0, 10]}, r"data_batch_3: labels outside 0\.\.9"),
        ({b"data": cifar_pixels(2, 0), b"labels": [0]}, r"data_batch_3: 1 labels for 2 images"),
    ],
)
def test_cifar_malformed_file_names_it(tmp_path, content, pattern):
    folder = make_cifar10(tmp_path)
    target = folder / "data_batch_3"
    if isinstance(content, bytes):
        target.write_bytes(content)
    else:
        dump(target, content)
    with pytest.raises(UserError, match=pattern):
        load_data(cfg(dataset="cifar10", root=str(tmp_path)), 0)


# ------------------------------------------------------------------------------ imagefolder
def test_imagefolder_directory_rgb_mixed_sizes(tmp_path):
    root = make_folder(tmp_path / "imgs", n=6)
    write_image(root / "dog" / "big.png", size=(20, 16), seed=5)
    with pytest.warns(UserWarning, match="different sizes; resizing to the most common, 12x12"):
        raw = data.load_imagefolder(cfg(path=str(root), cache=False))
    assert raw.class_names == ["cat", "dog", "emu"] and raw.train_x.shape == (19, 12, 12, 3) and raw.test_x is None
    assert np.bincount(raw.train_y).tolist() == [6, 7, 6]
    with pytest.warns(UserWarning, match="different sizes"):
        d = load_data(cfg(dataset="imagefolder", path=str(root), cache=False, test_fraction=1 / 3, val_fraction=0), 0)
    assert d.input_shape == (3, 12, 12) and len(d.test) == 6 and len(d.train) == 13


def test_imagefolder_grayscale_keeps_one_channel(tmp_path):
    root = make_folder(tmp_path / "gray", mode="L", ext="jpg", n=5)
    d = load_data(cfg(dataset="imagefolder", path=str(root)), 0)
    assert d.input_shape == (1, 12, 12)
    # one RGB image makes the whole set RGB
    write_image(root / "cat" / "color.png", seed=3)
    assert data.load_imagefolder(cfg(path=str(root), cache=False)).train_x.shape[-1] == 3


def test_imagefolder_tar_gz_with_top_folder_and_splits(tmp_path):
    src = make_split_folder(tmp_path / "src")
    archive = tar_dir(src, tmp_path / "set.tar.gz", top="myset")
    d = load_data(cfg(dataset="imagefolder", path=str(archive), val_fraction=0), 0)
    assert d.class_names == ["cat", "dog", "emu"]
    assert len(d.train) == 18 and len(d.test) == 6 and d.test.index.min() == 18
    # the same pixels as the directory (PNG is lossless), in the same order
    from_dir = data.load_imagefolder(cfg(path=str(src)))
    from_tar = data.load_imagefolder(cfg(path=str(archive)))
    assert np.array_equal(from_dir.train_x, from_tar.train_x) and np.array_equal(from_dir.test_y, from_tar.test_y)
    assert from_tar.train_x[0].tolist() == np.asarray(Image.open(src / "train" / "cat" / "000.png")).tolist()
    assert "set.tar.gz" in d.source


def test_imagefolder_zip(tmp_path):
    src = make_split_folder(tmp_path / "src", n_train=4, n_test=1)
    archive = zip_dir(src, tmp_path / "set.zip", top="top")
    with zipfile.ZipFile(archive, "a") as zf:  # macOS junk must be ignored
        zf.writestr("__MACOSX/top/train/cat/._000.png", b"junk")
        zf.writestr("top/README.txt", b"hello")
    d = load_data(cfg(dataset="imagefolder", path=str(archive), val_fraction=0), 0)
    assert len(d.train) == 12 and len(d.test) == 3


def test_imagefolder_image_size(tmp_path):
    root = make_folder(tmp_path / "imgs", n=4, ext="jpg")
    d = load_data(cfg(dataset="imagefolder", path=str(root), image_size=8), 0)
    assert d.input_shape == (3, 8, 8)


def test_imagefolder_decode_pool_matches_inline(tmp_path, monkeypatch):
    root = make_folder(tmp_path / "imgs", n=10)
    inline = data.load_imagefolder(cfg(path=str(root), cache=False))
    monkeypatch.setattr(data, "_DECODE_CHUNK", 4)  # 30 images -> 8 work items for the pool
    pooled = data.load_imagefolder(cfg(path=str(root), cache=False))
    assert np.array_equal(inline.train_x, pooled.train_x) and np.array_equal(inline.train_y, pooled.train_y)


def test_imagefolder_errors(tmp_path):
    with pytest.raises(UserError, match="needs data.path"):
        load_data(cfg(dataset="imagefolder"), 0)
    with pytest.raises(UserError, match="does not exist"):
        load_data(cfg(dataset="imagefolder", path=str(tmp_path / "nope")), 0)
    (tmp_path / "empty" / "cat").mkdir(parents=True)
    with pytest.raises(UserError, match="no images found in folder"):
        load_data(cfg(dataset="imagefolder", path=str(tmp_path / "empty")), 0)
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(UserError, match="not an archive"):
        load_data(cfg(dataset="imagefolder", path=str(tmp_path / "notes.txt")), 0)
    (tmp_path / "broken.tar.gz").write_bytes(b"\x1f\x8b garbage")
    with pytest.raises(UserError, match=r"cannot read archive .*broken\.tar\.gz"):
        load_data(cfg(dataset="imagefolder", path=str(tmp_path / "broken.tar.gz")), 0)
    src = make_folder(tmp_path / "split" / "train", classes=("a",), n=3)
    make_folder(tmp_path / "split" / "test", classes=("a", "b"), n=1)
    with pytest.raises(UserError, match=r"class folder\(s\) b exist under test/ but not under train/"):
        load_data(cfg(dataset="imagefolder", path=str(src.parent)), 0)


def test_unreadable_image_error_and_skip(tmp_path):
    root = make_folder(tmp_path / "imgs", n=5)
    (root / "dog" / "bad.jpg").write_bytes(b"this is not a jpeg")
    with pytest.raises(UserError, match=r"cannot decode image 'dog/bad\.jpg' in folder .*on_bad_image"):
        load_data(cfg(dataset="imagefolder", path=str(root)), 0)
    with pytest.warns(UserWarning, match=r"skipped 1 unreadable image.*dog/bad\.jpg"):
        d = load_data(cfg(dataset="imagefolder", path=str(root), on_bad_image="skip"), 0)
    assert sum(len(s) for s in d.splits().values()) == 15
    # inside an archive the message names the member and the archive
    archive = tar_dir(root, tmp_path / "a.tar.gz")
    with pytest.raises(UserError, match=r"'dog/bad\.jpg' in archive .*a\.tar\.gz"):
        load_data(cfg(dataset="imagefolder", path=str(archive)), 0)


def test_named_data_set_from_image_archive(tmp_path):
    src = tmp_path / "c10"
    make_split_folder(src, classes=data.CIFAR10_CLASSES, n_train=2, n_test=1)
    archive = tar_dir(src, tmp_path / "cifar10-jpeg.tar.gz", top="cifar10")
    d = load_data(cfg(dataset="cifar10", path=str(archive), val_fraction=0), 0)
    assert d.class_names == data.CIFAR10_CLASSES and len(d.train) == 20 and len(d.test) == 10
    bad = make_folder(tmp_path / "bad", classes=("airplane", "zebra"), n=2)
    pattern = r"do not match CIFAR-10's classes; unexpected folders: zebra; missing classes: automobile"
    with pytest.raises(UserError, match=pattern):
        load_data(cfg(dataset="cifar10", path=str(bad)), 0)


def test_fashion_mnist_folder_maps_to_official_label_order(tmp_path):
    folders = ["T-shirt_top", "trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "ankle boot"]
    root = make_folder(tmp_path / "fm", classes=folders, n=2, mode="L")
    raw = data.load_fashion_mnist(cfg(path=str(root)))
    assert raw.class_names == data.FASHION_MNIST_CLASSES
    # sorted folders: Bag is folder label 0 but official label 8; its first image is fm/Bag/000.png
    bag = np.asarray(Image.open(root / "Bag" / "000.png"))
    rows = np.flatnonzero(raw.train_y == 8)
    assert any(np.array_equal(raw.train_x[r, ..., 0], bag) for r in rows)


# ---------------------------------------------------------------------------------- caching
def test_cache_is_used_on_second_load(tmp_path, monkeypatch):
    root = make_split_folder(tmp_path / "src")
    archive = tar_dir(root, tmp_path / "s.tar.gz")
    first = load_data(cfg(dataset="imagefolder", path=str(archive)), 3)
    files = list((tmp_path / "cache").glob("imagefolder-*.npz"))
    assert len(files) == 1 and not list((tmp_path / "cache").glob("*.tmp"))

    def no_decode(*a, **k):
        raise AssertionError("decoded again despite the cache")

    monkeypatch.setattr(data, "_read_imagefolder", no_decode)
    second = load_data(cfg(dataset="imagefolder", path=str(archive)), 3)
    assert torch.equal(first.train.x, second.train.x) and first.class_names == second.class_names
    assert first.source == second.source
    # a different image_size is a different cache entry
    with pytest.raises(AssertionError):
        load_data(cfg(dataset="imagefolder", path=str(archive), image_size=8), 3)


def test_corrupt_cache_is_rebuilt(tmp_path):
    root = make_folder(tmp_path / "src", n=4)
    first = data.load_imagefolder(cfg(path=str(root)))
    (cache_file,) = (tmp_path / "cache").glob("*.npz")
    cache_file.write_bytes(b"garbage")
    again = data.load_imagefolder(cfg(path=str(root)))
    assert np.array_equal(first.train_x, again.train_x)
    assert np.load(cache_file)["train_x"].shape == first.train_x.shape  # rewritten properly


def test_cache_follows_changes_and_can_be_off(tmp_path):
    root = make_folder(tmp_path / "src", n=4)
    assert len(data.load_imagefolder(cfg(path=str(root))).train_y) == 12
    write_image(root / "cat" / "new.png", seed=77)
    assert len(data.load_imagefolder(cfg(path=str(root))).train_y) == 13  # a file inside a class folder changed
    # The changed source's new cache file replaced the old one; other options keep their own file.
    assert len(list((tmp_path / "cache").glob("*.npz"))) == 1
    data.load_imagefolder(cfg(path=str(root), image_size=8))
    assert len(list((tmp_path / "cache").glob("*.npz"))) == 2
    write_image(root / "cat" / "newer.png", seed=78)
    assert len(data.load_imagefolder(cfg(path=str(root))).train_y) == 14
    assert len(list((tmp_path / "cache").glob("*.npz"))) == 2  # one per option set, the newest version each
    off = tmp_path / "off"
    make_folder(off, n=2)
    before = set((tmp_path / "cache").glob("*"))
    data.load_imagefolder(cfg(path=str(off), cache=False))
    assert set((tmp_path / "cache").glob("*")) == before


# ------------------------------------------------------------------------------ predict input
def test_read_image_files(tmp_path):
    a = tmp_path / "a.png"
    write_image(a, size=(10, 6))
    b = tmp_path / "b.jpg"
    write_image(b, mode="L", fmt="JPEG")
    x = read_image_files([str(a), str(b)], channels=3, size=(8, 8))
    assert x.shape == (2, 3, 8, 8) and x.dtype == torch.uint8
    assert read_image_files([str(a)], channels=1, size=(6, 10)).shape == (1, 1, 6, 10)
    with pytest.raises(UserError, match=r"image file '.*missing\.png' does not exist"):
        read_image_files([str(a), str(tmp_path / "missing.png")], 3, (8, 8))
    (tmp_path / "bad.png").write_bytes(b"nope")
    with pytest.raises(UserError, match=r"cannot read image file '.*bad\.png'"):
        read_image_files([str(tmp_path / "bad.png")], 3, (8, 8))


# ------------------------------------------------------------------------------ real copies
@pytest.mark.skipif(not (SHARED / "MNIST" / "raw").is_dir(), reason=f"real MNIST copy not found at {SHARED}/MNIST/raw")
def test_real_mnist():
    d = load_data(cfg(dataset="mnist", root=str(SHARED), val_fraction=0), 0)
    assert len(d.train) == 60000 and len(d.test) == 10000 and d.input_shape == (1, 28, 28)
    assert d.class_counts("train").tolist() == [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
    assert d.class_counts("test").tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
    assert d.mean[0] == pytest.approx(0.1307, abs=1e-3) and d.std[0] == pytest.approx(0.3081, abs=1e-3)


@pytest.mark.skipif(not (SHARED / "cifar10-jpeg.tar.gz").is_file(), reason=f"real CIFAR-10 JPEG copy not found at {SHARED}")
def test_real_cifar10_jpeg_archive():
    d = load_data(cfg(dataset="cifar10", path=str(SHARED / "cifar10-jpeg.tar.gz"), val_fraction=0), 0)
    assert d.class_names == ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    assert len(d.train) == 50000 and len(d.test) == 10000 and d.input_shape == (3, 32, 32)
    assert d.class_counts("train").tolist() == [5000] * 10 and d.class_counts("test").tolist() == [1000] * 10
