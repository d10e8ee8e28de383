"""The named data sets' files: CIFAR pickles (written in the real format), named data sets read
from image folders, and the real copies in ../shared/data when present."""

from __future__ import annotations

import copyreg
import gzip
import os
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest

import cnnlab.data as data
from cnnlab.data import load_data, sources
from cnnlab.errors import UserError

from .helpers import SHARED, assert_consistent, cfg
from .writers import cifar_pixels, dump, make_cifar10, make_cifar100, make_mnist


# ------------------------------------------------------------------------------------ CIFAR
def test_cifar10_pickles(tmp_path):
    folder = make_cifar10(tmp_path)
    d = load_data(cfg(dataset="cifar10", root=str(tmp_path), val_fraction=0.2), 0)
    assert d.input_shape == (3, 32, 32) and d.class_names == data.CIFAR10_CLASSES
    assert len(d.test) == 20 and len(d.train) == 40 and len(d.val) == 10
    raw = sources.load_cifar10(cfg(root=str(tmp_path)))
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
    raw = sources.load_cifar100(cfg(root=str(tmp_path)))
    assert len(raw.class_names) == 100 and raw.train_y.max() == 99


def test_cifar100_without_meta_uses_known_names(tmp_path):
    make_cifar100(tmp_path, meta=False)
    assert sources.load_cifar100(cfg(root=str(tmp_path))).class_names == data.CIFAR100_CLASSES


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


# ------------------------------------------------------------------ the restricted unpickler
@pytest.mark.parametrize("protocol", [0, 2, 4, 5])
def test_every_pickle_protocol_of_plain_data_loads_the_same(tmp_path, protocol):
    """numpy writes arrays as _reconstruct + raw bytes (protocols 0-4) or _frombuffer (5); Python 3
    writes bytes into protocols 0-2 as _codecs.encode: all of them rebuild the same arrays."""
    obj = {b"data": cifar_pixels(3, 1), "labels": [1, 2, 3], b"f32": np.linspace(0, 1, 6, dtype=">f4").reshape(2, 3),
           b"fortran": np.asfortranarray(np.arange(6, dtype=np.int16).reshape(2, 3)), b"scalar": np.int64(7),
           b"nested": [(b"a", 1.5, None, True)]}
    dump(tmp_path / "f", obj, protocol=protocol)
    got = sources.read_cifar_pickle(tmp_path / "f")
    assert np.array_equal(got[b"data"], obj[b"data"]) and got[b"data"].dtype == np.uint8
    assert got["labels"] == [1, 2, 3] and got[b"nested"] == [(b"a", 1.5, None, True)]
    assert np.array_equal(got[b"f32"], obj[b"f32"]) and got[b"f32"].dtype == np.dtype(">f4")
    assert np.array_equal(got[b"fortran"], obj[b"fortran"]) and int(got[b"scalar"]) == 7


@pytest.mark.parametrize("obj, words", [
    ({b"x": np.zeros(2, dtype=[("a", "u1"), ("b", "f4")])}, "structured array type"),
    ({b"x": np.array(["ab"])}, "only numeric arrays"),
    ({b"x": {1, 2}}, "holds a set"),
    ({b"x": slice(1, 2)}, "builtins.slice"),
    ({b"x": Path("p")}, "pathlib"),
])
def test_anything_but_plain_data_is_refused(tmp_path, obj, words):
    dump(tmp_path / "f", obj)
    with pytest.raises(UserError, match=r"is not a CIFAR data file: .*" + words):
        sources.read_cifar_pickle(tmp_path / "f")


def test_a_cifar_file_that_is_not_a_regular_file_is_refused(tmp_path):

    folder = make_cifar10(tmp_path)
    (folder / "test_batch").unlink()
    os.mkfifo(folder / "test_batch")  # a read would block until someone writes
    with pytest.raises(UserError, match="test_batch is not a regular file"):
        load_data(cfg(dataset="cifar10", root=str(tmp_path)), 0)


def test_re_packed_copies_with_str_keys_load(tmp_path):
    folder = make_cifar10(tmp_path)
    dump(folder / "test_batch", {"data": cifar_pixels(20, 9), "labels": [j % 10 for j in range(20)]})
    assert sources.load_cifar10(cfg(root=str(tmp_path))).n_test == 20


def test_an_idx_file_is_read_no_further_than_its_header_says(tmp_path):

    raw_dir = make_mnist(tmp_path, gz_test=True)
    # 1 MB of zeros after a header announcing 20 labels: refused as extra bytes without reading it all
    header = bytes([0, 0, 8, 1]) + np.asarray([20], dtype=">i4").tobytes()
    with gzip.open(raw_dir / "t10k-labels-idx1-ubyte.gz", "wb") as f:
        f.write(header + bytes(20) + bytes(10**6))
    with pytest.raises(UserError, match="t10k-labels-idx1-ubyte.gz is truncated or has extra bytes"):
        load_data(cfg(dataset="mnist", root=str(tmp_path)), 0)


