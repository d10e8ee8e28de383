"""The life of a run: one status, one stop reason, one owner at a time.

A run directory's ``run.json`` records where the run stands (:class:`RunStatus`), why training
stopped (:class:`StopReason`, with a message naming the evidence) and, for a failed run, what
failed (:class:`Failure`, with a one-line message). They are enums: code compares them, never the
messages.

The ways a run can end, once its directory exists:

* completed: training ended (all epochs, early stopping, pruning, a callback's request) and the
  final evaluation was written;
* failed: the loss became NaN or infinite, the final outputs overflowed, another process of a
  data-parallel run died, the disk filled, or an unexpected exception;
* interrupted: SIGINT (Ctrl-C), SIGTERM (``kill``, ``docker stop``, a Slurm preemption) or SIGHUP
  (a closed terminal). The checkpoint of the last completed epoch is on disk (written at the end
  of every epoch); the process exits 128 + the signal number and says how to go on;
* still ``running`` after a process died without a word (SIGKILL, power loss): the process held
  ``RUN_DIR/.lock`` (an advisory ``flock``, released by the kernel when the process dies), so any
  reader can tell such a stale run from a live one (:func:`liveness`), and a live run is never
  resumed twice at once (:class:`RunLock`).
"""

from __future__ import annotations

import ctypes
import errno
import json
import os
import signal
import socket
import threading
import time
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from enum import Enum
from pathlib import Path
from types import FrameType
from typing import Any, Iterator

from . import rundir as rd
from .errors import UserError

try:  # POSIX; elsewhere liveness falls back to the recorded host and pid
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]


class RunStatus(str, Enum):
    """Where a run stands, as ``run.json``'s ``status`` records it."""

    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    INTERRUPTED = "interrupted"

    @property
    def message(self) -> str:
        return _STATUS_MESSAGES[self]


_STATUS_MESSAGES = {
    RunStatus.RUNNING: "training (or stopped without a word: see liveness)",
    RunStatus.COMPLETED: "training ended and the final metrics are written",
    RunStatus.FAILED: "training or the final evaluation failed",
    RunStatus.INTERRUPTED: "stopped by a signal; resumable from its last checkpoint",
}


class StopReason(str, Enum):
    """Why the training loop ended (``run.json``'s ``stop_reason``)."""

    MAX_EPOCHS = "max_epochs"
    EARLY_STOPPING = "early_stopping"
    NON_FINITE_LOSS = "non_finite_loss"
    PRUNED = "pruned"
    INTERRUPTED = "interrupted"
    CALLBACK = "callback"

    @property
    def message(self) -> str:
        return _STOP_MESSAGES[self]

    @property
    def is_early(self) -> bool:
        """Training ended before its planned epochs by a decision (not by a failure or a signal)."""
        return self in (StopReason.EARLY_STOPPING, StopReason.PRUNED, StopReason.CALLBACK)


_STOP_MESSAGES = {
    StopReason.MAX_EPOCHS: "trained every planned epoch",
    StopReason.EARLY_STOPPING: "early stopping: the monitored metric stopped improving",
    StopReason.NON_FINITE_LOSS: "the loss became NaN or infinite",
    StopReason.PRUNED: "pruned by the sweep",
    StopReason.INTERRUPTED: "interrupted by a signal",
    StopReason.CALLBACK: "a callback asked to stop",
}


@dataclass(frozen=True)
class Stop:
    """A stop decision: the reason and a message with this run's evidence (which metric, since when)."""

    reason: StopReason
    message: str = ""

    def __str__(self) -> str:
        return self.message or self.reason.message


class Failure(str, Enum):
    """What failed in a failed run (``run.json``'s ``error``; ``message`` holds the one-line detail)."""

    NON_FINITE_LOSS = "non_finite_loss"
    NON_FINITE_OUTPUTS = "non_finite_outputs"
    LOST_PEER = "lost_peer"
    DISK_FULL = "disk_full"
    EXCEPTION = "exception"


