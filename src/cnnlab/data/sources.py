"""Named data sets read from their official files: scikit-learn's bundled ``digits``, MNIST and
Fashion-MNIST from torchvision's raw IDX files, CIFAR-10 and CIFAR-100 from the official python
pickles. Each also reads an image folder or archive when ``data.path`` is set (its class folders
must be the data set's classes).

Data files run no code: the CIFAR pickles are read by a restricted unpickler that admits only what
the official files hold (dicts, lists, bytes, ints, numeric numpy arrays, rebuilt here from their
raw bytes); anything else is refused before it is called.
"""

from __future__ import annotations

import gzip
import math
import pickle
import re
import socket
import zlib
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Callable, Iterator

import numpy as np

from ..config import DataConfig
from ..errors import UserError, printable
from ..limits import check_fits, fmt_bytes
from ..rundir import path_problem
from ._registry import DATASETS, RawData, short_list

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

# Past this a file is not one of these data sets' files (the largest, CIFAR-100's train pickle, is
# 155 MB; MNIST's train images 47 MB): a sparse or zero-filled file is refused before it is read.
SOURCE_FILE_MAX_BYTES = 2 * 10**9


def _regular_file(path: Path, what: str) -> None:
    """Refuse ``path`` unless it is a regular file (rundir.path_problem: a FIFO would block the
    read, a device never end it) of a size a file of these data sets can have."""
    problem = path_problem(path)
    if problem is not None:
        raise UserError(f"{what} {printable(path)} {problem}; replace it with the data set's file.")
    size = path.stat().st_size
    if size > SOURCE_FILE_MAX_BYTES:
        raise UserError(f"{what} {printable(path)} is {size:,} bytes, far more than any file of this data set "
                        "(the largest official one is 155 MB); replace it with an intact copy.")


# ------------------------------------------------------------------------------------- digits
@DATASETS.register("digits")  # declared, with its summary, in cnnlab.dataset_names
def load_digits(cfg: DataConfig) -> RawData:
    """scikit-learn's 8x8 digits, 1 channel, pixel values 0..16 scaled to 0..255."""
    from sklearn.datasets import load_digits as sk_digits  # scikit-learn is slow to import; only here

    d = sk_digits()
    x = np.rint(d.images * (255.0 / 16.0)).clip(0, 255).astype(np.uint8)[..., None]  # (1797, 8, 8, 1)
    return RawData(x, d.target.astype(np.int64), None, None, list(MNIST_CLASSES), "scikit-learn load_digits (bundled)")


# -------------------------------------------------------------------------------------- MNIST
MNIST_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


def read_idx(path: Path, expect_ndim: int) -> np.ndarray:
    """Read an IDX file (plain or gzipped) of unsigned bytes into an array; UserError if malformed.

    Layout: 2 zero bytes, type code 0x08 (ubyte), number of dims, big-endian int32 dims, data. The
    header is read first and only the bytes it announces after it (plus one, to notice extra
    bytes), so a gzip that inflates without end is never inflated whole.
    """
    _regular_file(path, "IDX file")
    shown = printable(path)
    try:
        opener: Callable[..., BinaryIO] = gzip.open if path.suffix == ".gz" else open  # type: ignore[assignment]
        with opener(path, "rb") as f:
            head = f.read(4)
            if len(head) < 4 or head[0] != 0 or head[1] != 0 or head[2] != 0x08 or head[3] != expect_ndim:
                raise UserError(
                    f"{shown} is not an IDX file of unsigned bytes with {expect_ndim} dimension(s) "
                    f"(magic number {head.hex() if len(head) >= 4 else 'missing'}, expected 000008{expect_ndim:02x})."
                )
            dim_bytes = f.read(4 * expect_ndim)
            dims: tuple[int, ...] = ()
            if len(dim_bytes) == 4 * expect_ndim:
                dims = tuple(int(d) for d in np.frombuffer(dim_bytes, dtype=">i4"))
            if len(dims) != expect_ndim or min(dims) < 0:
                raise UserError(f"IDX file {shown} is truncated (its header is incomplete or gives negative sizes).")
            need = math.prod(dims)  # Python ints: a product of int32 dims would wrap around in numpy
            if need > SOURCE_FILE_MAX_BYTES:
                raise UserError(f"IDX file {shown} announces {' x '.join(f'{d:,}' for d in dims)} = {fmt_bytes(need)} of "
                                f"data, more than any file of this data set ({fmt_bytes(SOURCE_FILE_MAX_BYTES)} at most); "
                                "replace it with the data set's file.")
            check_fits(need, f"IDX file {shown} ({' x '.join(map(str, dims))} bytes announced)",
                       "replace it with the data set's file")
            data = f.read(need + 1)
    except (OSError, EOFError, zlib.error) as e:
        raise UserError(f"cannot read IDX file {shown}: {printable(e)}. Replace it with an intact copy.") from None
    if len(data) != need:
        raise UserError(f"IDX file {shown} is truncated or has extra bytes (dims {dims}, "
                        f"{'more than' if len(data) > need else len(data)} {'' if len(data) > need else 'of '}"
                        f"{need:,} data bytes).")
    return np.frombuffer(data, dtype=np.uint8).reshape(dims)


