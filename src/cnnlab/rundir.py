"""The run directory: atomic file writes, layout, env.json, history.jsonl, checkpoints.

Layout (``runs/<name>/<timestamp>/``): config.toml, env.json, run.json (status), splits.npz,
history.jsonl, checkpoints/{last,best,epoch-NNNN}.pt, metrics.json, predictions/<split>.npz.
Every file is written to a temporary file in the same folder and renamed over the target, so a
crash or kill never leaves a half-written file behind.
"""

from __future__ import annotations

import io
import json
import os
import platform
import subprocess
import sys
import tempfile
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .errors import UserError

CONFIG = "config.toml"
HISTORY = "history.jsonl"
METRICS = "metrics.json"
STATUS = "run.json"

# mkstemp creates 0600 files; written files get the usual permissions (0666 less the umask).
_UMASK = os.umask(0)
os.umask(_UMASK)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temp file + fsync + rename (never a partial file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_UMASK)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, allow_nan=False) + "\n")


def atomic_torch_save(path: str | Path, obj: Any) -> None:
    buf = io.BytesIO()
    torch.save(obj, buf)
    atomic_write_bytes(path, buf.getvalue())


def atomic_savez(path: str | Path, **arrays: np.ndarray) -> None:
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
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


def new_run_dir(runs_dir: str | Path, name: str) -> Path:
    """Create ``runs_dir/name/<YYYYmmdd-HHMMSS>[-N]`` and its checkpoints folder."""
    base = Path(runs_dir) / name
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    for i in range(1000):
        d = base / (stamp if i == 0 else f"{stamp}-{i}")
        try:
            d.mkdir(parents=True, exist_ok=False)
            break
        except FileExistsError:
            continue
    (d / "checkpoints").mkdir()
    (d / "predictions").mkdir()
    return d


def is_run_dir(path: str | Path) -> bool:
    p = Path(path)
    return (p / CONFIG).is_file() and (p / STATUS).is_file()


def require_run_dir(path: str | Path) -> Path:
    p = Path(path)
    if not p.exists():
        raise UserError(f"run directory {str(p)!r} does not exist.")
    if not is_run_dir(p):
        raise UserError(
            f"{str(p)!r} is not a cnnlab run directory (it has no {CONFIG} and {STATUS}); give a folder "
            f"written by `cnnlab run`, for example runs/<name>/<timestamp>."
        )
    return p


def git_commit(where: Path | None = None) -> str | None:
    """The commit of the cnnlab source that runs (or of the checkout holding ``where``; None outside
    a git checkout), with ``+dirty`` appended when tracked files under that folder differ from it:
    the code that ran is then not exactly that commit's."""
    here = where or Path(__file__).resolve().parent
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, cwd=here)
        commit = out.stdout.strip() if out.returncode == 0 else ""
        if not commit:
            return None
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", "."],
                               capture_output=True, text=True, timeout=5, cwd=here)
        return commit + ("+dirty" if dirty.returncode == 0 and dirty.stdout.strip() else "")
    except Exception:
        return None


def environment(seed: int, device: torch.device, world: Any = None) -> dict[str, Any]:
    """What env.json records: enough to tell how and where the run was made. ``world``: the
    :class:`cnnlab.distributed.World` of a data-parallel run (recorded as ``distributed``)."""
    import torchvision

    from . import __version__

    from .distributed import LAUNCH_COMMAND_ENV

    launched = os.environ.get(LAUNCH_COMMAND_ENV)  # set by `cnnlab run --devices N` for its workers
    env = {
        "seed": seed,
        "command": json.loads(launched) if launched else sys.argv,
        "cwd": os.getcwd(),
        "cnnlab": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "numpy": np.__version__,
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(),
        "platform": platform.platform(),
        "git_commit": git_commit(),
        "started": datetime.now().isoformat(timespec="seconds"),
    }
    if world is not None and world.enabled:
        env["distributed"] = {"world_size": world.size, "backend": world.backend}
    return env


def write_status(run_dir: Path, status: str, **extra: Any) -> None:
    path = run_dir / STATUS
    old = json.loads(path.read_text()) if path.exists() else {}
    old.update(extra)
    old["status"] = status
    old["updated"] = datetime.now().isoformat(timespec="seconds")
    atomic_write_json(path, old)


def read_status(run_dir: Path) -> dict[str, Any]:
    try:
        return json.loads((Path(run_dir) / STATUS).read_text())
    except (OSError, json.JSONDecodeError):
        return {}


def write_history(run_dir: Path, history: list[dict[str, Any]]) -> None:
    """Rewrite history.jsonl whole (atomically): one JSON object per epoch, each epoch once."""
    atomic_write_text(run_dir / HISTORY, "".join(json.dumps(h) + "\n" for h in history))


def read_history(run_dir: Path) -> list[dict[str, Any]]:
    p = Path(run_dir) / HISTORY
    if not p.exists():
        return []
    return [json.loads(line) for line in p.read_text().splitlines() if line.strip()]


def read_json(path: Path) -> Any:
    return json.loads(Path(path).read_text())