# Values written by cnnlab versions before these enums existed, so their run.json files still read.
_LEGACY_STOP = {"nan": StopReason.NON_FINITE_LOSS}
_LEGACY_FAILURE = {"nan": Failure.NON_FINITE_LOSS, "lost contact with another process": Failure.LOST_PEER}


def stop_reason_of(status: dict[str, Any]) -> StopReason | None:
    """The stop reason a ``run.json`` records (None when absent or unknown)."""
    raw = status.get("stop_reason")
    if not isinstance(raw, str) or not raw:
        return None
    if raw in _LEGACY_STOP:
        return _LEGACY_STOP[raw]
    if raw.startswith("early stopping"):
        return StopReason.EARLY_STOPPING
    if raw.startswith("pruned"):
        return StopReason.PRUNED
    try:
        return StopReason(raw)
    except ValueError:
        return None


def failure_of(status: dict[str, Any]) -> Failure | None:
    """The failure a ``run.json`` records (None when absent or unknown)."""
    raw = status.get("error")
    if not isinstance(raw, str) or not raw:
        return None
    try:
        return _LEGACY_FAILURE.get(raw) or Failure(raw)
    except ValueError:
        return None


def status_of(status: dict[str, Any]) -> RunStatus | None:
    """The status a ``run.json`` records (None when absent or unknown)."""
    try:
        return RunStatus(status.get("status"))
    except ValueError:
        return None


# ---------------------------------------------------------------------------------- run.json
# The fields of run.json that code reads as numbers or text, with the types cnnlab writes.
_STATUS_TYPES: dict[str, type | tuple[type, ...]] = {
    "epoch": int, "pid": int, "resumed_at_epoch": int, "world_size": int, "train_seconds": (int, float),
    "host": str, "name": str, "dataset": str, "model": str, "started": str, "finished": str, "updated": str,
    "stop_reason": str, "stop_message": str, "error": str, "message": str, "extensions": list,
}


def read_status(run_dir: str | Path, strict: bool = False) -> dict[str, Any]:
    """``run.json`` as a dict. Tolerant (default): {} when it is missing or damaged, for code that
    only adds to it. ``strict``: a missing or damaged file, or a status cnnlab never writes, is a
    UserError naming it (for commands aimed at the run)."""
    path = Path(run_dir) / rd.STATUS
    if strict:
        st = rd.read_json(path)
        if status_of(st) is None:
            raise rd.damaged(path, f"its status is {st.get('status')!r}, not one of "
                                   f"{', '.join(s.value for s in RunStatus)}")
        for key, kinds in _STATUS_TYPES.items():
            v = st.get(key)
            if v is not None and (not isinstance(v, kinds) or isinstance(v, bool) or
                                  (isinstance(v, float) and not v == v or v in (float("inf"), float("-inf")))):
                raise rd.damaged(path, f"its {key} is {v!r}")
        return st
    try:
        d = rd.parse_json(rd.text_file(path), path)
    except UserError:
        return {}
    return d if isinstance(d, dict) else {}


def write_status(run_dir: str | Path, status: RunStatus, **extra: Any) -> None:
    """Merge ``extra`` into ``run.json`` and set ``status`` (atomically). Enum values are written
    as their string values; ``None`` removes a key."""
    path = Path(run_dir) / rd.STATUS
    old = read_status(run_dir)
    for k, v in extra.items():
        if v is None:
            old.pop(k, None)
        else:
            old[k] = v.value if isinstance(v, Enum) else v
    old["status"] = RunStatus(status).value
    old["updated"] = datetime.now().isoformat(timespec="seconds")
    rd.atomic_write_json(path, old)


def owner() -> dict[str, Any]:
    """What ``run.json`` records of the process that trains: host and pid."""
    return {"host": socket.gethostname(), "pid": os.getpid()}


# ------------------------------------------------------------------------------ the run lock
_HELD = (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK)  # flock's "someone holds it"
_ACQUIRE_TRIES, _ACQUIRE_WAIT_S = 20, 0.05  # a reader's probe holds the lock for microseconds
_warned_no_locks = False