def test_an_idx_header_announcing_more_than_the_machine_has_is_refused(tmp_path, monkeypatch):
    raw_dir = make_mnist(tmp_path, gz_test=False)
    f = raw_dir / "t10k-images-idx3-ubyte"
    for dims, words in (((10**6, 1000, 1000), r"1,000,000 x 1,000 x 1,000 = 1.0 TB of data"),
                        ((2**30, 2**30, 16), r"= 18446744.1 TB"),  # wraps to 0 in int64 arithmetic
                        ((1543678985, 257413870, 326844977), r"more than any file")):  # wraps negative
        f.write_bytes(bytes([0, 0, 8, 3]) + np.asarray(dims, dtype=">i4").tobytes() + bytes(100))
        with pytest.raises(UserError, match=words):
            load_data(cfg(dataset="mnist", root=str(tmp_path)), 0)
    f.write_bytes(bytes([0, 0, 8, 3]) + np.asarray([1000, 100, 100], dtype=">i4").tobytes() + bytes(100))
    monkeypatch.setenv("CNNLAB_MEMORY_LIMIT", str(10**6))  # 10 MB announced on a 1 MB machine
    with pytest.raises(UserError, match=r"1000 x 100 x 100 bytes announced.*would need about 10.0 MB"):
        load_data(cfg(dataset="mnist", root=str(tmp_path)), 0)


def _pickle_file(tmp_path, data: bytes) -> Path:
    (tmp_path / "f").write_bytes(data)
    return tmp_path / "f"


def test_a_huge_memo_index_costs_nothing(tmp_path):
    # LONG_BINPUT 2**31: the C unpickler sizes its memo array by the index (tens of GB)
    p = _pickle_file(tmp_path, b"\x80\x02Nr" + struct.pack("<I", 2**31) + b".")
    assert sources.read_cifar_pickle(p) is None


def test_shared_references_that_unfold_without_end_are_refused(tmp_path):
    inner = list(range(1000))
    p = _pickle_file(tmp_path, pickle.dumps([[inner] * 1000] * 100, 2))  # 5 kB naming 10^8 items
    with pytest.raises(UserError, match="unfolds to more than"):
        sources.read_cifar_pickle(p)


def test_extension_codes_are_refused_even_when_cached(tmp_path):
    copyreg.add_extension("os", "getcwd", 0xF1)
    try:
        pickle.loads(b"\x80\x02\x82\xf1.")  # the C unpickler now serves code 0xF1 from its cache
        p = _pickle_file(tmp_path, b"\x80\x02\x82\xf1)R.")  # os.getcwd()
        with pytest.raises(UserError, match="extension registry"):
            sources.read_cifar_pickle(p)
    finally:
        copyreg.remove_extension("os", "getcwd", 0xF1)


def test_build_cannot_change_the_allowed_functions(tmp_path):
    p = _pickle_file(tmp_path, b"\x80\x02cnumpy.core.multiarray\n_reconstruct\nN}X\x0c\x00\x00\x00__defaults__"
                               b"K\x01K\x02K\x03\x87s\x86b0N.")
    with pytest.raises(UserError, match="set the state of something other than an array"):
        sources.read_cifar_pickle(p)
    assert sources._reconstruct.__defaults__ is None


@pytest.mark.parametrize("labels", [np.int64(1), [2**70], np.zeros((1, 1), dtype=np.int64), [True]])
def test_labels_that_are_not_a_list_of_small_integers_are_refused(tmp_path, labels):
    dump(tmp_path / "b", {b"data": cifar_pixels(1, 0), b"labels": labels}, protocol=2)
    with pytest.raises(UserError, match="not a list of integers"):
        sources._cifar_batch(tmp_path / "b", b"labels", 10)


def test_odd_keys_do_not_crash(tmp_path):
    dump(tmp_path / "b", {"\ud800": 0, b"data": cifar_pixels(2, 0), b"labels": [0, 1]}, protocol=2)
    x, y = sources._cifar_batch(tmp_path / "b", b"labels", 10)
    assert x.shape == (2, 32, 32, 3) and y.tolist() == [0, 1]


def test_the_one_byte_string_type_is_not_numeric(tmp_path):
    dump(tmp_path / "f", {b"x": np.array([b"a", b"b"], dtype="S1")}, protocol=2)
    with pytest.raises(UserError, match="only numeric arrays"):
        sources.read_cifar_pickle(tmp_path / "f")


# ------------------------------------------------------------------------------ real copies
@pytest.mark.slow
@pytest.mark.skipif(not (SHARED / "MNIST" / "raw").is_dir(), reason=f"real MNIST copy not found at {SHARED}/MNIST/raw")
def test_real_mnist():
    d = load_data(cfg(dataset="mnist", root=str(SHARED), val_fraction=0), 0)
    assert len(d.train) == 60000 and len(d.test) == 10000 and d.input_shape == (1, 28, 28)
    assert d.class_counts("train").tolist() == [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
    assert d.class_counts("test").tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
    assert d.mean[0] == pytest.approx(0.1307, abs=1e-3) and d.std[0] == pytest.approx(0.3081, abs=1e-3)


@pytest.mark.slow
@pytest.mark.skipif(not (SHARED / "cifar10-jpeg.tar.gz").is_file(), reason=f"real CIFAR-10 JPEG copy not found at {SHARED}")
def test_real_cifar10_jpeg_archive():
    d = load_data(cfg(dataset="cifar10", path=str(SHARED / "cifar10-jpeg.tar.gz"), val_fraction=0), 0)
    assert d.class_names == ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    assert len(d.train) == 50000 and len(d.test) == 10000 and d.input_shape == (3, 32, 32)
    assert d.class_counts("train").tolist() == [5000] * 10 and d.class_counts("test").tolist() == [1000] * 10

