"""Image folders: a directory or a .tar/.tar.gz/.tgz/.tar.bz2/.tar.xz/.zip of ``class/image``
folders, optionally under ``train/`` and ``test/``, decoded once (in a process pool while the
folder is still being read) and cached as uint8 arrays. Also ``read_image_files`` for prediction.

Every input is hostile until checked: only regular files are read (a FIFO would block the read, a
device never end it; both are skipped with a count), a dangling link is an unreadable image, archive
members with absolute, empty or ``..`` paths are refused, members and files past a size cap are
unreadable images (zip bombs, sparse files), and the decoded images are counted against the memory
available as they arrive, so a folder too large is refused before it fills the machine.
"""

from __future__ import annotations

import io
import lzma
import multiprocessing as mp
import os
import re
import stat
import sys
import tarfile
import warnings
import zipfile
import zlib
from collections import Counter, deque
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from itertools import chain
from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np
import torch

from .._progress import Mode, Task, current_reporter
from ..config import DataConfig
from ..errors import RunFailure, UserError, printable, shown
from ..lifecycle import helper_process_signals
from ..limits import available_memory, check_fits, fmt_bytes
from ..rundir import path_problem
from ._registry import DATASETS, RawData, short_list
from ._files import walk_files
from .cache import cached, source_stamp

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm")
ARCHIVE_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tar.xz", ".zip")
SPLIT_FOLDERS = ("train", "test")
# One image file is read whole into memory; past this it is not an image cnnlab can use (a sparse
# file or a zip bomb would otherwise be inflated whole), and it counts as unreadable.
IMAGE_FILE_MAX_BYTES = 1 << 30
# A decode work item: up to this many images or this many encoded bytes, whichever comes first. At
# most 2 items per decode process are in flight, so the folder is read at the pace it is decoded.
DECODE_CHUNK_IMAGES = 1000
DECODE_CHUNK_BYTES = 64 * 2**20

# (relative posix name, encoded bytes or None, why it cannot be read or None)
Item = tuple[str, "bytes | None", "str | None"]
# (relative posix name, decoded (H, W) or (H, W, 3) uint8 array or None, error message or None)
Decoded = tuple[str, "np.ndarray | None", "str | None"]


@DATASETS.register("imagefolder")  # declared, with its summary, in cnnlab.dataset_names
def load_imagefolder(cfg: DataConfig) -> RawData:
    """Images in ``class/`` folders (optionally under ``train/`` and ``test/``) at data.path,
    decoded once and cached as uint8 arrays."""
    if cfg.path is None:
        raise UserError(
            f"data set {cfg.dataset!r} needs data.path: a directory or .tar/.tar.gz/.tgz/.zip archive of "
            "class folders (class/image.jpg, optionally under train/ and test/)."
        )
    path = Path(cfg.path).expanduser()
    try:
        st = path.stat()
    except FileNotFoundError:
        link = " (a symbolic link to something that does not exist)" if path.is_symlink() else ""
        raise UserError(f"data.path {cfg.path!r} does not exist{link} (resolved to {str(path.resolve())!r}); give "
                        "a directory or archive of class folders.") from None
    except OSError as e:
        raise UserError(f"data.path {cfg.path!r} cannot be opened ({e.strerror or e}).") from None
    if not (stat.S_ISDIR(st.st_mode) or stat.S_ISREG(st.st_mode)):
        raise UserError(f"data.path {cfg.path!r} is neither a directory nor a regular file (a FIFO, socket or "
                        f"device); give a directory or one of {', '.join(ARCHIVE_SUFFIXES)}.")
    if stat.S_ISREG(st.st_mode) and not _is_archive(path):
        raise UserError(
            f"data.path {cfg.path!r} is a file but not an archive; expected a directory or one of "
            f"{', '.join(ARCHIVE_SUFFIXES)}."
        )
    if not cfg.cache:
        return read_imagefolder(path, cfg.image_size, cfg.on_bad_image)
    return cached("imagefolder", path.resolve(), source_stamp(path), [cfg.image_size, cfg.on_bad_image],
                  lambda: read_imagefolder(path, cfg.image_size, cfg.on_bad_image, for_cache=True))


