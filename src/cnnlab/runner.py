"""From a config to a finished run directory: data, model, training, evaluation, files.

``run`` starts a run, ``resume`` continues one from ``checkpoints/last.pt``, ``evaluate`` measures
a saved checkpoint on any split or data set, ``predict`` classifies image files.

``run`` and ``resume`` also run data-parallel (docs/distributed.md): under torchrun each process
joins the process group and trains its share; ``[distributed] devices = N`` (or ``devices=N``)
without torchrun starts N such processes here and waits for them. Only rank 0 writes the run
directory; every collective is made by every process in the same order.
"""

from __future__ import annotations

import sys
import tempfile
import warnings
from datetime import datetime
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import distributed as dist
from . import rundir as rd
from .augment import Normalizer
from .callbacks import CALLBACKS, Callback, eval_weights
from .config import ExperimentConfig, dumps_toml, load_config, resolved_dict, validate_config, apply_overrides
from .distributed import World
from .data import DataSplits, load_data, read_image_files
from .engine import (DeviceSplit, Inference, Trainer, amp_dtype, epoch_steps, has_conv, predict as predict_probs,
                     resolve_device, seed_everything)
from .loggers import build_loggers, check_loggers, close_loggers, log_final
from .errors import RunFailure, UserError
from .losses import build_loss
from .metrics import classification_report, compute_metrics, top_k
from .models import build_model, count_parameters
from .optim import build_optimizer, build_scheduler
from .stats import TrainingStats  # noqa: F401  (registers the "stats" callback)
from .transfer import apply_transfer


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
        p = self.dir / rd.METRICS
        return rd.read_json(p) if p.exists() else {}

    @property
    def history(self) -> list[dict[str, Any]]:
        return rd.read_history(self.dir)

    @property
    def status(self) -> dict[str, Any]:
        return rd.read_status(self.dir)

    @cached_property
    def model(self) -> torch.nn.Module:
        """The model with the best checkpoint's weights (last.pt when there is no best.pt), eval mode."""
        return load_model(self.dir, "best")[0]

    def __repr__(self) -> str:
        return f"Run({str(self.dir)!r})"


# ------------------------------------------------------------------------------------ setup
def _monitor(cfg: ExperimentConfig, has_val: bool) -> str:
    m = cfg.train.early_stopping.monitor
    # Without a validation split the val_* metrics do not exist: watch the training counterpart.
    return m.replace("val_", "train_") if not has_val else m