def _no_locks(path: Path, e: OSError) -> None:
    """File locks do not work where the run lives (Lustre without -o flock, some NFS, SMB and FUSE
    mounts): say so once and go on without them."""
    global _warned_no_locks
    if not _warned_no_locks:
        _warned_no_locks = True
        warnings.warn(f"file locks do not work on the file system of {path.parent} ({e.strerror or e}): cnnlab cannot "
                      f"tell a live run from a dead one there beyond its host and pid, nor stop two resumes of one "
                      f"run.", RuntimeWarning, stacklevel=3)


def lock_owner(run_dir: str | Path) -> dict[str, Any]:
    """The host, pid and start time the lock holder wrote into ``.lock`` ({} when unknown)."""
    path = Path(run_dir) / rd.LOCK
    try:
        d = rd.parse_json(rd.text_file(path) or "{}", path)
    except UserError:
        return {}
    return d if isinstance(d, dict) else {}


def _holder(run_dir: Path) -> str:
    who = lock_owner(run_dir) or read_status(run_dir)
    return f"process {who.get('pid', '?')} on {who.get('host', '?')}"


class RunLock:
    """The advisory lock on ``RUN_DIR/.lock`` held by the one process that trains the run (rank 0).
    The kernel releases it when that process exits in any way, SIGKILL included. The holder writes
    its host and pid into the file, so messages can name it."""

    def __init__(self) -> None:
        self.path: Path | None = None
        self._fd: int | None = None

    def acquire(self, run_dir: str | Path) -> "RunLock":
        """Take the lock of ``run_dir``, or raise a UserError naming the live process that holds it."""
        self.path = Path(run_dir) / rd.LOCK
        if fcntl is None:
            return self
        if self.path.exists() and not self.path.is_file():
            raise rd.damaged(self.path, "it is not a regular file")
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        for attempt in range(_ACQUIRE_TRIES):
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as e:
                if e.errno not in _HELD:
                    os.close(fd)
                    _no_locks(self.path, e)
                    return self
                if attempt == _ACQUIRE_TRIES - 1:
                    os.close(fd)
                    run = self.path.parent
                    raise UserError(f"{run} is being trained right now by {_holder(run)} (it holds {self.path.name}); "
                                    f"wait for it to end, or stop it (Ctrl-C, or kill that process) and then run "
                                    f"`cnnlab resume {run}`.") from None
                time.sleep(_ACQUIRE_WAIT_S)
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps({**owner(), "since": datetime.now().isoformat(timespec="seconds")}).encode())
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor releases the flock
            self._fd = None


class Liveness(str, Enum):
    """What a reader can tell about a run whose ``run.json`` says ``running``."""

    LIVE = "live"        # a process holds the run's lock (or, without working locks, its pid is alive here)
    STALE = "stale"      # nobody holds it: the process died without a word (SIGKILL, power loss)
    UNKNOWN = "unknown"  # no working lock and the recorded process is on another host


