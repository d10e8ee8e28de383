"""The decode cache: an image folder decoded once is kept as uint8 arrays, one file per source and
options (``$CNNLAB_CACHE``, default ``~/.cache/cnnlab``); a changed source's new file replaces its
old one.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import re
import tempfile
import warnings
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ..errors import printable
from ..rundir import path_problem
from ._files import walk_files
from ._registry import RawData

CACHE_FORMAT_VERSION = 1


def cache_dir() -> Path:
    """Where decoded arrays are cached: ``$CNNLAB_CACHE``, else ``~/.cache/cnnlab``."""
    return Path(os.environ.get("CNNLAB_CACHE") or Path.home() / ".cache" / "cnnlab").expanduser()


def source_stamp(path: Path) -> Any:
    """Changes whenever the source changes: size+mtime of an archive; for a directory, the names,
    sizes and mtimes of all files (a directory's own mtime misses edits inside class folders)."""
    if path.is_file():
        st = path.stat()
        return [st.st_size, st.st_mtime_ns]
    h = hashlib.sha256()
    for rel, p in walk_files(path):
        try:
            st = p.stat()
        except OSError:  # a dangling link: its name still counts
            h.update(f"{rel}\0missing\n".encode("utf-8", "surrogateescape"))
            continue
        h.update(f"{rel}\0{st.st_size}\0{st.st_mtime_ns}\n".encode("utf-8", "surrogateescape"))
    return h.hexdigest()


def cached(kind: str, source: Path, stamp: Any, options: list[Any], build: Callable[[], RawData]) -> RawData:
    """Load RawData from the cache file of (kind, source, stamp, options), or build it and write it.

    One uncompressed .npz per key, written to a temp file and renamed into place, so readers never
    see a partial file; an unreadable cache file is ignored and rebuilt. The name is
    ``<kind>-<source name>-<slot>-<version>.npz``: the slot hashes the source's path and the
    options, the version also the source's stamp. A rebuild after the source changed removes the
    older versions of its slot (each a whole decoded data set: 185 MB for CIFAR-10), while other
    options of the same source keep their own files."""
    stem = re.sub(r"[^A-Za-z0-9_.-]", "_", source.name)[:40]

    def digest(*parts: Any) -> str:
        text = json.dumps([CACHE_FORMAT_VERSION, *parts], default=str)
        return hashlib.sha256(text.encode("utf-8", "surrogateescape")).hexdigest()

    slot = f"{kind}-{stem}-{digest(kind, str(source), options)[:12]}"
    target = cache_dir() / f"{slot}-{digest(kind, str(source), stamp, options)[:12]}.npz"
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
        if path_problem(path) is not None:  # missing, or a FIFO someone put in the cache: never opened
            return None
        with np.load(path, allow_pickle=False) as z:
            meta = json.loads(str(z["meta"]))
            train_x, train_y = z["train_x"], z["train_y"]
            test_x = z["test_x"] if "test_x" in z.files else None
            test_y = z["test_y"] if "test_y" in z.files else None
        names = meta.get("class_names")
        ok = (
            meta.get("version") == CACHE_FORMAT_VERSION
            and isinstance(names, list) and all(isinstance(n, str) for n in names)
            and isinstance(meta.get("source"), str)
            and train_x.dtype == np.uint8 and train_x.ndim == 4 and len(train_x) == len(train_y)
            and train_y.dtype.kind in "iu"
            and (test_x is None) == (test_y is None)
            and (test_x is None or (test_x.dtype == np.uint8 and test_x.shape[1:] == train_x.shape[1:]
                                    and len(test_x) == len(test_y)))
        )
        if not ok:
            return None
        return RawData(train_x, train_y.astype(np.int64), test_x, None if test_y is None else test_y.astype(np.int64),
                       list(names), meta["source"])
    except Exception:  # missing, truncated, corrupt or foreign file: rebuild it
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
        warnings.warn(f"could not write the data cache {printable(path)}: {e.strerror or e}; "
                      "set CNNLAB_CACHE to a writable folder.", stacklevel=3)
        if tmp is not None:
            try:
                os.unlink(tmp)
            except OSError:
                pass
        return False
