"""The run directory's layout, named in one place, and the atomic writes every file goes through.

Layout of a run (``runs/<name>/<timestamp>/``)::

    config.toml  env.json  run.json  .lock  splits.npz  history.jsonl  stats.jsonl  steps.jsonl
    metrics.json  diagnostics.json  report.html  figures/
    checkpoints/{best,last,epoch-NNNN}.pt  predictions/<split>.npz  evaluations/<stamp>.json
    tensorboard/

and of a sweep (``sweeps/<name>/<timestamp>/``): sweep.json, study.db, results.csv, ranking.md,
best.toml, report.html, figures/, trials/<trial>/<timestamp>/ (run directories).

Every file is written to a temporary file ``.<name>.<random>.tmp`` in the same folder, flushed to
disk and renamed over the target, so a crash or kill never leaves a half-written file behind; a
kill between the two can leave the temporary file, which :func:`remove_stray_temp_files` deletes.
"""

from __future__ import annotations

import errno
import io
import json
import os
import secrets
import stat
import subprocess
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import UserError

if TYPE_CHECKING:
    import numpy as np

# ------------------------------------------------------------------------------------ a run
CONFIG = "config.toml"
ENV = "env.json"
STATUS = "run.json"
LOCK = ".lock"
SPLITS = "splits.npz"
HISTORY = "history.jsonl"
STATS = "stats.jsonl"
STEPS = "steps.jsonl"  # [log] every_steps: one line per logged optimizer step
METRICS = "metrics.json"
DIAGNOSTICS = "diagnostics.json"
REPORT = "report.html"
FIGURES = "figures"
CHECKPOINTS = "checkpoints"
BEST = "best.pt"
LAST = "last.pt"
PREDICTIONS = "predictions"
EVALUATIONS = "evaluations"
TENSORBOARD = "tensorboard"

# ---------------------------------------------------------------------------------- a sweep
SWEEP_JSON = "sweep.json"  # the marker file of a sweep directory
SWEEP_RESULTS = "results.csv"
SWEEP_BEST = "best.toml"
SWEEP_RANKING = "ranking.md"
SWEEP_STUDY = "study.db"
SWEEP_TRIALS = "trials"

# ------------------------------------------------------------------------------ a runs folder
INDEX = "index.html"
COMPARE = "compare.html"

_TMP_SUFFIX = ".tmp"


def epoch_checkpoint(epoch: int) -> str:
    """The file name of the checkpoint kept every ``checkpoint.every`` epochs."""
    return f"epoch-{epoch:04d}.pt"


def prediction_file(split: str) -> str:
    return f"{split}.npz"


# ------------------------------------------------------------------------------ atomic writes
def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temp file + fsync + rename (never a partial file). The file
    gets the usual permissions (0666 less the process's umask, applied by the kernel)."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise UserError(f"cannot write {path}: a file is in the way of its folder; remove it.") from None
    while True:
        tmp = path.parent / f".{path.name}.{secrets.token_hex(4)}{_TMP_SUFFIX}"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
            break
        except FileExistsError:
            continue
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except IsADirectoryError:
        tmp.unlink(missing_ok=True)
        raise UserError(f"cannot write {path}: a folder of that name is in the way; remove it.") from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, allow_nan=False) + "\n")


def atomic_savez(path: str | Path, **arrays: np.ndarray) -> None:
    # numpy imported here, not at module level: the listings (`cnnlab runs`) read run directories
    # through this module and answer without numpy's 0.1 s import; only writers of arrays need it.
    import numpy as np

    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    atomic_write_bytes(path, buf.getvalue())


def remove_stray_temp_files(folder: str | Path) -> list[Path]:
    """Delete the ``.<name>.<random>.tmp`` files that a kill during an atomic write left in
    ``folder`` and its subfolders; returns what was removed. Only for a folder no process writes
    to now (a run about to be resumed holds its lock)."""
    removed = []
    for p in Path(folder).rglob(f".*{_TMP_SUFFIX}"):
        if p.is_file() and p.name.count(".") >= 3:
            p.unlink(missing_ok=True)
            removed.append(p)
    return removed


# ------------------------------------------------------------------------------- run folders
def writable_dir(path: str | Path, what: str) -> Path:
    """``path`` created if needed and shown writable by writing (and removing) a small file, or a
    UserError that says why not (a file is in the way, read-only, no space); ``what`` names the
    setting in the message (``--runs-dir``). Called before any data is loaded."""
    path = Path(path)
    shown = str(path)
    try:
        if path.exists() and not path.is_dir():
            raise UserError(f"{what} {shown!r} is a file, not a folder; give a folder.")
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".cnnlab-write-test.{secrets.token_hex(4)}{_TMP_SUFFIX}"
        try:
            with open(probe, "wb") as f:
                f.write(b"\0" * 4096)  # a block's worth: a full disk refuses it
                f.flush()
                os.fsync(f.fileno())
        finally:
            probe.unlink(missing_ok=True)
    except UserError:
        raise
    except OSError as e:
        why = {errno.ENOSPC: "the disk is full", errno.EDQUOT: "the disk quota is used up",
               errno.EROFS: "the file system is read-only", errno.EACCES: "permission denied",
               errno.EPERM: "permission denied", errno.ENOTDIR: "a file is in the way"}.get(e.errno, e.strerror or str(e))
        raise UserError(f"cannot write in {what} {shown!r}: {why}; give a writable folder with space left.") from None
    return path