def liveness(run_dir: str | Path, status: dict[str, Any] | None = None) -> Liveness:
    """Whether the process of a ``running`` run is alive (see :class:`Liveness`)."""
    run_dir = Path(run_dir)
    st = read_status(run_dir) if status is None else status
    lock = run_dir / rd.LOCK
    if fcntl is not None and lock.is_file():  # is_file: a FIFO would block the open
        try:
            fd = os.open(lock, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
        except OSError:
            fd = None
        if fd is not None:
            try:
                # A shared probe: it fails only while the trainer holds its exclusive lock.
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
                return Liveness.STALE
            except OSError as e:
                if e.errno in _HELD:
                    return Liveness.LIVE
                # no working locks here: fall back to the recorded host and pid
            finally:
                os.close(fd)  # also drops the probe's shared lock
    who = lock_owner(run_dir) or st
    if who.get("host") == socket.gethostname() and isinstance(who.get("pid"), int):
        return Liveness.LIVE if _pid_alive(who["pid"]) else Liveness.STALE
    return Liveness.UNKNOWN


def _pid_alive(pid: int) -> bool:
    """Whether process ``pid`` exists on this host. Only a positive pid names one process: 0 and
    negative numbers address process groups in os.kill (a hand-edited run.json must not make a
    run look alive forever)."""
    if pid <= 0:
        return False
    if os.name == "nt":  # os.kill(pid, 0) would send a console Ctrl-C event there
        k32 = ctypes.WinDLL("kernel32", use_last_error=True)
        handle = k32.OpenProcess(0x1000, False, pid)  # PROCESS_QUERY_LIMITED_INFORMATION
        if not handle:
            return ctypes.get_last_error() == 5  # access denied: it exists
        code = ctypes.c_ulong()
        k32.GetExitCodeProcess(handle, ctypes.byref(code))
        k32.CloseHandle(handle)
        return code.value == 259  # STILL_ACTIVE
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True
    return True


def shown_status(run_dir: str | Path, status: dict[str, Any]) -> str:
    """The status to show in listings: the recorded one, or ``stale`` for a ``running`` run whose
    process is gone (resumable with ``cnnlab resume``)."""
    recorded = str(status.get("status", "?"))
    if status_of(status) is RunStatus.RUNNING and liveness(run_dir, status) is Liveness.STALE:
        return "stale"
    return recorded


# ---------------------------------------------------------------------------------- signals
INTERRUPT_SIGNALS = tuple(s for s in (getattr(signal, n, None) for n in ("SIGINT", "SIGTERM", "SIGHUP")) if s)


class Interrupted(KeyboardInterrupt):
    """Raised in the training process when SIGINT, SIGTERM or SIGHUP arrives (a KeyboardInterrupt,
    so code that cleans up after Ctrl-C cleans up after the others too). ``exit_code`` is the
    shell's 128 + signal number; ``message`` says what happened and how to go on."""

    def __init__(self, signum: int = signal.SIGINT, message: str = ""):
        super().__init__(message or signal.Signals(signum).name)
        self.signum = int(signum)
        self.message = message

    @property
    def signal_name(self) -> str:
        return signal.Signals(self.signum).name

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


def _raise_interrupted(signum: int, frame: FrameType | None) -> None:
    # Further signals are ignored while the run unwinds and records how it ended (a second Ctrl-C, or
    # a launcher's SIGTERM after it, must not cut that short); interrupt_signals restores the handlers.
    for s in INTERRUPT_SIGNALS:
        if signal.getsignal(s) is _raise_interrupted:
            signal.signal(s, signal.SIG_IGN)
    raise Interrupted(signum)


@contextmanager
def interrupt_signals() -> Iterator[None]:
    """While inside: SIGINT, SIGTERM and SIGHUP raise :class:`Interrupted` in the main thread, so
    the run unwinds, records ``interrupted`` and exits 128 + the signal number. A signal the process
    was told to ignore stays ignored (``nohup`` ignores SIGHUP; a background job of a script
    ignores SIGINT). Outside the main thread (signals cannot be handled there) nothing changes."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old = {s: signal.signal(s, _raise_interrupted) for s in INTERRUPT_SIGNALS
           if signal.getsignal(s) is not signal.SIG_IGN}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def helper_process_signals() -> None:
    """Initializer of a helper process (an image-decoding pool worker), which would otherwise inherit
    the parent's handlers with a fork and print a traceback when stopped: Ctrl-C is ignored (it
    reaches the whole process group; the parent decides and terminates the pool), SIGTERM and SIGHUP
    end it silently."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    for s in INTERRUPT_SIGNALS:
        if s != signal.SIGINT:
            signal.signal(s, signal.SIG_DFL)


def as_interrupted(e: KeyboardInterrupt) -> Interrupted:
    """A plain KeyboardInterrupt (Ctrl-C before the handlers were installed) as SIGINT's Interrupted."""
    return e if isinstance(e, Interrupted) else Interrupted(signal.SIGINT)


def is_disk_full(e: BaseException) -> bool:
    """Whether ``e`` (or what caused it) is the file system refusing a write for lack of space or quota."""
    seen = 0
    while e is not None and seen < 8:
        if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        if "No space left on device" in str(e):  # torch.save wraps the OSError in a RuntimeError
            return True
        e = e.__cause__ or e.__context__  # type: ignore[assignment]
        seen += 1
    return False