def _is_archive(path: Path) -> bool:
    return path.name.lower().endswith(ARCHIVE_SUFFIXES)


def _hidden(name: str) -> bool:
    # macOS resource forks (__MACOSX/, ._x.jpg) and dot folders are not images of any class.
    return any(p.startswith(".") or p == "__MACOSX" for p in name.split("/"))


def _is_image_name(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS) and not _hidden(name)


def _member_name(name: str, where: str) -> str:
    """An archive member's path relative to the archive ("./" stripped); a path that is absolute,
    has an empty part or goes up a folder is refused: it can only be a mistake or an attack."""
    if name in (".", "./"):  # the archive's own top folder (tar -C dir -cf a.tar .)
        return ""
    rel = name[2:] if name.startswith("./") else name
    parts = rel.rstrip("/").split("/")
    if (name.startswith("/") or "\\" in name or any(p in ("", ".", "..") for p in parts)
            or re.fullmatch(r"[A-Za-z]:", parts[0])):  # a Windows drive
        raise UserError(f"{where} has a member with an absolute, empty or parent-folder path: {shown(name)}. "
                        "Archives of class folders hold relative paths (class/image.jpg); re-create the archive "
                        "from inside its top folder.")
    return rel.rstrip("/")


class _SourceReader:
    """Streams the image files of a directory or archive as ``Item``s, in name order for a
    directory and archive order for an archive. Special files are counted in ``special``.

    How far it has read, for the progress display: ``position`` of ``total`` units, bytes of the
    archive file (for a compressed tar, of the compressed file: its unpacked size is not known
    before the end) or image files of a directory."""

    def __init__(self, path: Path, where: str):
        self.path, self.where = path, where
        self.special: list[str] = []
        self.position = 0

    def total(self) -> int:
        """The units ``position`` reaches at the end: the archive's size in bytes, or the number
        of image files of a directory (one walk of the names, nothing opened)."""
        if self.path.is_dir():
            return sum(1 for name, _ in walk_files(self.path) if _is_image_name(name))
        return self.path.stat().st_size

    def __iter__(self) -> Iterator[Item]:
        if self.path.is_dir():
            yield from self._directory()
            return
        try:
            if self.path.name.lower().endswith(".zip"):
                yield from self._zip()
            else:
                yield from self._tar()
        except (tarfile.TarError, zipfile.BadZipFile, EOFError, OSError, zlib.error, lzma.LZMAError, ValueError) as e:
            # ValueError: tarfile's parse of a malformed pax record (a GNU sparse map of non-numbers)
            raise UserError(f"cannot read archive {printable(self.path)}: {_archive_problem(self.path, e)}. "
                            "Check that the file is complete.") from None

    def _directory(self) -> Iterator[Item]:
        for name, p in walk_files(self.path):
            if not _is_image_name(name):
                continue
            self.position += 1
            problem = path_problem(p)
            if problem is None:
                yield name, *_read_capped(p)
            elif problem.startswith("is not a regular file"):
                self.special.append(name)  # never opened: a FIFO's read blocks until someone writes
            else:
                yield name, None, f"it {problem}"

    def _zip(self) -> Iterator[Item]:
        # The file opened here, not by ZipFile: its position is how far the reading has come.
        with open(self.path, "rb") as raw, zipfile.ZipFile(raw) as zf:
            for item in self._zip_members(zf):
                self.position = max(self.position, raw.tell())
                yield item

    def _zip_members(self, zf: zipfile.ZipFile) -> Iterator[Item]:
        for info in zf.infolist():
            name = _member_name(info.filename, self.where)
            if info.is_dir() or not name or not _is_image_name(name):
                continue
            if info.flag_bits & 0x1:
                yield name, None, "it is encrypted"
            elif info.file_size > IMAGE_FILE_MAX_BYTES:
                yield name, None, f"it unpacks to {info.file_size:,} bytes, more than an image file may be"
            else:
                try:
                    with zf.open(info) as f:  # read at most the cap: the declared size may lie
                        data = f.read(IMAGE_FILE_MAX_BYTES + 1)
                    yield name, data, None
                except NotImplementedError as e:  # a compression method zipfile does not know
                    yield name, None, f"it is stored in a way this reader does not support ({e})"
                except (zipfile.BadZipFile, zlib.error, lzma.LZMAError, EOFError) as e:
                    yield name, None, f"its compressed data is damaged ({type(e).__name__}: {e})"

    def _tar(self) -> Iterator[Item]:
        # The file opened here, not by tarfile: its position (of the compressed bytes) is how far
        # the reading has come.
        with open(self.path, "rb") as raw, tarfile.open(fileobj=raw, mode="r:*", tarinfo=_BoundedTarInfo) as tf:
            for item in self._tar_members(tf):
                self.position = raw.tell()
                yield item

    def _tar_members(self, tf: tarfile.TarFile) -> Iterator[Item]:
        for m in tf:  # streamed: a .tar.gz is read once, front to back
            name = _member_name(m.name, self.where)
            if m.isdir() or not name or not _is_image_name(name):
                continue
            if not (m.isfile() or m.issym() or m.islnk()):
                self.special.append(name)
            elif m.issparse() or m.size > IMAGE_FILE_MAX_BYTES:
                yield name, None, f"it is a {'sparse' if m.issparse() else 'huge'} member ({m.size:,} bytes)"
            else:
                try:  # a link is read from the member it names inside this archive, never from disk
                    f = tf.extractfile(m)
                except KeyError:
                    yield name, None, f"it is a link to {shown(m.linkname)}, which the archive does not hold"
                    continue
                data = f.read(IMAGE_FILE_MAX_BYTES + 1) if f is not None else b""
                if len(data) > IMAGE_FILE_MAX_BYTES:
                    yield name, None, f"it is larger than an image file may be ({fmt_bytes(IMAGE_FILE_MAX_BYTES)})"
                else:
                    yield name, data, None