def new_run_dir(runs_dir: str | Path, name: str) -> Path:
    """Create ``runs_dir/name/<YYYYmmdd-HHMMSS>[-N]`` and its checkpoints and predictions folders."""
    base = Path(runs_dir) / name
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    for i in range(1000):
        d = base / (stamp if i == 0 else f"{stamp}-{i}")
        try:
            d.mkdir(parents=True, exist_ok=False)
            break
        except FileExistsError:
            continue
    else:
        raise UserError(f"cannot create a new run directory under {base}: 1000 exist for this second.")
    (d / CHECKPOINTS).mkdir()
    (d / PREDICTIONS).mkdir()
    return d


def is_run_dir(path: str | Path) -> bool:
    """Whether ``path`` holds a run's config.toml and run.json (present: whether they can be read is
    for the reader to say, naming the damaged file)."""
    p = Path(path)
    return os.path.lexists(p / CONFIG) and os.path.lexists(p / STATUS)


def require_run_dir(path: str | Path) -> Path:
    """``path`` as a run directory, or a UserError saying what it is instead."""
    p = Path(path)
    if not p.exists():
        raise UserError(f"run directory {str(p)!r} does not exist.")
    if not is_run_dir(p):
        raise UserError(
            f"{str(p)!r} is not a cnnlab run directory (it has no {CONFIG} and {STATUS}); give a folder "
            f"written by `cnnlab run`, for example runs/<name>/<timestamp>."
        )
    return p


def checkpoint_path(run_dir: Path, which: str) -> Path:
    """The checkpoint a user means by ``which``: ``best`` (``last.pt`` when there is no best),
    ``last``, or a path. A named checkpoint that does not exist is a UserError."""
    named = {"best": BEST, "last": LAST}
    if which not in named:
        return Path(which)
    p = run_dir / CHECKPOINTS / named[which]
    if which == "best" and not p.exists():
        p = run_dir / CHECKPOINTS / LAST
    if not p.exists():
        raise UserError(f"{run_dir} has no {named[which]} checkpoint (the run ended before its first epoch).")
    return p


# --------------------------------------------------------------------------------- reading
def write_history(run_dir: Path, history: list[dict[str, Any]]) -> None:
    """Rewrite history.jsonl whole (atomically): one JSON object per epoch, each epoch once."""
    atomic_write_text(run_dir / HISTORY, "".join(json.dumps(h) + "\n" for h in history))


def damaged(path: str | Path, why: str) -> UserError:
    """The error of a file in a run or sweep directory that cannot be what cnnlab wrote there."""
    return UserError(f"{path} is damaged: {why}. Repair or remove that file (cnnlab writes every file atomically, so "
                     f"it was changed by something else), or use another run.")


# A run's JSON files hold a few kB per epoch; past this a file is not one cnnlab wrote (a sparse or
# zero-filled file would otherwise be read whole into memory).
JSON_MAX_BYTES = 512 * 10**6


def path_problem(path: str | Path, want: str = "file") -> str | None:
    """Why ``path`` is not what a command needs, as the end of a sentence ("does not exist", "is a
    directory, not a file", ...), or None when it is: ``want`` = "file" (a regular file, never a
    FIFO or device, whose read could block or never end) or "folder"."""
    p = Path(path)
    try:
        st = p.stat()
    except FileNotFoundError:
        return "is a symbolic link to something that does not exist" if p.is_symlink() else "does not exist"
    except OSError as e:  # a symlink loop, a path through a file, no permission
        return f"cannot be opened ({e.strerror or type(e).__name__})"
    if want == "folder":
        return None if stat.S_ISDIR(st.st_mode) else "is a file, not a folder"
    if stat.S_ISDIR(st.st_mode):
        return "is a directory, not a file"
    if not stat.S_ISREG(st.st_mode):
        return "is not a regular file (a FIFO, socket or device)"
    return None


def text_file(path: Path) -> str:
    """A run or sweep file as text, checked first: a regular file (a FIFO would block the read) of
    sensible size, UTF-8. Anything else is a UserError naming the file."""
    try:
        st = path.stat()
    except OSError as e:
        raise damaged(path, f"it cannot be read ({e.strerror or e})") from None
    if stat.S_ISDIR(st.st_mode):
        raise damaged(path, "it is a directory")
    if not stat.S_ISREG(st.st_mode):
        raise damaged(path, "it is not a regular file (a FIFO, socket or device)")
    if st.st_size > JSON_MAX_BYTES:
        raise damaged(path, f"it is {st.st_size:,} bytes, far more than cnnlab writes there")
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise damaged(path, "it is not UTF-8 text") from None
    except OSError as e:
        raise damaged(path, f"it cannot be read ({e.strerror or e})") from None


