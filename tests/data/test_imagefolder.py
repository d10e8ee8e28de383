"""Image folders and archives, the decode cache, and reading image files for prediction."""

from __future__ import annotations

import io
import multiprocessing as mp
import os
import signal
import tarfile
import zipfile

import numpy as np
import pytest
import torch
from PIL import Image

import cnnlab.data as data
from cnnlab._progress import Reporter, reporting
from cnnlab.data import imagefolder, load_data, read_image_files, sources
from cnnlab.errors import RunFailure, UserError

from .helpers import cfg
from .writers import make_folder, make_split_folder, tar_dir, write_image, zip_dir


@pytest.fixture(autouse=True)
def _cache_in_tmp(tmp_path, monkeypatch):
    monkeypatch.setenv("CNNLAB_CACHE", str(tmp_path / "cache"))


# ------------------------------------------------------------------------------ imagefolder
def test_imagefolder_directory_rgb_mixed_sizes(tmp_path):
    root = make_folder(tmp_path / "imgs", n=6)
    write_image(root / "dog" / "big.png", size=(20, 16), seed=5)
    with pytest.warns(UserWarning, match="different sizes; resizing to the most common, 12x12"):
        raw = imagefolder.load_imagefolder(cfg(path=str(root), cache=False))
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
    assert imagefolder.load_imagefolder(cfg(path=str(root), cache=False)).train_x.shape[-1] == 3


def test_imagefolder_tar_gz_with_top_folder_and_splits(tmp_path):
    src = make_split_folder(tmp_path / "src")
    archive = tar_dir(src, tmp_path / "set.tar.gz", top="myset")
    d = load_data(cfg(dataset="imagefolder", path=str(archive), val_fraction=0), 0)
    assert d.class_names == ["cat", "dog", "emu"]
    assert len(d.train) == 18 and len(d.test) == 6 and d.test.index.min() == 18
    # the same pixels as the directory (PNG is lossless), in the same order
    from_dir = imagefolder.load_imagefolder(cfg(path=str(src)))
    from_tar = imagefolder.load_imagefolder(cfg(path=str(archive)))
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
    inline = imagefolder.load_imagefolder(cfg(path=str(root), cache=False))
    monkeypatch.setattr(imagefolder, "DECODE_CHUNK_IMAGES", 4)  # 30 images -> 8 work items for the pool
    pooled = imagefolder.load_imagefolder(cfg(path=str(root), cache=False))
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
    with pytest.raises(UserError, match=r"cannot read image 'dog/bad\.jpg' in folder .*on_bad_image"):
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
    raw = sources.load_fashion_mnist(cfg(path=str(root)))
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

    monkeypatch.setattr(imagefolder, "read_imagefolder", no_decode)
    second = load_data(cfg(dataset="imagefolder", path=str(archive)), 3)
    assert torch.equal(first.train.x, second.train.x) and first.class_names == second.class_names
    assert first.source == second.source
    # a different image_size is a different cache entry
    with pytest.raises(AssertionError):
        load_data(cfg(dataset="imagefolder", path=str(archive), image_size=8), 3)


def test_corrupt_cache_is_rebuilt(tmp_path):
    root = make_folder(tmp_path / "src", n=4)
    first = imagefolder.load_imagefolder(cfg(path=str(root)))
    (cache_file,) = (tmp_path / "cache").glob("*.npz")
    cache_file.write_bytes(b"garbage")
    again = imagefolder.load_imagefolder(cfg(path=str(root)))
    assert np.array_equal(first.train_x, again.train_x)
    assert np.load(cache_file)["train_x"].shape == first.train_x.shape  # rewritten properly


