"""Checkpoint files: a trainer's full state saved atomically, and loaded without unpickling
anything but tensors and plain containers (``weights_only=True``)."""

from __future__ import annotations

import io
import re
from pathlib import Path
from typing import Any

import torch

from ..errors import UserError
from ..rundir import atomic_write_bytes, path_problem


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


def load_checkpoint(path: str | Path, full: bool = False) -> dict[str, Any]:
    """Load a checkpoint with ``weights_only=True`` (no arbitrary unpickling); a missing, truncated
    or foreign file, or one whose content is not what cnnlab writes (:func:`checkpoint_problem`;
    ``full``: everything a resume restores), raises a UserError naming it."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"checkpoint {str(path)!r} is a directory, not a checkpoint file.")
    if problem := path_problem(path):  # never open a FIFO: the read would block
        raise UserError(f"checkpoint {str(path)!r} {problem}.")
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
    problem = checkpoint_problem(ckpt, full)
    if problem:
        raise UserError(f"{str(path)!r} is a torch file but not a cnnlab checkpoint: {problem}. Use a checkpoint "
                        f"written by cnnlab (best.pt, last.pt or an epoch-NNNN.pt).")
    return ckpt


def _tensors(d: Any) -> bool:
    return isinstance(d, dict) and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in d.items())


def checkpoint_problem(ckpt: Any, full: bool = False) -> str | None:
    """Why ``ckpt`` is not what cnnlab writes (None when it is): model weights (finite), the data
    metadata the model is rebuilt from, the epoch; ``full``: also what a resume restores."""
    if not isinstance(ckpt, dict):
        return f"it holds a {type(ckpt).__name__}, not a dict"
    if not _tensors(ckpt.get("model")):
        return "its 'model' entry is not a state_dict (names to tensors)"
    bad = [k for k, v in ckpt["model"].items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        return f"its weights hold NaN or infinite values ({', '.join(bad[:3])})"
    meta = ckpt.get("meta")
    if not isinstance(meta, dict):
        return "it has no 'meta' entry (classes, image shape, normalization)"
    names, shape = meta.get("class_names"), meta.get("input_shape")
    if not (isinstance(names, list) and names and all(isinstance(c, str) for c in names)):
        return "meta.class_names is not a list of class names"
    if not (isinstance(shape, list) and len(shape) == 3 and all(isinstance(s, int) and 0 < s <= 1 << 16 for s in shape)):
        return "meta.input_shape is not (channels, height, width)"
    for key in ("mean", "std"):
        v = meta.get(key)
        if not (isinstance(v, list) and 1 <= len(v) <= shape[0] + 2 and all(isinstance(x, (int, float)) for x in v)):
            return f"meta.{key} is not a list of per-channel numbers"
    if not isinstance(ckpt.get("epoch"), int) or ckpt["epoch"] < 0:
        return "its 'epoch' is not a number of epochs"
    callbacks = ckpt.get("callbacks", {})
    if not isinstance(callbacks, dict) or not all(isinstance(v, dict) for v in callbacks.values()):
        return "its 'callbacks' entry is not a dict of callback states"
    ema = callbacks.get("WeightEMA")
    if ema is not None and not _tensors(ema.get("weights")):
        return "its averaged weights (callbacks.WeightEMA.weights) are not a state_dict"
    if ckpt.get("config") is not None and not isinstance(ckpt["config"], dict):
        return "its 'config' entry is not a table"
    if full:
        for key, kind in (("optimizer", dict), ("scheduler", dict), ("scaler", dict), ("rng", dict), ("history", list)):
            if not isinstance(ckpt.get(key), kind):
                return f"it has no {key} state to resume from"
    return None