def parse_json(text: str, path: Path, where: str = "") -> Any:
    """JSON text of a run or sweep file; a syntax error or absurd nesting is a UserError naming it."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise damaged(path, f"{where}it is not JSON ({e.msg} at line {e.lineno}, column {e.colno})") from None
    except RecursionError:
        raise damaged(path, f"{where}it nests arrays or objects too deeply") from None


def read_json(path: Path, kind: type = dict) -> Any:
    """A JSON file of a run or sweep directory, which must hold a ``kind`` (an object by default);
    a missing file is a UserError saying so, an unparseable one a UserError naming it."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"{path} does not exist.")
    value = parse_json(text_file(path), path)
    if not isinstance(value, kind):
        raise damaged(path, f"it holds a JSON {type(value).__name__} where a {kind.__name__} is expected")
    return value


def read_jsonl(path: Path, required: tuple[str, ...] = ()) -> list[dict[str, Any]]:
    """A JSON-lines file (one object per line, each with the ``required`` keys); [] when missing."""
    path = Path(path)
    if not path.exists():
        return []
    out = []
    for i, line in enumerate(text_file(path).splitlines(), 1):
        if not line.strip():
            continue
        value = parse_json(line, path, f"line {i}: ")
        if not isinstance(value, dict) or any(k not in value for k in required):
            raise damaged(path, f"line {i} is not an object with {', '.join(required) or 'keys'}")
        out.append(value)
    return out


def read_metrics(run_dir: Path) -> dict[str, Any]:
    """metrics.json ({} before the run wrote it); a file that is not what cnnlab writes is a
    UserError naming it."""
    path = Path(run_dir) / METRICS
    if not path.exists():
        return {}
    m = read_json(path)
    problem = metrics_problem(m)
    if problem:
        raise damaged(path, problem)
    return m


def read_history(run_dir: Path) -> list[dict[str, Any]]:
    """history.jsonl: one object per epoch, each with an integer ``epoch`` from 1 on."""
    rows = read_jsonl(Path(run_dir) / HISTORY, ("epoch",))
    for i, h in enumerate(rows, 1):
        if not isinstance(h["epoch"], int) or isinstance(h["epoch"], bool) or h["epoch"] < 1:
            raise damaged(Path(run_dir) / HISTORY, f"entry {i} has epoch {h['epoch']!r}, not a number from 1 on")
        wrong = [k for k, v in h.items() if v is not None and not isinstance(v, (int, float))]
        if wrong:
            raise damaged(Path(run_dir) / HISTORY, f"entry {i}: {', '.join(wrong)} is not a number")
    return rows


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


# ------------------------------------------------------------------ metrics.json's structure
# metrics.json holds the (K, K) confusion matrix up to this many classes (a million counts, a few
# MB of JSON); past it the entry is null: 10,000 classes would be 10^8 counts, gigabytes of JSON
# text to write and to parse back. predictions/<split>.npz holds what rebuilds it (y_true, y_prob).
CONFUSION_JSON_MAX_CLASSES = 1000


def metrics_problem(metrics: Any) -> str | None:
    """Why a metrics.json content is not what :func:`compute_metrics` writes (per split), or None.
    Checks the structure the readers rely on: numbers where numbers are, K names, K x K counts."""
    if not isinstance(metrics, dict):
        return f"it holds a {type(metrics).__name__} where an object of splits is expected"
    num = (int, float)
    for split, m in metrics.items():
        if not isinstance(m, dict):
            return f"split {split!r} is a {type(m).__name__}, not an object"
        names = m.get("class_names")
        if not (isinstance(names, list) and names and all(isinstance(c, str) for c in names)):
            return f"split {split!r} has no list of class names"
        k = len(names)
        if not isinstance(m.get("accuracy"), num) or isinstance(m.get("accuracy"), bool):
            return f"split {split!r} has no numeric accuracy"
        cm = m.get("confusion_matrix")
        if cm is None and k > CONFUSION_JSON_MAX_CLASSES:
            pass  # not stored for this many classes
        elif not (isinstance(cm, list) and len(cm) == k and all(
                isinstance(r, list) and len(r) == k and all(_count(c) for c in r) for r in cm)):
            return f"split {split!r}: the confusion matrix is not {k} x {k} counts"
        per = m.get("per_class")
        if not (isinstance(per, dict) and all(isinstance(per.get(key), list) and len(per[key]) == k
                                              for key in ("precision", "recall", "f1", "support"))):
            return f"split {split!r}: per_class does not hold {k} values per metric"
        for key, values in per.items():
            if not isinstance(values, list) or not all(v is None or _number(v) for v in values):
                return f"split {split!r}: per_class.{key} holds something other than numbers"
        for avg in ("macro", "weighted"):
            if not isinstance(m.get(avg, {}), dict) or not all(v is None or _number(v) for v in m.get(avg, {}).values()):
                return f"split {split!r}: {avg} is not an object of numbers"
        if m.get("loss") is not None and not _number(m["loss"]):
            return f"split {split!r}: loss is not a number"
    return None


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _count(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0