def _build(cfg: ExperimentConfig, data: DataSplits, device: torch.device, run_dir: Path, quiet: bool,
           extra_callbacks: list[Callback] | None = None, load_transfer: bool = True,
           world: World | None = None) -> Trainer:
    world = world or World()
    quiet = quiet or not world.is_main
    k = len(data.class_names)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = build_model(cfg.model, data.input_shape, k)
    for w in caught:
        _say(f"warning: {w.message}", quiet)
    # Before freezing and the optimizer: they then see the SyncBatchNorm modules (same parameters).
    model = dist.convert_sync_batchnorm(model, world, cfg.distributed.sync_batchnorm, device)
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    if hasattr(model, "init_from_data"):
        # Data-dependent initialisation (airbench's whitening layer), on the training images
        # normalized like training batches; deterministic, and overwritten by a resumed checkpoint.
        model.init_from_data(data.train.x, Normalizer(data.mean, data.std, torch.device("cpu")))
    # [transfer]: the source's weights (a new run only; a resume loads its own checkpoint), then freezing.
    transfer_record = apply_transfer(model, cfg.transfer, load=load_transfer, download=cfg.data.download, quiet=quiet)
    model = model.to(device)
    if cfg.train.channels_last and has_conv(model):
        # channels_last (NHWC) is faster for convolutions on CUDA and with oneDNN on the CPU.
        model = model.to(memory_format=torch.channels_last)
    counts = data.class_counts("train")
    loss_fn = build_loss(cfg.train, counts).to(device)
    optimizer = build_optimizer(model, cfg.train, cfg.transfer)
    scheduler, sched_monitor = build_scheduler(
        optimizer, cfg.train, epoch_steps(len(data.train), cfg.train.batch_size, world.size, cfg.train.drop_last))
    es = cfg.train.early_stopping
    monitor = _monitor(cfg, data.val is not None)
    dg = cfg.diagnostics
    ema = cfg.train.ema
    main = world.is_main  # callbacks that write files or print run in rank 0 only
    callbacks: list[Callback] = [
        # The weight average: evaluation (val each epoch, the final metrics) uses it when it is on.
        *([CALLBACKS.get("ema")(model, ema.decay, ema.every, ema.mode, ema.ramp)] if ema.mode != "off" else []),
        # First: its record of an epoch must be in the state that the checkpoint callback saves.
        *([CALLBACKS.get("stats")(run_dir, dg.stats_every, dg.probe_size)] if dg.stats_every and main else []),
        *([CALLBACKS.get("unfreeze_schedule")(model, cfg.transfer.unfreeze_schedule, quiet)]
          if cfg.transfer.unfreeze_schedule else []),
        CALLBACKS.get("early_stopping")(monitor, es.mode, es.patience, es.min_delta),
        *([CALLBACKS.get("checkpoint")(run_dir / "checkpoints", monitor, es.mode, cfg.checkpoint.every, es.min_delta),
           CALLBACKS.get("history")(run_dir),
           CALLBACKS.get("progress")(cfg.train.epochs, enabled=not quiet),
           # [log]: TensorBoard / MLflow; after the checkpoint callback (a resume repairs from its state).
           *build_loggers(cfg, run_dir)] if main else []),
        # Last, so they see the epoch after early stopping and the checkpoint (a sweep's pruning hook).
        *(extra_callbacks or []),
    ]
    meta = {"class_names": list(data.class_names), "mean": list(data.mean), "std": list(data.std),
            "input_shape": list(data.input_shape), "model": cfg.model.name, "source": data.source}
    trainer = Trainer(cfg, model, loss_fn, optimizer, scheduler, sched_monitor,
                      DeviceSplit.of(data.train, device), DeviceSplit.of(data.val, device) if data.val else None,
                      Normalizer(data.mean, data.std, device), callbacks, device, meta, counts, resolved_dict(cfg),
                      world)
    trainer.transfer_record = transfer_record
    return trainer


def _describe(cfg: ExperimentConfig, data: DataSplits, trainer: Trainer, run_dir: Path, quiet: bool) -> None:
    total, trainable = count_parameters(trainer.model)
    sizes = ", ".join(f"{k} {len(v)}" for k, v in data.indices().items())
    _say(f"run {run_dir}", quiet)
    _say(f"data {cfg.data.dataset}: {len(data.class_names)} classes, {sizes}, images {tuple(data.input_shape)}", quiet)
    amp = "" if trainer.amp is None else f", autocast {str(trainer.amp).replace('torch.', '')}"
    _say(f"model {cfg.model.name}: {total:,} parameters ({trainable:,} trainable) on {trainer.device}{amp}", quiet)


