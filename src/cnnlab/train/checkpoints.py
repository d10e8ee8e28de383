"""Checkpoint files: a trainer's full state saved atomically, and loaded without unpickling
anything but tensors and plain containers (``weights_only=True``)."""

from __future__ import annotations

import io
import re
from pathlib import Path
from typing import Any

import torch

from ..errors import UserError
from ..rundir import atomic_write_bytes


_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def refused_global(e: BaseException) -> str | None:
    """The global a ``weights_only`` load refused (``module.name``), or None for other errors. Only
    the name is reported: torch's own message goes on to advise loading with ``weights_only=False``."""
    text = _ANSI.sub("", str(e))
    if "Weights only load failed" not in text and "WeightsUnpickler" not in text:
        return None
    m = re.search(r"GLOBAL ([\w.<>]+)", text)
    return m.group(1) if m else "an object torch's safe loader does not admit"


def load_error_line(e: BaseException) -> str:
    """The first line of a load error, without terminal colour codes, at most 200 characters."""
    text = _ANSI.sub("", str(e)).strip()
    return (" ".join(text.splitlines()[0].split()) if text else type(e).__name__)[:200]


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> None:
    """``torch.save(state)`` to ``path`` atomically (temp file + rename)."""
    buf = io.BytesIO()
    torch.save(state, buf)
    atomic_write_bytes(path, buf.getvalue())


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a checkpoint with ``weights_only=True`` (no arbitrary unpickling); a missing, truncated
    or foreign file raises a UserError naming it."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint {str(path)!r} does not exist.")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated zip, not a torch file, or a pickle with forbidden globals
        refused = refused_global(e)
        if refused is not None:
            raise UserError(
                f"refused checkpoint {str(path)!r}: it holds a Python object ({refused}) besides tensors and plain "
                f"containers, which a cnnlab checkpoint never does, and loading it could run code on this machine. "
                f"Use a checkpoint written by cnnlab (best.pt, last.pt or an epoch-NNNN.pt)."
            ) from None
        raise UserError(
            f"cannot read checkpoint {str(path)!r}: the file is truncated, corrupt or not a cnnlab "
            f"checkpoint ({load_error_line(e)}). Use another checkpoint (best.pt, last.pt or an epoch-NNNN.pt)."
        ) from None
    if not isinstance(ckpt, dict) or "model" not in ckpt:
        raise UserError(f"{str(path)!r} is a torch file but not a cnnlab checkpoint (no 'model' entry).")
    return ckpt
