"""Data-parallel training with torch.distributed: the process world, the few collectives the
trainer needs, and the launcher behind ``cnnlab run --devices N``.

Two ways in (docs/distributed.md):

* ``torchrun --nproc-per-node N -m cnnlab run EXP.toml`` (and ``--nnodes``/``--rdzv-*`` for several
  machines): every process reads RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT from its
  environment (:meth:`World.from_env`) and joins one process group: NCCL on CUDA (device
  ``cuda:LOCAL_RANK``), gloo on the CPU.
* ``cnnlab run EXP.toml --devices N`` or ``[distributed] devices = N`` without a torchrun
  environment: :func:`launch` starts N processes of ``python -m cnnlab`` on this machine with the
  same environment torchrun would give them, supervises them, and when one fails or dies stops the
  others and raises one clear error (never hangs).

The rules every process follows: ``train.batch_size`` is the global batch; every process draws the
same epoch permutation (same seed, same generator) and trains on its contiguous share of each global
batch; DistributedDataParallel averages the gradients, and each process's loss is scaled by its
share of the batch (:meth:`World.loss_scale`) so one step equals the single-process step on the same
global batch, a short last batch included. Only rank 0 writes files. Every collective is made by
every process in the same order; with one process (``World()``, size 1) each helper here is a no-op
and no process group exists.
"""

from __future__ import annotations

import ctypes
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, Callable, Sequence, TypeVar

import torch
import torch.nn as nn

from ..config import DistributedConfig
from ..errors import ReportedUserError, RunFailure, UserError, quote_lines
from ..lifecycle import INTERRUPT_SIGNALS, Interrupted, Stop

T = TypeVar("T")

# Set by the launcher for rank 0: the file where it writes its run directory's path, so the launcher
# can return the Run (and name the directory when a process fails).
RUN_DIR_FILE_ENV = "CNNLAB_RUN_DIR_FILE"
# Set by the launcher: the command the user typed (a JSON list), recorded in env.json instead of the worker's own.
LAUNCH_COMMAND_ENV = "CNNLAB_LAUNCH_COMMAND"

# What a collective raises when another process died, hung or closed its connection: gloo raises a
# plain RuntimeError with one of these phrases, NCCL a DistBackendError (or RuntimeError on old torch).
_PEER_FAILURE_PHRASES = ("connection closed by peer", "connection reset by peer", "broken pipe", "timed out",
                         "timeout", "nccl communicator was aborted", "socket", "connection refused")