def _find_file(folder: Path, name: str) -> Path | None:
    # The plain file (what torchvision extracts) first, else the gzip as distributed.
    for cand in (folder / name, folder / f"{name}.gz"):
        if cand.exists():
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
        return " ".join(f"{type(e).__name__}: {e}".split())[:300]  # one line: torchvision's errors span several


def _idx_dataset(cfg: DataConfig, folder_name: str, tv_name: str, class_names: list[str], label: str) -> RawData:
    """MNIST-style loader: four IDX files in ``<root>/<folder_name>/raw``."""
    if cfg.path is not None:
        return _named_from_folder(cfg, class_names, label)
    root = Path(cfg.root).expanduser()
    raw_dir = root / folder_name / "raw"
    found = {n: _find_file(raw_dir, n) for n in MNIST_FILES}
    reason = None
    if not all(found.values()) and cfg.download:
        import torchvision.datasets as tvd  # only when a download is needed

        reason = _try_download(lambda: getattr(tvd, tv_name)(str(root), train=True, download=True))
        found = {n: _find_file(raw_dir, n) for n in MNIST_FILES}
    missing = [n for n, p in found.items() if p is None]
    if missing:
        why = _download_note(cfg.download, reason)
        raise UserError(
            f"{label} files not found in {printable(raw_dir.resolve())}: expected {', '.join(MNIST_FILES)} "
            f"(each plain or .gz); missing {', '.join(missing)}.{why} Put the four files in that folder, "
            f"set data.root to the folder that contains {folder_name}/raw/, or set data.path to an image folder."
        )
    arrays = {n: read_idx(p, 3 if "images" in n else 1) for n, p in found.items() if p is not None}
    parts = []
    for prefix in ("train", "t10k"):
        x, y = arrays[f"{prefix}-images-idx3-ubyte"], arrays[f"{prefix}-labels-idx1-ubyte"]
        if len(x) != len(y):
            raise UserError(f"{label} in {printable(raw_dir)}: {prefix} has {len(x)} images but {len(y)} labels.")
        if len(y) and y.max() >= len(class_names):
            raise UserError(f"{label} in {printable(raw_dir)}: {prefix} labels go up to {y.max()}, "
                            f"expected 0..{len(class_names) - 1}.")
        parts.append((x[..., None], y.astype(np.int64)))  # (N, 28, 28, 1)
    (trx, try_), (tex, tey) = parts
    return RawData(trx, try_, tex, tey, list(class_names), f"{label} IDX files in {raw_dir}")


@DATASETS.register("mnist")  # declared, with its summary, in cnnlab.dataset_names
def load_mnist(cfg: DataConfig) -> RawData:
    """MNIST from torchvision's raw IDX files (downloaded when missing and allowed)."""
    return _idx_dataset(cfg, "MNIST", "MNIST", MNIST_CLASSES, "MNIST")