# --------------------------------------------------------------------------------- run/resume
def run(config_or_path: str | Path | ExperimentConfig | dict, overrides: list[str] | dict[str, Any] | None = None,
        runs_dir: str | Path = "runs", quiet: bool = False, extra_callbacks: list[Callback] | None = None,
        devices: int | None = None) -> Run:
    """Train, evaluate and write a run directory; returns the ``Run``.

    ``config_or_path``: a TOML path, a raw dict or an ExperimentConfig. ``overrides``: ``{"train.lr": 0.01}``
    or ``["train.lr=0.01"]``. ``extra_callbacks``: more ``Callback`` objects for this run (for example
    a sweep's pruning hook). ``devices``: processes to train with on this machine (overrides
    ``distributed.devices``; ignored under torchrun, whose world is used). Raises UserError on bad
    input and RunFailure when training fails.
    """
    if isinstance(config_or_path, ExperimentConfig):
        cfg = validate_config(apply_overrides(resolved_dict(config_or_path), overrides), "<config>")
    elif isinstance(config_or_path, dict):
        cfg = validate_config(apply_overrides(dict(config_or_path), overrides), "<dict>")
    else:
        cfg = load_config(config_or_path, overrides)
    if devices is not None:
        cfg = validate_config(apply_overrides(resolved_dict(cfg), {"distributed.devices": devices}), "--devices")
    world = World.from_env()
    if world is None and cfg.distributed.devices > 1:
        if extra_callbacks:
            raise UserError("callbacks given in Python (a sweep's pruning hook) cannot run in processes started with "
                            "distributed.devices > 1; train each trial in one process (devices = 1), or start the "
                            "processes with torchrun.")
        return _launch_run(cfg, runs_dir, quiet)
    world = world or World()
    device = world.device(resolve_device(cfg.train.device))
    amp_dtype(cfg.train.precision, device)  # fail on a bad precision before loading any data
    check_loggers(cfg)  # a missing logger package fails before the run directory exists
    world.start(cfg.distributed, device)
    seed_everything(cfg.seed, cfg.deterministic)
    data = load_data(cfg.data, cfg.seed)
    run_dir = world.from_main(lambda: _new_run_dir(cfg, data, device, runs_dir, world))
    seed_everything(cfg.seed, cfg.deterministic)  # model init does not depend on how data loading used the RNG
    trainer = _build(cfg, data, device, run_dir, quiet, extra_callbacks, world=world)
    if trainer.transfer_record and world.is_main:  # where the weights came from, so a chain of runs can be traced back
        env = rd.read_json(run_dir / "env.json")
        env["transfer"] = trainer.transfer_record
        rd.atomic_write_json(run_dir / "env.json", env)
    _describe(cfg, data, trainer, run_dir, quiet or not world.is_main)
    return _train_and_finish(cfg, data, trainer, run_dir, quiet)


def _new_run_dir(cfg: ExperimentConfig, data: DataSplits, device: torch.device, runs_dir: str | Path,
                 world: World) -> Path:
    """Create the run directory with its first files (rank 0's job); returns its path."""
    run_dir = rd.new_run_dir(runs_dir, cfg.name)
    dist.report_run_dir(run_dir)
    rd.atomic_write_text(run_dir / rd.CONFIG, dumps_toml(cfg))
    rd.atomic_savez(run_dir / "splits.npz", **data.indices())
    rd.atomic_write_json(run_dir / "env.json", rd.environment(cfg.seed, device, world))
    rd.write_status(run_dir, "running", name=cfg.name, dataset=cfg.data.dataset, model=cfg.model.name,
                    started=datetime.now().isoformat(timespec="seconds"))
    rd.write_history(run_dir, [])
    return run_dir


def _launch_run(cfg: ExperimentConfig, runs_dir: str | Path, quiet: bool) -> Run:
    """``distributed.devices`` processes of ``cnnlab run`` on this machine, on the resolved config."""
    n = cfg.distributed.devices
    _check_devices(cfg, n)
    with tempfile.TemporaryDirectory(prefix="cnnlab-launch-") as tmp:
        path = Path(tmp) / "experiment.toml"
        path.write_text(dumps_toml(cfg))
        run_dir = dist.launch(["run", str(path), "--runs-dir", str(runs_dir), *(["-q"] if quiet else [])], n)
    if run_dir is None:
        raise RunFailure("the training processes exited without reporting a run directory.")
    return Run(run_dir)


def _check_devices(cfg: ExperimentConfig, n: int) -> None:
    """Refuse more processes than GPUs when training on CUDA (one GPU per process)."""
    device = resolve_device(cfg.train.device)
    if device.type == "cuda" and n > torch.cuda.device_count():
        raise UserError(f"distributed.devices = {n} but this machine has {torch.cuda.device_count()} GPU(s); "
                        f"use at most that many (one process per GPU), or several machines with torchrun.")


