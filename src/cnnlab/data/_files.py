"""Walking a folder of images the same way for reading and for the cache stamp: sorted, following
linked folders (a class folder may be a symbolic link) without looping, and refusing a folder it
cannot list instead of leaving its images out without a word."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterator

from ..errors import UserError, printable


# Folders deeper than this below the root are not walked (class folders sit one or two levels down).
MAX_DEPTH = 32


def walk_files(root: Path) -> Iterator[tuple[str, Path]]:
    """(posix path relative to ``root``, path) of every file name under ``root``, in sorted order.
    Linked folders are followed (a link to the folder's own parent or an ancestor, a loop, is not); a folder
    that cannot be listed (no permission) is a UserError naming it."""

    def refuse(e: OSError) -> None:
        raise UserError(f"cannot list folder {printable(e.filename)} inside {printable(root)}: "
                        f"{e.strerror or e}. Make it readable, or move it out of the data folder.")

    for dirpath, dirnames, filenames in os.walk(root, onerror=refuse, followlinks=True):
        if dirpath != str(root):
            real, parent = os.path.realpath(dirpath), os.path.realpath(os.path.dirname(dirpath))
            if (parent + os.sep).startswith(real + os.sep) or dirpath.count(os.sep) - str(root).count(os.sep) > MAX_DEPTH:
                dirnames[:] = []  # a link to this folder's own parent or ancestor: a loop, not walked again
                continue
        dirnames.sort()
        rel = Path(dirpath).relative_to(root).as_posix()
        for fn in sorted(filenames):
            yield (fn if rel == "." else f"{rel}/{fn}"), Path(dirpath) / fn