def test_cache_follows_changes_and_can_be_off(tmp_path):
    root = make_folder(tmp_path / "src", n=4)
    assert len(imagefolder.load_imagefolder(cfg(path=str(root))).train_y) == 12
    write_image(root / "cat" / "new.png", seed=77)
    assert len(imagefolder.load_imagefolder(cfg(path=str(root))).train_y) == 13  # a file inside a class folder changed
    # The changed source's new cache file replaced the old one; other options keep their own file.
    assert len(list((tmp_path / "cache").glob("*.npz"))) == 1
    imagefolder.load_imagefolder(cfg(path=str(root), image_size=8))
    assert len(list((tmp_path / "cache").glob("*.npz"))) == 2
    write_image(root / "cat" / "newer.png", seed=78)
    assert len(imagefolder.load_imagefolder(cfg(path=str(root))).train_y) == 14
    assert len(list((tmp_path / "cache").glob("*.npz"))) == 2  # one per option set, the newest version each
    off = tmp_path / "off"
    make_folder(off, n=2)
    before = set((tmp_path / "cache").glob("*"))
    imagefolder.load_imagefolder(cfg(path=str(off), cache=False))
    assert set((tmp_path / "cache").glob("*")) == before


# ------------------------------------------------------------------------------ hostile input
def test_zip_members_with_parent_or_absolute_paths_are_refused(tmp_path):
    for member in ("../cat/x.png", "/cat/x.png", "cat/../../x.png", "C:/cat/x.png", "cat\\x.png"):
        archive = zip_dir(make_folder(tmp_path / "src", n=2), tmp_path / "a.zip")
        with zipfile.ZipFile(archive, "a") as zf:
            zf.writestr(zipfile.ZipInfo(member), b"x")  # ZipInfo keeps the name as given
        with pytest.raises(UserError, match="absolute, empty or parent-folder path"):
            imagefolder.load_imagefolder(cfg(path=str(archive), cache=False))


def test_a_tar_of_the_current_folder_is_not_a_bad_member(tmp_path):
    archive = tar_dir(make_folder(tmp_path / "src", n=2), tmp_path / "a.tar", mode="w")  # members "." and "./cat/..."
    assert imagefolder.load_imagefolder(cfg(path=str(archive), cache=False)).n_train == 6


def test_files_and_members_past_the_size_cap_are_unreadable_images(tmp_path, monkeypatch):
    root = make_folder(tmp_path / "src", n=3)
    (root / "cat" / "huge.png").write_bytes(bytes(5000))
    monkeypatch.setattr(imagefolder, "IMAGE_FILE_MAX_BYTES", 4000)
    for path in (root, zip_dir(root, tmp_path / "a.zip"), tar_dir(root, tmp_path / "a.tar.gz")):
        with pytest.raises(UserError, match=r"cannot read image 'cat/huge.png'.*5,000 bytes"):
            imagefolder.load_imagefolder(cfg(path=str(path), cache=False))
        with pytest.warns(UserWarning, match="skipped 1 unreadable image"):
            assert imagefolder.load_imagefolder(cfg(path=str(path), cache=False, on_bad_image="skip")).n_train == 9


def test_empty_and_unidentified_files_say_what_they_are(tmp_path):
    root = make_folder(tmp_path / "src", n=3)
    (root / "cat" / "empty.png").write_bytes(b"")
    with pytest.raises(UserError, match=r"'cat/empty.png'.*the file is empty"):
        imagefolder.load_imagefolder(cfg(path=str(root), cache=False))
    (root / "cat" / "empty.png").write_bytes(b"<html>not an image</html>")
    with pytest.raises(UserError, match=r"'cat/empty.png'.*not an image file of a known format.*<html>"):
        imagefolder.load_imagefolder(cfg(path=str(root), cache=False))