def resume(run_dir: str | Path, quiet: bool = False, devices: int | None = None) -> Run:
    """Continue an interrupted run from ``checkpoints/last.pt`` in the same directory.

    ``devices``: processes to continue with on this machine (default: the run's
    ``distributed.devices``); any number works, checkpoints do not depend on it. Under torchrun
    every process reads the run directory (on several machines: a shared file system)."""
    run_dir = rd.require_run_dir(run_dir)
    last = run_dir / "checkpoints" / "last.pt"
    if not last.exists():
        raise UserError(f"{run_dir} has no checkpoints/last.pt: it stopped before its first epoch ended; "
                        f"start it again with `cnnlab run {run_dir / rd.CONFIG}`.")
    cfg = load_config(run_dir / rd.CONFIG)
    if devices is not None and devices < 1:
        raise UserError(f"--devices {devices}: give a number of processes of at least 1.")
    world = World.from_env()
    n = devices if devices is not None else cfg.distributed.devices
    if world is None and n > 1:
        _check_devices(cfg, n)
        dist.launch(["resume", str(run_dir), "--devices", str(n), *(["-q"] if quiet else [])], n)
        return Run(run_dir)
    world = world or World()
    state = rd.load_checkpoint(last)
    device = world.device(resolve_device(cfg.train.device))
    world.start(cfg.distributed, device)
    if world.is_main:
        dist.report_run_dir(run_dir)
    seed_everything(cfg.seed, cfg.deterministic)
    data = load_data(cfg.data, cfg.seed)
    trainer = _build(cfg, data, device, run_dir, quiet, load_transfer=False, world=world)
    trainer.load_state_dict(state)
    if world.is_main:
        rd.write_history(run_dir, trainer.history)  # drop lines of epochs after the checkpoint
        rd.write_status(run_dir, "running", resumed_at_epoch=trainer.epoch, world_size=world.size)
    _say(f"resuming {run_dir} after epoch {trainer.epoch}/{cfg.train.epochs}", quiet or not world.is_main)
    return _train_and_finish(cfg, data, trainer, run_dir, quiet)


def _train_and_finish(cfg: ExperimentConfig, data: DataSplits, trainer: Trainer, run_dir: Path, quiet: bool) -> Run:
    world = trainer.world
    main = world.is_main
    quiet = quiet or not main
    try:
        trainer.fit()
    except KeyboardInterrupt:
        close_loggers(trainer.callbacks, "KILLED")
        if main:
            rd.write_status(run_dir, "interrupted", epoch=trainer.epoch)
        raise
    except Exception as e:
        close_loggers(trainer.callbacks, "FAILED")
        _lost_contact(e, trainer, cfg, run_dir)
    nan = trainer.stop_reason == "nan"
    if trainer.stop_reason and not nan:
        _say(trainer.stop_reason, quiet)
    best = run_dir / "checkpoints" / "best.pt"
    failure: str | None = None
    metrics: dict[str, Any] | None = None
    try:
        # Rank 0 holds the checkpoints: it decides, loads, and gives its weights to every process.
        has_best = world.from_main(best.exists)
        if (cfg.train.early_stopping.restore_best or nan) and has_best:
            if main:
                state = rd.load_checkpoint(best)
                trainer.load_weights(state)  # the model's and the EMA average's
                _say(f"restored the best weights (epoch {state['epoch']})", quiet)
            world.sync_state(trainer.model, trainer.eval_module)
        if trainer.epoch > 0 and not (nan and not has_best):
            try:
                metrics = _evaluate_all(trainer, data, run_dir)
            except RunFailure as e:
                failure = str(e)
    except Exception as e:
        close_loggers(trainer.callbacks, "FAILED")
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
            # error: "nan" = the training loss became NaN/inf; "non_finite_outputs" = the loss stayed
            # finite but the final evaluation's outputs did not (message says on which split).
            rd.write_status(run_dir, "failed", error="nan" if nan else "non_finite_outputs", epoch=epoch,
                            **({"message": failure} if failure else {}))
        if trainer.epoch > 0:
            from .diagnose import diagnose_after_run

            diagnose_after_run(run_dir, quiet)  # writes diagnostics.json, prints warnings and errors
        if not (nan or failure):
            rd.write_status(run_dir, "completed", epoch=trainer.epoch, stop_reason=trainer.stop_reason,
                            train_seconds=round(sum(h["seconds"] for h in trainer.history), 3),
                            finished=datetime.now().isoformat(timespec="seconds"))
        # The report and the loggers' final record once the status is final (the page shows it).
        if trainer.epoch > 0:
            from .report import report_after_run

            report_after_run(run_dir, quiet, data)  # never raises; CNNLAB_REPORT=0 / [report] enabled = false skip it
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