@DATASETS.register("fashion_mnist")  # declared, with its summary, in cnnlab.dataset_names
def load_fashion_mnist(cfg: DataConfig) -> RawData:
    """Fashion-MNIST from torchvision's raw IDX files (downloaded when missing and allowed)."""
    return _idx_dataset(cfg, "FashionMNIST", "FashionMNIST", FASHION_MNIST_CLASSES, "Fashion-MNIST")


# --------------------------------------------------------------------- the restricted unpickler
class _Refused(Exception):
    """A CIFAR file asks for something the official files never hold."""


class _DtypeStub:
    """What ``numpy.dtype(spec, align, copy)`` unpickles to: the spec and its state, resolved to a
    real dtype only when it is one of the numeric kinds."""

    def __init__(self, spec: Any = None, align: Any = False, copy: Any = False):
        self.spec, self.order = spec, "|"

    def __setstate__(self, state: Any) -> None:
        # (version, byte order, subarray, names, fields, elsize, alignment, flags): a structured
        # dtype (names/fields) or a subarray is not what a CIFAR file holds.
        if not isinstance(state, tuple) or len(state) < 2:
            raise _Refused("it holds a malformed array type")
        order = state[1].decode("ascii", "replace") if isinstance(state[1], bytes) else state[1]
        if order not in ("<", ">", "|", "=") or any(s is not None for s in state[2:5]):
            raise _Refused("it holds a structured array type; only numeric arrays are allowed")
        self.order = order

    def resolve(self) -> np.dtype:
        spec = self.spec.decode("ascii", "replace") if isinstance(self.spec, bytes) else self.spec
        if not isinstance(spec, str) or not re.fullmatch(r"[biufcO?]\d*", spec):
            raise _Refused(f"it holds an array of type {printable(spec)[:40]}; only numeric arrays are allowed")
        if spec.startswith("O"):
            raise _Refused("it holds an array of Python objects: object arrays are refused (unpickling their "
                           "contents could run code)")
        dt = np.dtype(spec)
        if dt.kind not in "biufc":  # "c" alone is numpy's one-byte string type, not complex
            raise _Refused(f"it holds an array of type {dt}; only numeric arrays are allowed")
        return dt.newbyteorder(self.order) if self.order in "<>" else dt


class _ArrayStub:
    """What ``numpy.core.multiarray._reconstruct`` or ``_frombuffer`` unpickles to: the shape, type
    and raw bytes of an array, turned into an array by ``_materialize`` (never by numpy's unpickling
    code, which would unpickle an object array's items)."""

    def __init__(self, shape: Any = None, dtype: Any = None, data: Any = None, fortran: Any = False):
        self.shape, self.dtype, self.data, self.fortran = shape, dtype, data, fortran

    def __setstate__(self, state: Any) -> None:
        if not isinstance(state, tuple) or len(state) not in (4, 5):
            raise _Refused("it holds a malformed array")
        self.shape, self.dtype, self.fortran, self.data = state[-4:]

    def array(self) -> np.ndarray:
        if not isinstance(self.dtype, _DtypeStub):
            raise _Refused("it holds an array without a numeric type")
        dt = self.dtype.resolve()
        shape = self.shape
        if (not isinstance(shape, tuple) or len(shape) > 8
                or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in shape)):
            raise _Refused("it holds an array with a malformed shape")
        if not isinstance(self.data, (bytes, bytearray)):
            raise _Refused("it holds an array whose data is not raw bytes")
        n = int(np.prod(shape, dtype=np.int64)) if shape else 1
        if n * dt.itemsize != len(self.data):
            raise _Refused(f"it holds an array of shape {shape} with {len(self.data):,} bytes of data")
        return np.frombuffer(self.data, dtype=dt).reshape(shape, order="F" if self.fortran else "C")


class _NDArrayClass:
    """Stands for ``numpy.ndarray`` (the class argument of ``_reconstruct``)."""