def test_decoded_images_past_the_memory_available_are_refused_as_they_arrive(tmp_path, monkeypatch):
    root = make_folder(tmp_path / "src", n=10, size=(40, 40))  # 30 images of 4.8 kB decoded
    monkeypatch.setattr(imagefolder, "DECODE_CHUNK_IMAGES", 4)
    monkeypatch.setenv("CNNLAB_MEMORY_LIMIT", "50000")
    with pytest.raises(UserError, match=r"the decoded images of folder .*decoded so far.*50.0 kB available.*image_size"):
        imagefolder.load_imagefolder(cfg(path=str(root), cache=False))
    assert not mp.active_children()  # the pool stopped with the refusal
    monkeypatch.setenv("CNNLAB_MEMORY_LIMIT", "200000")  # enough for all of them: loads (with a warning)
    with pytest.warns(UserWarning, match="decoded images"):
        assert imagefolder.load_imagefolder(cfg(path=str(root), cache=False)).n_train == 30


def test_an_rgb_test_image_in_a_gray_set_is_made_gray(tmp_path):
    make_folder(tmp_path / "s" / "train", classes=("a", "b"), n=3, mode="L")
    make_folder(tmp_path / "s" / "test", classes=("a", "b"), n=1, mode="RGB", size=(10, 10))
    with pytest.warns(UserWarning, match="test images in .* are not all 12x12"):
        raw = imagefolder.load_imagefolder(cfg(path=str(tmp_path / "s"), cache=False))
    assert raw.train_x.shape == (6, 12, 12, 1) and raw.test_x.shape == (2, 12, 12, 1)


def test_a_killed_decode_process_fails_the_load_instead_of_hanging(tmp_path, monkeypatch):
    if imagefolder._workers() < 2:
        pytest.skip("one core: images are decoded in this process, there is no pool to break")
    root = make_folder(tmp_path / "src", n=10)
    real = imagefolder._decode_chunk

    def dies_on_dog(items, *a):  # the OOM killer, on one of the pool's processes
        if any(name.startswith("dog/") for name, _, _ in items) and mp.current_process().name != "MainProcess":
            os.kill(os.getpid(), signal.SIGKILL)
        return real(items, *a)

    monkeypatch.setattr(imagefolder, "_decode_chunk", dies_on_dog)
    monkeypatch.setattr(imagefolder, "DECODE_CHUNK_IMAGES", 4)
    with pytest.raises(RunFailure, match="a process decoding the images of folder .* died"):
        imagefolder.load_imagefolder(cfg(path=str(root), cache=False))
    assert not mp.active_children()


def test_a_chunk_decodes_no_more_than_its_share_of_memory():
    items = [(f"c/{i}.png", _png((20, 20), i), None) for i in range(6)]  # 20x20: 1,600 bytes each at 4 B/pixel
    done, rest = imagefolder._decode_chunk(items, None, budget=3500)
    assert [n for n, _, _ in done] == ["c/0.png", "c/1.png"] and rest == items[2:]
    done, rest = imagefolder._decode_chunk(items[:1], None, budget=10)  # always at least one
    assert len(done) == 1 and done[0][1] is not None and rest == []
    done, _ = imagefolder._decode_chunk(items[:1], None, limit=1000)  # one image larger than the machine
    assert done[0][1] is None and "would need about 1.6 kB" in done[0][2]


def test_pooled_decoding_under_a_tight_budget_keeps_the_order(tmp_path, monkeypatch):
    root = make_folder(tmp_path / "src", n=10)
    inline = imagefolder.load_imagefolder(cfg(path=str(root), cache=False))
    monkeypatch.setattr(imagefolder, "DECODE_CHUNK_IMAGES", 10)
    monkeypatch.setenv("CNNLAB_MEMORY_LIMIT", "20000")  # 30 images of 432 B; a chunk's share: 8 of its 10
    with pytest.warns(UserWarning):
        pooled = imagefolder.load_imagefolder(cfg(path=str(root), cache=False))
    assert np.array_equal(inline.train_x, pooled.train_x) and np.array_equal(inline.train_y, pooled.train_y)