# A tar's extended headers (GNU long names and links, pax records) are read whole by tarfile before
# any member; past this a header is not a path name but an attempt to fill the memory.
TAR_HEADER_MAX_BYTES = 1 << 20


class _BoundedTarInfo(tarfile.TarInfo):
    """tarfile's member header, refusing extended headers past TAR_HEADER_MAX_BYTES before they
    are read (``_proc_member`` is tarfile's documented hook for subclasses)."""

    def _proc_member(self, tarfile_: tarfile.TarFile) -> tarfile.TarInfo:
        extended = (tarfile.GNUTYPE_LONGNAME, tarfile.GNUTYPE_LONGLINK, tarfile.XHDTYPE, tarfile.XGLTYPE,
                    tarfile.SOLARIS_XHDTYPE)
        if self.type in extended and self.size > TAR_HEADER_MAX_BYTES:
            raise tarfile.TarError(f"a member has an extended header of {self.size:,} bytes (at most "
                                   f"{TAR_HEADER_MAX_BYTES:,} make sense)")
        return super()._proc_member(tarfile_)


def _read_capped(p: Path) -> tuple[bytes | None, str | None]:
    """A regular file's bytes, or why not: larger than IMAGE_FILE_MAX_BYTES, or unreadable."""
    try:
        size = p.stat().st_size
        if size > IMAGE_FILE_MAX_BYTES:
            return None, f"it is {size:,} bytes, more than an image file may be ({fmt_bytes(IMAGE_FILE_MAX_BYTES)})"
        with open(p, "rb") as f:
            return f.read(IMAGE_FILE_MAX_BYTES + 1), None
    except OSError as e:
        return None, f"it cannot be read ({e.strerror or e})"


