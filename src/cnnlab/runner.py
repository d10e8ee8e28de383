"""From a config to a finished run directory: data, model, training, evaluation, files.

``run`` starts a run, ``resume`` continues one from ``checkpoints/last.pt`` (or trains a finished
one further, when told how far). Evaluating a saved run is :mod:`cnnlab.inference`.

The order is the run's lifecycle (:mod:`cnnlab.lifecycle`): everything that can fail on user input
(config, data, model, transfer source, loggers, the process world) is checked before the run
directory exists; once it exists, the process that writes it holds its lock, and every way out
(completed, failed, interrupted by a signal) is recorded in ``run.json``.

``run`` and ``resume`` also run data-parallel (docs/distributed.md): under torchrun each process
joins the process group and trains its share; ``[distributed] devices = N`` (or ``devices=N``)
without torchrun starts N such processes here and waits for them. Only rank 0 writes the run
directory; every collective is made by every process in the same order.
"""

from __future__ import annotations

import errno
import json
import os
import platform
import sys
import tempfile
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from enum import Enum
from functools import cached_property
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch

from . import rundir as rd
from ._progress import Reporter, reporting
from ._version import __version__
from .config import ExperimentConfig, apply_overrides
from .data import DataSplits, Normalizer, load_data
from .diagnose import diagnose_after_run
from .errors import RunFailure, UserError
from .experiment import dumps_toml, load_config, resolved_dict, validate_config, with_overrides
from .inference import load_model
from .lifecycle import (Failure, Interrupted, Liveness, RunLock, RunStatus, Stop, StopReason, as_interrupted,
                        interrupt_signals, is_disk_full, liveness, lock_owner, owner, read_status, status_of,
                        write_status)
from .metrics import classification_report, compute_metrics, metrics_memory
from .limits import check_fits
from .models import ImageClassifier, build_model, count_parameters, model_size
from .report import build_loggers, check_loggers, close_loggers, log_final, report_after_run, reports_enabled
from .train import (CALLBACKS, Callback, DeviceSplit, Freezing, Trainer, World, amp_dtype, apply_transfer, build_loss,
                    build_optimizer, build_scheduler, check_training_setup, epoch_steps, has_conv, load_checkpoint,
                    check_threads, prepare_process, resolve_device, seed_everything)
from .train import distributed as dist


def _say(msg: str, quiet: bool) -> None:
    if not quiet:
        print(msg, flush=True)


class Run:
    """A run directory with lazy access to what it holds."""

    def __init__(self, directory: str | Path):
        self.dir = Path(directory)

    @property
    def config(self) -> ExperimentConfig:
        return load_config(self.dir / rd.CONFIG)

    @property
    def metrics(self) -> dict[str, Any]:
        return rd.read_metrics(self.dir)

    @property
    def history(self) -> list[dict[str, Any]]:
        return rd.read_history(self.dir)

    @property
    def status(self) -> dict[str, Any]:
        return read_status(self.dir, strict=True)

    @cached_property
    def model(self) -> ImageClassifier:
        """The model with the best checkpoint's weights (last.pt when there is no best.pt), eval mode."""
        return load_model(self.dir, "best")[0]

    def __repr__(self) -> str:
        return f"Run({str(self.dir)!r})"


# ------------------------------------------------------------------------------------ setup
@dataclass
class _Parts:
    """What a trainer is made of, built (and so checked) before the run directory exists."""

    model: ImageClassifier
    loss_fn: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Any
    sched_monitor: str | None
    freezing: Freezing | None
    transfer_record: dict[str, Any]


def _monitor(cfg: ExperimentConfig, has_val: bool) -> str:
    m = cfg.train.early_stopping.monitor
    # Without a validation split the val_* metrics do not exist: watch the training counterpart.
    return m.replace("val_", "train_") if not has_val else m