def test_a_tar_header_that_would_fill_the_memory_is_refused(tmp_path):
    archive = tmp_path / "bomb.tar.gz"
    with tarfile.open(archive, "w:gz", format=tarfile.GNU_FORMAT) as tf:
        info = tarfile.TarInfo("a/" + "x" * 2_000_000 + ".png")  # a 2 MB GNU long-name header
        tf.addfile(info, io.BytesIO(b""))
    with pytest.raises(UserError, match=r"cannot read archive .*extended header of 2,000,00\d bytes"):
        imagefolder.load_imagefolder(cfg(path=str(archive), cache=False))


def test_a_malformed_pax_sparse_map_is_an_unreadable_archive(tmp_path):
    archive = tmp_path / "a.tar"
    with tarfile.open(archive, "w", format=tarfile.PAX_FORMAT) as tf:
        info = tarfile.TarInfo("a/x.png")
        info.pax_headers = {"GNU.sparse.map": "x,y"}
        tf.addfile(info, io.BytesIO(b""))
    with pytest.raises(UserError, match="cannot read archive"):
        imagefolder.load_imagefolder(cfg(path=str(archive), cache=False))


def test_links_inside_a_tar_are_read_from_the_archive(tmp_path):
    root = make_folder(tmp_path / "src", classes=("a", "b"), n=2)
    archive = tmp_path / "l.tar"
    with tarfile.open(archive, "w") as tf:
        tf.add(root, arcname=".")
        for kind, name in ((tarfile.SYMTYPE, "./b/sym.png"), (tarfile.LNKTYPE, "./b/hard.png")):
            info = tarfile.TarInfo(name)
            info.type, info.linkname = kind, ("../a/000.png" if kind == tarfile.SYMTYPE else "./a/000.png")
            tf.addfile(info)
    raw = imagefolder.load_imagefolder(cfg(path=str(archive), cache=False))
    assert raw.n_train == 6 and np.bincount(raw.train_y).tolist() == [2, 4]
    a0 = raw.train_x[0]  # a/000.png, and both links to it under b/
    assert sum(np.array_equal(x, a0) for x in raw.train_x) == 3


def test_a_folder_that_cannot_be_listed_is_refused(tmp_path, monkeypatch):
    root = make_folder(tmp_path / "src", n=2)
    real = os.scandir

    def no_permission(path="."):
        if str(path).endswith("emu"):
            raise PermissionError(13, "Permission denied", str(path))
        return real(path)

    monkeypatch.setattr(os, "scandir", no_permission)
    with pytest.raises(UserError, match=r"cannot list folder .*emu.*Permission denied"):
        imagefolder.load_imagefolder(cfg(path=str(root), cache=False))


def test_linked_class_folders_are_read_and_loops_are_not(tmp_path):
    root = make_folder(tmp_path / "src", classes=("a", "b"), n=2)
    make_folder(tmp_path / "elsewhere", classes=("c",), n=3)
    (root / "c").symlink_to(tmp_path / "elsewhere" / "c")
    (root / "a" / "loop").symlink_to(root)  # a link to an ancestor: walking it would never end
    raw = imagefolder.load_imagefolder(cfg(path=str(root), cache=False))
    assert raw.class_names == ["a", "b", "c"] and np.bincount(raw.train_y).tolist() == [2, 2, 3]


def test_16_bit_images_are_scaled_not_clipped(tmp_path):
    ramp = (np.arange(64, dtype=np.uint16).reshape(8, 8) * 1000)  # 0 .. 63,000 of 65,535
    for c in ("a", "b"):
        for i in range(2):
            (tmp_path / "s" / c).mkdir(parents=True, exist_ok=True)
            Image.fromarray(ramp).save(tmp_path / "s" / c / f"{i}.png")
    raw = imagefolder.load_imagefolder(cfg(path=str(tmp_path / "s"), cache=False))
    assert raw.train_x.shape == (4, 8, 8, 1)
    assert np.abs(raw.train_x[0, ..., 0].astype(int) - np.rint(ramp / 257.0)).max() <= 1
    x = read_image_files([str(tmp_path / "s" / "a" / "0.png")], 1, (8, 8))
    assert int(x.max()) == round(63000 / 257) and int(x.min()) == 0