def _archive_problem(path: Path, e: BaseException) -> str:
    """One line on why an archive cannot be read (tarfile's "r:*" error lists every method it tried,
    over several lines)."""
    if isinstance(e, tarfile.ReadError):
        with open(path, "rb") as f:
            head = f.read(6)
        kind = next((k for magic, k in ((b"\x1f\x8b", "gzip"), (b"BZh", "bzip2"), (b"\xfd7zXZ", "xz"))
                     if head.startswith(magic)), None)
        if kind:
            return f"it is {kind}-compressed, but what it holds is not tar data, or it is cut short"
        return "it is not tar data (nor gzip, bzip2 or xz compressed tar data)"
    return " ".join(f"{type(e).__name__}: {e}".split())[:300]


def _chunks(items: Iterable[Item]) -> Iterator[list[Item]]:
    """Work items of at most DECODE_CHUNK_IMAGES images or DECODE_CHUNK_BYTES encoded bytes."""
    chunk: list[Item] = []
    size = 0
    for item in items:
        chunk.append(item)
        size += len(item[1] or b"")
        if len(chunk) >= DECODE_CHUNK_IMAGES or size >= DECODE_CHUNK_BYTES:
            yield chunk
            chunk, size = [], 0
    if chunk:
        yield chunk


# PIL modes of more than 8 bits per sample, and the largest value of each (the type's range, scaled
# to 0..255): 16-bit PNGs open as "I;16*" or "I", float TIFFs as "F" (taken as 0..1 when they stay
# inside it, else as 0..255). PIL's own convert("L") clips them instead, which turns a 16-bit image
# almost white.
WIDE_MODES = {"I;16": 65535, "I;16B": 65535, "I;16L": 65535, "I;16N": 65535, "I": 65535, "F": 1.0}
GRAY_MODES = ("L", "1", "LA", *WIDE_MODES)


def to_uint8(im: Any, channels: int | None = None) -> np.ndarray:
    """A PIL image as uint8: (H, W) when ``channels`` is 1 or (None and the image is gray), else
    (H, W, 3). Wide gray modes are scaled by their range (WIDE_MODES), not clipped."""
    gray = im.mode in GRAY_MODES if channels is None else channels == 1
    if im.mode in WIDE_MODES:
        a = np.asarray(im, dtype=np.float64)
        top = WIDE_MODES[im.mode]
        if im.mode == "I" and a.size and a.max() > 65535:  # a true 32-bit image: its own range
            top = float(a.max())
        if im.mode == "F" and a.size and (a.min() < 0 or a.max() > 1):
            top = 255.0
        a = np.clip(np.rint(a * (255.0 / top)), 0, 255).astype(np.uint8)
        return a if gray else np.repeat(a[..., None], 3, axis=2)
    out = im.convert("L" if gray else "RGB")
    return np.asarray(out, dtype=np.uint8)