def _reconstruct(cls: Any, shape: Any, typecode: Any) -> _ArrayStub:
    if cls is not _NDArrayClass:
        raise _Refused("it asks to rebuild an array of another class")
    return _ArrayStub()


def _frombuffer(buf: Any, dtype: Any, shape: Any, order: Any) -> _ArrayStub:
    # Protocol 5's form of an array: the bytes, the type, the shape and the memory order.
    return _ArrayStub(shape, dtype, bytes(buf) if isinstance(buf, (bytes, bytearray)) else buf, order == "F")


def _scalar(dtype: Any, data: Any = None) -> _ArrayStub:
    return _ArrayStub((), dtype, data)


def _codecs_encode(text: Any, encoding: Any = "utf-8") -> bytes:
    # Python 3 writes bytes into protocol 0-2 pickles as _codecs.encode(text, "latin1").
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise _Refused("it asks to encode something other than text")
    return text.encode("latin1")


# The only globals a CIFAR file may name, as both numpy 1 (numpy.core) and numpy 2 (numpy._core)
# and Python 2's cPickle wrote them; each maps to a stand-in above that builds nothing but data.
_ALLOWED: dict[tuple[str, str], Any] = {("_codecs", "encode"): _codecs_encode}
for _core in ("numpy.core", "numpy._core"):
    _ALLOWED |= {(f"{_core}.multiarray", "_reconstruct"): _reconstruct, (f"{_core}.multiarray", "scalar"): _scalar,
                 (f"{_core}.numeric", "_frombuffer"): _frombuffer}
_ALLOWED |= {("numpy", "ndarray"): _NDArrayClass, ("numpy", "dtype"): _DtypeStub}


class _CifarUnpickler(pickle._Unpickler):
    """The pure-Python unpickler, restricted. Not the C one: its memo is an array that one PUT of
    a large index would grow to gigabytes, and both serve EXT opcodes from a cache that
    ``find_class`` never sees. Fast enough for CIFAR's few opcodes (one large bytes object per file)."""

    dispatch = dict(pickle._Unpickler.dispatch)  # type: ignore[attr-defined]

    def find_class(self, module: str, name: str) -> Any:
        found = _ALLOWED.get((module, name))
        if found is None:
            raise _Refused(f"it asks to load {printable(module)[:80]}.{printable(name)[:80]}, which could run code")
        return found

    def persistent_load(self, pid: Any) -> Any:
        raise _Refused("it refers to outside objects (persistent ids)")

    def _refuse_extension(self) -> None:
        raise _Refused("it names objects through the extension registry (EXT opcodes), which could run code")

    def _build(self) -> None:
        # BUILD sets an object's state: allowed on the array and type stand-ins only (on anything else,
        # e.g. one of the allowed functions, it would change that function for the whole process).
        if len(self.stack) < 2 or not isinstance(self.stack[-2], (_ArrayStub, _DtypeStub)):
            raise _Refused("it asks to set the state of something other than an array")
        pickle._Unpickler.load_build(self)  # type: ignore[attr-defined]

    dispatch[pickle.BUILD[0]] = _build
    dispatch[pickle.EXT1[0]] = dispatch[pickle.EXT2[0]] = dispatch[pickle.EXT4[0]] = _refuse_extension


# Items of plain data a CIFAR file holds: CIFAR-100's training file has 50,000 labels of each kind and
# 50,000 file names (about 150,000); a file whose shared references unfold to more is refused.
MAX_ITEMS = 2_000_000


def _materialize(obj: Any, depth: int = 0, count: list[int] | None = None) -> Any:
    """The unpickled structure with stubs turned into arrays; only plain data passes."""
    count = [0] if count is None else count
    count[0] += 1
    if count[0] > MAX_ITEMS:
        raise _Refused(f"it unfolds to more than {MAX_ITEMS:,} items (shared references)")
    if depth > 16:
        raise _Refused("it is nested deeper than any CIFAR file")
    if isinstance(obj, _ArrayStub):
        return obj.array()
    if isinstance(obj, dict):
        return {_materialize(k, depth + 1, count): _materialize(v, depth + 1, count) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_materialize(v, depth + 1, count) for v in obj)
    if obj is None or isinstance(obj, (bytes, bytearray, str, int, float, bool)):
        return obj
    raise _Refused(f"it holds a {type(obj).__name__}")