def _lost_contact(e: Exception, trainer: Trainer, cfg: ExperimentConfig, run_dir: Path) -> None:
    """Re-raise ``e``, or, when it is a collective failing because another process died or hung,
    mark the run failed (rank 0) and raise a RunFailure that says so."""
    world = trainer.world
    if not (world.enabled and dist.is_peer_failure(e)):
        raise e
    if world.is_main:
        rd.write_status(run_dir, "failed", error="lost contact with another process", epoch=trainer.epoch)
    raise RunFailure(dist.peer_failure_message(world, e, cfg.distributed.timeout_s)
                     + f" Run directory: {run_dir}.") from None


def _evaluate_all(trainer: Trainer, data: DataSplits, run_dir: Path) -> dict[str, Any]:
    """metrics.json content for train (eval mode, no augmentation), val and test; writes predictions.
    With several processes the evaluation is sharded (every process gets all probabilities, so all
    agree on a failure) and rank 0 computes the metrics and writes; the others return {}."""
    out: dict[str, Any] = {}
    for name in ("train", "val", "test"):
        split = getattr(data, name)
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
        rd.atomic_savez(run_dir / "predictions" / f"{name}.npz", y_true=y, y_prob=probs.astype(np.float32),
                        index=split.index)
    return out


# ------------------------------------------------------------------------------ checkpoints
def _checkpoint_path(run_dir: Path, which: str) -> Path:
    named = {"best": "best.pt", "last": "last.pt"}
    if which in named:
        p = run_dir / "checkpoints" / named[which]
        if which == "best" and not p.exists():
            p = run_dir / "checkpoints" / "last.pt"
        if not p.exists():
            raise UserError(f"{run_dir} has no {named[which]} checkpoint (the run ended before its first epoch).")
        return p
    return Path(which)


