"""Checkpoint files: a trainer's full state saved atomically, and loaded without unpickling
anything but tensors and plain containers (``weights_only=True``)."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import torch

from ..errors import UserError
from ..rundir import atomic_write_bytes


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
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(
            f"cannot read checkpoint {str(path)!r}: the file is truncated, corrupt or not a cnnlab "
            f"checkpoint ({first[:200]}). Use another checkpoint (best.pt, last.pt or an epoch-NNNN.pt)."
        ) from None
    if not isinstance(ckpt, dict) or "model" not in ckpt:
        raise UserError(f"{str(path)!r} is a torch file but not a cnnlab checkpoint (no 'model' entry).")
    return ckpt