def _decode_chunk(items: list[Item], size: int | None, budget: int | None = None,
                  limit: int | None = None) -> tuple[list[Decoded], list[Item]]:
    """Decode items with PIL: (name, array, None) or (name, None, error message), and the items
    left undecoded because decoding them would take this chunk past ``budget`` bytes (at least one
    image is decoded per call, so the caller always makes progress). An image that alone would need
    more than ``limit`` bytes is not decoded: it is an error item.

    Arrays are (H, W) for grayscale images and (H, W, 3) for everything else, resized to
    (size, size) with bilinear filtering when ``size`` is given. Runs in worker processes.
    """
    from PIL import Image, UnidentifiedImageError  # PIL is only needed where images are decoded

    out: list[Decoded] = []
    used = 0
    for i, (name, data, problem) in enumerate(items):
        if data is None:
            out.append((name, None, problem))
            continue
        if not data:
            out.append((name, None, "the file is empty"))
            continue
        try:
            with Image.open(io.BytesIO(data)) as im:  # reads the header only: the size is known before decoding
                if size is not None:
                    im.draft(im.mode if im.mode in ("L", "RGB") else None, (size, size))  # JPEG: decode at reduced scale
                w, h = im.size
                need = w * h * 4  # the decoded image, at most 4 bytes per pixel before conversion
                if limit is not None and need > limit:
                    out.append((name, None, f"decoding its {w}x{h} pixels would need about {fmt_bytes(need)}, more "
                                            f"than the {fmt_bytes(limit)} of memory available"))
                    continue
                if budget is not None and out and used + need > budget:
                    return out, items[i:]
                if im.mode in ("L", "RGB"):  # the common case: resized as decoded, no copy
                    if size is not None and im.size != (size, size):
                        im = im.resize((size, size), Image.Resampling.BILINEAR)
                    arr = np.asarray(im, dtype=np.uint8)
                else:  # palette, alpha, CMYK, 16-bit, float: converted to 8 bits first, then resized
                    arr = to_uint8(im)
                    if size is not None and arr.shape[:2] != (size, size):
                        arr = np.asarray(Image.fromarray(arr).resize((size, size), Image.Resampling.BILINEAR))
                used += arr.nbytes
                out.append((name, arr, None))
        except UnidentifiedImageError:
            out.append((name, None, f"it is not an image file of a known format ({len(data):,} bytes that "
                                    f"start {data[:8]!r})"))
        except Exception as e:  # PIL raises many kinds of error for damaged files
            out.append((name, None, " ".join(f"{type(e).__name__}: {e}".split())[:300]))
    return out, []


Work = tuple[list[Item], "int | None", "int | None", "int | None"]
Result = tuple[list[str], Any, list["str | None"], list[Item]]


def _decode_worker(work: Work) -> Result:
    """Pool side of ``_decode_chunk``: names, the arrays stacked into one (n, H, W[, 3]) array when
    they all have one shape (one pickle instead of a thousand), the error messages, and the items
    left for another call."""
    res, rest = _decode_chunk(*work)
    arrays = [a for _, a, _ in res]
    shapes = {a.shape for a in arrays if a is not None}
    if len(shapes) == 1 and all(a is not None for a in arrays):
        arrays = np.stack(arrays)  # type: ignore[assignment]
    return [n for n, _, _ in res], arrays, [e for _, _, e in res], rest


def _workers() -> int:
    try:
        n = len(os.sched_getaffinity(0))
    except AttributeError:
        n = os.cpu_count() or 1
    return max(1, min(n, 8))