def _assemble(cfg: ExperimentConfig, data: DataSplits, device: torch.device, world: World, quiet: bool,
              new_run: bool) -> _Parts:
    """Model (with data-dependent init and transfer), loss, optimizer and scheduler; every check on
    user input that needs them fails here, before any file is written. ``new_run``: a resumed run
    loads its weights from its checkpoint instead (no data-dependent init, no transfer source)."""
    check_training_setup(cfg, tuple(data.train.x.shape), world, data.class_names)
    k = len(data.class_names)
    _check_training_memory(cfg, data, device, world)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = build_model(cfg.model, data.input_shape, k)
    for w in caught:
        _say(f"warning: {w.message}", quiet)
    # Before freezing and the optimizer: they then see the SyncBatchNorm modules (same parameters).
    model = dist.convert_sync_batchnorm(model, world, cfg.distributed.sync_batchnorm, device)
    if new_run:
        # Data-dependent initialisation (airbench's whitening layer), on the training images
        # normalized like training batches.
        model.init_from_data(data.train.x, Normalizer(data.mean, data.std, torch.device("cpu")))
    # [transfer]: the source's weights (a new run only), then freezing (a resumed run too).
    transfer = apply_transfer(model, cfg.transfer, load=new_run, download=cfg.data.download, quiet=quiet)
    if not any(p.requires_grad for p in model.parameters()):
        first = min((s.epoch for s in cfg.transfer.unfreeze_schedule), default=None)
        if first is None or first > 1:
            raise UserError(f"every parameter of the model is frozen (transfer.freeze = {cfg.transfer.freeze!r}), so "
                            + ("nothing would train" if first is None else f"epochs 1 to {first - 1} would train nothing")
                            + "; set transfer.new_head = true (a fresh output layer trains), unfreeze modules with "
                              "transfer.unfreeze, or start the unfreeze_schedule at epoch 1.")
    model = model.to(device)
    if cfg.train.channels_last and has_conv(model):
        # channels_last (NHWC) is faster for convolutions on CUDA and with oneDNN on the CPU.
        model = model.to(memory_format=torch.channels_last)
    loss_fn = build_loss(cfg.train, data.class_counts("train")).to(device)
    fixed = transfer.freezing.fixed if transfer.freezing is not None else frozenset()
    optimizer = build_optimizer(model, cfg.train, cfg.transfer, fixed)
    scheduler, sched_monitor = build_scheduler(
        optimizer, cfg.train, epoch_steps(len(data.train), cfg.train.batch_size, world.size, cfg.train.drop_last))
    if sched_monitor is not None and sched_monitor.startswith("val_") and data.val is None:
        raise UserError(f"train.scheduler.monitor = {sched_monitor!r} needs a validation split, and this run has none "
                        f"(data.val_fraction = 0); monitor train_loss or train_acc, or set data.val_fraction > 0.")
    return _Parts(model, loss_fn, optimizer, scheduler, sched_monitor, transfer.freezing, transfer.record)


# Values kept per parameter while training: the weight, its gradient and the optimizer's state
# (Adam and AdamW keep two moments, SGD with momentum and RMSprop one); per activation value of a
# batch: the value saved for the backward pass and its gradient.
_OPTIMIZER_STATES = {"adam": 2, "adamw": 2, "sgd": 1, "rmsprop": 1}