def read_cifar_pickle(path: Path) -> Any:
    """An official CIFAR python pickle (a dict of lists, bytes and numeric arrays), read without
    running anything it names: UserError if it holds anything else or cannot be read."""
    _regular_file(path, "CIFAR file")
    shown = printable(path)
    try:
        with open(path, "rb") as f:
            return _materialize(_CifarUnpickler(f, encoding="bytes").load())
    except _Refused as e:
        raise UserError(f"{shown} is not a CIFAR data file: {e}. Nothing in it was run; CIFAR files hold only "
                        "dicts, lists, bytes, numbers and numeric arrays. Replace it with the official file.") from None
    except RecursionError:
        raise UserError(f"{shown} is not a CIFAR data file: it is nested deeper than any CIFAR file.") from None
    except Exception as e:  # truncated or garbage: pickle raises many types
        raise UserError(f"cannot read CIFAR file {shown}: {type(e).__name__}: {printable(e)[:200]}. "
                        "Replace it with an intact copy.") from None


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


def _as_bytes_keys(d: dict) -> dict:
    # Re-packed copies written by Python 3 may have str keys where the official files have bytes.
    return {k.encode("utf-8", "backslashreplace") if isinstance(k, str) else k: v for k, v in d.items()}


def _cifar_batch(path: Path, label_key: bytes, n_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """One CIFAR pickle -> uint8 (N, 32, 32, 3) images and int64 labels, checked by structure."""
    d = read_cifar_pickle(path)
    shown = printable(path)
    if isinstance(d, dict):
        d = _as_bytes_keys(d)
    if not isinstance(d, dict) or b"data" not in d or label_key not in d:
        found = (
            short_list(sorted(k.decode(errors="replace") if isinstance(k, bytes) else str(k) for k in d), 10)
            if isinstance(d, dict) else f"a {type(d).__name__}"
        )
        raise UserError(
            f"{shown} is not a CIFAR batch: expected a dict with keys 'data' and {label_key.decode()!r}, found {found}."
        )
    data = d[b"data"]
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        what = f"{data.dtype} {data.shape}" if isinstance(data, np.ndarray) else f"a {type(data).__name__}"
        raise UserError(f"{shown}: 'data' is {what}; expected uint8 (N, 3072) (32x32x3 per row).")
    raw_labels = d[label_key]
    ok = (isinstance(raw_labels, np.ndarray) and raw_labels.dtype.kind in "iu" and raw_labels.ndim == 1) or (
        isinstance(raw_labels, list)
        and all(isinstance(v, int) and not isinstance(v, bool) and -2**31 <= v < 2**31 for v in raw_labels))
    if not ok:
        raise UserError(f"{shown}: the labels under {label_key.decode()!r} are not a list of integers of label size.")
    labels = np.asarray(raw_labels, dtype=np.int64) if len(raw_labels) else np.zeros(0, dtype=np.int64)
    if labels.ndim != 1 or len(labels) != len(data):
        raise UserError(f"{shown}: {len(labels)} labels for {len(data)} images.")
    if len(labels) and (labels.min() < 0 or labels.max() >= n_classes):
        raise UserError(f"{shown}: labels outside 0..{n_classes - 1}.")
    x = data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)  # rows are R plane, G plane, B plane
    return np.ascontiguousarray(x), labels


