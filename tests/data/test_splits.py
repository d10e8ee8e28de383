"""load_data: class subsets, per-class samples, stratified and official splits, resizing and
normalization, on scikit-learn's digits and small IDX files; and the registry of data sets."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import cnnlab.data as data
from cnnlab.data import DATASETS, load_data, sources
from cnnlab.errors import UserError

from .helpers import assert_consistent, cfg
from .writers import make_mnist, write_idx


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
    raw = sources.load_digits(cfg())
    assert raw.train_x.shape == (1797, 8, 8, 1) and raw.test_x is None
    assert_consistent(d, raw)
    # stratified: every class's share of the test split is within one image of 20%
    total = np.bincount(raw.train_y, minlength=10)
    assert np.all(np.abs(d.class_counts("test") - 0.2 * total) <= 1)


def test_digits_pixel_scaling_matches_sklearn():
    from sklearn.datasets import load_digits

    raw = sources.load_digits(cfg())
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
    raw = sources.load_digits(cfg())
    assert_consistent(d, raw, keep=[3, 1])
    assert set(d.train.y.tolist()) == {0, 1}


def test_class_subset_by_name():
    d = load_data(cfg(dataset="digits", classes=["9", "0", "5"]), 0)
    assert d.class_names == ["9", "0", "5"]
    assert_consistent(d, sources.load_digits(cfg()), keep=[9, 0, 5])
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
        load_data(cfg(dataset="digits", classes=[0, 1], per_class=1), 0)


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
    raw = sources.load_mnist(cfg(root=str(tmp_path)))
    assert raw.train_x.shape == (60, 28, 28, 1) and raw.test_y.tolist() == [i % 10 for i in range(20)]
    assert_consistent(d, raw)


def test_mnist_plain_file_preferred_over_gz(tmp_path):
    raw_dir = make_mnist(tmp_path, gz_train=True)
    # a broken .gz beside a good plain file must not matter
    write_idx(raw_dir / "train-labels-idx1-ubyte", np.arange(60) % 10, gz=False)
    (raw_dir / "train-labels-idx1-ubyte.gz").write_bytes(b"broken")
    assert len(sources.load_mnist(cfg(root=str(tmp_path))).train_y) == 60


def test_mnist_missing_names_expected_files(tmp_path):
    with pytest.raises(UserError) as e:
        load_data(cfg(dataset="mnist", root=str(tmp_path)), 0)
    msg = str(e.value)
    for f in sources.MNIST_FILES:
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