def _decoded_in_order(chunks: Iterator[list[Item]], size: int | None, avail: int | None,
                      where: str) -> Iterator[list[Decoded]]:
    """Decoded chunks in order: inline for a single chunk, else in a process pool while the main
    process keeps reading (reading and decoding overlap). At most two chunks per process are in
    flight (Pool.imap would read the whole folder into its queue ahead of the decoders), each
    decoding at most its share of the memory available; a chunk that reaches its share comes back
    with the rest of its images, which go next."""
    first = next(chunks, None)
    if first is None:
        return
    second = next(chunks, None)
    n_proc = _workers()
    # Daemonic processes (e.g. a worker of a sweep pool) may not start children: decode inline.
    if second is None or n_proc < 2 or mp.current_process().daemon:
        for c in chain([first], [second] if second else [], chunks):
            while c:
                res, c = _decode_chunk(c, size, None if avail is None else avail // 2, avail)
                yield res
        return
    window = 2 * n_proc
    budget = None if avail is None else max(1, avail // (window + 1))
    # fork is cheap and needs no re-import on Linux; other platforms use their default method.
    ctx = mp.get_context("fork") if sys.platform.startswith("linux") else mp.get_context()
    # concurrent.futures, not multiprocessing.Pool: a worker killed by a signal (the OOM killer)
    # breaks the pool and its futures raise, where Pool would wait for the lost chunk for ever.
    pool = ProcessPoolExecutor(n_proc, mp_context=ctx, initializer=helper_process_signals)
    pending: deque[Future] = deque()
    completed = False
    try:
        for c in chain([first, second], chunks):
            pending.append(pool.submit(_decode_worker, (c, size, budget, avail)))
            while len(pending) >= window:
                yield _take(pool, pending, size, budget, avail)
        while pending:
            yield _take(pool, pending, size, budget, avail)
        completed = True
    except BrokenProcessPool:
        raise RunFailure(f"a process decoding the images of {where} died (killed by a signal: the system may have "
                         "run short of memory); set data.image_size to decode them smaller, or free memory, and "
                         "run again.") from None
    finally:
        if not completed:
            # An early exit (a refusal, Ctrl-C, a dead worker): stop now instead of decoding the rest of
            # the window. ProcessPoolExecutor has no terminate(); CPython keeps its processes in
            # _processes. The pool then counts as broken, and shutdown joins what is left.
            for proc in list((pool._processes or {}).values()):
                proc.terminate()
        pool.shutdown(wait=True, cancel_futures=True)


def _take(pool: ProcessPoolExecutor, pending: deque, size: int | None, budget: int | None,
          avail: int | None) -> list[Decoded]:
    """The oldest chunk's results; the images it left undecoded are submitted to go next."""
    names, arrays, errors, rest = pending.popleft().result()
    if rest:
        pending.appendleft(pool.submit(_decode_worker, (rest, size, budget, avail)))
    return list(zip(names, arrays, errors))  # rows of a stacked array are views


def _decode_all(reader: _SourceReader, size: int | None, where: str, task: Task | None = None) -> list[Decoded]:
    """Every image of ``reader`` decoded; the decoded bytes are counted as they arrive and the
    folder refused once they pass the memory available (before it fills the machine). ``task``
    is told how far the decoding has come, in the reader's units (``_SourceReader.position``)."""
    avail = available_memory()
    held, results = 0, []
    # (images read when a chunk was complete, the reader's position then): the pool reads up to
    # two chunks per process ahead of what is decoded, and the results come back in order, so the
    # decoding has come as far as the reader had when it completed the last chunk now decoded.
    marks: deque[tuple[int, int]] = deque()

    def marked(chunks: Iterator[list[Item]]) -> Iterator[list[Item]]:
        read = 0
        for c in chunks:
            read += len(c)
            marks.append((read, reader.position))
            yield c

    for chunk in _decoded_in_order(marked(_chunks(reader)), size, avail, where):
        results.extend(chunk)
        if task is not None and marks and marks[0][0] <= len(results):
            while marks and marks[0][0] <= len(results):
                reached = marks.popleft()[1]
            task.update(reached)
        held += sum(a.nbytes for _, a, _ in chunk if a is not None)
        if avail is not None and held > avail:
            check_fits(held, f"the decoded images of {where} ({len(results):,} decoded so far)",
                       "set data.image_size to decode them at a smaller size, or use a smaller folder",
                       available=avail)
    return results


def read_imagefolder(path: Path, size: int | None, on_bad_image: str, for_cache: bool = False) -> RawData:
    """Decode an image folder/archive at ``path`` into RawData (no caching). The decoding is shown
    by the current progress reporter (:func:`cnnlab._progress.current_reporter`: quiet unless the runner
    installed one); ``for_cache``: the caller keeps the result in the decode cache, and the first
    line says so (the wait is once)."""
    where = f"archive {printable(path)}" if path.is_file() else f"folder {printable(path)}"
    reader = _SourceReader(path, where)
    reporter = current_reporter()
    shown_as = f"{'archive' if path.is_file() else 'folder'} {printable(path.name)}"  # the name: one short line
    note = ""
    total = None
    if reporter.mode is not Mode.QUIET:  # the total costs a walk of a directory's names
        total = reader.total()
        note = f", {fmt_bytes(total)}" if path.is_file() else f", {total:,} image files"
    if for_cache:
        note += " (once: later runs read the decoded images from the cache)"
    with reporter.task(f"decoding {shown_as}", total, note=note) as task:
        decoded = _decode_all(reader, size, where, task)
        task.finish(f"decoded {len(decoded):,} images of {shown_as} in {task.seconds:.1f} s")
    if reader.special:
        warnings.warn(f"skipped {len(reader.special)} special file(s) (FIFOs, sockets or devices, never opened) "
                      f"in {where}: {short_list(reader.special, 5)}", stacklevel=2)
    bad = [(n, err) for n, a, err in decoded if a is None]
    if bad and on_bad_image == "error":
        name, err = bad[0]
        more = f" ({len(bad) - 1:,} more unreadable images)" if len(bad) > 1 else ""
        raise UserError(
            f"cannot read image {shown(name)} in {where}: {err}{more}. Fix or remove the file, or set "
            'data.on_bad_image = "skip" to skip unreadable images.'
        )
    if bad:
        warnings.warn(f"skipped {len(bad)} unreadable image(s) in {where}: {short_list([n for n, _ in bad], 5)}",
                      stacklevel=2)
    good = sorted(((n, a) for n, a, _ in decoded if a is not None), key=lambda t: t[0])
    del decoded
    if not good:
        raise UserError(
            f"no {'readable ' if bad else ''}images found in {where}: expected class folders such as "
            f"<class>/<image>.jpg, optionally under train/ and test/, with extensions {', '.join(IMAGE_EXTENSIONS)}."
        )
    names = [n for n, _ in good]
    split_of, class_of, ignored = _layout(names, where)
    if ignored:
        warnings.warn(f"ignored {ignored} image(s) outside class folders in {where}.", stacklevel=2)
    classes = sorted({c for s, c in zip(split_of, class_of) if c is not None and s == "train"})
    test_only = sorted({c for s, c in zip(split_of, class_of) if s == "test" and c is not None} - set(classes))
    if test_only:
        raise UserError(
            f"{where}: class folder(s) {short_list(test_only, 10)} exist under test/ but not under train/; "
            "every test class needs training images."
        )
    if not classes:
        raise UserError(
            f"no images inside class folders in {where}: expected <class>/<image> (optionally under train/ and test/)."
        )
    if len(classes) == 1:
        raise UserError(f"{where} has one class folder ({short_list(classes)}): a classifier needs at least two "
                        "(with one, every prediction is right). Add a folder of images for each other class.")
    label = {c: i for i, c in enumerate(classes)}
    y = np.array([label.get(c, -1) if c is not None else -1 for c in class_of], dtype=np.int64)
    keep_train = np.array([s == "train" and c is not None for s, c in zip(split_of, class_of)])
    keep_test = np.array([s == "test" and c is not None for s, c in zip(split_of, class_of)])
    has_test = bool(keep_test.any())
    arrays = [a for _, a in good]
    del good
    # Lists that alone hold the decoded images, so _uniform can release each one as it stacks it.
    train_list = [arrays[i] for i in np.flatnonzero(keep_train)]
    test_list = [arrays[i] for i in np.flatnonzero(keep_test)]
    del arrays
    train_x = _uniform(train_list, size, where)
    test_x = _uniform(test_list, size, where, train_x.shape[1:]) if has_test else None
    layout = "train/ and test/ folders" if has_test else "class folders"
    return RawData(train_x, y[keep_train], test_x, y[keep_test] if has_test else None,
                   classes, f"image {where} ({layout})")


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
        s, rest = (p[0].lower(), p[1:]) if split_layout else ("train", p)
        splits.append(s)
        if len(rest) >= 2:
            classes.append(rest[0])
        else:
            classes.append(None)
            ignored += 1
    return splits, classes, ignored


def _uniform(arrays: list[np.ndarray], size: int | None, where: str,
             shape: tuple[int, ...] | None = None) -> np.ndarray:
    """Stack decoded images into (N, H, W, C): 1 channel if all are gray, else RGB; images whose
    size differs from the most common one (or ``shape`` = (H, W, C), the train split's) are resized
    to it (bilinear). Each decoded image is released once it is stacked, so the peak is about the
    larger of the decoded images and the stack, not both."""
    from PIL import Image  # PIL is only needed where images are decoded

    sizes = Counter(a.shape[:2] for a in arrays)
    if shape is not None:  # the test split takes the train split's size and channels
        (h, w), channels = shape[:2], shape[2]
        if set(sizes) != {(h, w)}:
            warnings.warn(f"test images in {where} are not all {h}x{w} like the most common training image; "
                          "resizing them to it (set data.image_size to choose the size).", stacklevel=3)
    else:
        channels = 3 if any(a.ndim == 3 for a in arrays) else 1
        (h, w), _ = sizes.most_common(1)[0]
        if len(sizes) > 1:
            warnings.warn(
                f"images in {where} have {len(sizes)} different sizes; resizing to the most common, {h}x{w} "
                "(set data.image_size to choose the size).",
                stacklevel=3,
            )
    need = len(arrays) * h * w * channels
    held = sum(a.nbytes for a in arrays)
    check_fits(max(need, held), f"the {len(arrays):,} decoded images of {where} stacked at {h}x{w}x{channels}",
               "set data.image_size to a smaller size, or use a smaller folder")
    out = np.empty((len(arrays), h, w, channels), dtype=np.uint8)
    for i in range(len(arrays)):
        a = arrays[i]
        arrays[i] = None  # type: ignore[call-overload]  # release it: the caller holds no other reference
        if a.shape[:2] != (h, w):
            a = np.asarray(Image.fromarray(a).resize((w, h), Image.Resampling.BILINEAR))
        if channels == 1 and a.ndim == 3:  # an RGB test image in a gray data set: its luminance
            a = np.asarray(Image.fromarray(a).convert("L"))
        out[i] = a[..., None] if a.ndim == 2 else a  # a gray (H, W) broadcasts to 3 channels
    return out


# ------------------------------------------------------------------------------ read_image_files
def read_image_files(paths: list[str], channels: int, size: tuple[int, int]) -> torch.Tensor:
    """Decode image files for prediction: uint8 (N, C, H, W), converted to ``channels`` (1 or 3)
    and resized (bilinear) to ``size`` = (H, W). A missing or unreadable file raises UserError."""
    from PIL import Image  # PIL is only needed where images are decoded

    if channels not in (1, 3):
        raise UserError(f"images can be read with 1 or 3 channels, not {channels}.")
    if not paths:
        raise UserError("no image files given to predict on.")
    h, w = int(size[0]), int(size[1])
    check_fits(len(paths) * channels * h * w, f"{len(paths):,} images at {h}x{w}", "predict on fewer images at once")
    out = torch.empty((len(paths), channels, h, w), dtype=torch.uint8)
    for i, p in enumerate(paths):
        path = Path(p).expanduser()
        problem = path_problem(path)
        if problem is not None:
            raise UserError(f"image file {str(p)!r} {problem.replace('not a file', 'not an image file')}.")
        size = path.stat().st_size
        if size > IMAGE_FILE_MAX_BYTES:
            raise UserError(f"image file {str(p)!r} is {size:,} bytes, more than an image file may be "
                            f"({fmt_bytes(IMAGE_FILE_MAX_BYTES)}).")
        try:
            with Image.open(path) as im:
                arr = to_uint8(im, channels)
            if arr.shape[:2] != (h, w):
                arr = np.asarray(Image.fromarray(arr).resize((w, h), Image.Resampling.BILINEAR))
        except Exception as e:  # PIL raises many types for bad files
            why = " ".join(f"{type(e).__name__}: {e}".split())[:300]
            raise UserError(
                f"cannot read image file {str(p)!r}: {why}. Supported formats: {', '.join(IMAGE_EXTENSIONS)}."
            ) from None
        out[i] = torch.from_numpy(arr.reshape(h, w, channels).copy()).permute(2, 0, 1)
    return out