def load_model(run_dir: str | Path, which: str = "best", device: torch.device | None = None):
    """(model in eval mode, checkpoint dict, config) for a run's checkpoint ``best``/``last``/a path."""
    run_dir = rd.require_run_dir(run_dir)
    path = _checkpoint_path(run_dir, which)
    state = rd.load_checkpoint(path)
    cfg = validate_config(state["config"], str(path)) if state.get("config") else load_config(run_dir / rd.CONFIG)
    meta = state["meta"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = build_model(cfg.model, tuple(meta["input_shape"]), len(meta["class_names"]))
    try:
        model.load_state_dict(eval_weights(state))  # the EMA average when the run kept one
    except RuntimeError as e:
        raise UserError(f"checkpoint does not fit the run's model {cfg.model.name!r}: {str(e).splitlines()[0]}") from None
    model.to(device or torch.device("cpu")).eval()
    return model, state, cfg


def evaluate(run_dir: str | Path, checkpoint: str = "best", overrides: list[str] | dict | None = None,
             splits: list[str] | None = None, quiet: bool = False) -> dict[str, Any]:
    """Metrics of a saved checkpoint on the run's splits, or on another data set via ``overrides``
    (``data.*`` keys). Normalization uses the run's own training statistics. Writes
    ``evaluations/<timestamp>.json`` in the run directory and returns the metrics."""
    run_dir = rd.require_run_dir(run_dir)
    base = load_config(run_dir / rd.CONFIG)
    cfg = validate_config(apply_overrides(resolved_dict(base), overrides), f"{run_dir / rd.CONFIG} with --set")
    device = resolve_device(cfg.train.device)
    model, state, _ = load_model(run_dir, checkpoint, device)
    meta = state["meta"]
    data = load_data(cfg.data, cfg.seed)
    if len(data.class_names) != len(meta["class_names"]):
        raise UserError(f"the data set has {len(data.class_names)} classes but the model was trained on "
                        f"{len(meta['class_names'])}; choose a data set or class subset with the same classes.")
    if tuple(data.input_shape) != tuple(meta["input_shape"]):
        raise UserError(f"the data set's images are {tuple(data.input_shape)} but the model takes "
                        f"{tuple(meta['input_shape'])}; set data.image_size to match.")
    norm = Normalizer(meta["mean"], meta["std"], device)
    loss_fn = build_loss(cfg.train, np.ones(len(meta["class_names"]))).to(device)
    amp = amp_dtype(cfg.train.precision, device)
    inf = Inference.of(model, cfg.train)  # channels_last, train.compile, train.threads as in training
    out: dict[str, Any] = {}
    for name in splits or ["train", "val", "test"]:
        split = getattr(data, name, None)
        if split is None:
            continue
        dev = DeviceSplit.of(split, device)
        probs, loss = predict_probs(inf.model, dev, norm, cfg.train.eval_batch_size, amp, loss_fn,
                                    channels_last=inf.channels_last, tta=cfg.train.tta, forward=inf.forward)
        out[name] = compute_metrics(split.y.numpy(), probs, meta["class_names"], loss)
    record = {"checkpoint": checkpoint, "epoch": state["epoch"], "overrides": overrides or [], "metrics": out}
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S-%f")
    rd.atomic_write_json(run_dir / "evaluations" / f"{stamp}.json", record)
    if not quiet:
        for name, m in out.items():
            print(f"\n{name}: accuracy {m['accuracy']:.4f}  loss {m['loss']:.4f}  (n={m['n']})")
            print(classification_report(m))
    return out


def predict(run_dir: str | Path, images: list[str], checkpoint: str = "best", k: int = 3,
            quiet: bool = False) -> list[dict[str, Any]]:
    """Class and top-k probabilities for each image file, preprocessed like the run's data."""
    run_dir = rd.require_run_dir(run_dir)
    model, state, cfg = load_model(run_dir, checkpoint)
    meta = state["meta"]
    c, h, w = meta["input_shape"]
    x = read_image_files(list(images), c, (h, w))
    norm = Normalizer(meta["mean"], meta["std"], torch.device("cpu"))
    # Eager (no train.compile): a handful of images would not pay for a compilation.
    inf = Inference.of(model, cfg.train.model_copy(update={"compile": False}))
    probs, _ = predict_probs(inf.model, DeviceSplit(x, torch.zeros(len(x), dtype=torch.long)), norm, 256,
                             channels_last=inf.channels_last, tta=cfg.train.tta)
    names = meta["class_names"]
    idx, p = top_k(probs, min(k, len(names)))
    results = []
    for path, row_i, row_p in zip(images, idx, p):
        top = [{"class": names[i], "probability": float(q)} for i, q in zip(row_i, row_p)]
        results.append({"image": str(path), "class": top[0]["class"], "probability": top[0]["probability"], "top": top})
        if not quiet:
            alts = ", ".join(f"{t['class']} {t['probability']:.3f}" for t in top)
            print(f"{path}: {top[0]['class']} ({alts})")
    return results