def _png(size, seed) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (*size, 3), dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


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




# ------------------------------------------------------------------------------ decode progress
class _Recorder:
    """A progress task that records what it is told."""

    def __init__(self):
        self.updates: list[float] = []

    def update(self, completed: float) -> None:
        self.updates.append(completed)


def test_the_decode_says_what_it_does_in_plain_lines_once_and_not_when_cached(tmp_path):
    archive = tar_dir(make_folder(tmp_path / "src", n=10), tmp_path / "s.tar.gz")
    out = io.StringIO()
    with reporting(Reporter(stream=out)):
        imagefolder.load_imagefolder(cfg(path=str(archive)))
        lines = out.getvalue().splitlines()
        assert lines[0].startswith("decoding archive s.tar.gz, ") and " kB" in lines[0]
        assert lines[0].endswith("(once: later runs read the decoded images from the cache) ...")
        assert lines[-1].startswith("decoded 30 images of archive s.tar.gz in ") and lines[-1].endswith(" s")
        imagefolder.load_imagefolder(cfg(path=str(archive)))  # from the cache: nothing to say
        assert out.getvalue().splitlines() == lines
        imagefolder.load_imagefolder(cfg(path=str(archive), cache=False))  # decoded again, not for the cache
        again = out.getvalue().splitlines()[len(lines)]
        assert again.startswith("decoding archive s.tar.gz, ") and "cache" not in again and again.endswith(" ...")


def test_the_decode_is_silent_when_quiet_and_outside_a_run(tmp_path, capsys):
    root = make_folder(tmp_path / "src", n=4)
    out = io.StringIO()
    with reporting(Reporter(quiet=True, stream=out)):
        imagefolder.read_imagefolder(root, None, "error")
    imagefolder.read_imagefolder(root, None, "error")  # no reporter installed: quiet
    assert out.getvalue() == "" and capsys.readouterr().out == ""


def test_decode_progress_follows_the_decoded_images_not_the_reading_ahead(tmp_path, monkeypatch):
    """The pool reads up to two chunks per process ahead; the progress is what came back decoded."""
    root = make_folder(tmp_path / "src", n=10)  # 30 images
    monkeypatch.setattr(imagefolder, "DECODE_CHUNK_IMAGES", 4)
    reader = imagefolder._SourceReader(root, "folder src")
    assert reader.total() == 30
    task = _Recorder()
    decoded = imagefolder._decode_all(reader, None, "folder src", task)
    assert len(decoded) == 30 and task.updates == [4, 8, 12, 16, 20, 24, 28, 30]
    # The plain lines of it: each quarter once, in order, between the start and the end.
    out = io.StringIO()
    with reporting(Reporter(stream=out)):
        imagefolder.read_imagefolder(root, None, "error")
    lines = out.getvalue().splitlines()
    assert lines[0] == "decoding folder src, 30 image files ..."
    assert [line.split(": ")[1].split("%")[0] for line in lines[1:-1]] == ["25", "50", "75"]
    assert lines[-1].startswith("decoded 30 images of folder src in ")


def test_an_archives_progress_is_its_bytes_read(tmp_path, monkeypatch):
    archive = tar_dir(make_folder(tmp_path / "src", n=10), tmp_path / "s.tar", mode="w")  # uncompressed: exact
    monkeypatch.setattr(imagefolder, "DECODE_CHUNK_IMAGES", 4)
    reader = imagefolder._SourceReader(archive, "archive s.tar")
    task = _Recorder()
    imagefolder._decode_all(reader, None, "archive s.tar", task)
    assert reader.total() == archive.stat().st_size
    assert task.updates == sorted(task.updates) and len(task.updates) == 8
    assert 0 < task.updates[0] < task.updates[-1] <= reader.total()