def _cifar_dataset(cfg: DataConfig, lay: _CifarLayout) -> RawData:
    if cfg.path is not None:
        return _named_from_folder(cfg, list(lay.default_names), lay.label)
    root = Path(cfg.root).expanduser()
    folder = root / lay.folder
    needed = [*lay.train_files, lay.test_file]

    def missing() -> list[str]:
        return [n for n in needed if not (folder / n).exists()]

    reason = None
    if missing() and cfg.download:
        import torchvision.datasets as tvd  # only when a download is needed

        reason = _try_download(lambda: getattr(tvd, lay.tv_name)(str(root), train=True, download=True))
    if missing():
        why = _download_note(cfg.download, reason)
        raise UserError(
            f"{lay.label} files not found in {printable(folder.resolve())}: expected {', '.join(needed)} and "
            f"{lay.meta_file} (the official python version); missing {', '.join(missing())}.{why} Extract the official "
            f"archive so that {lay.folder}/ is inside data.root, or set data.path to an image folder/archive."
        )
    names = list(lay.default_names)
    meta = folder / lay.meta_file
    if meta.exists():
        m = read_cifar_pickle(meta)
        got = _as_bytes_keys(m).get(lay.names_key) if isinstance(m, dict) else None
        if (not isinstance(got, list) or len(got) != len(names)
                or not all(isinstance(n, (bytes, str)) for n in got)):
            raise UserError(f"{printable(meta)}: expected {len(names)} class names under {lay.names_key.decode()!r}.")
        names = [n.decode(errors="replace") if isinstance(n, bytes) else n for n in got]
    parts = [_cifar_batch(folder / f, lay.label_key, len(names)) for f in lay.train_files]
    trx = np.concatenate([p[0] for p in parts]) if len(parts) > 1 else parts[0][0]
    try_ = np.concatenate([p[1] for p in parts])
    tex, tey = _cifar_batch(folder / lay.test_file, lay.label_key, len(names))
    return RawData(trx, try_, tex, tey, names, f"{lay.label} python pickles in {folder}")


@DATASETS.register("cifar10")  # declared, with its summary, in cnnlab.dataset_names
def load_cifar10(cfg: DataConfig) -> RawData:
    """CIFAR-10 from the official python pickles, or from an image folder/archive at data.path."""
    return _cifar_dataset(cfg, _CIFAR10)


@DATASETS.register("cifar100")  # declared, with its summary, in cnnlab.dataset_names
def load_cifar100(cfg: DataConfig) -> RawData:
    """CIFAR-100 (100 fine labels) from the official python pickles, or an image folder at data.path."""
    return _cifar_dataset(cfg, _CIFAR100)


# ------------------------------------------------------------------ named data sets from folders
def _norm_name(name: str) -> str:
    # Folder names cannot hold "/" ("T-shirt/top"), and copies vary in "_" vs " ": compare loosely.
    return re.sub(r"[^0-9a-z]", "", name.lower())


def _named_from_folder(cfg: DataConfig, official: list[str], label: str) -> RawData:
    """A named data set read from an image folder at cfg.path: class folders must be its classes;
    labels are mapped to the data set's own label order."""
    # The imagefolder loader, looked up by name: it is registered by the imagefolder module, which
    # this one need not import.
    raw = DATASETS.get("imagefolder")(cfg)
    want = {_norm_name(n): i for i, n in enumerate(official)}
    have = [_norm_name(n) for n in raw.class_names]
    unknown = [n for n, k in zip(raw.class_names, have) if k not in want]
    absent = sorted(set(want) - set(have), key=want.__getitem__)
    if unknown or absent or len(set(have)) != len(have):
        raise UserError(
            f"data.path {cfg.path!r} is used as {label}, but its class folders do not match {label}'s classes"
            + (f"; unexpected folders: {short_list(unknown, 10)}" if unknown else "")
            + (f"; missing classes: {short_list([official[want[a]] for a in absent], 10)}" if absent else "")
            + f". Expected one folder per class: {short_list(official, 20)} (case, spaces and punctuation are ignored), "
            "or use dataset = \"imagefolder\" for other classes."
        )
    perm = np.array([want[k] for k in have], dtype=np.int64)  # folder label -> official label
    return RawData(
        raw.train_x, perm[raw.train_y], raw.test_x, None if raw.test_y is None else perm[raw.test_y],
        list(official), f"{label} from {raw.source}",
    )