def _check_training_memory(cfg: ExperimentConfig, data: DataSplits, device: torch.device, world: World) -> None:
    """Refuse a model and batch size whose training would not fit the device's free memory (the
    model measured on the meta device, no memory used), with the estimate and how to lower it."""
    size = model_size(cfg.model, data.input_shape, len(data.class_names))
    if size is None:
        return
    batch = min(cfg.train.batch_size, len(data.train))
    per_process = -(-batch // world.size)  # each process holds its share of the global batch
    value_bytes = 2 if amp_dtype(cfg.train.precision, device) is not None else 4
    need = 4 * size.parameters * (2 + _OPTIMIZER_STATES.get(cfg.train.optimizer, 2))
    if size.activations is not None:
        largest = max(len(s) for s in data.splits().values())
        evaluation = min(cfg.train.eval_batch_size, largest) * size.activations * value_bytes  # no gradients
        need += max(per_process * size.activations * value_bytes * 2, evaluation)
    if device.type == "cuda":
        available, where = torch.cuda.mem_get_info(device)[0], f"GPU {device}"
    else:
        available, where = None, "this machine"  # check_fits reads the host's available memory
    check_fits(need, f"training {cfg.model.name} ({size.parameters:,} parameters"
                     + (f", {size.activations:,} activation values per image" if size.activations is not None else "")
                     + f") on batches of {per_process:,} images", "lower train.batch_size, or make the model smaller",
               available, where)
    # The final evaluation of each split: its (N, K) scores and (K, K) confusion matrix, on the host.
    n, k = max(len(s) for s in data.splits().values()), len(data.class_names)
    check_fits(metrics_memory(n, k), f"the metrics of {n:,} images over {k:,} classes (scores, per-class AUC, "
                                     f"the {k:,} x {k:,} confusion matrix)",
               "use fewer classes (data.classes) or fewer images per split (data.per_class, data.val_fraction)")


def _trainer(cfg: ExperimentConfig, data: DataSplits, parts: _Parts, device: torch.device, run_dir: Path,
             quiet: bool, world: World, extra_callbacks: list[Callback] | None = None) -> Trainer:
    """The trainer with its callbacks, which write into ``run_dir`` (rank 0 only)."""
    quiet = quiet or not world.is_main
    es, dg, ema = cfg.train.early_stopping, cfg.diagnostics, cfg.train.ema
    monitor = _monitor(cfg, data.val is not None)
    main = world.is_main  # callbacks that write files or print run in rank 0 only
    model = parts.model
    # One early-stopping callback: it stops the run, and the progress display reads from it how soon it could.
    early_stopping = CALLBACKS.get("early_stopping")(monitor, es.mode, es.patience, es.min_delta)
    callbacks: list[Callback] = [
        # The weight average: evaluation (val each epoch, the final metrics) uses it when it is on.
        *([CALLBACKS.get("ema")(model, ema.decay, ema.every, ema.mode, ema.ramp)] if ema.mode != "off" else []),
        # First: its record of an epoch must be in the state that the checkpoint callback saves.
        *([CALLBACKS.get("stats")(run_dir, dg.stats_every, dg.probe_size)] if dg.stats_every and main else []),
        *([CALLBACKS.get("unfreeze_schedule")(model, cfg.transfer.unfreeze_schedule, parts.freezing, quiet)]
          if cfg.transfer.unfreeze_schedule and parts.freezing is not None else []),
        early_stopping,
        *([CALLBACKS.get("checkpoint")(run_dir / rd.CHECKPOINTS, monitor, es.mode, cfg.checkpoint.every, es.min_delta),
           CALLBACKS.get("history")(run_dir),
           # [log] every_steps: steps.jsonl; before the loggers, so a resume has dropped its lines past the
           # checkpoint when TensorBoard reads it.
           *([CALLBACKS.get("steps")(run_dir, cfg.log.every_steps)] if cfg.log.every_steps else []),
           CALLBACKS.get("progress")(cfg.train.epochs, enabled=not quiet, early_stopping=early_stopping),
           # [log]: TensorBoard / MLflow; after the checkpoint callback (a resume repairs from its state).
           *build_loggers(cfg, run_dir)] if main else []),
        # Last, so they see the epoch after early stopping and the checkpoint (a sweep's pruning hook).
        *(extra_callbacks or []),
    ]
    meta = {"class_names": list(data.class_names), "mean": list(data.mean), "std": list(data.std),
            "input_shape": list(data.input_shape), "model": cfg.model.name, "source": data.source}
    return Trainer(cfg, model, parts.loss_fn, parts.optimizer, parts.scheduler, parts.sched_monitor,
                   DeviceSplit.of(data.train, device), DeviceSplit.of(data.val, device) if data.val else None,
                   Normalizer(data.mean, data.std, device), callbacks, device, meta,
                   resolved_config=resolved_dict(cfg), world=world, freezing=parts.freezing)


def _describe(cfg: ExperimentConfig, data: DataSplits, trainer: Trainer, run_dir: Path, quiet: bool) -> None:
    total, trainable = count_parameters(trainer.model)
    sizes = ", ".join(f"{k} {len(v)}" for k, v in data.indices().items())
    _say(f"run {run_dir}", quiet)
    _say(f"data {cfg.data.dataset}: {len(data.class_names)} classes, {sizes}, images {tuple(data.input_shape)}", quiet)
    amp = "" if trainer.amp is None else f", autocast {str(trainer.amp).replace('torch.', '')}"
    _say(f"model {cfg.model.name}: {total:,} parameters ({trainable:,} trainable) on {trainer.device}{amp}", quiet)


def environment(seed: int, device: torch.device, world: World | None = None) -> dict[str, Any]:
    """What env.json records: enough to tell how and where the run was made."""
    launched = os.environ.get(dist.LAUNCH_COMMAND_ENV)  # set by `cnnlab run --devices N` for its workers
    env = {
        "seed": seed,
        "command": json.loads(launched) if launched else sys.argv,
        "cwd": os.getcwd(),
        "cnnlab": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": _package_version("torchvision"),  # from package metadata: the import is slow
        "numpy": np.__version__,
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(),
        "platform": platform.platform(),
        "git_commit": rd.git_commit(),
        "started": datetime.now().isoformat(timespec="seconds"),
    }
    if world is not None and world.enabled:
        env["distributed"] = {"world_size": world.size, "backend": world.backend}
    return env


def _package_version(name: str) -> str | None:
    try:
        return version(name)
    except PackageNotFoundError:
        return None


def _resolve_config(config_or_path: str | Path | ExperimentConfig | dict,
                    overrides: list[str] | dict[str, Any] | None, devices: int | None) -> ExperimentConfig:
    if isinstance(config_or_path, ExperimentConfig):
        cfg = with_overrides(config_or_path, overrides, "<config>")
    elif isinstance(config_or_path, dict):
        cfg = validate_config(apply_overrides(dict(config_or_path), overrides), "<dict>")
    else:
        cfg = load_config(config_or_path, overrides)
    if devices is not None:
        cfg = with_overrides(cfg, {"distributed.devices": devices}, "--devices")
    return cfg


# ------------------------------------------------------------------------------- the lifecycle
def _recorded_epochs(run_dir: Path, fallback: int) -> int:
    """The last epoch on record: history.jsonl is written after that epoch's checkpoint, so it
    never runs ahead of checkpoints/last.pt."""
    try:
        return len(rd.read_history(run_dir))
    except UserError:
        return fallback


@contextmanager
def _recorded(run_dir: Path, world: World, cleanup: Callable[[str], None] = lambda status: None) -> Iterator[None]:
    """Every way out of a run whose directory exists is recorded in run.json by rank 0, first of
    all (then ``cleanup`` runs, given KILLED or FAILED for the loggers): a signal as ``interrupted``
    (exit 128 + signal, with the command that continues it), a failure as ``failed`` with its
    one-line reason (a full disk as a RunFailure, without a traceback). Only a run still recorded
    as ``running`` is changed: a signal while a completed run draws its report leaves it completed.
    The ``completed`` and the specific ``failed`` records are written by :func:`_train_and_finish`."""
    main = world.is_main

    def still_running() -> bool:
        return main and status_of(read_status(run_dir)) is RunStatus.RUNNING

    try:
        yield
    except KeyboardInterrupt as e:
        intr = as_interrupted(e)
        done = _recorded_epochs(run_dir, 0)
        if still_running():
            _record(run_dir, RunStatus.INTERRUPTED, epoch=done, stop_reason=StopReason.INTERRUPTED,
                    stop_message=f"interrupted by {intr.signal_name}", signal=intr.signal_name, error=None, message=None)
            msg = (f"interrupted by {intr.signal_name} after epoch {done}; checkpoints/last.pt holds it. Continue "
                   f"with: cnnlab resume {run_dir}") if done else \
                  (f"interrupted by {intr.signal_name} before the first epoch ended (no checkpoint yet). Start it "
                   f"again with: cnnlab run {run_dir / rd.CONFIG}")
        else:
            st = read_status(run_dir).get("status", "?")
            msg = (f"interrupted by {intr.signal_name} after the run was recorded as {st}; nothing of it is lost "
                   f"(its report, if cut short: cnnlab report {run_dir}).")
        cleanup("KILLED")
        raise Interrupted(intr.signum, msg) from None
    except (RunFailure, UserError) as e:  # UserError: not expected here, every input check runs before
        if still_running():
            _record(run_dir, RunStatus.FAILED, epoch=_recorded_epochs(run_dir, 0), error=Failure.EXCEPTION,
                    message=_one_line(e))
        cleanup("FAILED")
        raise
    except Exception as e:
        disk = is_disk_full(e)
        if still_running():
            _record(run_dir, RunStatus.FAILED, epoch=_recorded_epochs(run_dir, 0),
                    error=Failure.DISK_FULL if disk else Failure.EXCEPTION,
                    message=_one_line(e) if disk else f"{type(e).__name__}: {_one_line(e)}")
        cleanup("FAILED")
        if disk:
            raise RunFailure(f"the disk is full ({_one_line(e)}): the run stopped after epoch "
                             f"{_recorded_epochs(run_dir, 0)} and is recorded as failed. Free some space, then "
                             f"continue from its last checkpoint with: cnnlab resume {run_dir}") from None
        raise


def _record(run_dir: Path, status: RunStatus, **fields: Any) -> None:
    """write_status that survives a full disk: the atomic write needs a new block for its temp file;
    when there is none, run.json is rewritten in place (its old blocks are reused), a small risk of a
    torn file being better than a run that says ``running`` for good."""
    try:
        write_status(run_dir, status, **fields)
    except OSError as e:
        if e.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        st = read_status(run_dir)
        for k, v in fields.items():
            if v is None:
                st.pop(k, None)
            else:
                st[k] = v.value if isinstance(v, Enum) else v
        st["status"] = status.value
        try:
            (run_dir / rd.STATUS).write_text(json.dumps(st, indent=2) + "\n")
        except OSError:
            pass


def _one_line(e: BaseException) -> str:
    text = " ".join(str(e).split())
    return (text or type(e).__name__)[:500]


def _closer(trainer: Callable[[], Trainer | None]) -> Callable[[str], None]:
    """The cleanup of :func:`_recorded`: end the trainer's loggers (once it exists) with a status."""
    def close(status: str) -> None:
        t = trainer()
        if t is not None:
            close_loggers(t.callbacks, status)
    return close


# --------------------------------------------------------------------------------- run/resume
def run(config_or_path: str | Path | ExperimentConfig | dict, overrides: list[str] | dict[str, Any] | None = None,
        runs_dir: str | Path = "runs", quiet: bool = False, extra_callbacks: list[Callback] | None = None,
        devices: int | None = None) -> Run:
    """Train, evaluate and write a run directory; returns the ``Run``.

    ``config_or_path``: a TOML path, a raw dict or an ExperimentConfig. ``overrides``: ``{"train.lr": 0.01}``
    or ``["train.lr=0.01"]``. ``extra_callbacks``: more ``Callback`` objects for this run (for example
    a sweep's pruning hook). ``devices``: processes to train with on this machine (overrides
    ``distributed.devices``; ignored under torchrun, whose world is used). Raises UserError on bad
    input (always before the run directory exists), RunFailure when training fails, and
    :class:`~cnnlab.lifecycle.Interrupted` on SIGINT, SIGTERM or SIGHUP.
    """
    cfg = _resolve_config(config_or_path, overrides, devices)
    world = World.from_env()
    if world is None and cfg.distributed.devices > 1:
        if extra_callbacks:
            raise UserError("callbacks given in Python (a sweep's pruning hook) cannot run in processes started with "
                            "distributed.devices > 1; train each trial in one process (devices = 1), or start the "
                            "processes with torchrun.")
        return _launch_run(cfg, runs_dir, quiet)
    world = world or World()
    with interrupt_signals():
        device = world.device(resolve_device(cfg.train.device))
        amp_dtype(cfg.train.precision, device)  # fail on a bad precision before loading any data
        check_loggers(cfg)  # a missing logger package fails before the run directory exists
        world.start(cfg.distributed, device)
        world.from_main(lambda: rd.writable_dir(runs_dir, "--runs-dir"))  # before the data: it may take minutes
        check_threads(cfg.train.threads)
        seed_everything(cfg.seed, cfg.deterministic)
        data = _load_data(cfg, quiet or not world.is_main)
        prepare_process(device, cfg.train.threads)  # after the data (see prepare_process)
        seed_everything(cfg.seed, cfg.deterministic)  # model init does not depend on how data loading used the RNG
        parts = _assemble(cfg, data, device, world, quiet or not world.is_main, new_run=True)
        env = environment(cfg.seed, device, world)  # before the directory: its git calls take a moment
        if parts.transfer_record:  # where the weights came from, so a chain of runs can be traced back
            env["transfer"] = parts.transfer_record
        lock = RunLock()  # rank 0's, held from the directory's creation to the run's end
        trainer: Trainer | None = None
        try:
            run_dir = world.from_main(lambda: _new_run_dir(cfg, data, runs_dir, env, lock))
            with _recorded(run_dir, world, _closer(lambda: trainer)):
                trainer = _trainer(cfg, data, parts, device, run_dir, quiet, world, extra_callbacks)
                _describe(cfg, data, trainer, run_dir, quiet or not world.is_main)
                return _train_and_finish(cfg, data, trainer, run_dir, quiet)
        finally:
            lock.release()


def _new_run_dir(cfg: ExperimentConfig, data: DataSplits, runs_dir: str | Path, env: dict[str, Any],
                 lock: RunLock) -> Path:
    """Create the run directory (rank 0's job): take its lock, record it as running, write its first
    files; returns its path. A failure among those writes is recorded like any other."""
    try:
        run_dir = rd.new_run_dir(runs_dir, cfg.name)
    except OSError as e:
        raise UserError(f"cannot create a run directory under {str(Path(runs_dir))!r} ({_one_line(e)}); give a "
                        f"writable folder with --runs-dir.") from None
    lock.acquire(run_dir)
    write_status(run_dir, RunStatus.RUNNING, name=cfg.name, dataset=cfg.data.dataset, model=cfg.model.name,
                 started=datetime.now().isoformat(timespec="seconds"), **owner())
    with _recorded(run_dir, World()):
        dist.report_run_dir(run_dir)
        rd.atomic_write_text(run_dir / rd.CONFIG, dumps_toml(cfg))
        rd.atomic_savez(run_dir / rd.SPLITS, **data.indices())
        rd.atomic_write_json(run_dir / rd.ENV, env)
        rd.write_history(run_dir, [])
    return run_dir


def _launch_run(cfg: ExperimentConfig, runs_dir: str | Path, quiet: bool) -> Run:
    """``distributed.devices`` processes of ``cnnlab run`` on this machine, on the resolved config."""
    n = cfg.distributed.devices
    _check_devices(cfg, n)
    with interrupt_signals(), tempfile.TemporaryDirectory(prefix="cnnlab-launch-") as tmp:
        path = Path(tmp) / "experiment.toml"
        path.write_text(dumps_toml(cfg))
        run_dir = dist.launch(["run", str(path), "--runs-dir", str(runs_dir), *(["-q"] if quiet else [])], n)
    if run_dir is None:
        raise RunFailure("the training processes exited without reporting a run directory.")
    return Run(run_dir)


def _check_devices(cfg: ExperimentConfig, n: int) -> None:
    """Refuse more processes than GPUs when training on CUDA (one GPU per process), and more than
    CPU cores on the CPU (each process needs one)."""
    device = resolve_device(cfg.train.device)
    if device.type == "cuda" and n > torch.cuda.device_count():
        raise UserError(f"distributed.devices = {n} but this machine has {torch.cuda.device_count()} GPU(s); "
                        f"use at most that many (one process per GPU), or several machines with torchrun.")
    cores = os.cpu_count() or 1
    if device.type != "cuda" and n > cores:
        raise UserError(f"distributed.devices = {n} processes but this machine has {cores} CPU core(s); use at most "
                        f"that many, or several machines with torchrun.")


def _resumable(run_dir: Path, epochs: int | None, decides: bool = True) -> tuple[ExperimentConfig, dict[str, Any]] | None:
    """The checks of ``resume`` on the run's files: its config and status, or None when there is
    nothing to train (a completed run without ``--epochs``, said on stdout). Raises UserError for a
    run being trained right now, one without a checkpoint, or a bad ``--epochs``. ``decides``: this
    process says whether the run is live (the launcher, or rank 0; the other ranks would see rank
    0's own lock)."""
    cfg = load_config(run_dir / rd.CONFIG)
    st = read_status(run_dir, strict=True)
    status = status_of(st)
    if epochs is not None and epochs < 1:
        raise UserError(f"--epochs {epochs}: give the total number of epochs to train to (at least 1).")
    if decides and status is RunStatus.RUNNING and liveness(run_dir, st) is Liveness.LIVE:
        who = lock_owner(run_dir) or st
        raise UserError(f"{run_dir} is being trained right now by process {who.get('pid', '?')} on "
                        f"{who.get('host', '?')}; wait for it to end, or stop it (Ctrl-C, or kill that process) and "
                        f"resume then.")
    if not (run_dir / rd.CHECKPOINTS / rd.LAST).exists():
        raise UserError(f"{run_dir} has no {rd.CHECKPOINTS}/{rd.LAST}: it stopped before its first epoch ended; "
                        f"start it again with `cnnlab run {run_dir / rd.CONFIG}`.")
    if status is RunStatus.COMPLETED:
        done = int(st.get("epoch") or len(rd.read_history(run_dir)))
        if epochs is None or epochs == done:
            why = st.get("stop_message") or st.get("stop_reason") or "it trained its planned epochs"
            if decides:
                print(f"{run_dir} is completed after {done} epoch(s) ({why}); nothing to train. To train it further, "
                      f"give the new total: cnnlab resume {run_dir} --epochs N (N > {done}).", flush=True)
            return None
    return cfg, st


def resume(run_dir: str | Path, quiet: bool = False, devices: int | None = None, epochs: int | None = None) -> Run:
    """Continue an interrupted (or failed, or stale) run from ``checkpoints/last.pt`` in the same
    directory. A completed run trains nothing unless ``epochs`` says how far: then ``train.epochs``
    becomes ``epochs`` (in config.toml too) and training continues, the learning-rate schedule
    rebuilt for the new length and advanced to the checkpoint (README, "Stopping, resuming and
    extending a run").

    ``devices``: processes to continue with on this machine (default: the run's
    ``distributed.devices``); any number works, checkpoints do not depend on it. Under torchrun
    every process reads the run directory (on several machines: a shared file system)."""
    run_dir = rd.require_run_dir(run_dir)
    world = World.from_env()
    checked = _resumable(run_dir, epochs, decides=world is None or world.is_main)
    if checked is None:
        return Run(run_dir)
    cfg, _ = checked
    if devices is not None and devices < 1:
        raise UserError(f"--devices {devices}: give a number of processes of at least 1.")
    n = devices if devices is not None else cfg.distributed.devices
    if world is None and n > 1:
        _check_devices(cfg, n)
        with interrupt_signals():
            dist.launch(["resume", str(run_dir), "--devices", str(n), *(["--epochs", str(epochs)] if epochs else []),
                         *(["-q"] if quiet else [])], n)
        return Run(run_dir)
    world = world or World()
    with interrupt_signals():
        lock = RunLock()  # rank 0's
        try:
            return _resume_locked(run_dir, cfg, quiet, world, epochs, lock)
        finally:
            lock.release()


def _claim(run_dir: Path, epochs: int | None, lock: RunLock) -> bool:
    """Rank 0 takes the run: a writable directory, its lock, and, under the lock, the checks again
    (another resume may have finished it meanwhile). False: nothing to train."""
    rd.writable_dir(run_dir, "the run directory")
    lock.acquire(run_dir)
    if _resumable(run_dir, epochs, decides=False) is None:
        print(f"{run_dir} was completed meanwhile; nothing to train.", flush=True)
        return False
    return True


def _resume_locked(run_dir: Path, cfg: ExperimentConfig, quiet: bool, world: World, epochs: int | None,
                   lock: RunLock) -> Run:
    extend = epochs is not None  # even to the planned length: a run stopped early trains on
    if extend:
        cfg = with_overrides(cfg, {"train.epochs": epochs}, f"{run_dir / rd.CONFIG} with --epochs")
    device = world.device(resolve_device(cfg.train.device))
    world.start(cfg.distributed, device)
    if not world.from_main(lambda: _claim(run_dir, epochs, lock)):
        return Run(run_dir)
    state = load_checkpoint(run_dir / rd.CHECKPOINTS / rd.LAST, full=True)
    done = int(state["epoch"])
    if epochs is not None and epochs < done:
        raise UserError(f"--epochs {epochs}: the run has already trained {done} epochs; give a larger total.")
    check_threads(cfg.train.threads)
    if world.is_main:
        dist.report_run_dir(run_dir)
    seed_everything(cfg.seed, cfg.deterministic)
    data = _load_data(cfg, quiet or not world.is_main)
    prepare_process(device, cfg.train.threads)  # after the data (see prepare_process)
    parts = _assemble(cfg, data, device, world, quiet or not world.is_main, new_run=False)
    # The trainer takes the checkpoint's state before anything is written: a checkpoint that does not
    # fit this run (an edited config.toml, a foreign file) is bad input and leaves the run as it was.
    trainer = _trainer(cfg, data, parts, device, run_dir, quiet, world)
    try:
        trainer.load_state_dict(state, extend=extend)
    except (KeyError, TypeError, ValueError, IndexError, RuntimeError) as e:
        raise UserError(f"{run_dir / rd.CHECKPOINTS / rd.LAST} does not fit this run's model and settings "
                        f"({type(e).__name__}: {_one_line(e)[:200]}); was config.toml edited? Restore it, or start a "
                        f"new run.") from None
    if world.is_main:
        write_status(run_dir, RunStatus.RUNNING, resumed_at_epoch=done, world_size=world.size, error=None,
                     message=None, stop_reason=None, stop_message=None, signal=None, finished=None, **owner())
    with _recorded(run_dir, world, _closer(lambda: trainer)):
        if world.is_main:
            rd.remove_stray_temp_files(run_dir)  # a kill during an atomic write can leave one behind
            rd.write_history(run_dir, trainer.history)  # drop lines of epochs after the checkpoint
            if extend:
                rd.atomic_write_text(run_dir / rd.CONFIG, dumps_toml(cfg))
                past = read_status(run_dir).get("extensions", [])
                write_status(run_dir, RunStatus.RUNNING, extensions=[*past, {
                    "from_epoch": done, "to_epochs": cfg.train.epochs, "at": datetime.now().isoformat(timespec="seconds")}])
        what = f"extending {run_dir} to {cfg.train.epochs} epochs" if extend else f"resuming {run_dir}"
        _say(f"{what} after epoch {trainer.epoch}/{cfg.train.epochs}", quiet or not world.is_main)
        return _train_and_finish(cfg, data, trainer, run_dir, quiet)


def _train_and_finish(cfg: ExperimentConfig, data: DataSplits, trainer: Trainer, run_dir: Path, quiet: bool) -> Run:
    world = trainer.world
    main = world.is_main
    quiet = quiet or not main
    # An interrupt or an error is recorded by _recorded first, then the loggers are closed.
    try:
        trainer.fit()
    except Exception as e:
        _lost_contact(e, trainer, cfg, run_dir)
    stop = trainer.stop or Stop(StopReason.MAX_EPOCHS)
    nan = stop.reason is StopReason.NON_FINITE_LOSS
    if stop.reason.is_early:
        _say(str(stop), quiet)
    best = run_dir / rd.CHECKPOINTS / rd.BEST
    failure: str | None = None
    metrics: dict[str, Any] | None = None
    try:
        # Rank 0 holds the checkpoints: it decides, loads, and gives its weights to every process.
        has_best = world.from_main(best.exists)
        if (cfg.train.early_stopping.restore_best or nan) and has_best:
            if main:
                state = load_checkpoint(best)
                trainer.load_weights(state)  # the model's and the EMA average's
                _say(f"restored the best weights (epoch {state['epoch']})", quiet)
            world.sync_state(trainer.model, trainer.eval_module)
        if trainer.epoch > 0 and not (nan and not has_best):
            try:
                metrics = _evaluate_all(trainer, data, run_dir)
            except RunFailure as e:
                failure = str(e)
    except Exception as e:
        _lost_contact(e, trainer, cfg, run_dir)
    if metrics is not None:
        if main:
            rd.atomic_write_json(run_dir / rd.METRICS, metrics)
        if not quiet:
            for split in ("val", "test"):
                if split in metrics:
                    print(f"\n{split}: accuracy {metrics[split]['accuracy']:.4f}  loss {metrics[split]['loss']:.4f}")
            if "test" in metrics:
                print(classification_report(metrics["test"]))
    world.close()  # no collectives from here on
    epoch = trainer.history[-1]["epoch"] if trainer.history else 0
    if main:
        if nan or failure:
            # NON_FINITE_LOSS: the training loss became NaN/inf; NON_FINITE_OUTPUTS: the loss stayed
            # finite but the final evaluation's outputs did not (the message says on which split).
            write_status(run_dir, RunStatus.FAILED, error=Failure.NON_FINITE_LOSS if nan else Failure.NON_FINITE_OUTPUTS,
                         epoch=epoch, stop_reason=stop.reason, stop_message=str(stop),
                         message=failure or str(stop))
        if trainer.epoch > 0:
            diagnose_after_run(run_dir, quiet)  # writes diagnostics.json, prints warnings and errors
        if not (nan or failure):
            write_status(run_dir, RunStatus.COMPLETED, epoch=trainer.epoch, stop_reason=stop.reason,
                         stop_message=str(stop), train_seconds=round(sum(h["seconds"] for h in trainer.history), 3),
                         finished=datetime.now().isoformat(timespec="seconds"))
        # The report and the loggers' final record once the status is final (the page shows it).
        if trainer.epoch > 0:
            _report(run_dir, cfg, data, quiet)
        if metrics is not None and not (nan or failure):
            log_final(trainer.callbacks, metrics, run_dir)  # after report.html: MLflow keeps it as an artifact
        else:
            close_loggers(trainer.callbacks, "FAILED")
    if nan:
        kept = f"the best checkpoint {best} is kept and evaluated" if best.exists() else "no checkpoint was good"
        raise RunFailure(f"training stopped at epoch {epoch}: the loss became NaN or infinite (usually a learning "
                         f"rate too high for this model; try a lower train.lr, train.grad_clip or BatchNorm); {kept}"
                         f"{'; ' + failure if failure else ''}. Run directory: {run_dir}.")
    if failure:
        raise RunFailure(f"{failure} Run directory: {run_dir}.")
    _say(f"\nrun directory: {run_dir}", quiet)
    return Run(run_dir)


def _load_data(cfg: ExperimentConfig, quiet: bool) -> DataSplits:
    """load_data with the progress display on: a cold image archive is decoded (and cached) before
    the first step, which takes a while (CIFAR-10's 60,000 JPEGs: 14 s measured on 2 cores)."""
    with reporting(Reporter(quiet=quiet)):
        return load_data(cfg.data, cfg.seed)


def _report(run_dir: Path, cfg: ExperimentConfig, data: DataSplits, quiet: bool) -> None:
    """The end-of-run report (``report_after_run``: never raises; CNNLAB_REPORT=0 or ``[report]
    enabled = false`` skip it), shown while it draws (seconds: figures, the model's explain images)
    and then as ``report: <path> (N.N s)``."""
    shown = not quiet and reports_enabled() and cfg.report.enabled
    with Reporter(quiet=not shown).task(f"writing {rd.REPORT}") as task:
        # quiet: the line below says where, and how long it took; the sections drawn show as a percentage.
        page = report_after_run(run_dir, True, data, on_section=task.update)
        # A failure leaves the page as it was and prints its own warning.
        task.finish(f"report: {page} ({task.seconds:.1f} s)" if page is not None else None)


def _lost_contact(e: Exception, trainer: Trainer, cfg: ExperimentConfig, run_dir: Path) -> None:
    """Re-raise ``e``, or, when it is a collective failing because another process died or hung,
    mark the run failed (rank 0) and raise a RunFailure that says so."""
    world = trainer.world
    if not (world.enabled and dist.is_peer_failure(e)):
        raise e
    if world.is_main:
        write_status(run_dir, RunStatus.FAILED, error=Failure.LOST_PEER, epoch=trainer.epoch,
                     message="lost contact with another process")
    raise RunFailure(dist.peer_failure_message(world, e, cfg.distributed.timeout_s)
                     + f" Run directory: {run_dir}.") from None


def _evaluate_all(trainer: Trainer, data: DataSplits, run_dir: Path) -> dict[str, Any]:
    """metrics.json content for train (eval mode, no augmentation), val and test; writes predictions.
    With several processes the evaluation is sharded (every process gets all probabilities, so all
    agree on a failure) and rank 0 computes the metrics and writes; the others return {}."""
    out: dict[str, Any] = {}
    for name, split in (("train", data.train), ("val", data.val), ("test", data.test)):
        if split is None or len(split.y) == 0:
            continue
        dev = DeviceSplit.of(split, trainer.device)
        probs, loss, _ = trainer.evaluate(dev, trainer.cfg.train.tta)
        if not np.isfinite(probs).all():
            raise RunFailure(f"the model's outputs on the {name} split are not finite: its weights overflowed "
                             f"(a learning rate far too high?), so no metrics were written.")
        if not trainer.world.is_main:
            continue
        y = split.y.numpy()
        out[name] = compute_metrics(y, probs, data.class_names, loss)
        rd.atomic_savez(run_dir / rd.PREDICTIONS / rd.prediction_file(name), y_true=y,
                        y_prob=probs.astype(np.float32), index=split.index)
    return out