# ----------------------------------------------------------------------------------- the world
@dataclass
class World:
    """This process's place in a data-parallel job: ``rank`` of ``size`` processes, ``local_rank``
    on its machine. ``World()`` is the single-process world (size 1): every collective below is then
    a no-op, so the trainer calls them unconditionally."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0
    backend: str | None = None  # set by start(): "gloo" or "nccl"

    @classmethod
    def from_env(cls) -> "World | None":
        """The world described by a torchrun-style environment (RANK, WORLD_SIZE, LOCAL_RANK), or
        None when this process was not started that way. WORLD_SIZE=1 is a single-process world."""
        if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
            return None
        try:
            rank, size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
            local = int(os.environ.get("LOCAL_RANK", rank))
        except ValueError:
            raise UserError(f"the environment variables RANK={os.environ['RANK']!r}, WORLD_SIZE="
                            f"{os.environ['WORLD_SIZE']!r} are not integers; they are set by torchrun "
                            f"(or by `cnnlab run --devices N`), unset them to run one process.") from None
        if not 0 <= rank < size:
            raise UserError(f"RANK={rank} is outside WORLD_SIZE={size}; start the processes with torchrun.")
        return cls(rank, size, local)

    @property
    def enabled(self) -> bool:
        """More than one process: a process group exists and DDP wraps the model."""
        return self.size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the process that writes the run directory and prints progress."""
        return self.rank == 0

    def __str__(self) -> str:
        return f"process {self.rank} of {self.size}"

    # ------------------------------------------------------------------------------ lifecycle
    def device(self, device: torch.device) -> torch.device:
        """The device of this process: ``cuda:LOCAL_RANK`` when training on CUDA (one GPU per
        process), else ``device`` itself."""
        if not self.enabled or device.type != "cuda":
            return device
        n = torch.cuda.device_count()
        if self.local_rank >= n:
            raise UserError(f"{self} has LOCAL_RANK {self.local_rank} but this machine has {n} GPU(s); start at "
                            f"most {n} processes per machine (--nproc-per-node / --devices).")
        torch.cuda.set_device(self.local_rank)
        return torch.device("cuda", self.local_rank)

    def start(self, cfg: DistributedConfig, device: torch.device) -> None:
        """Join the process group (env:// rendezvous, as torchrun sets it up). ``cfg.backend`` "auto"
        is NCCL on CUDA and gloo otherwise; ``cfg.timeout_s`` bounds how long any collective waits
        for the other processes before it fails (so a dead or stuck process never makes the others
        hang). Settings that cannot work on ``device`` are refused here, before any file is written."""
        if not self.enabled:
            return
        import torch.distributed as dist

        backend, timeout_s = cfg.backend, cfg.timeout_s
        if cfg.sync_batchnorm and device.type != "cuda":
            raise UserError(f"distributed.sync_batchnorm = true needs CUDA devices (torch's SyncBatchNorm runs on "
                            f"GPUs only) but this run trains on {device}; on the CPU set it to false (each process "
                            f"then normalizes with its own share of the batch) or use a model without BatchNorm.")

        if not dist.is_available():
            raise UserError("this torch build has no torch.distributed; install a standard torch build.")
        if backend == "auto":
            backend = "nccl" if device.type == "cuda" else "gloo"
        if backend == "nccl" and device.type != "cuda":
            raise UserError(f"distributed.backend = 'nccl' needs CUDA devices but training runs on {device}; "
                            f"use backend = 'auto' or 'gloo'.")
        missing = [k for k in ("MASTER_ADDR", "MASTER_PORT") if k not in os.environ]
        if missing:
            raise UserError(f"{', '.join(missing)} not set: start the processes with torchrun (or `cnnlab run "
                            f"--devices N` on one machine), which sets the rendezvous address.")
        kwargs: dict[str, Any] = {"backend": backend, "timeout": timedelta(seconds=timeout_s),
                                  "rank": self.rank, "world_size": self.size}
        if device.type == "cuda":
            kwargs["device_id"] = device  # binds NCCL to this GPU (no guessing in barrier())
        try:
            dist.init_process_group(**kwargs)
        except Exception as e:
            raise RunFailure(f"{self} could not join the process group at {os.environ['MASTER_ADDR']}:"
                             f"{os.environ['MASTER_PORT']} within {timeout_s} s ({_first_line(e)}).") from None
        self.backend = backend

    def close(self) -> None:
        """Leave the process group (after a successful run; a failed one just exits)."""
        if self.enabled:
            import torch.distributed as dist

            if dist.is_initialized():
                dist.destroy_process_group()

    # ---------------------------------------------------------------------------- sharding
    def bounds(self, n: int) -> tuple[int, int]:
        """This process's contiguous share [lo, hi) of n items: the first ``n % size`` processes take
        one more (torch.tensor_split's rule)."""
        q, r = divmod(n, self.size)
        lo = self.rank * q + min(self.rank, r)
        return lo, lo + q + (1 if self.rank < r else 0)

    def loss_scale(self, weights: torch.Tensor, lo: int, hi: int) -> torch.Tensor | float:
        """The factor on this process's mean loss so that DDP's gradient average equals the gradient
        of the mean loss over the whole global batch: ``size * (this share's weight / total weight)``.

        ``weights`` (B,) is each image's weight in the loss's mean over the global batch (all ones,
        or the class weights of its labels for a class-weighted loss): the global mean is
        ``sum_r W_r * mean_r / W``, DDP computes ``sum_r grad_r / size``."""
        if not self.enabled:
            return 1.0
        return self.size * weights[lo:hi].sum() / weights.sum()

    # --------------------------------------------------------------------------- collectives
    def all_sum(self, tensors: Sequence[torch.Tensor]) -> None:
        """Sum each tensor over all processes, in place."""
        if self.enabled:
            import torch.distributed as dist

            for t in tensors:
                dist.all_reduce(t, op=dist.ReduceOp.SUM)

    def all_gather(self, obj: T) -> list[T]:
        """Every process's ``obj`` (picklable), in rank order."""
        if not self.enabled:
            return [obj]
        import torch.distributed as dist

        out: list[Any] = [None] * self.size
        dist.all_gather_object(out, obj)
        return out

    def from_main(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` on rank 0 only and give its result (picklable) to every process. An exception
        raised by ``fn`` is raised on every process (rank 0 its own, the others a UserError, or a
        RunFailure saying what rank 0 hit), so none waits for the others."""
        if not self.enabled:
            return fn()
        import torch.distributed as dist

        payload: list[Any] = [None]
        if self.is_main:
            try:
                payload[0] = ("ok", fn())
            except BaseException as e:
                kind = "UserError" if isinstance(e, UserError) else "RunFailure"
                text = str(e) if isinstance(e, (UserError, RunFailure)) else \
                    f"process 0 stopped ({type(e).__name__}: {_first_line(e)})"
                payload[0] = (kind, text)
                dist.broadcast_object_list(payload, src=0)
                raise
        dist.broadcast_object_list(payload, src=0)
        kind, value = payload[0]
        if kind == "ok":
            return value
        raise (UserError if kind == "UserError" else RunFailure)(value)

    def agree_stop(self, stop: Stop | None) -> Stop | None:
        """A collective stop decision: stop when any process wants to (early stopping, a NaN loss),
        with the lowest rank's reason, so every process leaves the training loop after the same epoch."""
        if not self.enabled:
            return stop
        return next((s for s in self.all_gather(stop) if s is not None), None)

    @torch.no_grad()
    def sync_state(self, *modules: nn.Module | None, buffers_only: bool = False) -> None:
        """Copy rank 0's parameters and buffers (or its buffers only) of each module to every
        process. After an epoch this puts rank 0's BatchNorm statistics (updated from its own share
        of each batch unless BatchNorm is synchronized) and its EMA average everywhere, so sharded
        evaluation sees exactly the weights rank 0 saves."""
        if not self.enabled:
            return
        import torch.distributed as dist

        for m in modules:
            if m is None:
                continue
            tensors = list(m.buffers()) if buffers_only else [*m.parameters(), *m.buffers()]
            for t in tensors:
                dist.broadcast(t.data, src=0)


# ------------------------------------------------------------------------------- model helpers
def wrap_model(model: nn.Module, world: World, device: torch.device) -> nn.Module:
    """The module that runs training forwards: ``model`` itself in one process, else a
    DistributedDataParallel around it (which averages gradients during backward and broadcasts
    rank 0's buffers before each forward). Parameters frozen at wrap time (transfer learning) are
    outside DDP's reducer, so ``find_unused_parameters`` is not needed; when the set of trainable
    parameters changes (an unfreeze schedule) wrap again."""
    if not world.enabled:
        return model
    from torch.nn.parallel import DistributedDataParallel as DDP

    ids = [device.index] if device.type == "cuda" else None
    return DDP(model, device_ids=ids, output_device=device.index if ids else None)


def convert_sync_batchnorm(model: nn.Module, world: World, sync: bool, device: torch.device) -> nn.Module:
    """With ``sync`` in a multi-process world, BatchNorm layers become nn.SyncBatchNorm: batch
    statistics over the whole global batch, as one process computes them. torch implements it for
    GPUs only. The parameters and buffers are the same tensors, so state_dict keys (and
    checkpoints) are unchanged."""
    if not (sync and world.enabled):
        return model
    if device.type != "cuda":  # World.start refuses this with a UserError first
        raise ValueError("SyncBatchNorm needs CUDA devices")
    return nn.SyncBatchNorm.convert_sync_batchnorm(model)


def trainable_signature(model: nn.Module) -> tuple[bool, ...]:
    """Which parameters train now; a change means DDP must be wrapped again."""
    return tuple(p.requires_grad for p in model.parameters())


def is_peer_failure(e: BaseException) -> bool:
    """Whether ``e`` is what a collective raises when another process died, hung or disconnected."""
    dist_error = getattr(getattr(torch, "distributed", None), "DistError", None)
    if dist_error is not None and isinstance(e, dist_error):
        return True
    return isinstance(e, RuntimeError) and any(p in str(e).lower() for p in _PEER_FAILURE_PHRASES)


def peer_failure_message(world: World, e: BaseException, timeout_s: int) -> str:
    return (f"{world} lost contact with the other processes ({_first_line(e)}): another process died, was "
            f"killed or did not answer within distributed.timeout_s = {timeout_s} s. Its own log says why; "
            f"`cnnlab resume RUN_DIR` continues from the last checkpoint, with any number of processes.")


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return (text.splitlines()[0] if text else type(e).__name__)[:300]


# ---------------------------------------------------------------------------------- launcher
def _rendezvous_store() -> Any:
    """The rendezvous store the workers join, hosted by the launcher as torchrun's agent hosts it:
    bound to a port the OS picks (so no other program can take the port between choosing and
    binding it); the workers connect as clients (TORCHELASTIC_USE_AGENT_STORE)."""
    from torch.distributed import TCPStore

    return TCPStore("127.0.0.1", 0, is_master=True, wait_for_workers=False)


def die_with_parent(sig: int = signal.SIGTERM) -> None:
    """In a child process (Linux): receive ``sig`` when the parent dies, so no orphan trains on
    (elsewhere: nothing)."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, sig)  # 1 = PR_SET_PDEATHSIG
    except Exception:
        pass


def _signal_name(rc: int) -> str:
    try:
        return signal.Signals(-rc).name
    except ValueError:
        return f"signal {-rc}"


def _tail(path: Path, lines: int = 15) -> str:
    try:
        text = path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return ""
    return quote_lines(text[-lines:])


def launch(args: list[str], devices: int, *, grace_s: float = 10.0, poll_s: float = 0.1) -> Path | None:
    """Start ``devices`` processes of ``python -m cnnlab ARGS`` on this machine with a torchrun-style
    environment (RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE, MASTER_ADDR=127.0.0.1 and the
    MASTER_PORT of a rendezvous store this process hosts; OMP_NUM_THREADS = cores / devices unless
    set) and wait for them.

    Rank 0 prints to this process's stdout/stderr; the others write to log files that are shown
    (their last lines) when one of them fails. When any process exits non-zero or is killed, the
    others get ``grace_s`` seconds to exit on their own (they notice the lost peer at their next
    collective), then SIGTERM, then SIGKILL; the launcher raises UserError when the failure was bad
    input (exit status 2) and RunFailure otherwise. Returns the run directory rank 0 reported (None
    if it reported none)."""
    if devices < 2:
        raise ValueError("launch needs at least 2 processes")
    store = _rendezvous_store()  # must live until the workers have finished
    threads = os.environ.get("OMP_NUM_THREADS") or str(max(1, (os.cpu_count() or 1) // devices))
    logs = Path(tempfile.mkdtemp(prefix="cnnlab-ranks-"))
    run_dir_file = logs / "run_dir"
    base = {**os.environ, "WORLD_SIZE": str(devices), "LOCAL_WORLD_SIZE": str(devices), "GROUP_RANK": "0",
            "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(store.port), "TORCHELASTIC_USE_AGENT_STORE": "True",
            "OMP_NUM_THREADS": threads,
            LAUNCH_COMMAND_ENV: os.environ.get(LAUNCH_COMMAND_ENV) or json.dumps(sys.argv)}
    cmd = [sys.executable, "-m", "cnnlab", *args]
    procs: list[subprocess.Popen] = []
    files = []
    try:
        for r in range(devices):
            env = {**base, "RANK": str(r), "LOCAL_RANK": str(r)}
            if r == 0:
                env[RUN_DIR_FILE_ENV] = str(run_dir_file)
                out = err = None  # rank 0 talks to the user
            else:
                f = open(logs / f"rank{r}.log", "wb")
                files.append(f)
                out = err = f
            preexec = die_with_parent if sys.platform.startswith("linux") else None
            procs.append(subprocess.Popen(cmd, env=env, stdout=out, stderr=err, preexec_fn=preexec))
        failed = _supervise(procs, poll_s)
        if failed is not None:
            _stop_all(procs, grace_s)
            if failed[1] == 2 and procs[0].returncode == 2:  # bad input every rank saw: rank 0 said it here
                failed = (0, 2)
    except BaseException:  # KeyboardInterrupt or an error in the launcher itself: never leave workers behind
        _stop_all(procs, grace_s=2.0)
        _cleanup(logs)
        raise
    finally:
        for f in files:
            f.close()
    run_dir = Path(run_dir_file.read_text().strip()) if run_dir_file.exists() else None
    if failed is None:
        _cleanup(logs)
        return run_dir
    rank, rc = failed
    if rc < 0:
        what = f"process {rank} of {devices} was killed by {_signal_name(rc)}"
    else:
        what = f"process {rank} of {devices} exited with status {rc}"
    detail = "" if rank == 0 else _tail(logs / f"rank{rank}.log")
    _cleanup(logs)
    where = f" Run directory: {run_dir}." if run_dir else ""
    said = f"Its last output lines:{detail}" if detail else "(its own message, if any, is above)"
    msg = f"{what}; the other processes were stopped.{where} {said}"
    if rc == 2:
        # Rank 0 prints to this terminal: its own paragraph already said what was wrong.
        raise (ReportedUserError if rank == 0 else UserError)(msg)
    interrupted = {128 + s: s for s in INTERRUPT_SIGNALS}
    if rank == 0 and rc in interrupted:  # rank 0 was stopped by a signal (and recorded it)
        name = signal.Signals(interrupted[rc]).name
        raise Interrupted(interrupted[rc], f"process 0 of {devices} was interrupted by {name}; the other processes "
                                           f"were stopped." + (f" Continue with: cnnlab resume {run_dir}" if run_dir else ""))
    raise RunFailure(msg)


def _supervise(procs: list[subprocess.Popen], poll_s: float) -> tuple[int, int] | None:
    """Wait until all processes exit 0 (returns None) or one fails: (rank, exit status) of the
    first failure seen (negative status: killed by that signal)."""
    while True:
        codes = [p.poll() for p in procs]
        failed = [(r, rc) for r, rc in enumerate(codes) if rc not in (None, 0)]
        if failed:
            # A killed process is the likely cause; the others then exit 1 ("lost contact").
            return min(failed, key=lambda f: (f[1] >= 0, f[0]))
        if all(rc == 0 for rc in codes):
            return None
        time.sleep(poll_s)


def _stop_all(procs: list[subprocess.Popen], grace_s: float) -> None:
    deadline = time.monotonic() + grace_s
    for p in procs:
        try:
            p.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            pass
    for p in procs:
        if p.poll() is None:
            p.terminate()
    for p in procs:
        try:
            p.wait(timeout=5)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def _cleanup(folder: Path) -> None:
    shutil.rmtree(folder, ignore_errors=True)


def report_run_dir(run_dir: Path) -> None:
    """Rank 0 of a launched job: tell the launcher where the run directory is."""
    target = os.environ.get(RUN_DIR_FILE_ENV)
    if target:
        Path(target).write_text(str(Path(run_dir).resolve()))
